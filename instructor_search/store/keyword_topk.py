"""The exact top ``k`` rows of a keyword query without summing every posting (MaxScore).

A row's score is a sum over the query's terms of the term's contribution to that row
(:mod:`.keywords`). Common words hold postings in most rows but contribute little, and summing
them all is what a query at a million chunks spends its time on. MaxScore (Turtle and Flood,
1995) leaves them out where they cannot matter: with the terms taken from the rarest, once the
rarer terms give ``k`` rows a partial score of at least ``theta``, a row can only reach the top
``k`` if its partial score plus the other terms' largest contributions is at least ``theta``;
rows that no rarer term touches, and touched rows too far below, are never scored. These
partial sums are float32 (half the memory to scatter into: at 1M chunks and k = 100 a query
took 5.5-6.1 ms on average instead of 8.0-9.8, ``bench/RESULTS.md``), and every comparison
allows for their rounding. The candidates then take the other terms one at a time (looked
up, not summed everywhere), and after each those that can no longer reach the ``k``-th best
partial sum are dropped, so the longest postings are searched for a few rows only. The rows
left are summed over every term in the query's order, the order of :func:`numpy.bincount`
over all postings, so their scores are the same doubles.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

#: Top-k selection bounds the k-th best score from every SAMPLE_STEP-th row first.
SAMPLE_STEP = 8
#: Partial sums are taken in another order than the final ones: prune with this margin.
MARGIN = 1e-9
#: The relative error of a float32 contribution (``TermPostings.approximations``; a few
#: roundings of 2**-24 each), and of each float32 addition to a partial sum.
FLOAT32_EPSILON = 2.0**-24
APPROXIMATE_ERROR = 16 * FLOAT32_EPSILON
#: Rough cost, in additions of one posting, of scoring one candidate row over all terms.
TERM_COST = 32


class TermPostings:
    """One query term: the row positions holding it (ascending), an upper bound of its
    contribution to any row, and its contributions: exact (float64, the same operations for
    any of its postings, ``at``: positions into ``rows``), or all of them in float32, to find
    candidates with (computed once).

    ``contributions(at, rows)`` gets the postings' row positions as ``numpy.intp`` (numpy
    gathers and scatters with native indices about twice as fast as with the file's int32);
    ``approximate(rows)`` gives every posting's contribution in float32, each within
    :data:`APPROXIMATE_ERROR` of the exact one (relative); without it they are the exact ones
    rounded. ``held`` is the bytes of the copies made for it (0 where ``rows`` is a view of
    the file).
    """

    def __init__(
        self,
        rows: np.ndarray,
        bound: float,
        contributions: Callable[[np.ndarray | None, np.ndarray], np.ndarray],
        held: int = 0,
        approximate: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.rows, self.bound, self.held = rows, bound, held
        self._contributions = contributions
        self._approximate = approximate
        self._all: np.ndarray | None = None
        self._approximations: np.ndarray | None = None
        self.grown: Callable[[int], None] | None = None  # told the bytes it computes

    def positions(self) -> np.ndarray:
        """``rows`` as ``numpy.intp``: a copy made for each use and not kept (0.1 ms per 200k
        postings), so the cache's memory holds contributions, which cost far more to make."""
        return self.rows.astype(np.intp, copy=False)

    def scores(self, at: np.ndarray | None = None) -> np.ndarray:
        """The exact contributions at posting positions ``at`` (all postings: computed once)."""
        if at is not None:
            if self._all is not None:
                return self._all[at]
            return self._contributions(at, self.rows[at].astype(np.intp))
        if self._all is None:
            self._all = self._contributions(None, self.positions())
            self._grew(self._all.nbytes)
        return self._all

    def approximations(self) -> np.ndarray:
        """Every posting's contribution in float32 (computed once)."""
        if self._approximations is None:
            if self._approximate is None:
                self._approximations = self.scores().astype(np.float32)
            else:
                self._approximations = self._approximate(self.positions())
            self._grew(self._approximations.nbytes)
        return self._approximations

    def _grew(self, nbytes: int) -> None:
        if self.grown is not None:
            self.grown(nbytes)

    @property
    def nbytes(self) -> int:
        """Memory of its own: the copies made for it, and its contributions once computed."""
        computed = (self._all, self._approximations)
        return self.held + sum(0 if a is None else a.nbytes for a in computed)


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
    # Partial sums in float32 (half the memory to scatter into): each within ``error`` of
    # the exact sum (relative; contributions are positive), which the pruning allows for.
    error = APPROXIMATE_ERROR + len(terms) * FLOAT32_EPSILON
    low = (1 - MARGIN) * (1 - error)  # float32 partial x low <= exact partial
    partial = np.zeros(size, dtype=np.float32)  # rows not allowed are never added to
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
            theta = _raised(partial, unraised, k, theta, low)
            unraised = []
        if theta > 0 and rest[used] < theta * (1 - MARGIN):  # the other terms alone fall short
            left = np.count_nonzero(partial >= (theta * (1 - MARGIN) - rest[used]) * (1 - error))
            if len(term.rows) > TERM_COST * left:  # cheaper to score those rows than add it
                break
        rows = term.positions()
        if mask is None:
            np.add.at(partial, rows, term.approximations())  # a term's rows are distinct
        else:  # only the allowed postings are added
            at = np.flatnonzero(mask[rows])
            rows = rows[at]
            np.add.at(partial, rows, term.approximations()[at])
        used += 1
        if len(rows) >= k:  # the k-th best of its rows bounds the k-th best of all
            unraised.append(rows)
    theta = _raised(partial, unraised, k, theta, low)
    floor = theta * (1 - MARGIN) - rest[used]  # a row below it cannot reach the k-th best
    candidates = np.flatnonzero(partial >= floor * (1 - error) if floor > 0 else partial > 0)
    approximate = partial[candidates].astype(np.float64)
    below, score = approximate * (error + MARGIN), approximate  # score - below <= exact
    for position in range(used, len(order)):  # the other terms: candidates pruned as they come
        score += _contributions(terms[order[position]], candidates)
        if len(score) > k:  # a partial sum is a lower bound of its row's total
            lower = score - below
            theta = max(theta, float(np.partition(lower, len(lower) - k)[len(lower) - k]))
        keep = score + below >= theta * (1 - MARGIN) - rest[position + 1]
        if not keep.all():
            candidates, score, below = candidates[keep], score[keep], below[keep]
    totals = np.zeros(len(candidates))
    for term in terms:  # in query order: the additions a full sum makes, the same doubles
        totals += _contributions(term, candidates)
    best = best_positions(totals, k)
    if ties and len(best) == k:  # every row tied with the k-th is a candidate
        tied = np.flatnonzero(totals == totals[best[-1]])
        best = np.concatenate([best, tied[~np.isin(tied, best)]])
    return candidates[best], totals[best]


