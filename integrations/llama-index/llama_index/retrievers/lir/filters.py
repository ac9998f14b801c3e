"""LlamaIndex MetadataFilters → the lir_agent filter language."""

from __future__ import annotations

from typing import Any

from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

_OPERATORS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
}
_CONDITIONS = {FilterCondition.AND: "$and", FilterCondition.OR: "$or"}


def to_lir_filter(filters: MetadataFilters | None) -> dict[str, Any] | None:
    """Translates (nested) MetadataFilters; unsupported operators or conditions raise ValueError."""
    if filters is None or not filters.filters:
        return None
    condition = filters.condition or FilterCondition.AND
    if condition not in _CONDITIONS:
        raise ValueError(f"LIRRetriever does not support the {condition.name} filter condition (use AND or OR)")
    parts = []
    for item in filters.filters:
        if isinstance(item, MetadataFilters):
            nested = to_lir_filter(item)
            if nested is not None:
                parts.append(nested)
            continue
        assert isinstance(item, MetadataFilter)
        operator = _OPERATORS.get(item.operator)
        if operator is None:
            supported = ", ".join(op.name for op in _OPERATORS)
            raise ValueError(
                f"LIRRetriever does not support the {item.operator.name} filter operator (on {item.key!r}); "
                f"supported: {supported}"
            )
        parts.append({item.key: {operator: item.value}})
    return {_CONDITIONS[condition]: parts} if parts else None
