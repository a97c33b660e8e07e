"""The keyword matrix of a fresh ingest, built on a second thread while the rows go into SQLite.

Each stored batch's rows ``(chunk id, text, title)`` are tokenised again by an in-memory FTS5
table with the index's ``tokenize=`` option (:func:`~.keywords.build_rows`), beside the
writer; :func:`merged` then joins the batches' matrices into the one
:func:`~.keywords.build` would read from ``chunks_fts`` afterwards: the same tokens, so the same
postings, weighted frequencies and row lengths (BM25 is computed from them at query time, so its
scores stay FTS5's). SQLite and numpy release the GIL, so this runs beside the writer.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .keywords import KeywordMatrix, KeywordMatrixError, _tokenize_option, build_rows

log = logging.getLogger(__name__)

#: One stored batch's rows: (chunk id, text, title).
Rows = list[tuple[int, str, str]]
#: Rows tokenised together: fewer, larger parts cost less per row (each reads its vocabulary).
PART_ROWS = 32_768


def merged(parts: Sequence[KeywordMatrix], generation: int) -> KeywordMatrix:
    """One matrix of ``parts`` (each over chunk ids above all of the previous part's), as
    :func:`~.keywords.build` reads it from one FTS5 table holding all their rows."""
    if not parts:
        raise KeywordMatrixError("no rows to merge")
    chunk_ids = np.concatenate([p.chunk_ids for p in parts])
    if np.any(np.diff(chunk_ids) <= 0):
        raise KeywordMatrixError("the parts' chunk ids are not ascending")
    vocabulary = sorted(set().union(*(p.vocabulary for p in parts)))  # FTS5's byte order
    position = {term: i for i, term in enumerate(vocabulary)}
    terms = [np.fromiter(map(position.__getitem__, p.vocabulary), np.int64) for p in parts]
    df = np.zeros(len(vocabulary), np.int64)
    for part, at in zip(parts, terms, strict=True):
        df[at] += np.diff(part.offsets)
    offsets = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
    rows = np.empty(offsets[-1], np.int32)
    freq = np.empty(offsets[-1], np.float32)
    filled, base = offsets[:-1].copy(), 0
    for part, at in zip(parts, terms, strict=True):
        counts = np.diff(part.offsets)
        # each posting goes after its term's postings from earlier parts, in the part's order
        where = np.repeat(filled[at] - part.offsets[:-1], counts) + np.arange(len(part.rows))
        rows[where] = part.rows + base
        freq[where] = part.freq
        filled[at] += counts
        base += len(part.chunk_ids)
    lengths = np.concatenate([p.lengths for p in parts])
    tokenize = parts[0].tokenize
    return KeywordMatrix(generation, tokenize, chunk_ids, lengths, vocabulary, offsets, rows, freq)


class KeywordPrebuild:
    """Builds the keyword matrix of the rows stored in ``database`` (the FTS5 table ``table``)
    on its own thread; :meth:`add` each stored batch's rows, then :meth:`finish`."""

    def __init__(self, database: Path, table: str, column_weights: Mapping[str, float]) -> None:
        self._database, self._table = database, table
        self._weights = dict(column_weights)
        self._batches: queue.SimpleQueue[Rows | None] = queue.SimpleQueue()
        self._parts: list[KeywordMatrix] = []
        self._stopped = False  # abandoned, or failed
        self._thread = threading.Thread(target=self._run, name="keyword-prebuild", daemon=True)
        self._thread.start()

    def add(self, rows: Rows) -> None:
        """One stored batch's rows, chunk ids ascending and above every earlier batch's."""
        self._batches.put(rows)

    def finish(self, generation: int) -> KeywordMatrix | None:
        """The matrix of every batch added, stamped ``generation``; ``None`` when it could
        not be built (logged)."""
        self._batches.put(None)
        self._thread.join()
        if self._stopped or not self._parts:
            return None
        try:
            return merged(self._parts, generation)
        except KeywordMatrixError as exc:
            log.warning("keyword matrix not built beside the ingest (%s)", exc)
            return None

    def abandon(self) -> None:
        """Stop after the current batch, without waiting (the ingest failed)."""
        self._stopped = True
        self._batches.put(None)

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(f"{self._database.as_uri()}?mode=ro", uri=True)
            try:
                tokenize = _tokenize_option(conn, self._table)
            finally:
                conn.close()
            if tokenize is None:
                raise KeywordMatrixError(f"{self._table} has no quoted tokenize= option")
            pending: Rows = []
            while (rows := self._batches.get()) is not None:
                pending += rows
                if len(pending) >= PART_ROWS and not self._stopped:
                    self._parts.append(build_rows(tokenize, self._weights, pending, 0))
                    pending = []
            if pending and not self._stopped:
                self._parts.append(build_rows(tokenize, self._weights, pending, 0))
        except (KeywordMatrixError, sqlite3.Error) as exc:
            log.warning("keyword matrix not built beside the ingest (%s)", exc)
            self._stopped = True
            while self._batches.get() is not None:
                pass
