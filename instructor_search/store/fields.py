"""Filters and fields of an index: the filterable fields and their kinds, their most common
values (the page's facets), and the chunk ids a ``where`` filter matches, remembered per
generation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import FilterError
from .connection import IndexBase, locked
from .filters import BUILTIN_FIELDS, on_metadata_only, where_sql

#: How many recent ``where`` filters keep their matching chunk ids in memory.
MATCHING_CACHE = 8
_JSON_KINDS = {"integer": "number", "real": "number", "text": "text", "true": "bool"}
_JSON_KINDS |= {"false": "bool", "null": "null", "array": "json", "object": "json"}


class IndexFields(IndexBase):
    """Fields and filters (part of :class:`~instructor_search.store.index.Index`)."""

    @locked
    def fields(self) -> dict[str, str]:
        """Filterable fields -> kind (text, number, bool, json, null or mixed): the built-in
        document fields plus every metadata key in the index (from ``field_kinds``, kept by
        the write path: no scan of the documents)."""
        generation = self.generation
        if self._fields is None or self._fields[0] != generation:
            kinds = {name: kind for name, (_, kind) in BUILTIN_FIELDS.items()}
            rows = self._db.execute("SELECT key, type FROM field_kinds ORDER BY key, type")
            for key, json_type in rows:
                if key in BUILTIN_FIELDS:
                    continue
                kind, old = _JSON_KINDS.get(json_type, "json"), kinds.get(key)
                kinds[key] = (
                    kind if old in (None, "null", kind) else old if kind == "null" else "mixed"
                )
            self._fields = (generation, kinds)
        return dict(self._fields[1])

    @locked
    def field_values(self, field: str, limit: int = 100) -> list[tuple[Any, int]]:
        """The most common values of a field with their document counts, most common first.

        For a list-valued metadata field (``tags``) the values are the list members. Fields
        with objects as values give ``[]``. An unknown field is a :class:`FilterError`.
        """
        kinds = self.fields()
        if field not in kinds:
            raise FilterError(f"Unknown field {field!r}; known fields: {', '.join(sorted(kinds))}")
        if field in BUILTIN_FIELDS:
            column = BUILTIN_FIELDS[field][0]
            sql = (
                f'SELECT "{column}" AS v, count(*) FROM documents WHERE v IS NOT NULL '
                "GROUP BY v ORDER BY count(*) DESC, v LIMIT ?"
            )
            return [tuple(row) for row in self._db.execute(sql, [limit]).fetchall()]
        path = f'$."{field}"'
        if kinds[field] == "json":
            sql = (
                "SELECT j.value, count(DISTINCT d.id) FROM documents d, json_each(d.metadata, ?) j "
                "WHERE json_type(d.metadata, ?) = 'array' AND j.type IN ('integer', 'real', 'text') "
                "GROUP BY j.value ORDER BY count(DISTINCT d.id) DESC, j.value LIMIT ?"
            )
        else:
            sql = (
                "SELECT json_extract(metadata, ?) AS v, count(*) FROM documents "
                "WHERE json_type(metadata, ?) IN ('integer', 'real', 'text', 'true', 'false') "
                "GROUP BY v ORDER BY count(*) DESC, v LIMIT ?"
            )
        return [tuple(row) for row in self._db.execute(sql, [path, path, limit]).fetchall()]

    def _filter_sql(self, where: Mapping[str, Any]) -> tuple[str, list[Any]]:
        return where_sql(where, self.fields())

    @locked
    def matching_chunk_ids(self, where: Mapping[str, Any]) -> np.ndarray:
        """Sorted int64 ids (read-only) of the chunks whose document matches ``where``.

        The last :data:`MATCHING_CACHE` filters are remembered per generation, so a filter
        repeated across queries (a page's facets, a RAG app's scope) costs one lookup.
        """
        with self._snapshot():
            key = (self.generation, repr(where))  # repr keeps 2021 and "2021" apart
            if key in self._matching:
                self._matching.move_to_end(key)
                return self._matching[key]
            condition, params = self._filter_sql(where)
            # The chunk-id runs (one small row per document in document_runs; never a scan of
            # chunks, whose rows carry embeddings) of the matching documents: found from the
            # document_fields index alone for metadata, else by filtering documents first
            if on_metadata_only(where):
                on_runs, _ = where_sql(where, self.fields(), ids="r.doc_id")
                runs_sql = f"FROM document_runs r WHERE {on_runs}"
            else:
                runs_sql = (
                    "FROM documents d CROSS JOIN document_runs r ON r.doc_id = d.id "
                    f"WHERE {condition}"
                )
            # as one string, not a row tuple per document: 10,000 matching documents made
            # 10,000 tuples, and the garbage collector passes that their making set off
            runs_text = self._db.execute(
                f"SELECT group_concat(r.first_chunk || ',' || r.last_chunk || ',' || r.chunks) "
                f"{runs_sql}",
                params,
            ).fetchone()[0]
            runs = np.fromstring(runs_text or "", dtype=np.int64, sep=",").reshape(-1, 3)
            if np.all(runs[:, 1] - runs[:, 0] + 1 == runs[:, 2]):
                ids = _expand(runs[np.argsort(runs[:, 0])])
            else:  # ids of a document that are not one run: read them one by one
                chunks = (
                    f"FROM documents d CROSS JOIN chunks c ON c.doc_id = d.id WHERE {condition}"
                )
                rows = self._db.execute(f"SELECT c.id {chunks} ORDER BY c.id", params).fetchall()
                ids = np.array([r[0] for r in rows], dtype=np.int64)
        ids.flags.writeable = False
        self._matching[key] = ids
        while len(self._matching) > MATCHING_CACHE:
            self._matching.popitem(last=False)
        return ids


def _expand(runs: np.ndarray) -> np.ndarray:
    """The ids of ``(first, last, count)`` runs, in order."""
    counts = runs[:, 2]
    starts = np.repeat(runs[:, 0] - np.cumsum(counts) + counts, counts)
    return starts + np.arange(int(counts.sum()), dtype=np.int64)
