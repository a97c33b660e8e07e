"""The read and search path of an index: statistics, documents, chunks and embeddings, dense
search over ``vectors.faiss`` and keyword search over ``keywords.bm25`` (or FTS5), and keeping
those derived files in step with SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..documents import Chunk, Document, spelled_text
from ..errors import IndexMismatchError, IndexStoreError, InputError
from . import keywords
from .collection import IndexStats
from .connection import TEXT_WEIGHT, TITLE_WEIGHT, locked
from .derived import INDEX_FILE, KEYWORDS_FILE, VECTORS_FILE, VectorBuilder
from .fields import IndexFields
from .vectors import VectorIndexInfo, build_vector_index


@dataclass(frozen=True)
class ChunkRecord:
    """One stored chunk with the fields of its document that a search hit shows."""

    chunk_id: int
    doc_id: str
    ordinal: int
    text: str
    start: int
    end: int
    title: str
    source: str
    metadata: dict[str, Any]


class IndexReads(IndexFields):
    """Reads and searches (part of :class:`~instructor_search.store.index.Index`)."""

    @locked
    def stats(self) -> IndexStats:
        """Counts, settings and provenance of the index."""
        with self._snapshot():
            row = self._collection()
            docs = self._db.execute("SELECT count(*) FROM documents").fetchone()[0]
            chunks = self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        files = (INDEX_FILE, f"{INDEX_FILE}-wal", VECTORS_FILE, KEYWORDS_FILE)
        size = sum((self.path / f).stat().st_size for f in files if (self.path / f).exists())
        keep = set(IndexStats.__annotations__) - {"documents", "chunks", "size_bytes", "path"}
        keep -= {"fields"}
        extra = {"size_bytes": size, "path": str(self.path), "fields": self.fields()}
        return IndexStats(documents=docs, chunks=chunks, **{k: row[k] for k in keep}, **extra)

    @locked
    def document(self, doc_id: str) -> Document | None:
        """The stored document with its full text, or ``None``."""
        with self._snapshot():
            row = self._db.execute(
                "SELECT id, text, title, source, metadata, text_in_chunks FROM documents "
                "WHERE id = ?",
                [doc_id],
            ).fetchone()
            if row is None:
                return None
            text = row[1]
            if row[5]:  # stored once, in its chunks
                chunks = self._db.execute(
                    'SELECT ordinal, text, start, "end", token_count FROM chunks '
                    "WHERE doc_id = ? ORDER BY ordinal",
                    [doc_id],
                )
                text = spelled_text([Chunk(*chunk) for chunk in chunks])
        return Document(
            id=row[0], text=text, title=row[2], source=row[3], metadata=json.loads(row[4])
        )

    @locked
    def chunks(self, chunk_ids: Sequence[int]) -> list[ChunkRecord]:
        """Chunks with their document's title, source and metadata, in the given order
        (unknown ids, such as ``-1`` padding, are skipped)."""
        wanted = [int(i) for i in chunk_ids]
        rows = self._db.execute(
            'SELECT c.id, c.doc_id, c.ordinal, c.text, c.start, c."end", d.title, d.source, '
            "d.metadata FROM chunks c JOIN documents d ON d.id = c.doc_id "
            "WHERE c.id IN (SELECT value FROM json_each(?))",
            [json.dumps(wanted)],
        ).fetchall()
        found = {r[0]: ChunkRecord(*r[:8], metadata=json.loads(r[8])) for r in rows}
        return [found[i] for i in wanted if i in found]

    @locked
    def chunk_places(self, chunk_ids: Sequence[int]) -> dict[int, tuple[str, int]]:
        """``{chunk_id: (doc_id, ordinal)}`` of the known ``chunk_ids``: what ordering and
        grouping hits needs, without reading texts or metadata."""
        rows = self._db.execute(
            "SELECT id, doc_id, ordinal FROM chunks WHERE id IN (SELECT value FROM json_each(?))",
            [json.dumps([int(i) for i in chunk_ids])],
        ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    @locked
    def embeddings(self, chunk_ids: Sequence[int]) -> np.ndarray:
        """float32 ``(n, dim)`` embeddings in the given order; InputError on unknown ids."""
        wanted = [int(i) for i in chunk_ids]
        found = dict(
            self._db.execute(
                "SELECT id, embedding FROM chunks WHERE id IN (SELECT value FROM json_each(?))",
                [json.dumps(wanted)],
            ).fetchall()
        )
        missing = [i for i in wanted if i not in found]
        if missing:
            raise InputError(f"Unknown chunk ids: {missing[:10]}")
        blob = b"".join(found[i] for i in wanted)
        return np.frombuffer(bytearray(blob), dtype=np.float32).reshape(
            len(wanted), self.settings.dimension
        )

    def chunk_rows(self, rows_per_part: int) -> Iterator[list[tuple[Any, ...]]]:
        """Every chunk as ``(doc_id, content_hash, title, source, metadata, ordinal, start,
        end, text, embedding bytes)`` in chunk id order (a document's chunks are consecutive,
        by ordinal), in parts of about ``rows_per_part`` rows that never split a document.
        Iterate it inside :meth:`snapshot`."""
        cursor = self._db.execute(
            "SELECT c.doc_id, d.content_hash, d.title, d.source, d.metadata, c.ordinal, "
            'c.start, c."end", c.text, c.embedding FROM chunks c JOIN documents d '
            "ON d.id = c.doc_id ORDER BY c.id"
        )
        part: list[tuple[Any, ...]] = []
        for row in cursor:
            if len(part) >= rows_per_part and row[0] != part[-1][0]:
                yield part
                part = []
            part.append(row)
        if part:
            yield part

    def _persist(self, merge: bool = False) -> None:
        """Writer side, outside a snapshot: write a rebuilt ``vectors.faiss`` (or, with
        ``merge``, one whose delta is due) and record its index type and recall (a read-only
        Index keeps its rebuild in memory)."""
        if self.readonly or self._db.conn.in_transaction:
            return
        self._derived.sync_vectors(self._record_vector_index, merge)

    def _record_vector_index(self, info: VectorIndexInfo) -> None:
        with self._write():
            self._db.execute(
                "UPDATE collection SET index_type = ?, recall_at_10 = ? WHERE id = 1",
                [info.index_type, info.recall_at_10],
            )

    @locked
    def search_vectors(
        self, queries: np.ndarray, k: int, where: Mapping[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, chunk ids) per query row like FAISS (padding: ``-inf`` / ``-1``).

        ``where`` restricts the candidates *before* the ANN search, so ``k`` hits come back
        whenever ``k`` chunks match.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive int, got {k!r}")
        matrix = np.ascontiguousarray(queries, dtype=np.float32)
        matrix = matrix.reshape(1, -1) if matrix.ndim == 1 else matrix
        if matrix.ndim != 2 or matrix.shape[1] != self.settings.dimension:
            raise IndexMismatchError(
                f"Query vectors have shape {np.shape(queries)}, but the index holds "
                f"{self.settings.dimension}-dimensional vectors of model {self.settings.model!r}"
            )
        with self._snapshot():
            vectors = self._derived.vectors(self.generation)
            allowed = self.matching_chunk_ids(where) if where else None
        self._persist()
        return vectors.search(matrix, int(k), allowed)

    @locked
    def keyword_postings(self, query: str) -> int:
        """The postings ``keywords.bm25`` holds for ``query``'s words: about what its keyword
        search will add up (0 when the matrix cannot answer)."""
        with self._snapshot():
            matrix = self._derived.keywords(self.generation)
        return matrix.postings(keywords.query_words(query)) if matrix else 0

    @locked
    def keyword_search(
        self, query: str, k: int, where: Mapping[str, Any] | None = None, *, ties: bool = False
    ) -> list[tuple[int, float]]:
        """BM25 keyword search: ``(chunk_id, score)`` best first, score = ``-bm25()``; with
        ``ties``, then every other chunk scored as the k-th (the list may be longer than k).

        Any string is safe: its words are quoted FTS5 strings joined by OR, so FTS5 and SQL
        syntax in it is searched as text. The keyword matrix answers when ``keywords.bm25``
        is current, with the same scores (ties by chunk id); FTS5 answers otherwise.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive int, got {k!r}")
        words = keywords.query_words(query)
        if not words:
            return []
        with self._snapshot():
            matrix = self._derived.keywords(self.generation)
            allowed = self.matching_chunk_ids(where) if where and matrix else None
            found = matrix.search(words, int(k), allowed, ties) if matrix else None
            if found is not None:
                return found
            fetch = int(k) + 1 if ties else int(k)
            while True:
                found = self._fts5_search(words, fetch, where)
                if not ties or len(found) <= k:
                    return found
                kth = found[k - 1][1]
                if len(found) < fetch or found[-1][1] != kth:  # the group tied with the k-th ends
                    return found[:k] + [hit for hit in found[k:] if hit[1] == kth]
                fetch *= 4

    def _fts5_search(
        self, words: list[str], k: int, where: Mapping[str, Any] | None
    ) -> list[tuple[int, float]]:
        """FTS5's own answer to :meth:`keyword_search` (the truth the keyword matrix matches)."""
        bm25 = f"bm25(chunks_fts, {TEXT_WEIGHT}, {TITLE_WEIGHT})"
        sql = f"SELECT rowid, -{bm25} FROM chunks_fts WHERE chunks_fts MATCH ?"
        params: list[Any] = [keywords.match_expression(words)]
        if where:
            condition, filter_params = self._filter_sql(where)
            # "+rowid": filter FTS5's matches; a plain rowid IN would run MATCH once per id
            sql += (
                " AND +rowid IN (SELECT c.id FROM documents d CROSS JOIN chunks c "
                f"ON c.doc_id = d.id WHERE {condition})"
            )
            params += filter_params
        rows = self._db.execute(f"{sql} ORDER BY {bm25} LIMIT ?", [*params, k]).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows]

    @locked
    def sync_derived(self) -> None:
        """Bring the derived files, ``vectors.faiss`` and ``keywords.bm25``, up to the current
        generation where they need it (a build calls this at its end): a rebuilt or missing
        file is written, a delta grown past the merge threshold is folded in, a small delta is
        left to the change log (readers apply it); then the log is pruned up to what both files
        hold. A file that is, by its stat, the one a writer last recorded is not loaded unless
        its delta is due for a merge: this costs what changed, not the size of the index."""
        if self.readonly:
            raise IndexStoreError(f"{self.path} was opened read-only")
        with self._snapshot():
            self._derived.prepare_vectors(self.generation)
        self._persist(merge=True)
        with self._snapshot():
            matrix = self._derived.build_keywords(self.generation)
        if matrix is not None:
            self._derived.save_keywords(matrix)
        self._record_checked_files()
        self._prune_changes()

    def _record_checked_files(self) -> None:
        """Record in ``derived_files`` the derived files this process wrote or checked whole,
        so the next writer can trust them by their stat."""
        rows = self._derived.checked_files()
        if rows:
            with self._write():
                self._db.conn.executemany(
                    "INSERT OR REPLACE INTO derived_files VALUES (?, ?, ?, ?, ?)", rows
                )

    def use_vector_builder(self, builder: VectorBuilder | None) -> None:
        """Build ``vectors.faiss`` with ``builder`` from now on (``None``: the default,
        :func:`~.vectors.build_vector_index`), e.g. one that fills IVF lists in parallel."""
        self._derived.build_vectors = builder or build_vector_index

    def _prune_changes(self) -> None:
        """Forget the changes both derived files hold (each file's generation, or older)."""
        held = [self._derived.vectors_generation(), self._derived.keywords_generation()]
        if None in held:
            return
        floor = min(held)
        with self._write():
            if floor > self._derived.changes_since():
                self._db.execute("DELETE FROM chunk_changes WHERE generation <= ?", [floor])
                self._db.execute("UPDATE collection SET changes_since = ?", [floor])
