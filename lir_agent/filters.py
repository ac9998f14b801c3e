"""Metadata filters: a small MongoDB-like language compiled to SQL, or any callable.

A filter is either a callable ``metadata -> bool`` or a dict:

* ``{"field": value}``: equality (``{"field": {"$eq": value}}``), also ``$ne``;
* ``{"field": {"$in": [a, b]}}`` and ``$nin``;
* ``{"field": {"$gt": 1, "$lte": 5}}``: numeric (or string) ranges with ``$gt $gte $lt $lte``;
* ``{"$and": [f1, f2]}``, ``{"$or": [f1, f2]}``; several keys in one dict are AND-ed.

Dotted field names reach into nested metadata (``"source.year"``). A document without the
field never matches (except for ``$ne``/``$nin``), so a filter on a field no document has
returns nothing rather than raising. Equality is Python's on the stored JSON values (``1 ==
1.0 == true``); ranges compare numbers with numbers (not booleans) and strings with strings.

A dict filter is compiled to one SQL condition over the ``metadata`` JSON column of the document
store (:mod:`lir_agent.docstore`) and evaluated inside SQLite: through an index when the field
is one the index declares (``Index.create(..., indexed_fields=[...])``), else by a scan in the
database. Two rare cases are evaluated by a Python function that SQLite calls per row
(``lir_condition``): field names with ``"``, ``\\`` or control characters (SQLite's JSON paths
cannot name them) and operands SQL cannot compare like Python (lists, dicts, integers beyond
64 bits). A callable filter, or a dict with a callable inside, is the slow path: it is called
on every live document's metadata, read from the store.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Union

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
_RANGE_SQL = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_OPERATORS = ("$eq", "$ne", "$in", "$nin", *_RANGE)
_NUMBER_TYPES = "('integer','real','true','false')"  # json_type values Python's == compares as numbers
_INT64 = (-(2**63), 2**63 - 1)
CONDITION_FUNCTION = "lir_condition"  # registered on every document-store connection (see python_condition)


@dataclass(frozen=True)
class CompiledFilter:
    """A checked filter: ``sql`` (a condition over the ``docs`` table, with ``params`` for its
    ``?`` placeholders) for a dict filter, or ``predicate`` (called on each document's metadata)
    for one that holds a callable."""

    sql: str | None
    params: tuple[Any, ...]
    predicate: Predicate | None


def compile_filter(spec: Filter | None) -> CompiledFilter | None:
    """Checks a filter and compiles it (see the module docstring); None stays None. Errors
    (InvalidInputError) name what is wrong: an unknown operator, an operand of the wrong kind,
    a string that is not text (a lone surrogate, named by its path in the filter)."""
    if spec is None:
        return None
    spec = _normalized(check_json(spec, "filter"))
    predicate = _compile(spec)  # checks every part
    if _holds_callable(spec):
        return CompiledFilter(None, (), predicate)
    params: list[Any] = []
    return CompiledFilter(_sql(spec, params), tuple(params), None)


def python_predicate(spec: Filter) -> Predicate:
    """The filter as a Python predicate over one metadata dict: the definition of the semantics
    (the SQL compilation is tested against it)."""
    return _compile(_normalized(check_json(spec, "filter")))


def field_expressions(field: str) -> tuple[str, str] | None:
    """The SQL expressions of a dotted field's JSON type and value (``json_type``, ``json_extract``
    over the metadata column): the two columns of an index on the field, in that order, so that
    a condition on both (every condition the compiler writes) is answered from the index alone.
    None for a field SQLite's JSON paths cannot name."""
    path = _json_path(field)
    return None if path is None else (f"json_type(metadata, {path})", f"json_extract(metadata, {path})")


@functools.lru_cache(maxsize=256)
def _leaf_predicate(field: str, condition_json: str) -> Predicate:
    return _field_predicate(field, json.loads(condition_json))


def python_condition(metadata_json: str, field: str, condition_json: str) -> int:
    """``lir_condition(metadata, field, condition)``: one field condition evaluated by Python for SQLite."""
    return int(_leaf_predicate(field, condition_json)(json.loads(metadata_json)))


# ------------------------------------------------------------------ the Python semantics
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
            values = _listed(field, op, operand)
            if op == "$in":
                checks.append(lambda m, vs=values: (v := _lookup(m, field)) is not _MISSING and v in vs)
            else:
                checks.append(lambda m, vs=values: _lookup(m, field) not in vs)
        elif op in _RANGE:
            _range_operand(field, op, operand)
            compare = _RANGE[op]
            checks.append(
                lambda m, o=operand, c=compare: _comparable(v := _lookup(m, field), o) and c(v, o)
            )
        else:
            raise InvalidInputError(
                f"filter on {field!r}: unknown operator {op!r} (use $eq $ne $in $nin $gt $gte $lt $lte)"
            )
    return lambda m: all(check(m) for check in checks)


