"""The index on disk: one folder holding ``index.sqlite`` (the truth), ``vectors.faiss`` and
``keywords.bm25``.

:class:`Index` owns the schema (see :mod:`instructor_search.store.migrations`); callers never write
SQL against it. ``index.sqlite`` holds collection settings, documents, chunks with their
float32 embeddings and an FTS5 keyword index. ``vectors.faiss`` and ``keywords.bm25`` are
derived from it (:mod:`instructor_search.store.derived`: rebuilt, or answered by FTS5, whenever
missing, stale or unreadable). Every committed change bumps ``collection.generation``; a search
reads the generation, the vectors and the filter in one SQLite read snapshot, so readers in
other processes never see a half-written state.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import wraps
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import numpy as np
import sqlite_utils

from ..documents import Chunk, Document
from ..errors import (
    FilterError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexStoreError,
    InputError,
)
from . import keywords
from .derived import INDEX_FILE, KEYWORDS_FILE, VECTORS_FILE, DerivedFiles
from .filters import BUILTIN_FIELDS, where_sql
from .migrations import SCHEMA_VERSION, migrate, pending_migrations
from .vectors import VectorIndexInfo

BUSY_TIMEOUT_MS = 30_000
#: How many recent ``where`` filters keep their matching chunk ids in memory.
MATCHING_CACHE = 8
#: FTS5 column weights for bm25(): chunk text, document title.
TEXT_WEIGHT, TITLE_WEIGHT = 1.0, 0.5
_JSON_KINDS = {"integer": "number", "real": "number", "text": "text", "true": "bool"}
_JSON_KINDS |= {"false": "bool", "null": "null", "array": "json", "object": "json"}
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CollectionSettings:
    """How an index was built; an index is only searched or extended with the same ones."""

    model: str
    model_fingerprint: str
    dimension: int
    document_instruction: str
    query_instruction: str
    chunk_tokens: int
    chunk_overlap: int


@dataclass(frozen=True)
class IndexStats:
    """What ``instructor-index info`` shows."""

    documents: int
    chunks: int
    model: str
    model_fingerprint: str
    dimension: int
    document_instruction: str
    query_instruction: str
    chunk_tokens: int
    chunk_overlap: int
    index_type: str
    recall_at_10: float | None
    schema_version: int
    size_bytes: int
    built_at: str | None
    generation: int
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _locked(method: _F) -> _F:
    @wraps(method)
    def wrapper(self: Index, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _derived(doc: Document) -> tuple[float | None, int, str | None, str]:
    """(mtime, size, type, folder): from metadata when given, else from the id and text."""
    meta = doc.metadata
    mtime = meta.get("mtime")
    mtime = (
        float(mtime) if isinstance(mtime, (int, float)) and not isinstance(mtime, bool) else None
    )
    size = meta.get("size")
    size = size if isinstance(size, int) else len(doc.text.encode("utf-8"))
    kind = meta.get("type") or PurePosixPath(doc.source or doc.id).suffix.lstrip(".").lower()
    folder = meta.get("folder") or str(PurePosixPath(doc.id).parent)
    return mtime, size, str(kind) if kind else None, "" if folder == "." else str(folder)


def _connect(file: Path) -> sqlite_utils.Database:
    conn = sqlite3.connect(str(file), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    db = sqlite_utils.Database(conn, execute_plugins=False)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # fails on a non-database
    return db


def _writer_pragmas(db: sqlite_utils.Database) -> None:
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")


class Index:
    """An index folder. Use :meth:`create` or :meth:`open`; a context manager closes it."""

    def __init__(self, path: Path, db: sqlite_utils.Database, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self._db = db
        self._lock = threading.RLock()
        self._fields: tuple[int, dict[str, str]] | None = None
        # (generation, repr(where)) -> the matching chunk ids, for the last few filters
        self._matching: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        row = self._collection()
        self.settings = CollectionSettings(
            **{k: row[k] for k in CollectionSettings.__annotations__}
        )
        weights = {"text": TEXT_WEIGHT, "title": TITLE_WEIGHT}
        self._derived = DerivedFiles(path, db, self.settings.dimension, weights)

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls, path: str | Path, settings: CollectionSettings, *, overwrite: bool = False
    ) -> Index:
        """Make the folder and an empty index in it; an existing index is replaced only with
        ``overwrite`` (both files go, with SQLite's -wal/-shm)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise IndexStoreError(f"{path} is a file, not an index folder")
        if (path / INDEX_FILE).exists() and not overwrite:
            raise IndexStoreError(
                f"An index already exists at {path}; pass --rebuild (overwrite=True) to replace it"
            )
        if not isinstance(settings.dimension, int) or settings.dimension < 1:
            raise InputError(f"dimension must be a positive int, got {settings.dimension!r}")
        path.mkdir(parents=True, exist_ok=True)
        for name in (
            INDEX_FILE,
            f"{INDEX_FILE}-wal",
            f"{INDEX_FILE}-shm",
            VECTORS_FILE,
            KEYWORDS_FILE,
        ):
            (path / name).unlink(missing_ok=True)
        db = _connect(path / INDEX_FILE)
        _writer_pragmas(db)
        migrate(db)
        row = asdict(settings) | {"id": 1, "schema_version": SCHEMA_VERSION, "generation": 0}
        row |= {"created_at": _now(), "settings_json": "{}", "index_type": "flat"}
        row["recall_at_10"] = 1.0
        with db.atomic():
            db["collection"].insert(row)
        return cls(path, db, readonly=False)

    @classmethod
    def open(cls, path: str | Path, *, readonly: bool = False) -> Index:
        """Open an existing index; a read-only one (a searcher) never writes to the folder."""
        path = Path(path)
        file = path / INDEX_FILE
        if not file.is_file():
            raise IndexNotFoundError(
                f"No index at {path} (no {INDEX_FILE}). "
                f"Build one with: instructor-index build SOURCE --index {path}"
            )
        db = None
        try:
            db = _connect(file)
            tables = set(db.table_names())
            if not {"_migrations", "collection"} <= tables:
                raise IndexCorruptError(
                    f"{file} is an SQLite database but not an instructor-search index "
                    "(no collection table); point --index at an index folder"
                )
            pending = pending_migrations(db)  # IndexCorruptError when written by newer software
            if pending and readonly:
                raise IndexStoreError(
                    f"{file} has an older schema; open it once for writing (e.g. run "
                    f"instructor-index build SOURCE --index {path}) to upgrade it"
                )
            if readonly:
                db.execute("PRAGMA query_only = ON")
            else:
                _writer_pragmas(db)
                if migrate(db):
                    db.execute("UPDATE collection SET schema_version = ?", [SCHEMA_VERSION])
            return cls(path, db, readonly)
        except BaseException as exc:
            if db is not None:
                db.close()
            if isinstance(exc, sqlite3.OperationalError):  # locked, permissions, disk I/O
                raise IndexStoreError(f"Could not open {file}: {exc}") from exc
            if isinstance(exc, sqlite3.DatabaseError):  # not a database, malformed
                raise IndexCorruptError(f"{file} is not a readable index database ({exc})") from exc
            raise

    # -- plumbing ----------------------------------------------------------------------------

    def _collection(self) -> dict[str, Any]:
        cursor = self._db.execute("SELECT * FROM collection WHERE id = 1")
        row = cursor.fetchone()
        if row is None:
            raise IndexCorruptError(f"{self.path / INDEX_FILE} has no collection row")
        return dict(zip([c[0] for c in cursor.description], row, strict=True))

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Hold one read view across calls, e.g. ``search_vectors`` then ``chunks``, so a
        writer committing in between cannot make the second call disagree with the first."""
        with self._lock:
            with self._snapshot():
                yield
            self._persist()

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """One consistent read view of the database (nested calls share the outer one)."""
        if self._db.conn.in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            if self._db.conn.in_transaction:
                self._db.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``: waits up to busy_timeout for the lock)."""
        if self.readonly:
            raise IndexStoreError(f"{self.path} was opened read-only")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.conn.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _bump(self) -> None:
        self._db.execute(
            "UPDATE collection SET generation = generation + 1, built_at = ? WHERE id = 1", [_now()]
        )

    def _remove_chunks(self, doc_id: str) -> None:
        # A contentless FTS5 table deletes a row given the values it indexed.
        self._db.execute(
            "INSERT INTO chunks_fts (chunks_fts, rowid, text, title) SELECT 'delete', c.id, "
            "c.text, d.title FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.doc_id = ?",
            [doc_id],
        )
        self._db.execute("DELETE FROM chunks WHERE doc_id = ?", [doc_id])

    # -- settings and writes -----------------------------------------------------------------

    @property
    @_locked
    def generation(self) -> int:
        """Bumped by every committed change."""
        return int(self._db.execute("SELECT generation FROM collection WHERE id = 1").fetchone()[0])

    def check_compatible(self, settings: CollectionSettings) -> None:
        """:class:`IndexMismatchError` unless ``settings`` match what the index was built with."""
        held = self.settings
        names = ("model_fingerprint", "dimension", "document_instruction", "query_instruction")
        names += ("chunk_tokens", "chunk_overlap")
        diffs = [
            f"{name}: index has {getattr(held, name)!r}, asked for {getattr(settings, name)!r}"
            for name in names
            if getattr(held, name) != getattr(settings, name)
        ]
        if diffs:
            raise IndexMismatchError(
                f"The index at {self.path} was built with model {held.model!r} and other settings "
                f"than asked (asked for model {settings.model!r}):\n  "
                + "\n  ".join(diffs)
                + f"\nUse model {held.model!r} with its settings, or pass --rebuild to start over "
                "(re-embeds everything)."
            )

    @_locked
    def document_hashes(self) -> dict[str, str]:
        """``{doc_id: content_hash}`` of every stored document (what an incremental build diffs)."""
        return dict(self._db.execute("SELECT id, content_hash FROM documents").fetchall())

    @_locked
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

    @_locked
    def upsert(self, batch: Sequence[tuple[Document, Sequence[Chunk], np.ndarray]]) -> None:
        """Insert or replace documents with their chunks and embeddings, in one transaction."""
        items = [(doc, list(chunks), self._checked(doc, chunks, emb)) for doc, chunks, emb in batch]
        if not items:
            return
        now = _now()
        with self._write():
            for doc, chunks, matrix in items:
                self._remove_chunks(doc.id)
                mtime, size, kind, folder = _derived(doc)
                meta = json.dumps(doc.metadata, ensure_ascii=False, sort_keys=True, default=str)
                self._db["documents"].insert(
                    {"id": doc.id, "source": doc.source, "title": doc.title, "text": doc.text}
                    | {"metadata": meta, "content_hash": doc.content_hash, "mtime": mtime}
                    | {"size": size, "type": kind, "folder": folder, "indexed_at": now},
                    replace=True,
                )
                self._db["chunks"].insert_all(
                    {"doc_id": doc.id, "ordinal": c.ordinal, "text": c.text, "start": c.start}
                    | {"end": c.end, "token_count": c.token_count, "embedding": v.tobytes()}
                    for c, v in zip(chunks, matrix, strict=True)
                )
                self._db.execute(
                    "INSERT INTO chunks_fts (rowid, text, title) "
                    "SELECT id, text, ? FROM chunks WHERE doc_id = ?",
                    [doc.title, doc.id],
                )
            self._bump()

    @_locked
    def delete(self, doc_ids: Iterable[str]) -> int:
        """Remove documents (and their chunks) in one transaction; how many were removed."""
        ids = [doc_ids] if isinstance(doc_ids, str) else list(dict.fromkeys(doc_ids))
        removed = 0
        with self._write():
            for doc_id in ids:
                self._remove_chunks(doc_id)
                removed += self._db.execute("DELETE FROM documents WHERE id = ?", [doc_id]).rowcount
            if removed:
                self._bump()
        return removed

    # -- reads -------------------------------------------------------------------------------

    @_locked
    def stats(self) -> IndexStats:
        """Counts, settings and provenance of the index."""
        with self._snapshot():
            row = self._collection()
            docs = self._db.execute("SELECT count(*) FROM documents").fetchone()[0]
            chunks = self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        files = (INDEX_FILE, f"{INDEX_FILE}-wal", VECTORS_FILE, KEYWORDS_FILE)
        size = sum((self.path / f).stat().st_size for f in files if (self.path / f).exists())
        keep = set(IndexStats.__annotations__) - {"documents", "chunks", "size_bytes", "path"}
        extra = {"size_bytes": size, "path": str(self.path)}
        return IndexStats(documents=docs, chunks=chunks, **{k: row[k] for k in keep}, **extra)

    @_locked
    def document(self, doc_id: str) -> Document | None:
        """The stored document with its full text, or ``None``."""
        row = self._db.execute(
            "SELECT id, text, title, source, metadata FROM documents WHERE id = ?", [doc_id]
        ).fetchone()
        if row is None:
            return None
        return Document(
            id=row[0], text=row[1], title=row[2], source=row[3], metadata=json.loads(row[4])
        )

    @_locked
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

    @_locked
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

    # -- filters -----------------------------------------------------------------------------

    @_locked
    def fields(self) -> dict[str, str]:
        """Filterable fields -> kind (text, number, bool, json, null or mixed): the built-in
        document fields plus every metadata key in the index."""
        generation = self.generation
        if self._fields is None or self._fields[0] != generation:
            kinds = {name: kind for name, (_, kind) in BUILTIN_FIELDS.items()}
            rows = self._db.execute(
                "SELECT DISTINCT j.key, j.type FROM documents, json_each(documents.metadata) j"
            )
            for key, json_type in rows:
                if key in BUILTIN_FIELDS:
                    continue
                kind, old = _JSON_KINDS.get(json_type, "json"), kinds.get(key)
                kinds[key] = (
                    kind if old in (None, "null", kind) else old if kind == "null" else "mixed"
                )
            self._fields = (generation, kinds)
        return dict(self._fields[1])

    @_locked
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

    @_locked
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
            rows = self._db.execute(
                # CROSS JOIN: filter documents first, then chunk ids from the doc_id index
                # (never scan chunks, whose rows carry the embeddings)
                "SELECT c.id FROM documents d CROSS JOIN chunks c ON c.doc_id = d.id "
                f"WHERE {condition} ORDER BY c.id",
                params,
            ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        ids.flags.writeable = False
        self._matching[key] = ids
        while len(self._matching) > MATCHING_CACHE:
            self._matching.popitem(last=False)
        return ids

    # -- search ------------------------------------------------------------------------------

    def _persist(self, force: bool = False) -> None:
        """Writer side, outside a snapshot: write a rebuilt ``vectors.faiss`` and record its
        index type and recall (a read-only Index keeps its rebuild in memory)."""
        if self.readonly or self._db.conn.in_transaction:
            return
        self._derived.save_vectors(self._record_vector_index, force)

    def _record_vector_index(self, info: VectorIndexInfo) -> None:
        with self._write():
            self._db.execute(
                "UPDATE collection SET index_type = ?, recall_at_10 = ? WHERE id = 1",
                [info.index_type, info.recall_at_10],
            )

    @_locked
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

    @_locked
    def keyword_search(
        self, query: str, k: int, where: Mapping[str, Any] | None = None
    ) -> list[tuple[int, float]]:
        """BM25 keyword search: ``(chunk_id, score)`` best first, score = ``-bm25()``.

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
            found = matrix.search(words, int(k), allowed) if matrix else None
            if found is not None:
                return found
            return self._fts5_search(words, int(k), where)

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

    @_locked
    def sync_derived(self) -> None:
        """Make the derived files, ``vectors.faiss`` and ``keywords.bm25``, match the current
        generation (a build calls this at its end; a no-op when they already do)."""
        if self.readonly:
            raise IndexStoreError(f"{self.path} was opened read-only")
        with self._snapshot():
            generation = self.generation
            self._derived.vectors(generation)
        self._persist(force=self._derived.vectors_file_is_stale(generation))
        with self._snapshot():
            matrix = self._derived.build_keywords(self.generation)
        if matrix is not None:
            self._derived.save_keywords(matrix)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._derived.close()
            self._db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, readonly={self.readonly})"
