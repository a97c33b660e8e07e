"""The keyword matrix: FTS5's BM25 of ``chunks_fts`` precomputed per posting, searched in numpy.

A keyword query is an OR of quoted phrases, one per distinct lower-cased word (see
:func:`query_words`). FTS5 answers it with ``bm25()``, but scores nearly every row for an OR of
common words (~170 ms at 100k chunks). The matrix answers the same query in a few milliseconds
with the same scores, because ``bm25()`` is a sum over phrases of a term's per-row contribution
(``fts5_aux.c``, ``fts5Bm25Function``)::

    idf(t)   = log((0.5 + N - n_t) / (0.5 + n_t)), or 1e-6 when that is <= 0
    f(t, r)  = sum over the row's columns of weight(column) x hits of t in that column
    score(r) = sum over phrases t of
               idf(t) x f(t, r) x (k1 + 1) / (f(t, r) + k1 x (1 - b + b x D(r) / avgdl))

with ``k1 = 1.2``, ``b = 0.75``, ``N`` rows, ``n_t`` rows holding ``t``, ``D(r)`` the row's tokens
over all columns and ``avgdl`` the mean of ``D``. The matrix stores each posting's weighted
frequency ``f(t, r)`` (multiples of the column weights 1 and 0.5: exact in float32) and each
row's ``D``; a query computes its terms' contributions from the current ``N``, ``n_t`` and
``avgdl`` in the same float64 operations in the same order as FTS5 (cached per term), and sums
them in phrase order, as FTS5 does, so the scores are the same doubles; the top rows are found
with float32 approximations of them first and without summing the common words' long
postings everywhere (:mod:`.keyword_topk`). Two words stemming to one term are two phrases
and count twice. Because nothing stored depends on the collection's statistics, rows added or
deleted since the file was written are a small delta (:meth:`KeywordMatrix.with_delta`: the
added rows' postings, the deleted rows' postings subtracted from ``N``, ``n_t`` and
``avgdl``), tokenised by FTS5 in memory (:func:`build_rows`).

Tokens come from FTS5 itself: the document side from an ``fts5vocab`` ``instance`` table over
``chunks_fts``; the query side by inserting each word into an in-memory FTS5 table made with the
index's own ``tokenize=`` option. A word that is not exactly one token (a handful of code
points, e.g. U+19B0) makes :meth:`KeywordMatrix.search` decline, and FTS5 answers.

File format (``keywords.bm25``), little-endian::

    magic b"ISKW" | version u16 | reserved u16 | generation i64 | rows i64 | terms i64
    | postings i64 | crc32(payload) u32 | payload length u64
    | payload = chunk ids i64[rows] | row lengths i32[rows] | offsets i64[terms + 1]
                | posting rows i32[postings] | posting frequencies f32[postings]
                | tokenize option and terms, UTF-8, NUL-separated

It is memory-mapped when loaded. Like ``vectors.faiss`` it is stamped with the SQLite
generation it was built from and replaced atomically; a reader brings an older one up to date
with the delta from ``chunk_changes``, and never rebuilds a missing or unreadable one (FTS5 is
the exact fallback meanwhile).
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from ..errors import IndexStoreError
from .keyword_instances import InstancesError, read_postings
from .keyword_topk import TermCache, TermPostings, top_rows
from .recent import Recent

log = logging.getLogger(__name__)

#: FTS5's bm25() constants (fts5_aux.c).
K1, B = 1.2, 0.75
#: Bytes of computed BM25 contributions (and of postings copied) a matrix keeps for the terms
#: of recent queries (all the postings of a word in every row of a million chunks: 8 MB), and
#: how many terms at most: the least recently used go first.
SCORE_CACHE_BYTES = 64 * 2**20
SCORE_CACHE_TERMS = 8192
#: Allow-lists (a filter's chunk ids) whose row positions a matrix keeps.
ALLOWED_CACHE = 4

_TERM = re.compile(r"[^\W_]+")  # what FTS5's unicode61 tokenizer calls a token
_TOKENIZE = re.compile(r"\btokenize\s*=\s*'((?:[^']|'')*)'", re.IGNORECASE)


class KeywordMatrixError(IndexStoreError):
    """The keyword matrix cannot be built, or ``keywords.bm25`` is unreadable, truncated or not
    ours; FTS5 answers keyword searches meanwhile."""


def query_words(query: str) -> list[str]:
    """The distinct lower-cased words of ``query`` in order; each is one quoted FTS5 phrase."""
    return list(dict.fromkeys(t.lower() for t in _TERM.findall(str(query))))


def match_expression(words: Sequence[str]) -> str:
    """The FTS5 MATCH string of :func:`query_words`: quoted phrases joined by OR, so FTS5 and
    SQL syntax in them is searched as text."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


