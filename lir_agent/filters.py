"""Metadata filters: a small MongoDB-like language, or any callable.

A filter is either a callable ``metadata -> bool`` or a dict:

* ``{"field": value}``: equality (``{"field": {"$eq": value}}``), also ``$ne``;
* ``{"field": {"$in": [a, b]}}`` and ``$nin``;
* ``{"field": {"$gt": 1, "$lte": 5}}``: numeric (or string) ranges with ``$gt $gte $lt $lte``;
* ``{"$and": [f1, f2]}``, ``{"$or": [f1, f2]}``; several keys in one dict are AND-ed.

Dotted field names reach into nested metadata (``"source.year"``). A document without the
field never matches (except for ``$ne``/``$nin``), so a filter on a field no document has
returns nothing rather than raising.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Union

from .errors import InvalidInputError
from .text import check_json

Filter = Union[Mapping[str, Any], Callable[[Mapping[str, Any]], bool]]
Predicate = Callable[[Mapping[str, Any]], bool]

_MISSING = object()
_RANGE = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _lookup(metadata: Mapping[str, Any], field: str) -> Any:
    value: Any = metadata
    for part in field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _comparable(a: Any, b: Any) -> bool:
    numeric = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return (isinstance(a, numeric) and isinstance(b, numeric)) or (isinstance(a, str) and isinstance(b, str))


def _field_predicate(field: str, condition: Any) -> Predicate:
    if not isinstance(condition, Mapping):
        return lambda m: (v := _lookup(m, field)) is not _MISSING and v == condition
    if not condition:
        raise InvalidInputError(f"filter on {field!r}: empty condition")
    checks: list[Predicate] = []
    for op, operand in condition.items():
        if op == "$eq":
            checks.append(lambda m, o=operand: (v := _lookup(m, field)) is not _MISSING and v == o)
        elif op == "$ne":
            checks.append(lambda m, o=operand: _lookup(m, field) != o)
        elif op in ("$in", "$nin"):
            if isinstance(operand, (str, bytes)) or not hasattr(operand, "__iter__"):
                raise InvalidInputError(f"filter on {field!r}: {op} needs a list, got {operand!r}")
            values = list(operand)
            if op == "$in":
                checks.append(lambda m, vs=values: (v := _lookup(m, field)) is not _MISSING and v in vs)
            else:
                checks.append(lambda m, vs=values: _lookup(m, field) not in vs)
        elif op in _RANGE:
            if isinstance(operand, bool) or not isinstance(operand, (int, float, str)):
                raise InvalidInputError(f"filter on {field!r}: {op} needs a number or string, got {operand!r}")
            compare = _RANGE[op]
            checks.append(
                lambda m, o=operand, c=compare: _comparable(v := _lookup(m, field), o) and c(v, o)
            )
        else:
            raise InvalidInputError(
                f"filter on {field!r}: unknown operator {op!r} (use $eq $ne $in $nin $gt $gte $lt $lte)"
            )
    return lambda m: all(check(m) for check in checks)


def compile_filter(spec: Filter | None) -> Predicate | None:
    """Turns a filter into a predicate over a document's metadata; None stays None. A string in
    a dict filter that is not text (a lone surrogate) is refused, naming its path in the filter."""
    return None if spec is None else _compile(check_json(spec, "filter"))


def _compile(spec: Any) -> Predicate:
    if callable(spec):
        return lambda m: bool(spec(m))
    if not isinstance(spec, Mapping):
        raise InvalidInputError(f"a filter must be a dict or a callable, got {type(spec).__name__}")
    parts: list[Predicate] = []
    for key, value in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise InvalidInputError(f"filter: {key} needs a non-empty list of filters")
            subs = [_compile(v) for v in value]
            combine = all if key == "$and" else any
            parts.append(lambda m, s=subs, c=combine: c(p(m) for p in s))
        elif key.startswith("$"):
            raise InvalidInputError(f"filter: unknown operator {key!r} at the top level (use $and or $or)")
        else:
            parts.append(_field_predicate(key, value))
    return lambda m: all(p(m) for p in parts)
