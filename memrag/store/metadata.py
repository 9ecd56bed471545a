"""Chunk metadata: what may be stored (JSON values) and metadata filters compiled to SQL.

Metadata is a JSON object stored as text in SQLite. Keys are strings; values are JSON
values: ``str``, ``int``, ``float`` (finite), ``bool``, ``None`` and lists / dicts of these.
Anything else (bytes, dates, NumPy scalars, sets, objects) is refused with an error that
names the field, because it would not round-trip.

Filters are dicts over top-level keys, MongoDB-style (answered from an index of the
top-level values, see :func:`index_rows`)::

    {"lang": "en"}                            # equality
    {"year": {"$gte": 2000, "$lt": 2010}}      # $eq $ne $gt $gte $lt $lte
    {"source_id": {"$in": ["a", "b"]}}         # $in $nin (lists of any length)
    {"title": {"$exists": True}}
    {"$or": [{"lang": "en"}, {"lang": "fr"}]}  # $and / $or of sub-filters

``$ne`` and ``$nin`` also match chunks that lack the key. Comparison values must be
scalars (str, int, float, bool, None); ``True`` does not equal ``1``; numbers compare with
numbers and strings with strings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

#: Keys memrag itself puts into the metadata of chunks cut from a document.
RESERVED_KEYS = ("source_id", "chunk_index", "char_start", "char_end")

_COMPARISONS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
#: Every operator a filter may use (names are case-sensitive).
OPERATORS = (*_COMPARISONS, "$in", "$nin", "$exists")
#: Operators that combine sub-filters at the top level of a filter.
LOGICAL = ("$and", "$or")
_SCALARS = (str, int, float, bool, type(None))


class MetadataError(ValueError):
    """Metadata that cannot be stored (not a JSON object, or a value that is not JSON)."""


def _json_problem(value: Any, where: str) -> str | None:
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return None
    if isinstance(value, float):
        return (
            None if math.isfinite(value) else f"{where} is {value!r}, which JSON cannot represent"
        )
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _json_problem(item, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has a non-string key {key!r}"
            problem = _json_problem(item, f"{where}[{key!r}]")
            if problem:
                return problem
        return None
    return (
        f"{where} has type {type(value).__name__}; metadata values must be JSON "
        "(str, int, float, bool, None, list, dict)"
    )


def check_metadata(metadata: Any, *, reserved_ok: bool = True) -> dict[str, Any]:
    """Validates metadata and returns a plain ``dict`` copy (tuples become lists).

    Args:
        metadata: The metadata (``None`` is an empty dict).
        reserved_ok: When False, keys in :data:`RESERVED_KEYS` are refused.

    Raises:
        MetadataError: naming the offending field.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise MetadataError(f"metadata must be a JSON object (dict), got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise MetadataError(f"metadata key {key!r} is not a string")
        if not reserved_ok and key in RESERVED_KEYS:
            raise MetadataError(
                f"metadata key {key!r} is reserved by memrag (reserved: {', '.join(RESERVED_KEYS)})"
            )
        problem = _json_problem(value, f"metadata field {key!r}")
        if problem:
            raise MetadataError(problem)
    return json.loads(json.dumps(dict(metadata)))


def dumps(metadata: dict[str, Any]) -> str:
    """Canonical JSON text of validated metadata (sorted keys)."""
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False, allow_nan=False)


