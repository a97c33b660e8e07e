"""The exact top ``k`` rows of a keyword query without summing every posting (MaxScore).

A row's score is a sum over the query's terms of the term's contribution to that row
(:mod:`.keywords`). Common words hold postings in most rows but contribute little, and summing
them all is what a query at a million chunks spends its time on. MaxScore (Turtle and Flood,
1995) leaves them out where they cannot matter: with the terms taken from the rarest, once the
rarer terms give ``k`` rows a partial score of at least ``theta``, a row can only reach the top
``k`` if its partial score plus the other terms' largest contributions is at least ``theta``;
rows that no rarer term touches, and touched rows too far below, are never scored. The
candidates then take the other terms one at a time (looked up, not summed everywhere), and
after each those that can no longer reach the ``k``-th best partial sum are dropped, so the
longest postings are searched for a few rows only. The rows left are summed over every term
in the query's order, the order of :func:`numpy.bincount` over all postings, so their scores
are the same doubles.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

#: Top-k selection bounds the k-th best score from every SAMPLE_STEP-th row first.
SAMPLE_STEP = 8
#: Partial sums are taken in another order than the final ones: prune with this margin.
MARGIN = 1e-9
#: Rough costs, in additions of one posting: scoring one candidate row over all terms, and
#: looking one row up in a term's postings (a binary search).
TERM_COST = 32
LOOKUP_COST = 8


class TermPostings:
    """One query term: the row positions holding it (ascending), an upper bound of its
    contribution to any row, and its contributions, computed for all of its postings (once) or
    for some of them (``at``: positions into ``rows``) with the same operations.

    ``contributions(at, rows)`` gets the postings' row positions as ``numpy.intp`` (numpy
    gathers and scatters with native indices about twice as fast as with the file's int32).
    ``held`` is the bytes of the copies made for it (0 where ``rows`` is a view of the file).
    """

    def __init__(
        self,
        rows: np.ndarray,
        bound: float,
        contributions: Callable[[np.ndarray | None, np.ndarray], np.ndarray],
        held: int = 0,
    ) -> None:
        self.rows, self.bound, self.held = rows, bound, held
        self._contributions = contributions
        self._all: np.ndarray | None = None
        self.grown: Callable[[int], None] | None = None  # told the bytes it computes

    def positions(self) -> np.ndarray:
        """``rows`` as ``numpy.intp``: a copy made for each use and not kept (0.1 ms per 200k
        postings), so the cache's memory holds contributions, which cost far more to make."""
        return self.rows.astype(np.intp, copy=False)

    def scores(self, at: np.ndarray | None = None) -> np.ndarray:
        """The contributions at posting positions ``at`` (all postings: computed once)."""
        if at is not None:
            if self._all is not None:
                return self._all[at]
            return self._contributions(at, self.rows[at].astype(np.intp))
        if self._all is None:
            self._all = self._contributions(None, self.positions())
            if self.grown is not None:
                self.grown(self._all.nbytes)
        return self._all

    @property
    def nbytes(self) -> int:
        """Memory of its own: the copies made for it, and its contributions once computed."""
        return self.held + (0 if self._all is None else self._all.nbytes)


class TermCache:
    """The postings of the terms last asked for, least recently used dropped first, bounded by
    the memory they hold of their own (:attr:`TermPostings.nbytes`) and by their number."""

    def __init__(self, max_bytes: int, max_terms: int) -> None:
        self.max_bytes, self.max_terms = max_bytes, max_terms
        self._terms: OrderedDict[int, TermPostings] = OrderedDict()
        self.nbytes = 0

    def get(self, key: int) -> TermPostings | None:
        found = self._terms.get(key)
        if found is not None:
            self._terms.move_to_end(key)
        return found

    def put(self, key: int, postings: TermPostings) -> None:
        postings.grown = self._grown
        self._terms[key] = postings
        self._grown(postings.nbytes)

    def _grown(self, nbytes: int) -> None:
        self.nbytes += nbytes
        while len(self._terms) > 1 and (
            self.nbytes > self.max_bytes or len(self._terms) > self.max_terms
        ):
            _, oldest = self._terms.popitem(last=False)
            oldest.grown = None
            self.nbytes -= oldest.nbytes


