"""``where`` filters: a dict on document fields and metadata, checked against the fields an index
knows and compiled to parameterised SQL.

:func:`validate_where` is the one check: unknown fields, unknown operators, and values whose type
cannot match the field's kind (``{"size": {">=": "abc"}}``, ``{"title": {">=": 5}}``) are a
:class:`FilterError` that names the field, its kind and the value, never a silent 0 or all hits.
:func:`where_sql` runs it first, so every caller (Retriever, CLI, page, HTTP server) gets it; it
needs only :meth:`Index.fields`, no model. User values only ever reach SQLite as bound
parameters, and field names are checked, so a filter can never run SQL of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FilterError

OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
#: Filterable document columns: field name -> (column, kind). Metadata keys come on top.
BUILTIN_FIELDS = {
    "doc_id": ("id", "text"),
    "id": ("id", "text"),
    "title": ("title", "text"),
    "source": ("source", "text"),
    "type": ("type", "text"),
    "folder": ("folder", "text"),
    "mtime": ("mtime", "number"),
    "size": ("size", "number"),
    "indexed_at": ("indexed_at", "text"),
}
#: What a value of each field kind must be (kinds ``null`` and ``mixed`` take any scalar).
_EXPECTED = {"text": "text (a str)", "number": "a number", "bool": "true/false (or 1/0)"}
_LISTS = (list, tuple, set, frozenset)


@dataclass(frozen=True)
class Condition:
    """One checked condition: ``field op value``; ``op`` ``in`` takes a tuple of values, ``any``
    (on a list-valued field) matches documents whose list holds any of them."""

    field: str
    kind: str
    op: str
    value: Any


def _scalar(field: str, value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise FilterError(f"Filter value for {field!r} must be a str, number, bool or None: {value!r}")


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, (int, float)):
        return "a number"
    return "text"


def _typed(field: str, kind: str, value: Any, op: str) -> Any:
    """``value`` as SQLite compares it for a field of ``kind``; a FilterError when it cannot
    match that kind (text against numbers, numbers against text, anything but true/false or
    1/0 against booleans)."""
    value = _scalar(field, value)
    if value is None:
        if op in ("=", "!=", "in", "any"):
            return None
        raise FilterError(f"{field!r} {op} None: only = and != compare with None")
    if isinstance(value, float) and math.isnan(value):
        raise FilterError(f"Filter value for {field!r} is NaN, which matches nothing")
    fits = {
        "text": isinstance(value, str),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)),
    }.get(kind, True)
    if not fits:
        raise FilterError(
            f"Filter on {field!r}: it is a {kind} field, so {value!r} ({_describe(value)}) "
            f"cannot match it; give {_EXPECTED[kind]}"
        )
    if kind == "bool" and op not in ("=", "!=", "in", "any"):
        raise FilterError(
            f"Filter on {field!r}: it is a bool field; compare it with = or != only, not {op}"
        )
    return int(value) if isinstance(value, bool) else value


def _field_conditions(field: str, kind: str, condition: Any) -> list[Condition]:
    if kind == "json":  # a list-valued field (tags): a value or a list of values, any of them
        if isinstance(condition, Mapping):
            raise FilterError(
                f"Filter on {field!r}: it holds lists, so it takes a value or a list of values "
                f"(documents holding any of them), not operators: {dict(condition)!r}"
            )
        members = condition if isinstance(condition, _LISTS) else [condition]
        values = tuple(_typed(field, kind, v, "any") for v in members)
        return [Condition(field, kind, "any", values)]
    if isinstance(condition, _LISTS):
        values = tuple(_typed(field, kind, v, "in") for v in condition)
        return [Condition(field, kind, "in", values)]
    if not isinstance(condition, Mapping):
        return [Condition(field, kind, "=", _typed(field, kind, condition, "="))]
    if not condition:
        raise FilterError(f"Empty condition for {field!r}")
    checked = []
    for op, value in condition.items():
        if op not in OPERATORS:
            raise FilterError(
                f"Unknown operator {op!r} for {field!r}; valid operators: " + ", ".join(OPERATORS)
            )
        checked.append(Condition(field, kind, op, _typed(field, kind, value, op)))
    return checked


def validate_where(where: Mapping[str, Any], fields: Mapping[str, str]) -> list[Condition]:
    """Check ``where`` against ``fields`` (:meth:`Index.fields`: name -> kind) without touching
    the index; the checked conditions, or a :class:`FilterError` saying what cannot match."""
    if not isinstance(where, Mapping):
        raise FilterError(f"where must be a dict of field -> condition, got {where!r}")
    conditions: list[Condition] = []
    for field, condition in where.items():
        if field not in fields:
            raise FilterError(
                f"Unknown filter field {field!r}; known fields: {', '.join(sorted(fields))}"
            )
        conditions += _field_conditions(field, fields[field], condition)
    return conditions


def _metadata_clause(
    field: str, test: str, params: list[Any], member: int = 0, ids: str = "d.id"
) -> str:
    """Documents (their id: the column ``ids``) whose metadata ``field`` passes ``test`` (on
    ``value``), looked up in the ``document_fields`` index instead of each document's JSON."""
    params.insert(0, member)
    params.insert(0, field)
    lookup = f"SELECT doc_id FROM document_fields WHERE key = ? AND member = ? AND {test}"
    return f"{ids} IN ({lookup})"


def on_metadata_only(where: Mapping[str, Any]) -> bool:
    """Whether ``where`` names metadata fields only (then it needs no ``documents`` row)."""
    return not any(field in BUILTIN_FIELDS for field in where)


def where_sql(
    where: Mapping[str, Any], known: Mapping[str, str], ids: str = "d.id"
) -> tuple[str, list[Any]]:
    """``where`` as an SQL condition on ``documents d``; user values only as bound parameters.
    ``ids`` is the column of document ids the metadata conditions test (with
    :func:`on_metadata_only`, one of another table than ``documents``).

    ``{"type": "pdf"}`` equality, ``{"type": ["pdf", "md"]}`` IN, ``{"year": {">=": 2020}}``
    comparisons (``= != < <= > >=``; ``None`` means NULL: a missing key or a JSON null), keys
    ANDed. Field names must be in ``known``; built-in fields are (indexed) columns, metadata
    keys are looked up in the ``document_fields`` index, which holds each document's top-level
    values as ``json_extract`` gives them. On a list-valued metadata field (kind ``json``, e.g.
    ``tags``) a value or a list of values matches documents holding any of them. Checked by
    :func:`validate_where` first.
    """
    clauses: list[str] = []
    params: list[Any] = []
    for condition in validate_where(where, known):
        field, op, value = condition.field, condition.op, condition.value
        if op in ("any", "in") and not value:
            clauses.append("0")
            continue
        builtin = field in BUILTIN_FIELDS
        column = f'd."{BUILTIN_FIELDS[field][0]}"' if builtin else "value"
        if op in ("any", "in"):
            test, values = f"{column} IN ({', '.join('?' * len(value))})", list(value)
        elif value is None:
            test, values = f"{column} IS NOT NULL", []
        else:
            test, values = f"{column} {op} ?", [value]
        if builtin:
            if value is None:
                test = f"{column} IS {'NOT ' if op == '!=' else ''}NULL"
            clauses.append(test)
        elif value is None and op == "=":  # missing, or null: no non-null value stored
            clauses.append("NOT " + _metadata_clause(field, test, values, ids=ids))
        else:
            clauses.append(_metadata_clause(field, test, values, int(op == "any"), ids))
        params += values
    return " AND ".join(clauses) or "1", params
