"""Numbered schema migrations of ``index.sqlite`` (the pattern of simonw's ``llm``).

Each migration is a small function registered with :func:`migration`, applied once, in order,
and recorded by name in the ``_migrations`` table. Opening an older index upgrades it; an
index that lists migrations this version does not know was written by newer software and is
refused. Never edit or reorder a released migration: add a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone

from ..errors import IndexCorruptError
from .sqlite_lib import sqlite_utils

log = logging.getLogger(__name__)

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration; its ``__name__`` is what gets recorded."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    """Collection settings, documents, chunks with embeddings, and the FTS5 keyword index.

    ``chunks_fts`` is a contentless FTS5 table (the text lives in ``chunks``) whose rowid is the
    chunk id. It indexes two columns: the chunk ``text`` and its document's ``title`` (repeated
    per chunk, so a title match lifts every chunk of that document); ``Index.keyword_search``
    weights title half as much as text. The store keeps it in sync (no triggers), deleting rows
    with their original values as FTS5's contentless tables require.

    Large columns come last (``documents.text``, ``chunks.text``/``embedding``): SQLite reads a
    row's columns in order, so filters on the small ones never walk a long text's overflow pages.
    """
    db.executescript(
        """
        CREATE TABLE collection (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            model TEXT NOT NULL,
            model_fingerprint TEXT NOT NULL,
            dimension INTEGER NOT NULL,
            document_instruction TEXT NOT NULL,
            query_instruction TEXT NOT NULL,
            chunk_tokens INTEGER NOT NULL,
            chunk_overlap INTEGER NOT NULL,
            settings_json TEXT NOT NULL DEFAULT '{}',
            schema_version INTEGER NOT NULL,
            generation INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            built_at TEXT,
            index_type TEXT NOT NULL DEFAULT 'flat',
            recall_at_10 REAL
        );
        CREATE TABLE documents (
            id TEXT PRIMARY KEY,
            source TEXT NOT NULL DEFAULT '',
            title TEXT NOT NULL DEFAULT '',
            metadata TEXT NOT NULL DEFAULT '{}',
            content_hash TEXT NOT NULL,
            mtime REAL,
            size INTEGER,
            type TEXT,
            folder TEXT,
            indexed_at TEXT NOT NULL,
            text TEXT NOT NULL
        );
        CREATE TABLE chunks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            doc_id TEXT NOT NULL REFERENCES documents(id),
            ordinal INTEGER NOT NULL,
            start INTEGER NOT NULL,
            "end" INTEGER NOT NULL,
            token_count INTEGER NOT NULL,
            text TEXT NOT NULL,
            embedding BLOB NOT NULL
        );
        CREATE INDEX idx_chunks_doc_id ON chunks(doc_id);
        CREATE VIRTUAL TABLE chunks_fts USING fts5(
            text, title, content='', tokenize='porter unicode61'
        );
        """
    )


@migration
def m002_changes_and_fields(db: sqlite_utils.Database) -> None:
    """What lets derived files catch up and filters use indexes.

    ``chunk_changes`` logs, per generation, each chunk id added (``deleted = 0``) or deleted
    (``deleted = 1``, with the text and title FTS5 indexed for it), written in the same
    transaction as the change; ``collection.changes_since`` is the generation after which the
    log is complete (a writer prunes what every derived file has folded in). ``document_fields``
    holds each document's top-level metadata values (``member = 1``: the members of a list or
    object value) and ``field_kinds`` counts documents per key and JSON type, so filters and
    :meth:`Index.fields` never scan every document's JSON. Built-in filter columns get indexes.
    """
    db.executescript(
        """
        CREATE TABLE chunk_changes (
            generation INTEGER NOT NULL,
            chunk_id INTEGER NOT NULL,
            deleted INTEGER NOT NULL,
            text TEXT,
            title TEXT
        );
        CREATE INDEX idx_chunk_changes_generation ON chunk_changes(generation);
        ALTER TABLE collection ADD COLUMN changes_since INTEGER NOT NULL DEFAULT 0;
        UPDATE collection SET changes_since = generation;
        CREATE TABLE document_fields (
            doc_id TEXT NOT NULL,
            key TEXT NOT NULL,
            member INTEGER NOT NULL,
            value
        );
        CREATE INDEX idx_document_fields_value ON document_fields(key, member, value);
        CREATE INDEX idx_document_fields_doc ON document_fields(doc_id);
        CREATE TABLE field_kinds (
            key TEXT NOT NULL,
            type TEXT NOT NULL,
            documents INTEGER NOT NULL,
            PRIMARY KEY (key, type)
        );
        INSERT INTO document_fields (doc_id, key, member, value)
            SELECT d.id, j.key, 0, j.value FROM documents d, json_each(d.metadata) j;
        INSERT INTO document_fields (doc_id, key, member, value)
            SELECT d.id, j.key, 1, m.value FROM documents d, json_each(d.metadata) j,
                json_each(j.value) m WHERE j.type IN ('array', 'object');
        INSERT INTO field_kinds (key, type, documents)
            SELECT j.key, j.type, count(*) FROM documents d, json_each(d.metadata) j
            GROUP BY j.key, j.type;
        CREATE INDEX idx_documents_type ON documents(type);
        CREATE INDEX idx_documents_folder ON documents(folder);
        CREATE INDEX idx_documents_mtime ON documents(mtime);
        CREATE INDEX idx_documents_size ON documents(size);
        """
    )


@migration
def m003_derived_files(db: sqlite_utils.Database) -> None:
    """``derived_files``: each derived file as a writer last wrote or fully checked it (its
    generation and stat: inode, mtime, size). A later writer whose stat of the file matches
    knows it is that file, and decides from the change log alone whether it needs a merge,
    without loading and checksumming it."""
    db.execute(
        """
        CREATE TABLE derived_files (
            name TEXT PRIMARY KEY,
            generation INTEGER NOT NULL,
            inode INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            size INTEGER NOT NULL
        )
        """
    )


@migration
def m004_document_catalog(db: sqlite_utils.Database) -> None:
    """A covering index of what an incremental build reads of every document (id, source,
    content hash, file stamp), so that read never walks the rows that hold the texts."""
    db.execute(
        "CREATE INDEX idx_documents_catalog ON documents(id, source, content_hash, mtime, size)"
    )


@migration
def m005_document_runs(db: sqlite_utils.Database) -> None:
    """``document_runs``: each document's chunk ids as (first, last, count), one small row per
    document, so a filter turns matching documents into chunk ids without walking the
    ``chunks`` index once per document (a document's chunks are one run of ids when
    ``last - first + 1 == count``, as every write since explicit ids makes them)."""
    db.executescript(
        """
        CREATE TABLE document_runs (
            doc_id TEXT PRIMARY KEY,
            first_chunk INTEGER NOT NULL,
            last_chunk INTEGER NOT NULL,
            chunks INTEGER NOT NULL
        ) WITHOUT ROWID;
        INSERT INTO document_runs (doc_id, first_chunk, last_chunk, chunks)
            SELECT doc_id, min(id), max(id), count(*) FROM chunks GROUP BY doc_id;
        """
    )


@migration
def m006_document_fields_lookup(db: sqlite_utils.Database) -> None:
    """The ``document_fields`` value index with the document id in it, so a filter reads the
    matching documents' ids from the index alone (not one table row per document)."""
    db.executescript(
        """
        CREATE INDEX idx_document_fields_lookup ON document_fields(key, member, value, doc_id);
        DROP INDEX idx_document_fields_value;
        """
    )


