"""The write path of an index: documents with their chunks, embeddings and FTS5 rows upserted
or deleted, each call one transaction that bumps the generation. A document whose chunks spell
its text (:func:`~instructor_search.documents.spelled_text`) is stored without it."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import PurePosixPath
from typing import NamedTuple

import faiss
import numpy as np

from ..documents import Chunk, Document, spelled_text
from ..errors import IndexMismatchError, InputError
from ..gc_pause import gc_paused
from .connection import BUSY_TIMEOUT_MS, IndexBase, locked, utc_now
from .vectors import VectorIndexInfo

logger = logging.getLogger(__name__)

#: FTS5's settings while many rows are loaded (:meth:`IndexWrites.bulk_load`): a level's
#: segments merged 16 at a time, 16 MB of pending terms per segment; and FTS5's defaults.
BULK_KEYWORD_SETTINGS = {"automerge": 16, "hashsize": 16 << 20}
KEYWORD_SETTINGS = {"automerge": 4, "hashsize": 1 << 20}


def document_fields(doc: Document) -> tuple[float | None, int, str | None, str]:
    """(mtime, size, type, folder): from metadata when given, else from the id and text."""
    meta = doc.metadata
    mtime = meta.get("mtime")
    mtime = (
        float(mtime) if isinstance(mtime, (int, float)) and not isinstance(mtime, bool) else None
    )
    size = meta.get("size")
    if not isinstance(size, int):
        size = len(doc.text) if doc.text.isascii() else len(doc.text.encode("utf-8"))
    kind = meta.get("type") or _suffix(doc.source or doc.id).lstrip(".").lower()
    folder = meta.get("folder") or _parent(doc.id)
    return mtime, size, str(kind) if kind else None, "" if folder == "." else str(folder)


def _plain(path: str) -> bool:
    """Whether ``PurePosixPath`` would keep ``path`` as written (no empty or dot parts, no
    trailing slash): then its parent and suffix are string splits, 7x faster (the 100k
    documents of a 1M-chunk ingest spent 4 s making paths)."""
    return not ("//" in path or "/." in path or path.startswith(".") or path.endswith("/"))


def _suffix(path: str) -> str:
    """``PurePosixPath(path).suffix``."""
    if not _plain(path):
        return PurePosixPath(path).suffix
    name = path.rpartition("/")[2]
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def _parent(path: str) -> str:
    """``str(PurePosixPath(path).parent)``."""
    if not _plain(path):
        return str(PurePosixPath(path).parent)
    head, slash, _ = path.rpartition("/")
    return (head or "/") if slash else "."


class StoredDocument(NamedTuple):
    """What the index holds of a document besides its text: where it came from, its content
    hash, and the file's ``st_mtime`` and ``st_size`` when its reader recorded them."""

    source: str
    content_hash: str
    mtime: float | None
    size: int