def value_type(value: Any) -> str:
    """The type a metadata value is indexed under: text, number, true, false, null or json."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    return "json"


def index_rows(metadata: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """``(key, type, value)`` rows indexing a chunk's top-level metadata for filters.

    Scalars are indexed by value; lists and objects only by their presence (``json``).
    """
    rows = []
    for key, value in metadata.items():
        kind = value_type(value)
        rows.append((key, kind, value if kind in ("text", "number") else None))
    return rows


def _key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"filter keys must be non-empty strings, got {key!r}")
    return key


def _scalar(value: Any, key: str, op: str) -> Any:
    if not isinstance(value, _SCALARS) or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(
            f"filter {key!r} {op}: values must be str, int, float, bool or None, got {value!r}"
        )
    return value


def _match(key: str, where: str, params: list[Any], extra: list[Any]) -> str:
    """``vid IN`` the chunks whose indexed ``key`` satisfies ``where``."""
    params.append(_key(key))
    params.extend(extra)
    return f"vid IN (SELECT vid FROM chunk_meta WHERE key = ? AND {where})"


def _equals(key: str, value: Any, params: list[Any]) -> str:
    value = _scalar(value, key, "$eq")
    kind = value_type(value)
    if kind in ("text", "number"):
        return _match(key, "type = ? AND value = ?", params, [kind, value])
    return _match(key, "type = ?", params, [kind])


def _condition(key: str, condition: Any, params: list[Any]) -> str:
    if (
        not isinstance(condition, Mapping)
        or not condition
        or not all(str(op).startswith("$") for op in condition)
    ):
        return _equals(key, condition, params)
    clauses: list[str] = []
    for op, value in condition.items():
        if op == "$eq":
            clauses.append(_equals(key, value, params))
        elif op == "$ne":
            clauses.append(f"NOT ({_equals(key, value, params)})")
        elif op in _COMPARISONS:
            value = _scalar(value, key, op)
            if value is None or isinstance(value, bool):
                raise ValueError(f"filter {key!r} {op}: cannot order by {value!r}")
            where = f"type = ? AND value {_COMPARISONS[op]} ?"
            clauses.append(_match(key, where, params, [value_type(value), value]))
        elif op in ("$in", "$nin"):
            if not isinstance(value, (list, tuple, set)):
                raise ValueError(
                    f"filter {key!r} {op}: expected a list, got {type(value).__name__}"
                )
            either = _one_of(key, op, list(value), params)
            clauses.append(either if op == "$in" else f"NOT ({either})")
        elif op == "$exists":
            present = _match(key, "1", params, [])
            clauses.append(present if value else f"NOT ({present})")
        else:
            raise ValueError(
                f"unknown filter operator {op!r} for {key!r}; operators are "
                f"{', '.join(OPERATORS)} (case-sensitive)"
            )
    return "(" + " AND ".join(clauses) + ")"


def _one_of(key: str, op: str, values: list[Any], params: list[Any]) -> str:
    """Chunks whose ``key`` equals one of ``values``, in one lookup whatever their number
    (the values travel as one JSON array per type, not one SQL parameter each)."""
    by_type: dict[str, list[Any]] = {}
    for item in values:
        item = _scalar(item, key, op)
        by_type.setdefault(value_type(item), []).append(item)
    conditions, extra = [], []
    for kind in ("text", "number"):
        if kind in by_type:
            conditions.append("(type = ? AND value IN (SELECT value FROM json_each(?)))")
            extra += [kind, json.dumps(by_type[kind])]
    flags = sorted(set(by_type) - {"text", "number"})
    if flags:
        conditions.append(f"type IN ({', '.join('?' * len(flags))})")
        extra += flags
    if not conditions:
        return "0"
    return _match(key, "(" + " OR ".join(conditions) + ")", params, extra)


def compile_filter(filter: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """Turns a metadata filter into a SQL condition on ``chunks.vid``.

    Each condition looks up the ``chunk_meta`` table (top-level metadata indexed by key,
    type and value), so a selective filter costs an index lookup, not a scan of every
    chunk's JSON.

    Returns:
        ``(sql, params)`` to use as ``WHERE sql``.

    Raises:
        ValueError: an unknown operator, a bad key, or a non-scalar comparison value.
    """
    if not isinstance(filter, Mapping):
        raise ValueError(f"a filter must be a dict, got {type(filter).__name__}")
    params: list[Any] = []
    clauses: list[str] = []
    for key, condition in filter.items():
        if isinstance(key, str) and key.startswith("$") and key not in LOGICAL:
            raise ValueError(
                f"unknown filter operator {key!r} at the top level; a filter's keys are metadata "
                f"keys or {' / '.join(LOGICAL)} (operators are case-sensitive)"
            )
        if key in LOGICAL:
            if not isinstance(condition, (list, tuple)) or not condition:
                raise ValueError(f"filter {key} needs a non-empty list of filters")
            parts = []
            for sub in condition:
                sql, sub_params = compile_filter(sub)
                parts.append(sql)
                params.extend(sub_params)
            clauses.append("(" + f" {key[1:].upper()} ".join(parts) + ")")
        else:
            clauses.append(_condition(key, condition, params))
    return ("(" + " AND ".join(clauses) + ")" if clauses else "1"), params
