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

import logging
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import (
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexStoreError,
    InputError,
)
from .collection import CollectionSettings, IndexStats
from .connection import connect, locked, utc_now, writer_pragmas
from .derived import INDEX_FILE, KEYWORDS_FILE, VECTORS_FILE
from .migrations import SCHEMA_VERSION, migrate, pending_migrations
from .reads import ChunkRecord, IndexReads
from .shards import ROWS_PER_FILE, ExportReport, export_shards
from .writes import IndexWrites

if TYPE_CHECKING:
    from instructor_search.indexer.build import BuildReport

log = logging.getLogger(__name__)

__all__ = [
    "INDEX_FILE",
    "KEYWORDS_FILE",
    "VECTORS_FILE",
    "ChunkRecord",
    "CollectionSettings",
    "DocumentInfo",
    "Index",
    "IndexStats",
]

#: A new ``index.sqlite`` is made under this name (+ a process id) and renamed when complete.
CREATING_PREFIX = f"{INDEX_FILE}.creating-"
#: SQLite page size of a new index. A chunk row (text and a 1,536-byte embedding, ~3 KB) fits
#: once in a 4 KB page, wasting ~1.2 KB per chunk; 16 KB pages hold five. At 100k chunks from
#: shards: file 609 -> 539 MB, ingest 38-39 -> 35-36 s. Indexes made before keep their pages.
PAGE_SIZE = 16384


@dataclass(frozen=True)
class DocumentInfo:
    """One stored document as ``instructor-index ls`` lists it."""

    id: str
    title: str
    source: str
    chunks: int


