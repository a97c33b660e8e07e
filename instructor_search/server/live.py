"""``LiveIndex``: the warm Retriever of one index folder, shared by a server's threads.

A new generation written into the same ``index.sqlite`` (a build, a watched folder) needs
nothing here: the store re-reads the generation on every search. What the store cannot see is
its file being removed or replaced under an open connection, so every call first checks that
``index.sqlite`` is still the file the Retriever opened (same device and inode): gone is an
:class:`IndexNotFoundError`, replaced (``--rebuild``, a restored copy) is reopened, and the
model stays loaded across reopens (the Retriever's model cache).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import IndexCorruptError, IndexNotFoundError, IndexStoreError
from ..search.retriever import Retriever
from ..store.index import INDEX_FILE

log = logging.getLogger(__name__)

T = TypeVar("T")


class LiveIndex:
    """Runs calls on the Retriever of ``path``, one at a time.

    One at a time because the parallel parts are already parallel inside: the query encoder and
    FAISS use every core for one query, the store serialises its SQLite connection under its
    own lock, and a Hugging Face tokenizer is not documented as safe across threads.
    """

    def __init__(self, path: str | os.PathLike[str], backend: str = "auto") -> None:
        self.path = Path(path)
        self.backend = backend
        self._lock = threading.Lock()
        self._retriever: Retriever | None = None
        self._opened: tuple[int, int] | None = None  # (st_dev, st_ino) of the open index.sqlite

    def call(self, work: Callable[[Retriever], T]) -> T:
        """``work(retriever)`` on the current index; a store error that an open connection
        meets (the file truncated, overwritten, unreadable) closes it and is re-raised as an
        :class:`IndexStoreError`, so the next call opens the file afresh."""
        with self._lock:
            retriever = self._current()
            try:
                return work(retriever)
            except sqlite3.DatabaseError as exc:
                self._drop()
                kind = IndexStoreError if isinstance(exc, sqlite3.OperationalError) else None
                raise (kind or IndexCorruptError)(
                    f"{self.path / INDEX_FILE} could not be read ({exc}); the server reopens it "
                    "on the next request"
                ) from exc

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _current(self) -> Retriever:
        file = self.path / INDEX_FILE
        try:
            stat = file.stat()
        except OSError:
            self._drop()
            raise IndexNotFoundError(
                f"No index at {self.path} (no {INDEX_FILE}); it was removed or is not built yet. "
                f"Build it with: instructor-index build SOURCE --index {self.path}"
            ) from None
        key = (stat.st_dev, stat.st_ino)
        if self._retriever is None or key != self._opened:
            if self._retriever is not None:
                log.info("%s was replaced; reopening it", file)
            self._drop()
            self._retriever = Retriever(self.path, backend=self.backend)
            self._opened = key
        return self._retriever

    def _drop(self) -> None:
        if self._retriever is not None:
            try:
                self._retriever.close()
            except sqlite3.Error as exc:  # closing a connection to a broken file
                log.info("closing %s: %s", self.path, exc)
        self._retriever, self._opened = None, None
