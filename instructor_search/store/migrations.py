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

import sqlite_utils

from ..errors import IndexCorruptError

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
