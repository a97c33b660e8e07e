"""``LiveIndex``: the warm Retriever of one index folder, shared by a server's threads.

A new generation written into the same ``index.sqlite`` (a build, a watched folder) needs
nothing here: the store re-reads the generation on every search. What the store cannot see is
its file being removed or replaced under an open connection, so every call first checks that
``index.sqlite`` is still the file the Retriever opened (same device and inode): gone is an
:class:`IndexNotFoundError`, replaced (``--rebuild``, a restored copy) is reopened, and the
model stays loaded across reopens (the Retriever's model cache).

Searches run one at a time (see :class:`LiveIndex`), so requests that arrive while one runs
wait; :meth:`LiveIndex.search` then answers all the waiting ones that share their options with
one ``search_batch`` call: one encoder call and one vector search for all of them.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import IndexCorruptError, IndexNotFoundError, IndexStoreError, InputError
from ..search.retriever import Hit, Retriever
from ..store.index import INDEX_FILE

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The most waiting searches answered by one ``search_batch`` call.
MAX_GROUP = 64


@dataclass(eq=False)
class _Waiting:
    """One ``search`` request waiting for its answer."""

    query: str
    options: str  # the request's options as canonical JSON: requests alike share a batch
    hits: list[Hit] = field(default_factory=list)
    error: BaseException | None = None
    took_ms: float = 0.0
    done: bool = False


class LiveIndex:
    """Runs calls on the Retriever of ``path``, one at a time.

    One at a time because the parallel parts are already parallel inside: the query encoder and
    FAISS use every core for one query, the store serialises its SQLite connection under its
    own lock, and a Hugging Face tokenizer is not documented as safe across threads.
    """

    def __init__(self, path: str | os.PathLike[str], backend: str = "auto") -> None:
        self.path = Path(path)
        self.backend = backend
        self._turn = threading.Condition(threading.Lock())  # guards _busy and _waiting
        self._busy = False  # a call or a batch is running
        self._retriever: Retriever | None = None
        self._opened: tuple[int, int] | None = None  # (st_dev, st_ino) of the open index.sqlite
        self._waiting: list[_Waiting] = []

    def call(self, work: Callable[[Retriever], T]) -> T:
        """``work(retriever)`` on the current index; a store error that an open connection
        meets (the file truncated, overwritten, unreadable) closes it and is re-raised as an
        :class:`IndexStoreError`, so the next call opens the file afresh."""
        with self._turn:
            self._wait_for_turn(None)
        try:
            return self._call(work)
        finally:
            self._end_turn()

    def search(self, query: str, **options: Any) -> tuple[list[Hit], float]:
        """``Retriever.search(query, **options)`` and the milliseconds its batch took.

        Whoever gets the turn answers every waiting request with the same options in one
        ``search_batch``; a bad query among them (an :class:`InputError`) sends each request of
        that batch through alone, so each gets its own answer or error.
        """
        me = _Waiting(query, json.dumps(options, sort_keys=True, default=repr))
        with self._turn:
            self._waiting.append(me)
            self._wait_for_turn(me)
            if not me.done:
                alike = [w for w in self._waiting if w.options == me.options and w is not me]
                group = [me, *alike[: MAX_GROUP - 1]]
                self._waiting = [w for w in self._waiting if all(w is not g for g in group)]
        if not me.done:
            try:
                self._answer(group, options)
            finally:
                self._end_turn()
        if me.error is not None:
            raise me.error
        return me.hits, me.took_ms

    def _wait_for_turn(self, me: _Waiting | None) -> None:
        """Under ``_turn``: wait until nothing runs (then take the turn) or ``me`` is done."""
        while self._busy and not (me is not None and me.done):
            self._turn.wait()
        if me is None or not me.done:
            self._busy = True

    def _end_turn(self) -> None:
        with self._turn:
            self._busy = False
            self._turn.notify_all()

    def _answer(self, group: list[_Waiting], options: dict[str, Any]) -> None:
        queries = [w.query for w in group]
        started = time.perf_counter()
        try:
            results = self._call(lambda r: r.search_batch(queries, **options))
        except InputError as error:
            if len(group) > 1:
                for waiting in group:
                    self._answer([waiting], options)
                return
            results, group[0].error = [[]], error
        except Exception as error:  # the index cannot answer: not for any of them
            results = [[] for _ in group]
            for waiting in group:
                waiting.error = error
        took = round(1000 * (time.perf_counter() - started), 3)
        for waiting, hits in zip(group, results):
            waiting.hits, waiting.took_ms, waiting.done = hits, took, True

    def _call(self, work: Callable[[Retriever], T]) -> T:
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
        with self._turn:
            self._wait_for_turn(None)
        try:
            self._drop()
        finally:
            self._end_turn()

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
