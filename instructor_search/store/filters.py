"""``where`` filters: a dict on document fields and metadata, compiled to parameterised SQL.

User values only ever reach SQLite as bound parameters; field names are checked against the
fields the index knows, so a filter can never run SQL of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def _filter_value(field: str, value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, int, float)):
        return int(value) if isinstance(value, bool) else value
    raise FilterError(f"Filter value for {field!r} must be a str, number, bool or None: {value!r}")


def where_sql(where: Mapping[str, Any], known: Mapping[str, str]) -> tuple[str, list[Any]]:
    """``where`` as an SQL condition on ``documents d``; user values only as bound parameters.

    ``{"type": "pdf"}`` equality, ``{"type": ["pdf", "md"]}`` IN, ``{"year": {">=": 2020}}``
    comparisons (``= != < <= > >=``; ``None`` means NULL), keys ANDed. Field names must be in
    ``known``; built-in fields are columns, others metadata keys read with ``json_extract``.
    On a list-valued metadata field (kind ``json``, e.g. ``tags``) a value or a list of values
    matches documents holding any of them.
    """
    if not isinstance(where, Mapping):
        raise FilterError(f"where must be a dict of field -> condition, got {where!r}")
    clauses: list[str] = []
    params: list[Any] = []
    for field, condition in where.items():
        if field not in known:
            raise FilterError(
                f"Unknown filter field {field!r}; known fields: {', '.join(sorted(known))}"
            )
        if field in BUILTIN_FIELDS:
            expr, expr_params = f'd."{BUILTIN_FIELDS[field][0]}"', []
        elif '"' in field:  # a JSON path cannot quote it: look the key up exactly
            expr, expr_params = (
                "(SELECT value FROM json_each(d.metadata) WHERE key = ?)",
                [field],
            )
        else:
            expr, expr_params = "json_extract(d.metadata, ?)", [f'$."{field}"']
        if known[field] == "json" and not isinstance(condition, Mapping):
            members = (
                condition if isinstance(condition, (list, tuple, set, frozenset)) else [condition]
            )
            values = [_filter_value(field, v) for v in members]
            clauses.append(
                f"EXISTS (SELECT 1 FROM json_each(d.metadata, ?) j WHERE j.value IN "
                f"({', '.join('?' * len(values))}))"
                if values
                else "0"
            )
            params += [f'$."{field}"', *values] if values else []
            continue
        if isinstance(condition, Mapping):
            if not condition:
                raise FilterError(f"Empty condition for {field!r}")
            comparisons = list(condition.items())
        elif isinstance(condition, (list, tuple, set, frozenset)):
            values = [_filter_value(field, v) for v in condition]
            clauses.append(f"{expr} IN ({', '.join('?' * len(values))})" if values else "0")
            params += expr_params + values if values else []
            continue
        else:
            comparisons = [("=", condition)]
        for op, value in comparisons:
            if op not in OPERATORS:
                raise FilterError(
                    f"Unknown operator {op!r} for {field!r}; valid operators: "
                    + ", ".join(OPERATORS)
                )
            value = _filter_value(field, value)
            if value is None and op in ("=", "!="):
                clauses.append(f"{expr} IS {'NOT ' if op == '!=' else ''}NULL")
                params += expr_params
            elif value is None:
                raise FilterError(f"{field!r} {op} None: only = and != compare with None")
            else:
                clauses.append(f"{expr} {op} ?")
                params += [*expr_params, value]
    return " AND ".join(clauses) or "1", params