def _raised(partial: np.ndarray, rows: list[np.ndarray], k: int, theta: float, low: float) -> float:
    """``theta`` (>= 0) raised to ``low`` times the ``k``-th largest partial score among each
    of ``rows`` where that is above it (only the values above ``theta`` are partitioned)."""
    for held in rows:
        values = partial.take(held)
        above = values[values * low > theta]
        if len(above) >= k:
            theta = max(theta, float(np.partition(above, len(above) - k)[len(above) - k]) * low)
    return theta


def _contributions(term: TermPostings, rows: np.ndarray) -> np.ndarray:
    """``term``'s exact contribution to each of ``rows`` (ascending, intp; 0 where it is
    absent), computed for the postings found among them: the shorter of the two is searched
    for in the other."""
    out = np.zeros(len(rows))
    if len(term.rows) > len(rows):
        at, hit = _found(term.rows, rows.astype(term.rows.dtype, copy=False))
        out[hit] = term.scores(at[hit])
    elif len(rows):
        at, hit = _found(rows, term.rows)
        out[at[hit]] = term.scores(np.flatnonzero(hit))
    return out


def _found(values: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``wanted`` is in the ascending, non-empty ``values`` (0 where absent),
    and whether it is there."""
    at = np.searchsorted(values, wanted)
    at[at == len(values)] = 0
    return at, values[at] == wanted


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