def _unfinished(file: Path) -> bool:
    """Whether ``file`` is an ``index.sqlite`` whose creation was cut short (by a version that
    did not create atomically): empty, no tables at all, or our tables and no collection row."""
    if file.stat().st_size == 0:
        return True
    try:
        db = sqlite3.connect(f"{file.absolute().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if not tables:
                return True
            if not {"_migrations", "collection"} <= tables:
                return False
            return db.execute("SELECT count(*) FROM collection").fetchone()[0] == 0
        finally:
            db.close()
    except sqlite3.Error:
        return False  # damaged: reported by open(), never replaced unasked


class Index(IndexWrites, IndexReads):
    """An index folder. Use :meth:`create` or :meth:`open`; a context manager closes it.

    Its parts live beside it: :mod:`.connection` (snapshots, transactions, the generation),
    :mod:`.writes` (upsert, delete), :mod:`.reads` (stats, chunks, search) and :mod:`.fields`
    (fields, facets, filters).
    """

    # -- opening -----------------------------------------------------------------------------

    @staticmethod
    def exists(path: str | Path) -> bool:
        """Whether ``path`` holds an index (finished, or damaged: :meth:`open` says how).

        ``False`` for none, and for an ``index.sqlite`` whose creation was cut short by an
        older version (no tables, or no collection row), which :meth:`create` replaces.
        """
        file = Path(path) / INDEX_FILE
        return file.is_file() and not _unfinished(file)

    @classmethod
    def create(
        cls, path: str | Path, settings: CollectionSettings, *, overwrite: bool = False
    ) -> Index:
        """Make the folder and an empty index in it; an existing index is replaced only with
        ``overwrite`` (both files go, with SQLite's -wal/-shm and the derived files).

        Atomic: the database is made complete under a temporary name in the folder, then
        renamed to ``index.sqlite``, so a create killed at any moment leaves either no index
        or a whole empty one (and a temporary file the next create removes).
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise IndexStoreError(f"{path} is a file, not an index folder")
        if cls.exists(path) and not overwrite:
            raise IndexStoreError(
                f"An index already exists at {path}; pass --rebuild (overwrite=True) to replace it"
            )
        if not isinstance(settings.dimension, int) or settings.dimension < 1:
            raise InputError(f"dimension must be a positive int, got {settings.dimension!r}")
        path.mkdir(parents=True, exist_ok=True)
        for leftover in path.glob(f"{CREATING_PREFIX}*"):  # from creates that were killed
            leftover.unlink(missing_ok=True)
        creating = path / f"{CREATING_PREFIX}{os.getpid()}"
        db = connect(creating)  # rollback journal: everything is in the one file once closed
        try:
            db.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before the first table
            migrate(db)
            row = asdict(settings) | {"id": 1, "schema_version": SCHEMA_VERSION, "generation": 0}
            row |= {"created_at": utc_now(), "settings_json": "{}", "index_type": "flat"}
            row["recall_at_10"] = 1.0
            with db.atomic():
                db["collection"].insert(row)
        except BaseException:
            db.close()
            creating.unlink(missing_ok=True)
            raise
        db.close()
        with open(creating, "rb") as handle:
            os.fsync(handle.fileno())
        for name in (f"{INDEX_FILE}-wal", f"{INDEX_FILE}-shm", VECTORS_FILE, KEYWORDS_FILE):
            (path / name).unlink(missing_ok=True)  # the replaced index's (or a stale one's)
        os.replace(creating, path / INDEX_FILE)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path, *, readonly: bool = False) -> Index:
        """Open an existing index; a read-only one (a searcher) never writes to the folder,
        except once to upgrade an index made by an older release (when the folder is writable)."""
        path = Path(path)
        file = path / INDEX_FILE
        if not file.is_file():
            raise IndexNotFoundError(
                f"No index at {path} (no {INDEX_FILE}). "
                f"Build one with: instructor-index build SOURCE --index {path}"
            )
        if _unfinished(file):
            raise IndexNotFoundError(
                f"No index at {path}: its {INDEX_FILE} was never finished (a build stopped "
                f"while creating it). Build it with: instructor-index build SOURCE --index {path}"
            )
        db = None
        try:
            db = connect(file)
            tables = set(db.table_names())
            if not {"_migrations", "collection"} <= tables:
                raise IndexCorruptError(
                    f"{file} is an SQLite database but not an instructor-search index "
                    "(no collection table); point --index at an index folder"
                )
            pending = pending_migrations(db)  # IndexCorruptError when written by newer software
            if pending and readonly and os.access(file, os.W_OK) and os.access(path, os.W_OK):
                # an index made by an older release: upgrade it once, then read as asked
                db.close()
                db = None
                log.info("upgrading %s to schema %d before reading it", file, SCHEMA_VERSION)
                cls.open(path).close()
                return cls.open(path, readonly=True)
            if pending and readonly:
                raise IndexStoreError(
                    f"{file} has an older schema; open it once for writing (e.g. run "
                    f"instructor-index build SOURCE --index {path}) to upgrade it"
                )
            if readonly:
                db.execute("PRAGMA query_only = ON")
            else:
                writer_pragmas(db)
                if migrate(db):
                    db.execute("UPDATE collection SET schema_version = ?", [SCHEMA_VERSION])
            index = cls(path, db, readonly)
            if not readonly:
                index.settle_keyword_settings()
            return index
        except BaseException as exc:
            if db is not None:
                db.close()
            if isinstance(exc, sqlite3.OperationalError):  # locked, permissions, disk I/O
                raise IndexStoreError(f"Could not open {file}: {exc}") from exc
            if isinstance(exc, sqlite3.DatabaseError):  # not a database, malformed
                raise IndexCorruptError(f"{file} is not a readable index database ({exc})") from exc
            raise

    # -- settings ----------------------------------------------------------------------------

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

    @locked
    def documents(self) -> list[DocumentInfo]:
        """Every stored document, by id: its title, source and number of chunks."""
        rows = self._db.execute(
            "SELECT d.id, d.title, d.source, (SELECT count(*) FROM chunks c WHERE c.doc_id = d.id) "
            "FROM documents d ORDER BY d.id"
        ).fetchall()
        return [DocumentInfo(*row) for row in rows]

    # -- shards ------------------------------------------------------------------------------

    def ingest(self, shards: Sequence[str | Path]) -> BuildReport:
        """Upsert the documents of shard folders (:mod:`.shards`) as a build would: unchanged
        ones skipped, changed ones replaced; the manifests must match this index."""
        from instructor_search.indexer.ingest import ingest_into

        return ingest_into(self, [shards] if isinstance(shards, (str, Path)) else shards)

    def export_shards(self, out: str | Path, rows_per_file: int = ROWS_PER_FILE) -> ExportReport:
        """Write every document with its chunks and embeddings to the shard folder ``out``."""
        return export_shards(self, out, rows_per_file)

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