@migration
def m007_text_in_chunks(db: sqlite_utils.Database) -> None:
    """``documents.text_in_chunks``: 1 where the document's chunks spell its text
    (:func:`~instructor_search.documents.spelled_text`), which is then not stored a second
    time (``text`` is ''); :meth:`Index.document` spells it again. A shard's documents are
    such (their text is rebuilt from their chunks), and their text was ~30% of the bytes."""
    db.execute("ALTER TABLE documents ADD COLUMN text_in_chunks INTEGER NOT NULL DEFAULT 0")


#: The schema version this software writes: the number of migrations it knows.
SCHEMA_VERSION = len(MIGRATIONS)


def _ensure_table(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )


def applied_migrations(db: sqlite_utils.Database) -> list[str]:
    """Names recorded in ``_migrations`` (empty for a new database)."""
    if "_migrations" not in db.table_names():
        return []
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]


def pending_migrations(db: sqlite_utils.Database) -> list[Migration]:
    """Migrations not yet applied; :class:`IndexCorruptError` if the DB is from newer software."""
    applied = applied_migrations(db)
    known = {fn.__name__ for fn in MIGRATIONS}
    unknown = [name for name in applied if name not in known]
    if unknown:
        where = db.execute("PRAGMA database_list").fetchone()[2] or "this index"
        raise IndexCorruptError(
            f"{where} was written by a newer instructor-search (unknown schema migrations: "
            f"{', '.join(unknown)}); upgrade instructor-search to open it"
        )
    return [fn for fn in MIGRATIONS if fn.__name__ not in set(applied)]


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the missing migrations in order, each in its own transaction; return their names."""
    pending = pending_migrations(db)
    if not pending:
        return []
    _ensure_table(db)
    done = []
    for fn in pending:
        db.execute("BEGIN IMMEDIATE")
        try:
            if fn.__name__ in applied_migrations(db):  # another process got there first
                db.execute("ROLLBACK")
                continue
            fn(db)
            db.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                [fn.__name__, datetime.now(timezone.utc).isoformat(timespec="seconds")],
            )
            db.execute("COMMIT")
        except BaseException:
            if db.conn.in_transaction:
                db.execute("ROLLBACK")
            raise
        log.info("applied migration %s", fn.__name__)
        done.append(fn.__name__)
    return done
