"""The page's metadata filters: which fields to offer, their values, and the ``where`` they make.

Built from :meth:`Index.fields`: file type and folder always (when the index has more than one),
then record metadata that a person can pick from — a number with a few values (``year``) as a
range, text with a few values as a list, and arrays of labels (``tags``) as a list that matches
documents holding any of the chosen labels. Provenance that every file carries (path, line,
size, mtime) and fields with too many values to pick from are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from instructor_search.store.filters import BUILTIN_FIELDS
from instructor_search.store.index import Index

#: Metadata the readers record for every file or record: searchable by API, not worth a widget.
PROVENANCE = frozenset({"path", "line", "record", "mtime", "size", "title", "indexed_at"})
#: Built-in document columns offered as filters, with their labels.
COLUMN_FACETS = {"type": "File type", "folder": "Folder"}
#: A field with more distinct values than this gets no widget (ids, URLs, free text).
MAX_OPTIONS = 60
MULTISELECT, RANGE, MEMBERS = "multiselect", "range", "members"


@dataclass(frozen=True)
class Facet:
    """One filter widget: ``kind`` is multiselect (values), range (numbers) or members (labels
    in an array field); ``options`` are ``(value, document count)`` pairs, most common first
    (sorted by value for a range)."""

    field: str
    label: str
    kind: str
    options: tuple[tuple[Any, int], ...]

    @property
    def values(self) -> list[Any]:
        return [value for value, _ in self.options]

    @property
    def counts(self) -> dict[Any, int]:
        return dict(self.options)


def _label(field: str) -> str:
    return COLUMN_FACETS.get(field) or field.replace("_", " ").capitalize()


def facets(index: Index) -> list[Facet]:
    """The filters worth offering for ``index``, file type and folder first."""
    fields = index.fields()
    found = []
    for field in COLUMN_FACETS:
        rows = index.field_values(field, MAX_OPTIONS + 1)
        if 1 < len(rows) <= MAX_OPTIONS:
            found.append(Facet(field, _label(field), MULTISELECT, tuple(rows)))
    for field, kind in sorted(fields.items()):
        if field in BUILTIN_FIELDS or field in PROVENANCE or '"' in field:
            continue
        facet = _metadata_facet(index, field, kind)
        if facet is not None:
            found.append(facet)
    return found


def _metadata_facet(index: Index, field: str, kind: str) -> Facet | None:
    if kind not in ("number", "text", "bool", "json"):
        return None
    rows = index.field_values(field, MAX_OPTIONS + 1)
    if not 1 < len(rows) <= MAX_OPTIONS:
        return None
    if kind == "number":
        return Facet(field, _label(field), RANGE, tuple(sorted(rows)))
    return Facet(field, _label(field), MEMBERS if kind == "json" else MULTISELECT, tuple(rows))


def where_clause(
    index: Index, chosen: Mapping[str, Any], available: Sequence[Facet]
) -> dict[str, Any]:
    """The ``where`` of :meth:`Retriever.search` for the widgets' values (``chosen``: field ->
    list of values, or ``(low, high)`` for a range); untouched widgets add nothing."""
    where: dict[str, Any] = {}
    for facet in available:
        value = chosen.get(facet.field)
        if facet.kind == RANGE:
            if value is None:
                continue
            low, high = value
            values = facet.values
            if (low, high) != (min(values), max(values)):
                where[facet.field] = {">=": low, "<=": high}
        elif not value:
            continue
        else:  # a list of values; on a list field (members) it matches any of them
            where[facet.field] = list(value)
    return where