class IndexWrites(IndexBase):
    """Upserts and deletes (part of :class:`~instructor_search.store.index.Index`)."""

    def _remove_chunks(self, doc_id: str, generation: int, logged: bool = True) -> None:
        # Logged with the values FTS5 indexed (readers' keyword deltas subtract them).
        if logged:
            self._db.execute(
                "INSERT INTO chunk_changes (generation, chunk_id, deleted, text, title) "
                "SELECT ?, c.id, 1, c.text, d.title FROM chunks c JOIN documents d "
                "ON d.id = c.doc_id WHERE c.doc_id = ?",
                [generation, doc_id],
            )
        self._remove_fields(doc_id)
        # A contentless FTS5 table deletes a row given the values it indexed.
        self._db.execute(
            "INSERT INTO chunks_fts (chunks_fts, rowid, text, title) SELECT 'delete', c.id, "
            "c.text, d.title FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.doc_id = ?",
            [doc_id],
        )
        self._db.execute("DELETE FROM chunks WHERE doc_id = ?", [doc_id])
        self._db.execute("DELETE FROM document_runs WHERE doc_id = ?", [doc_id])

    def _remove_fields(self, doc_id: str) -> None:
        self._db.execute(
            "UPDATE field_kinds SET documents = documents - 1 WHERE (key, type) IN "
            "(SELECT j.key, j.type FROM documents d, json_each(d.metadata) j WHERE d.id = ?)",
            [doc_id],
        )
        self._db.execute("DELETE FROM field_kinds WHERE documents <= 0")
        self._db.execute("DELETE FROM document_fields WHERE doc_id = ?", [doc_id])

    def _add_fields(self, metadata: Sequence[tuple[str, str]]) -> None:
        """Index the top-level metadata values (and list members) of stored documents, given
        as ``(doc_id, metadata JSON)``: three statements for all of them."""
        pairs = "[" + ",".join(f"[{json.dumps(doc_id)},{meta}]" for doc_id, meta in metadata) + "]"
        each = "json_each(?) d, json_each(d.value -> 1) j"
        self._db.execute(
            "INSERT INTO document_fields (doc_id, key, member, value) "
            f"SELECT d.value ->> 0, j.key, 0, j.value FROM {each}",
            [pairs],
        )
        self._db.execute(
            "INSERT INTO document_fields (doc_id, key, member, value) SELECT d.value ->> 0, "
            f"j.key, 1, m.value FROM {each}, json_each(j.value) m "
            "WHERE j.type IN ('array', 'object')",
            [pairs],
        )
        self._db.execute(
            "INSERT INTO field_kinds (key, type, documents) SELECT j.key, j.type, count(*) "
            f"FROM {each} GROUP BY j.key, j.type "
            "ON CONFLICT (key, type) DO UPDATE SET documents = documents + excluded.documents",
            [pairs],
        )

    def _log_wanted(self) -> bool:
        """Whether a derived file exists that the change log can bring forward (its generation
        at or after ``changes_since``). When none does, as in a fresh ingest, a write need not
        log its chunks: it moves ``changes_since`` up to its own generation instead, and a file
        written since from an older snapshot reads as older than the log (rebuilt)."""
        since = self._derived.changes_since()
        held = (self._derived.vectors_generation(), self._derived.keywords_generation())
        return any(g is not None and g >= since for g in held)

    def _next_generation(self) -> int:
        return int(self._db.execute("SELECT generation FROM collection").fetchone()[0]) + 1

    @locked
    def document_hashes(self) -> dict[str, str]:
        """``{doc_id: content_hash}`` of every stored document (what an incremental build diffs)."""
        return dict(self._db.execute("SELECT id, content_hash FROM documents").fetchall())

    @locked
    def document_catalog(self) -> dict[str, StoredDocument]:
        """Every stored document's source, content hash and file stamp, in one read: what an
        incremental build diffs its sources against."""
        rows = self._db.execute("SELECT id, source, content_hash, mtime, size FROM documents")
        make = StoredDocument._make  # tuple.__new__: no Python-level __new__ per document
        with gc_paused():
            return {row[0]: make(row[1:]) for row in rows}

    @locked
    def document_sources(self) -> dict[str, str]:
        """``{doc_id: source}`` of every stored document (what a build checks for deletions)."""
        return dict(self._db.execute("SELECT id, source FROM documents").fetchall())

    def _checked(self, doc: Document, chunks: Sequence[Chunk], emb: np.ndarray) -> np.ndarray:
        matrix = np.ascontiguousarray(emb, dtype=np.float32)
        dim = self.settings.dimension
        if matrix.size == 0 and not chunks:
            return matrix.reshape(0, dim)
        if matrix.ndim != 2 or matrix.shape[1] != dim:
            raise IndexMismatchError(
                f"Embeddings of {doc.id!r} have shape {matrix.shape}, but the index holds "
                f"{dim}-dimensional vectors of model {self.settings.model!r}; "
                "embed with that model or pass --rebuild to start over (re-embeds everything)"
            )
        if len(matrix) != len(chunks):
            raise InputError(f"{doc.id!r}: {len(chunks)} chunks but {len(matrix)} embeddings")
        if not np.isfinite(matrix).all():
            raise InputError(f"{doc.id!r}: embeddings contain NaN or infinity")
        return matrix

    @locked
    def upsert(self, batch: Sequence[tuple[Document, Sequence[Chunk], np.ndarray]]) -> np.ndarray:
        """Insert or replace documents with their chunks and embeddings, in one transaction
        (a document given twice is stored as given last, in its first place); the chunk ids
        given, in the order stored."""
        last = {doc.id: (doc, chunks, emb) for doc, chunks, emb in batch}
        items = [
            (doc, list(chunks), self._checked(doc, chunks, emb))
            for doc, chunks, emb in last.values()
        ]
        if not items:
            return np.empty(0, np.int64)
        now = utc_now()
        with self._write():
            generation = self._next_generation()
            chunk_id = self._last_chunk_id()
            logged = self._log_wanted()
            stored = self._stored_ids([doc.id for doc, _, _ in items])
            doc_rows, metadata, chunk_rows, fts_rows, runs = [], [], [], [], []
            for doc, chunks, matrix in items:
                if doc.id in stored:  # a new document has nothing to remove
                    self._remove_chunks(doc.id, generation, logged)
                mtime, size, kind, folder = document_fields(doc)
                meta = json.dumps(doc.metadata, ensure_ascii=False, sort_keys=True, default=str)
                in_chunks = bool(chunks) and spelled_text(chunks) == doc.text
                doc_rows.append((doc.id, doc.source, doc.title, "" if in_chunks else doc.text,
                                 meta, doc.content_hash, mtime, size, kind, folder, now,
                                 int(in_chunks)))  # fmt: skip
                metadata.append((doc.id, meta))
                if chunks:
                    runs.append((doc.id, chunk_id + 1, chunk_id + len(chunks), len(chunks)))
                for chunk, vector in zip(chunks, matrix, strict=True):
                    chunk_id += 1  # ids only grow: a document's chunks are one run of ids
                    chunk_rows.append((chunk_id, doc.id, chunk.ordinal, chunk.text, chunk.start,
                                       chunk.end, chunk.token_count, vector.tobytes()))  # fmt: skip
                    fts_rows.append((chunk_id, chunk.text, doc.title))
            conn = self._db.conn
            conn.executemany(
                "INSERT OR REPLACE INTO documents (id, source, title, text, metadata, "
                "content_hash, mtime, size, type, folder, indexed_at, text_in_chunks) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                doc_rows,
            )
            self._add_fields(metadata)
            conn.executemany(
                'INSERT INTO chunks (id, doc_id, ordinal, text, start, "end", token_count, '
                "embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                chunk_rows,
            )
            conn.executemany(
                "INSERT INTO chunks_fts (rowid, text, title) VALUES (?, ?, ?)", fts_rows
            )
            conn.executemany(
                "INSERT INTO document_runs (doc_id, first_chunk, last_chunk, chunks) "
                "VALUES (?, ?, ?, ?)",
                runs,
            )
            if logged:
                conn.executemany(
                    "INSERT INTO chunk_changes (generation, chunk_id, deleted) VALUES (?, ?, 0)",
                    [(generation, row[0]) for row in chunk_rows],
                )
            else:
                self._db.execute("UPDATE collection SET changes_since = ?", [generation])
            self._bump()
        return np.array([row[0] for row in chunk_rows], dtype=np.int64)

    @contextlib.contextmanager
    def bulk_load(self) -> Iterator[None]:
        """Many upserts inside, with FTS5 writing fewer, larger segments (each posting is
        rewritten less often as the index grows: 15.5 -> 9.6 s for FTS5 alone at 100k chunks,
        a fresh 1M-chunk ingest 345 -> 307 s); at the end its segments are merged into one and
        its settings set back, so that no merge of large segments falls due inside a later
        one-document update (2 s at 100k chunks otherwise)."""
        self._keyword_settings(BULK_KEYWORD_SETTINGS)
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # else the next writer sets them back
                self._keyword_settings(KEYWORD_SETTINGS)
            raise
        self._keyword_settings(KEYWORD_SETTINGS, optimize=True)

    @locked
    def settle_keyword_settings(self) -> None:
        """FTS5's own settings back where a bulk load was killed before its end (not while
        another writer holds the index: one later sets them back)."""
        held = dict(self._db.execute("SELECT k, v FROM chunks_fts_config").fetchall())
        if any(held.get(k, v) != v for k, v in KEYWORD_SETTINGS.items()):
            self._db.execute("PRAGMA busy_timeout = 0")  # an open never waits for this
            try:
                self._keyword_settings(KEYWORD_SETTINGS)
            except sqlite3.OperationalError as error:  # locked by a load still running
                logger.debug("FTS5's settings left to a later writer: %s", error)
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    @locked
    def _keyword_settings(self, settings: dict[str, int], optimize: bool = False) -> None:
        with self._write():
            if optimize:  # contents and generation unchanged
                self._db.execute("INSERT INTO chunks_fts (chunks_fts) VALUES ('optimize')")
            for key, value in settings.items():
                self._db.execute(
                    "INSERT INTO chunks_fts (chunks_fts, rank) VALUES (?, ?)", [key, value]
                )

    @locked
    def adopt_vector_index(
        self, generation: int, built: tuple[faiss.Index, VectorIndexInfo]
    ) -> bool:
        """Take ``built``, the ANN structure (and its info) of every chunk stored at
        ``generation`` made elsewhere (:mod:`.vector_prebuild`), as the rebuilt vectors that
        :meth:`sync_derived` writes; ``False`` (nothing taken) when the index is at another
        generation or holds another number of chunks."""
        with self._snapshot():
            chunks = int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])
            if self.generation != generation or chunks != built[0].ntotal:
                return False
            self._derived.adopt_vectors(generation, *built)
        return True

    def _stored_ids(self, doc_ids: list[str]) -> set[str]:
        """Which of ``doc_ids`` are stored."""
        rows = self._db.execute(
            "SELECT id FROM documents WHERE id IN (SELECT value FROM json_each(?))",
            [json.dumps(doc_ids)],
        )
        return {row[0] for row in rows}

    def _last_chunk_id(self) -> int:
        """The largest chunk id ever given (AUTOINCREMENT's record of it, or the table's)."""
        row = self._db.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'chunks'), 0), "
            "coalesce((SELECT max(id) FROM chunks), 0))"
        ).fetchone()
        return int(row[0])

    @locked
    def delete(self, doc_ids: Iterable[str]) -> int:
        """Remove documents (and their chunks) in one transaction; how many were removed."""
        ids = [doc_ids] if isinstance(doc_ids, str) else list(dict.fromkeys(doc_ids))
        removed = 0
        with self._write():
            generation = self._next_generation()
            for doc_id in ids:
                self._remove_chunks(doc_id, generation)
                removed += self._db.execute("DELETE FROM documents WHERE id = ?", [doc_id]).rowcount
            if removed:
                self._bump()
        return removed
