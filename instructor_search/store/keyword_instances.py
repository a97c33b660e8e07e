"""Reading every token instance of an FTS5 table into keyword-matrix postings
(:func:`~.keywords.build`'s heavy part), in term slices, on two connections at once where the
table lives in a file: SQLite releases the GIL while it walks the index, so the second
connection's half of the slices reads on the second core."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import IndexStoreError

#: Instances of terms read from FTS5 per query while building (bounds the memory used).
SLICE_INSTANCES = 4_000_000
#: Connections reading slices at once (the caller's, and one more of the same file).
READERS = 2

#: A term of ``fts5vocab(..., 'row')``: (term, rows holding it, instances).
Term = tuple[str, int, int]
Postings = tuple[np.ndarray, np.ndarray]


class InstancesError(IndexStoreError):
    """FTS5's vocabulary and instances disagree (raised as the keyword matrix's error)."""


def read_postings(
    conn: sqlite3.Connection,
    table: str,
    columns: list[str],
    vocab: list[Term],
    chunk_ids: np.ndarray,
    weight: np.ndarray,
) -> tuple[list[Postings], np.ndarray]:
    """Each term slice's (row positions, weighted hits) in term order, and each row's length
    (tokens, all columns). ``conn`` is inside a read transaction; a second read-only
    connection of the same file takes the later half of the slices when it sees the same FTS5
    structure (else ``conn`` reads them all)."""
    slices = _slices([v[2] for v in vocab])
    other = _same_view(conn, table) if READERS > 1 and len(slices) > 1 else None
    if other is None:
        return _read(conn, table, columns, vocab, slices, chunk_ids, weight)
    half = len(slices) // 2
    results: list[tuple[list[Postings], np.ndarray] | BaseException] = []

    def later() -> None:
        try:
            results.append(_read(other, table, columns, vocab, slices[half:], chunk_ids, weight))
        except BaseException as exc:  # re-raised in the caller's thread
            results.append(exc)
        finally:
            other.close()

    thread = threading.Thread(target=later, name="fts5-instances")
    thread.start()
    try:
        parts, length = _read(conn, table, columns, vocab, slices[:half], chunk_ids, weight)
    finally:
        thread.join()
    if isinstance(results[0], BaseException):
        raise results[0]
    later_parts, later_length = results[0]
    return parts + later_parts, length + later_length


def _same_view(conn: sqlite3.Connection, table: str) -> sqlite3.Connection | None:
    """A read-only connection of ``conn``'s main file, in a read transaction that sees the
    same FTS5 structure record as ``conn``; ``None`` for an in-memory database or a table
    written since ``conn``'s snapshot."""
    file = next((r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"), "")
    if not file:
        return None
    structure = f'SELECT block FROM "{table}_data" WHERE id = 10'  # FTS5's segment list
    try:
        other = sqlite3.connect(f"{Path(file).as_uri()}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error:
        return None
    try:
        other.execute("BEGIN")
        if other.execute(structure).fetchone() == conn.execute(structure).fetchone():
            return other
    except sqlite3.Error:
        pass
    other.close()
    return None


def _read(
    conn: sqlite3.Connection,
    table: str,
    columns: list[str],
    vocab: list[Term],
    slices: list[tuple[int, int]],
    chunk_ids: np.ndarray,
    weight: np.ndarray,
) -> tuple[list[Postings], np.ndarray]:
    instances = f"temp.{table}_instances"
    conn.execute(f"CREATE VIRTUAL TABLE {instances} USING fts5vocab(main, \"{table}\", 'instance')")
    try:
        column_case = " ".join(f"WHEN ? THEN {i}" for i in range(len(columns)))
        sql = (
            f"SELECT group_concat(doc * {len(columns)} + CASE col {column_case} END) "
            f"FROM {instances} WHERE term >= ? AND term <= ?"
        )
        length = np.zeros(len(chunk_ids))  # D: tokens per row, all columns (exact in float64)
        parts = []
        for a, b in slices:
            text = conn.execute(sql, [*columns, vocab[a][0], vocab[b - 1][0]]).fetchone()[0]
            codes = np.fromstring(text or "", dtype=np.int64, sep=",")
            parts.append(_postings(codes, vocab[a:b], chunk_ids, weight, length))
    finally:
        conn.execute(f"DROP TABLE {instances}")
    return parts, length


def _slices(counts: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive term ranges of about :data:`SLICE_INSTANCES` instances each."""
    slices, start, total = [], 0, 0
    for i, n in enumerate(counts):
        total += n
        if total >= SLICE_INSTANCES:
            slices.append((start, i + 1))
            start, total = i + 1, 0
    if start < len(counts):
        slices.append((start, len(counts)))
    return slices


def _postings(
    codes: np.ndarray,
    vocab: list[Term],
    chunk_ids: np.ndarray,
    weight: np.ndarray,
    length: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(row positions int32, weighted hits f) of the postings of the terms ``vocab``
    from their instance codes (``rowid * columns + column``, in term, row, column order); adds
    each posting's hits to ``length``."""
    counts = np.array([v[2] for v in vocab], dtype=np.int64)
    if len(codes) != counts.sum():
        raise InstancesError("fts5vocab instances and term counts disagree")
    term = np.repeat(np.arange(len(vocab)), counts)
    doc, column = np.divmod(codes, len(weight))
    starts = np.flatnonzero(np.r_[True, (doc[1:] != doc[:-1]) | (term[1:] != term[:-1])])
    if not np.array_equal(np.bincount(term[starts], minlength=len(vocab)), [v[1] for v in vocab]):
        raise InstancesError("fts5vocab rows and instances disagree")
    rows = _positions(chunk_ids, doc[starts])
    length += np.bincount(rows, weights=np.diff(np.r_[starts, len(codes)]), minlength=len(length))
    freq = np.add.reduceat(weight[column], starts) if len(starts) else np.empty(0)
    return rows.astype(np.int32), freq


def _positions(chunk_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Where each of ``ids`` is in the sorted ``chunk_ids``: a subtraction when they are one run
    of ids without gaps (a fresh index: half the cost of reading 1M chunks' postings is
    otherwise this search), else a binary search."""
    n = len(chunk_ids)
    if n and chunk_ids[-1] - chunk_ids[0] == n - 1:
        rows = ids - chunk_ids[0]
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise InstancesError("fts5vocab instances name rows the table does not hold")
        return rows
    rows = np.searchsorted(chunk_ids, ids)
    if len(rows) and (rows.max() >= n or np.any(chunk_ids[rows] != ids)):
        raise InstancesError("fts5vocab instances name rows the table does not hold")
    return rows