class _Tokenizer:
    """An in-memory FTS5 table with a given ``tokenize=`` option, to read a word's tokens."""

    def __init__(self, tokenize: str) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        option = "'" + tokenize.replace("'", "''") + "'"
        self._db.execute(f"CREATE VIRTUAL TABLE words USING fts5(word, tokenize={option})")
        self._db.execute("CREATE VIRTUAL TABLE tokens USING fts5vocab(words, 'instance')")
        self._lock = threading.Lock()

    def tokens(self, word: str) -> tuple[str, ...]:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute("INSERT INTO words (rowid, word) VALUES (1, ?)", [word])
                rows = self._db.execute("SELECT term FROM tokens ORDER BY offset").fetchall()
            finally:
                self._db.execute("ROLLBACK")
        return tuple(r[0] for r in rows)


@lru_cache(maxsize=8)
def _tokenizer(tokenize: str) -> _Tokenizer:
    return _Tokenizer(tokenize)


@lru_cache(maxsize=65_536)
def word_tokens(tokenize: str, word: str) -> tuple[str, ...]:
    """The tokens FTS5 makes of ``word`` with the ``tokenize=`` option ``tokenize`` (cached)."""
    return _tokenizer(tokenize).tokens(word)


class KeywordMatrix:
    """Per-posting weighted term frequencies of one generation of ``chunks_fts``, CSC-like: the
    postings of term ``t`` (sorted vocabulary) are ``rows[offsets[t]:offsets[t + 1]]`` (positions
    in ``chunk_ids``) with their frequencies ``freq[...]``; ``lengths`` are the rows' tokens.

    BM25 is computed at query time from these and the collection's current statistics, so a
    matrix can be brought up to a later generation by :meth:`with_delta` (rows added, rows
    deleted) without touching its postings.
    """

    def __init__(
        self,
        generation: int,
        tokenize: str,
        chunk_ids: np.ndarray,
        lengths: np.ndarray,
        vocabulary: Sequence[str],
        offsets: np.ndarray,
        rows: np.ndarray,
        freq: np.ndarray,
    ) -> None:
        self.generation = generation
        self.tokenize = tokenize
        self.chunk_ids = chunk_ids
        self.lengths = lengths
        self.vocabulary = vocabulary if isinstance(vocabulary, list) else list(vocabulary)
        self.offsets = offsets
        self.rows = rows
        self.freq = freq
        self._term = {term: i for i, term in enumerate(self.vocabulary)}
        self.added: KeywordMatrix | None = None  # rows stored since, appended after chunk_ids
        self.deleted: KeywordMatrix | None = None  # rows of chunk_ids deleted since (old text)
        self._alive: np.ndarray | None = None
        self._set_statistics()

    def _set_statistics(self) -> None:
        parts = [(self.lengths, 1)]
        parts += [(m.lengths, 1) for m in (self.added,) if m is not None]
        parts += [(m.lengths, -1) for m in (self.deleted,) if m is not None]
        self.count = sum(sign * len(lengths) for lengths, sign in parts)
        total = sum(sign * int(lengths.sum(dtype=np.int64)) for lengths, sign in parts)
        avgdl = float(total) / float(self.count) if self.count else 1.0
        every = self.lengths if self.added is None else np.r_[self.lengths, self.added.lengths]
        self._norm = K1 * ((1 - B) + (B * every.astype(np.float64)) / avgdl)
        self._norm32 = self._norm.astype(np.float32)
        self._norm_min = float(self._norm.min()) if len(self._norm) else K1
        self._scores = TermCache(SCORE_CACHE_BYTES, SCORE_CACHE_TERMS)
        self._allowed: Recent[np.ndarray] = Recent(ALLOWED_CACHE)  # allow-list -> positions

    def with_delta(
        self, generation: int, added: KeywordMatrix | None, deleted: KeywordMatrix | None
    ) -> KeywordMatrix:
        """This matrix at a later ``generation``: ``added`` rows (chunk ids above all of this
        matrix's) and ``deleted`` rows (chunk ids of this matrix, with the postings they had)."""
        view = object.__new__(KeywordMatrix)
        view.__dict__.update(self.__dict__)
        view.generation, view.added, view.deleted = generation, added, deleted
        view._alive = None
        if deleted is not None and len(deleted.chunk_ids):
            view._alive = ~np.isin(self.chunk_ids, deleted.chunk_ids)
        view._set_statistics()
        view.chunk_ids = self.chunk_ids if added is None else np.r_[self.chunk_ids, added.chunk_ids]
        return view

    def postings(self, words: Sequence[str]) -> int:
        """How many postings the saved matrix holds for ``words`` (a query's work, roughly)."""
        found = (self._term.get(t) for w in words for t in word_tokens(self.tokenize, w))
        return sum(int(self.offsets[i + 1] - self.offsets[i]) for i in found if i is not None)

    @property
    def delta_rows(self) -> int:
        """Rows added or deleted since the saved matrix (what a merge would fold in)."""
        return sum(len(m.chunk_ids) for m in (self.added, self.deleted) if m is not None)

    def _postings(self, term: str) -> TermPostings | None:
        """The row positions holding ``term`` now and its BM25 contributions to them, as
        fts5Bm25Function computes them (cached per term); ``None`` when no live row holds it."""
        at = self._term.get(term)
        cached = None if at is None else self._scores.get(at)
        if cached is not None:
            return cached
        parts, df = [], 0
        if at is not None:
            a, b = self.offsets[at], self.offsets[at + 1]
            rows, freq = self.rows[a:b], self.freq[a:b]
            df = b - a
            if self._alive is not None:
                keep = self._alive[rows]
                rows, freq = rows[keep], freq[keep]
            parts.append((rows, freq))
        for other, sign in ((self.deleted, -1), (self.added, 1)):
            if other is None or term not in other._term:
                continue
            i = other._term[term]
            a, b = other.offsets[i], other.offsets[i + 1]
            df += sign * (b - a)
            if sign > 0:
                parts.append((other.rows[a:b] + len(self.lengths), other.freq[a:b]))
        if df <= 0:
            return None
        rows = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        freq = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        idf, norm = _idf(self.count, int(df)), self._norm

        def contributions(at: np.ndarray | None, positions: np.ndarray) -> np.ndarray:
            # The operations of fts5Bm25Function in float64 (+ and * commute exactly in
            # IEEE 754); weighted hits are exact in float32. The same doubles for any ``at``.
            f = (freq if at is None else freq[at]).astype(np.float64)
            scores = f * (K1 + 1.0)
            f += norm[positions]
            scores /= f
            scores *= idf
            return scores

        norm32, idf32 = self._norm32, np.float32(idf)

        def approximate(positions: np.ndarray) -> np.ndarray:
            # The same in float32: each contribution within a few roundings of the exact one.
            f = freq.astype(np.float32)
            scores = f * np.float32(K1 + 1.0)
            f += norm32[positions]
            scores /= f
            scores *= idf32
            return scores

        most = float(freq.max())  # a bound: the most hits in the shortest row
        bound = idf * (most * (K1 + 1.0)) / (most + self._norm_min)
        copied = len(parts) > 1 or self._alive is not None
        held = rows.nbytes + freq.nbytes if copied else 0
        postings = TermPostings(rows, bound, contributions, held, approximate)
        if at is not None:
            self._scores.put(at, postings)
        return postings

    def _positions(self, allowed: np.ndarray) -> np.ndarray:
        """The sorted row positions of the chunk ids ``allowed`` that this matrix holds; kept
        for the last few allow-lists."""
        return self._allowed.get(allowed, lambda: self._held_positions(allowed))

    def _held_positions(self, allowed: np.ndarray) -> np.ndarray:
        wanted = np.asarray(allowed, dtype=np.int64)
        at = np.searchsorted(self.chunk_ids, wanted)
        held = at < len(self.chunk_ids)
        positions = at[held][self.chunk_ids[at[held]] == wanted[held]]
        if len(positions) > 1 and not np.all(positions[1:] > positions[:-1]):
            positions = np.unique(positions)  # the store's allow-lists are sorted already
        return positions

    def search(
        self,
        words: Sequence[str],
        k: int,
        allowed: np.ndarray | None = None,
        ties: bool = False,
    ) -> list[tuple[int, float]] | None:
        """``(chunk_id, score)`` of the top ``k`` rows for the OR of ``words`` (from
        :func:`query_words`), best first, ties by chunk id (with ``ties``, then every other row
        scored as the k-th); ``allowed`` (chunk ids) restricts the candidates. ``None`` when a
        word is not exactly one token: FTS5 must answer."""
        tokens = [word_tokens(self.tokenize, w) for w in words]
        if any(len(t) != 1 for t in tokens):
            return None
        found = [p for p in (self._postings(t[0]) for t in tokens) if p is not None]
        if not found:
            return []
        candidates = None if allowed is None else self._positions(allowed)
        positions, totals = top_rows(found, k, len(self.chunk_ids), candidates, ties)
        return [
            (int(c), float(s)) for c, s in zip(self.chunk_ids[positions].tolist(), totals.tolist())
        ]


