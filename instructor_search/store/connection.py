"""One open ``index.sqlite``: connecting with our pragmas, read snapshots, write transactions
and the generation every committed change bumps. :class:`IndexBase` is what the parts of
:class:`~instructor_search.store.index.Index` (writes, reads, fields) share.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import IndexCorruptError, IndexStoreError
from .collection import CollectionSettings
from .derived import INDEX_FILE, DerivedFiles
from .sqlite_lib import sqlite_utils

BUSY_TIMEOUT_MS = 30_000
#: FTS5 column weights for bm25(): chunk text, document title.
TEXT_WEIGHT, TITLE_WEIGHT = 1.0, 0.5
KEYWORD_WEIGHTS = {"text": TEXT_WEIGHT, "title": TITLE_WEIGHT}
_F = TypeVar("_F", bound=Callable[..., Any])


def utc_now() -> str:
    """The current UTC time as ISO 8601 seconds (what ``indexed_at`` and ``built_at`` hold)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def locked(method: _F) -> _F:
    """Run an :class:`IndexBase` method under the index's lock (one connection, many threads)."""

    @wraps(method)
    def wrapper(self: IndexBase, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def connect(file: Path) -> sqlite_utils.Database:
    """A connection with our busy timeout and foreign keys; fails on a non-database."""
    conn = sqlite3.connect(str(file), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    db = sqlite_utils.Database(conn, execute_plugins=False)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # fails on a non-database
    return db


def writer_pragmas(db: sqlite_utils.Database) -> None:
    """WAL (readers never block the writer) with NORMAL sync (durable at each checkpoint)."""
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")


class IndexBase:
    """An open index folder: its connection, settings, derived files and transactions."""

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
        self._derived = DerivedFiles(path, db, self.settings.dimension, KEYWORD_WEIGHTS)

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
            "UPDATE collection SET generation = generation + 1, built_at = ? WHERE id = 1",
            [utc_now()],
        )

    @property
    @locked
    def generation(self) -> int:
        """Bumped by every committed change."""
        return int(self._db.execute("SELECT generation FROM collection WHERE id = 1").fetchone()[0])