def top_rows(
    terms: Sequence[TermPostings],
    k: int,
    size: int,
    allowed: np.ndarray | None = None,
    ties: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(row positions, totals)`` of the ``k`` rows of largest positive total over ``terms``
    (in query order), best first, ties by position; with ``ties``, then every other row whose
    total equals the k-th's. ``allowed`` (row positions) restricts the rows; ``size`` is the
    number of rows."""
    order = sorted(range(len(terms)), key=lambda i: len(terms[i].rows))
    rest = [*np.cumsum([terms[i].bound for i in reversed(order)])[::-1].tolist(), 0.0]
    partial = np.zeros(size)  # rows not allowed are never added to: never a candidate
    mask = None
    if allowed is not None:
        mask = np.zeros(size, dtype=bool)
        mask[allowed] = True
    theta, used, unraised = 0.0, 0, []  # rows of the terms added since theta was raised
    while used < len(order):
        term = terms[order[used]]
        # No row's partial score exceeds the bounds of the terms added (rest[0] - rest[used]):
        # until those reach the other terms' bounds, no theta can stop the loop (not raised)
        if unraised and rest[used] < rest[0] - rest[used]:
            theta = _raised(partial, unraised, k, theta)
            unraised = []
        if theta > 0 and rest[used] < theta * (1 - MARGIN):  # the other terms alone fall short
            left = np.count_nonzero(partial >= theta * (1 - MARGIN) - rest[used])
            if len(term.rows) > TERM_COST * left:  # cheaper to score those rows than add it
                break
        rows = term.positions()
        if mask is None:
            np.add.at(partial, rows, term.scores())  # a term's rows are distinct
        else:  # only the allowed postings are scored (the same doubles as all of them)
            at = np.flatnonzero(mask[rows])
            rows = rows[at]
            np.add.at(partial, rows, term.scores(at))
        used += 1
        if len(rows) >= k:  # the k-th best of its rows bounds the k-th best of all
            unraised.append(rows)
    theta = _raised(partial, unraised, k, theta)
    floor = theta * (1 - MARGIN) - rest[used]  # a row below it cannot reach the k-th best
    candidates = np.flatnonzero(partial >= floor if floor > 0 else partial > 0)
    score = partial[candidates]
    for position in range(used, len(order)):  # the other terms: candidates pruned as they come
        term = terms[order[position]]
        score += _contributions(term, candidates, candidates.astype(term.rows.dtype), partial)
        if len(score) > k:  # a partial sum is a lower bound of its row's total
            theta = max(theta, float(np.partition(score, len(score) - k)[len(score) - k]))
        keep = score >= theta * (1 - MARGIN) - rest[position + 1]
        if not keep.all():
            candidates, score = candidates[keep], score[keep]
    keys = candidates.astype(np.int32) if size < 2**31 else candidates  # as the postings' rows
    totals = np.zeros(len(candidates))
    for term in terms:  # in query order: the additions a full sum makes, the same doubles
        totals += _contributions(term, candidates, keys, partial)
    best = best_positions(totals, k)
    if ties and len(best) == k:  # every row tied with the k-th is a candidate
        tied = np.flatnonzero(totals == totals[best[-1]])
        best = np.concatenate([best, tied[~np.isin(tied, best)]])
    return candidates[best], totals[best]


def _raised(partial: np.ndarray, rows: list[np.ndarray], k: int, theta: float) -> float:
    """``theta`` (>= 0) raised to the ``k``-th largest partial score among each of ``rows``
    where that is above it (only the values above ``theta`` are partitioned)."""
    for held in rows:
        values = partial.take(held)
        above = values[values > theta]
        if len(above) >= k:
            theta = float(np.partition(above, len(above) - k)[len(above) - k])
    return theta


def _contributions(
    term: TermPostings, rows: np.ndarray, keys: np.ndarray, scratch: np.ndarray
) -> np.ndarray:
    """``term``'s contribution to each of ``rows`` (ascending, intp; ``keys``: the same in the
    postings' dtype; 0 where it is absent): computed for the postings found among them, or for
    a short term spread into ``scratch`` (a row-sized array whose values do not matter) and
    gathered."""
    if len(term.rows) > LOOKUP_COST * len(rows):
        at = np.searchsorted(term.rows, keys)
        at[at == len(term.rows)] = 0
        hit = term.rows[at] == keys
        out = np.zeros(len(rows))
        out[hit] = term.scores(at[hit])
        return out
    scratch[rows] = 0.0
    scratch[term.positions()] = term.scores()
    return scratch[rows]


def best_positions(totals: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest positive ``totals``, largest first, ties by index."""
    # A lower bound of the k-th largest value: the k-th largest of every SAMPLE_STEP-th value
    # (a partition of n / SAMPLE_STEP values, not n); only values at or above it are ranked.
    sample = totals[::SAMPLE_STEP] if len(totals) >= 2 * SAMPLE_STEP * k else totals
    floor = np.partition(sample, len(sample) - k)[len(sample) - k] if k < len(sample) else 0.0
    top = np.flatnonzero(totals >= floor) if floor > 0 else np.flatnonzero(totals)
    if len(top) > k:
        kth = np.partition(totals[top], len(top) - k)[len(top) - k]
        top = top[totals[top] >= kth]
    return top[np.lexsort((top, -totals[top]))[:k]]
