""":class:`Vectors`: the saved ANN index (``vectors.faiss``, see :mod:`.vectors`) plus the delta
of changes since it was written, searched as one.

The delta is what SQLite's ``chunk_changes`` says happened after the file's generation: chunks
added since (their embeddings, searched exactly) and chunks of the base deleted since (masked
by a FAISS ID selector). Chunk ids only grow (``AUTOINCREMENT``), so an added chunk is never in
the base. :meth:`Vectors.advanced` gives the same base with a longer delta; a writer folds a
large delta into the base (:func:`merged`) with ``remove_ids`` and ``add_with_ids``.
"""

from __future__ import annotations

import faiss
import numpy as np

from . import vectors as factory
from .recent import Recent
from .vectors import _as_matrix, describe

_EMPTY_IDS = np.empty(0, dtype=np.int64)
#: Allow-lists whose split, vectors (at most EXACT_FILTER_MAX) or selector a Vectors keeps.
FILTER_CACHE = 4


class Vectors:
    """A loaded ANN index with chunk-id labels and a delta, searchable with an allow-list."""

    def __init__(
        self,
        index: faiss.Index,
        added_ids: np.ndarray = _EMPTY_IDS,
        added: np.ndarray | None = None,
        deleted: np.ndarray = _EMPTY_IDS,
    ) -> None:
        self.index = index
        self.index_type = describe(index)
        inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
        self._ivf = isinstance(faiss.downcast_index(inner), faiss.IndexIVF)
        self._nprobe = int(faiss.downcast_index(inner).nprobe) if self._ivf else 0
        self._nlist = int(faiss.downcast_index(inner).nlist) if self._ivf else 0
        n, d = index.ntotal, index.d
        self._matrix = self._ids = None
        if not self._ivf:
            # A view of FAISS's own float32 storage (no copy; memory-mapped when loaded so):
            # valid while ``index`` lives and is not added to (Vectors never adds).
            self._matrix = faiss.rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d) if n else None
            self._ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            self._order = np.argsort(self._ids, kind="stable")
            self._sorted_ids = self._ids[self._order]
        self.added_ids = np.ascontiguousarray(added_ids, dtype=np.int64)  # sorted
        self.added = np.empty((0, d), np.float32) if added is None else _as_matrix(added, d)
        self.deleted = np.ascontiguousarray(deleted, dtype=np.int64)  # sorted, base ids
        # made once per filter, for the last few: an allow-list's split into base ids and
        # delta rows, its base vectors (exact path) or its ID selector (IVF path)
        self._split: Recent[tuple[np.ndarray, np.ndarray]] = Recent(FILTER_CACHE)
        self._filtered: Recent[np.ndarray] = Recent(FILTER_CACHE)
        self._selectors: Recent[faiss.IDSelector] = Recent(FILTER_CACHE)
        # the base's live ids for a search without allow-list, made once: the hash set of a
        # merge's worth of deleted ids (20,000 at 1M chunks) takes ~5 ms to build, 2,048
        # ~0.2 ms (IDSelectorNot holds a raw pointer to it)
        self._deleted_set = faiss.IDSelectorBatch(self.deleted) if len(self.deleted) else None
        self._live = (
            faiss.IDSelectorNot(self._deleted_set) if self._deleted_set is not None else None
        )

    @property
    def ntotal(self) -> int:
        """Live vectors: the base's, less the deleted, plus the added."""
        return int(self.index.ntotal) - len(self.deleted) + len(self.added_ids)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def delta(self) -> int:
        """Changed vectors not yet in the base (what a merge would fold in)."""
        return len(self.added_ids) + len(self.deleted)

    def advanced(self, added_ids: np.ndarray, added: np.ndarray, deleted: np.ndarray) -> Vectors:
        """These vectors after a later change: ``added`` vectors (ids above every held id) and
        ``deleted`` ids (held in the base or in the delta)."""
        deleted = np.asarray(deleted, dtype=np.int64)
        keep = ~np.isin(self.added_ids, deleted)
        ids = np.r_[self.added_ids[keep], np.asarray(added_ids, dtype=np.int64)]
        matrix = np.concatenate([self.added[keep], _as_matrix(added, self.dim)])
        order = np.argsort(ids, kind="stable")
        gone = np.union1d(self.deleted, deleted[~np.isin(deleted, self.added_ids)])
        return Vectors(self.index, ids[order], matrix[order], gone)

    # -- search ------------------------------------------------------------------------------

    def _base_rows(self, ids: np.ndarray) -> np.ndarray:
        """The base's vectors of ``ids`` (all held by the base), as stored: an IVF index of
        float16 codes gives their float16 rounding, so a filter answered exactly scores as
        its ANN search does."""
        if len(ids) == 0:
            return np.empty((0, self.dim), np.float32)
        if self._ivf:
            return self.index.reconstruct_batch(ids)
        at = np.searchsorted(self._sorted_ids, ids)
        return self._matrix[self._order[at]]

    def _held(self, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``allowed`` split into (base ids held, delta positions), dropping unknown ids."""
        return self._split.get(allowed, lambda: self._split_allowed(allowed))

    def _split_allowed(self, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        allowed = np.asarray(allowed, dtype=np.int64)
        if len(allowed) > 1 and not np.all(allowed[1:] > allowed[:-1]):
            allowed = np.unique(allowed)  # the store's allow-lists are sorted already
        in_delta = np.isin(allowed, self.added_ids)
        delta_rows = np.searchsorted(self.added_ids, allowed[in_delta])
        base = allowed[~in_delta]
        if len(self.deleted):
            base = base[~np.isin(base, self.deleted)]
        if not self._ivf and len(base):
            if len(self._sorted_ids) == 0:
                return _EMPTY_IDS, delta_rows
            at = np.minimum(np.searchsorted(self._sorted_ids, base), len(self._sorted_ids) - 1)
            base = base[self._sorted_ids[at] == base]
        return base, delta_rows

    def _allowed_rows(self, allowed: np.ndarray, base_ids: np.ndarray) -> np.ndarray:
        """The base vectors of ``base_ids`` (at most EXACT_FILTER_MAX), kept per allow-list."""
        return self._filtered.get(allowed, lambda: self._base_rows(base_ids))

    def _selector(self, allowed: np.ndarray, base_ids: np.ndarray) -> faiss.IDSelector:
        # kept: search params hold a raw pointer to it
        return self._selectors.get(allowed, lambda: faiss.IDSelectorBatch(base_ids))

    @staticmethod
    def _exact(
        queries: np.ndarray, k: int, matrix: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        labels = np.full((len(queries), k), -1, dtype=np.int64)
        if len(ids) == 0:
            return scores, labels
        kk = min(k, len(ids))
        for start in range(0, len(queries), 256):
            sims = queries[start : start + 256] @ matrix.T
            top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            top_scores = np.take_along_axis(sims, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            scores[start : start + 256, :kk] = np.take_along_axis(top_scores, order, axis=1)
            labels[start : start + 256, :kk] = ids[np.take_along_axis(top, order, axis=1)]
        return scores, labels

    def _faiss(
        self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None, wider: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if selector is None and not self._ivf:
            return self.index.search(queries, k)
        if self._ivf:
            nprobe = min(self.index.nlist, self._nprobe * wider)
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        else:
            params = faiss.SearchParameters(sel=selector)
        return self.index.search(queries, k, params=params)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, chunk ids) per query; padded with ``-inf`` / ``-1``.

        With ``allowed``, only those chunk ids are candidates and the search returns
        ``min(k, len(allowed))`` hits: a FAISS ID selector restricts the ANN search, and
        selective allow-lists (or rows that came back short) are answered exactly.
        """
        queries = _as_matrix(queries, self.dim)
        delta = self._exact(queries, k, self.added, self.added_ids)
        if allowed is None:
            base = self._faiss(queries, k, self._live)
            return _best(k, base, delta)
        base_ids, delta_rows = self._held(allowed)
        delta = self._exact(queries, k, self.added[delta_rows], self.added_ids[delta_rows])
        wanted = min(k, len(base_ids) + len(delta_rows))
        if len(base_ids) <= factory.EXACT_FILTER_MAX:
            base = self._exact(queries, k, self._allowed_rows(allowed, base_ids), base_ids)
            return _best(k, base, delta)
        selector = self._selector(allowed, base_ids)
        wider = 4
        scores, labels = _best(k, self._faiss(queries, k, selector, wider), delta)
        short = np.flatnonzero((labels >= 0).sum(axis=1) < wanted)
        while len(short) and self._ivf and self._nprobe * wider < self._nlist:
            wider *= 4  # the probed lists held too few allowed ids: probe more (all: exact)
            again = self._faiss(queries[short], k, selector, wider)
            scores[short], labels[short] = _best(k, again, (delta[0][short], delta[1][short]))
            short = short[(labels[short] >= 0).sum(axis=1) < wanted]
        if len(short):
            exact = self._exact(queries[short], k, self._base_rows(base_ids), base_ids)
            delta_short = (delta[0][short], delta[1][short])
            scores[short], labels[short] = _best(k, exact, delta_short)
        return scores, labels


def _best(k: int, *parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of several (scores, labels) results per query, padded ``-inf`` / ``-1``."""
    labels = np.concatenate([p[1] for p in parts], axis=1).astype(np.int64)
    scores = np.concatenate([p[0] for p in parts], axis=1).astype(np.float32)
    scores = np.where(labels < 0, -np.inf, scores).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)
    labels = np.take_along_axis(labels, order, axis=1)
    labels[~np.isfinite(scores)] = -1
    return scores, labels


def merged(vectors: Vectors, base: faiss.Index) -> faiss.Index:
    """``base`` (a writable copy of ``vectors.index``) with the delta folded in."""
    if len(vectors.deleted):
        base.remove_ids(faiss.IDSelectorArray(vectors.deleted))
    if len(vectors.added_ids):
        base.add_with_ids(vectors.added, vectors.added_ids)
    return base