def _listed(field: str, op: str, operand: Any) -> list[Any]:
    if isinstance(operand, (str, bytes, Mapping)) or not isinstance(operand, Iterable):
        raise InvalidInputError(f"filter on {field!r}: {op} needs a list, got {operand!r}")
    return [_json_value(field, op, v) for v in operand]


def _json_value(field: str, op: str, value: Any) -> Any:
    """``value`` as a JSON value (numpy scalars and arrays as Python ones), or a clear error."""
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy, without importing it (the CLI's start-up)
        value = value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(field, op, v) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _json_value(field, op, v) for k, v in value.items()}
    raise InvalidInputError(f"filter on {field!r}: the {op} operand {value!r} is not a JSON value "
                            "(null, boolean, number, string, list or object)")


def _normalized(spec: Any) -> Any:
    """A dict filter with its operands as JSON values ($in/$nin lists as lists); other filters
    (callables, and what :func:`_compile` refuses) as they are."""
    if not isinstance(spec, Mapping):
        return spec
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key in ("$and", "$or") and isinstance(value, (list, tuple)):
            out[key] = [_normalized(v) for v in value]
        elif not isinstance(key, str) or key.startswith("$"):
            out[key] = value
        elif isinstance(value, Mapping):
            out[key] = {op: _listed(key, op, operand) if op in ("$in", "$nin") else
                        _json_value(key, op, operand) if op in _OPERATORS else operand
                        for op, operand in value.items()}
        else:
            out[key] = _json_value(key, "$eq", value)
    return out


def _range_operand(field: str, op: str, operand: Any) -> None:
    if isinstance(operand, bool) or not isinstance(operand, (int, float, str)):
        raise InvalidInputError(f"filter on {field!r}: {op} needs a number or string, got {operand!r}")


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
        elif not isinstance(key, str) or key.startswith("$"):
            raise InvalidInputError(f"filter: unknown operator {key!r} at the top level (use $and or $or)")
        else:
            parts.append(_field_predicate(key, value))
    return lambda m: all(p(m) for p in parts)


def _holds_callable(spec: Any) -> bool:
    if callable(spec):
        return True
    return isinstance(spec, Mapping) and any(_holds_callable(v) for key in ("$and", "$or") for v in spec.get(key, ()))


# ------------------------------------------------------------------ compilation to SQL
def _json_path(field: str) -> str | None:
    """A SQL string literal holding the JSON path of a dotted field (``'$."a"."b"'``), or None
    when a part holds a character SQLite's quoted path keys cannot hold."""
    parts = field.split(".")
    if any('"' in p or "\\" in p or any(ord(c) < 0x20 for c in p) for p in parts):
        return None
    path = "$" + "".join(f'."{p}"' for p in parts)
    return "'" + path.replace("'", "''") + "'"


def _sql(spec: Mapping[str, Any], params: list[Any]) -> str:
    parts = []
    for key, value in spec.items():
        if key in ("$and", "$or"):
            joined = f" {key[1:].upper()} ".join(_sql(v, params) for v in value)
            parts.append(f"({joined})")
        else:
            conditions = value.items() if isinstance(value, Mapping) else [("$eq", value)]
            parts.extend(_condition_sql(key, op, operand, params) for op, operand in conditions)
    return "(" + " AND ".join(parts) + ")" if parts else "1"  # {} accepts every document


def _sql_scalar(value: Any) -> bool:
    """Whether SQL compares ``value`` with a stored JSON value exactly as Python would."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _INT64[0] <= value <= _INT64[1]
    return value is None or isinstance(value, (bool, float, str))


def _condition_sql(field: str, op: str, operand: Any, params: list[Any]) -> str:
    """One field condition; true, or false or NULL (both: no match) when it does not hold."""
    if op in ("$in", "$nin"):
        operand = list(operand)
    if _json_path(field) is None or not all(_sql_scalar(v) for v in (operand if op in ("$in", "$nin") else [operand])):
        params += [field, json.dumps({op: operand}, ensure_ascii=False)]
        return f"{CONDITION_FUNCTION}(metadata, ?, ?)"
    kind, value = field_expressions(field)
    if op in _RANGE_SQL:
        params.append(operand)
        types = "= 'text'" if isinstance(operand, str) else "IN ('integer','real')"
        return f"({kind} {types} AND {value} {_RANGE_SQL[op]} ?)"
    values = [operand] if op in ("$eq", "$ne") else list(operand)
    alternatives = []
    for group, types in (([v for v in values if isinstance(v, str)], "= 'text'"),
                         ([v for v in values if v is not None and not isinstance(v, str)], f"IN {_NUMBER_TYPES}")):
        if group:
            params.extend(int(v) if isinstance(v, bool) else v for v in group)
            alternatives.append(f"({kind} {types} AND {value} IN ({','.join('?' * len(group))}))")
    if any(v is None for v in values):
        alternatives.append(f"({kind} = 'null')")
    positive = "(" + " OR ".join(alternatives) + ")" if alternatives else "0"
    return f"({positive} IS NOT 1)" if op in ("$ne", "$nin") else positive