# -- building from FTS5 ------------------------------------------------------------------------


def _tokenize_option(conn: sqlite3.Connection, table: str) -> str | None:
    """The quoted ``tokenize=`` option of the FTS5 ``table``, or ``None`` when it is not given
    in that form (then the matrix is not built)."""
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", [table]
    ).fetchone()
    found = _TOKENIZE.search(row[0]) if row else None
    return found.group(1).replace("''", "'") if found else None


def build(
    conn: sqlite3.Connection,
    table: str,
    column_weights: Mapping[str, float],
    generation: int,
    log_level: int = logging.INFO,
) -> KeywordMatrix:
    """Read every token instance of the FTS5 ``table`` and precompute its BM25 postings with the
    given column weights, stamped with ``generation``. Run it inside one read transaction.

    Raises :class:`KeywordMatrixError` when the table's tokenizer cannot be reproduced for queries
    or FTS5's vocabulary and instances disagree.
    """
    started = time.perf_counter()
    tokenize = _tokenize_option(conn, table)
    if tokenize is None:
        raise KeywordMatrixError(
            f"{table} has no quoted tokenize= option to reproduce queries with"
        )
    columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
    weight = np.array([column_weights[c] for c in columns], dtype=np.float64)
    row_vocab = f"temp.{table}_rowvocab"
    conn.execute(f"CREATE VIRTUAL TABLE {row_vocab} USING fts5vocab(main, \"{table}\", 'row')")
    try:
        rowids = conn.execute(f'SELECT rowid FROM "{table}" ORDER BY rowid').fetchall()
        chunk_ids = np.array([r[0] for r in rowids], dtype=np.int64).reshape(-1)
        vocab = conn.execute(f"SELECT term, doc, cnt FROM {row_vocab}").fetchall()
    finally:
        conn.execute(f"DROP TABLE {row_vocab}")
    try:
        parts, length = read_postings(conn, table, columns, vocab, chunk_ids, weight)
    except InstancesError as exc:
        raise KeywordMatrixError(str(exc)) from exc
    rows = np.concatenate([p[0] for p in parts] or [np.empty(0, np.int32)])
    freq = np.concatenate([p[1] for p in parts] or [np.empty(0)]).astype(np.float32)
    df = np.array([v[1] for v in vocab], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
    matrix = KeywordMatrix(
        generation, tokenize, chunk_ids, length.astype(np.int32), [v[0] for v in vocab],
        offsets, rows, freq,
    )  # fmt: skip
    log.log(log_level, "keyword matrix: %d rows, %d terms, %d postings in %.1f s",
            len(chunk_ids), len(vocab), len(freq), time.perf_counter() - started)  # fmt: skip
    return matrix


def build_rows(
    tokenize: str,
    column_weights: Mapping[str, float],
    rows: Sequence[tuple[int, str, str]],
    generation: int,
) -> KeywordMatrix:
    """The matrix of a few rows ``(chunk id, text, title)`` tokenised by an in-memory FTS5
    table with the same ``tokenize=`` option and columns: what :meth:`KeywordMatrix.with_delta`
    takes for rows added or deleted since a saved matrix."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        option = "'" + tokenize.replace("'", "''") + "'"
        names = ", ".join(column_weights)
        conn.execute(f"CREATE VIRTUAL TABLE delta USING fts5({names}, tokenize={option})")
        conn.execute("BEGIN")  # one transaction: FTS5 writes one segment, not one per row
        conn.executemany("INSERT INTO delta (rowid, text, title) VALUES (?, ?, ?)", rows)
        return build(conn, "delta", column_weights, generation, logging.DEBUG)
    finally:
        conn.close()


def _idf(rows: int, hits: int) -> float:
    idf = math.log((rows - hits + 0.5) / (hits + 0.5))  # libm's log, as FTS5's
    return idf if idf > 0.0 else 1e-6
