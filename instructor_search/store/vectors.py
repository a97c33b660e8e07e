"""The one factory for FAISS index types, and the ``vectors.faiss`` file format.

Vectors are L2-normalised, so inner product is cosine similarity. The index type is chosen by
size: exact :class:`faiss.IndexFlatIP` up to :data:`FLAT_MAX` vectors, HNSW above, with its
recall@10 against exact search *measured* after building (never assumed). Labels are chunk ids
(an :class:`faiss.IndexIDMap2` wraps either type).

File format (``vectors.faiss``), little-endian::

    magic b"ISVF" | version u16 | reserved u16 | generation i64 | count i64 | dim u32
    | crc32(payload) u32 | payload length u64 | payload = faiss.serialize_index(index)

The header ties the file to the SQLite ``generation`` it was built from; HNSW's ``efSearch``
is part of the serialized index, so it persists with the file.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..errors import IndexStoreError, InputError
from ..files import read_header, write_atomically

log = logging.getLogger(__name__)

#: Largest collection searched exactly. Exact search over 50,000 x 384 float32 vectors takes a
#: few milliseconds per query on one core, and is always right; above it HNSW is built.
FLAT_MAX = 50_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
#: efSearch values tried in order until the measured recall@10 reaches TARGET_RECALL.
EF_SEARCH_STEPS = (64, 128, 256, 512)
TARGET_RECALL = 0.95
RECALL_SAMPLE = 200
#: Filters allowing at most this many ids are answered by exact search on those ids' vectors
#: (~4 ms per 10,000 vectors of 384 dims here); HNSW with a selector misses many of them when
#: they are a small fraction of the index (10% of 100k: 85 of 100 hits found at efSearch 100).
EXACT_FILTER_MAX = 32_768

MAGIC = b"ISVF"
VERSION = 1
_HEADER = struct.Struct("<4sHHqqIIQ")


class VectorFileError(IndexStoreError):
    """``vectors.faiss`` is unreadable, truncated or not ours; it can be rebuilt from SQLite."""


@dataclass(frozen=True)
class VectorIndexInfo:
    """What kind of ANN structure was built, and its measured recall@10 (``1.0`` when exact)."""

    index_type: str
    recall_at_10: float | None


def _as_matrix(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2 or (dim is not None and matrix.shape[1] != dim):
        raise InputError(f"expected vectors of shape (n, {dim}), got {np.shape(vectors)}")
    return matrix


def _flat(ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(ids):
        index.add_with_ids(vectors, ids)
    return index


def build_vector_index(
    ids: np.ndarray, vectors: np.ndarray, *, flat_max: int | None = None
) -> tuple[faiss.Index, VectorIndexInfo]:
    """Build the ANN structure for ``vectors`` labelled with ``ids`` (int64 chunk ids).

    Flat (exact) up to ``flat_max`` (default :data:`FLAT_MAX`) vectors; HNSW above, with
    efSearch raised until recall@10 measured on a sample of its own vectors is at least 0.95
    (flat again if it never is).
    """
    vectors = _as_matrix(vectors)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) != len(vectors):
        raise InputError(f"{len(ids)} ids for {len(vectors)} vectors")
    if len(vectors) <= (FLAT_MAX if flat_max is None else flat_max):
        return _flat(ids, vectors), VectorIndexInfo("flat", 1.0)
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index = faiss.IndexIDMap2(hnsw)
    index.add_with_ids(vectors, ids)
    recall = 0.0
    for ef in EF_SEARCH_STEPS:
        hnsw.hnsw.efSearch = ef
        recall = measure_recall_at_10(index, vectors, ids=ids)
        log.info("HNSW%d efSearch=%d: recall@10 %.4f on %d vectors", HNSW_M, ef, recall, len(ids))
        if recall >= TARGET_RECALL:
            return index, VectorIndexInfo(describe(index), recall)
    log.warning(
        "HNSW recall@10 %.3f < %.2f even at efSearch=%d; using exact search instead",
        recall,
        TARGET_RECALL,
        EF_SEARCH_STEPS[-1],
    )
    return _flat(ids, vectors), VectorIndexInfo("flat", 1.0)


def describe(index: faiss.Index) -> str:
    """A short name of the index type: ``"flat"`` or ``"hnsw32,ef=128"``."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if isinstance(inner, faiss.IndexHNSW):
        return f"hnsw{inner.hnsw.nb_neighbors(1)},ef={inner.hnsw.efSearch}"
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    return type(inner).__name__


def measure_recall_at_10(
    index: faiss.Index,
    vectors: np.ndarray,
    sample: int = RECALL_SAMPLE,
    *,
    ids: np.ndarray | None = None,
    seed: int = 0,
) -> float:
    """Mean overlap of ``index``'s top-10 with exact ``IndexFlatIP`` top-10 on the same vectors.

    Queries are a random sample of ``vectors`` themselves; ``ids`` are the labels ``index``
    returns for ``vectors`` (row positions when omitted).
    """
    vectors = _as_matrix(vectors)
    if len(vectors) == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    queries = vectors[rows]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    k = min(10, len(vectors))
    _, truth = exact.search(queries, k)
    labels = np.arange(len(vectors)) if ids is None else np.asarray(ids)
    truth = labels[truth]
    _, found = index.search(queries, k)
    hits = [len(set(t.tolist()) & set(f.tolist())) for t, f in zip(truth, found, strict=True)]
    return float(np.sum(hits) / truth.size)


def save(index: faiss.Index, path: str | os.PathLike, generation: int) -> None:
    """Write ``index`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    payload = faiss.serialize_index(index)
    header = _HEADER.pack(
        MAGIC, VERSION, 0, generation, index.ntotal, index.d, zlib.crc32(payload), payload.size
    )
    write_atomically(path, [header, payload.data])


def read_generation(path: str | os.PathLike) -> int | None:
    """The generation in ``path``'s header, or ``None`` when missing or not ours (cheap)."""
    header = read_header(path, _HEADER, MAGIC)
    return None if header is None else int(header[3])


def load(path: str | os.PathLike) -> tuple[faiss.Index, int]:
    """Read ``path`` written by :func:`save`: ``(index, generation)``.

    Raises ``FileNotFoundError`` when missing, :class:`VectorFileError` when unreadable.
    """
    data = Path(path).read_bytes()
    if len(data) < _HEADER.size:
        raise VectorFileError(f"{path}: truncated ({len(data)} bytes)")
    magic, version, _, generation, count, dim, crc, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise VectorFileError(f"{path}: not an instructor-search vector file")
    if version != VERSION:
        raise VectorFileError(f"{path}: unknown vector file version {version}")
    payload = np.frombuffer(data, dtype=np.uint8, offset=_HEADER.size)
    if payload.size != length:
        raise VectorFileError(f"{path}: truncated ({payload.size} of {length} payload bytes)")
    if zlib.crc32(payload) != crc:
        raise VectorFileError(f"{path}: checksum mismatch")
    try:
        index = faiss.deserialize_index(payload)
    except RuntimeError as exc:
        raise VectorFileError(f"{path}: FAISS could not read it ({exc})") from exc
    if index.ntotal != count or index.d != dim:
        raise VectorFileError(
            f"{path}: header says {count}x{dim}, index is {index.ntotal}x{index.d}"
        )
    return index, int(generation)


class Vectors:
    """A loaded ANN index with chunk-id labels, searchable with or without an allow-list."""

    def __init__(self, index: faiss.Index) -> None:
        if not hasattr(index, "id_map"):
            raise InputError("expected an IndexIDMap2 labelled with chunk ids")
        self.index = index
        self.index_type = describe(index)
        inner = faiss.downcast_index(index.index)
        self._hnsw = isinstance(inner, faiss.IndexHNSW)
        self._ef_search = int(inner.hnsw.efSearch) if self._hnsw else 0
        storage = faiss.downcast_index(inner.storage) if self._hnsw else inner
        n, d = index.ntotal, index.d
        # A view of FAISS's own float32 storage (no copy): valid while ``index`` lives and is
        # not added to (Vectors never adds).
        self._matrix = faiss.rev_swig_ptr(storage.get_xb(), n * d).reshape(n, d) if n else None
        self._ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        self._order = np.argsort(self._ids, kind="stable")
        self._sorted_ids = self._ids[self._order]

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def _positions(self, allowed: np.ndarray) -> np.ndarray:
        """Row positions of the ``allowed`` chunk ids that this index holds."""
        allowed = np.asarray(allowed, dtype=np.int64)
        if len(allowed) > 1 and not np.all(allowed[1:] > allowed[:-1]):
            allowed = np.unique(allowed)  # the store's allow-lists are sorted already
        if len(self._sorted_ids) == 0 or len(allowed) == 0:
            return np.empty(0, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted_ids, allowed), len(self._sorted_ids) - 1)
        return self._order[at[self._sorted_ids[at] == allowed]]

    def _exact(
        self, queries: np.ndarray, k: int, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        labels = np.full((len(queries), k), -1, dtype=np.int64)
        if len(rows) == 0 or self._matrix is None:
            return scores, labels
        sub, sub_ids = self._matrix[rows], self._ids[rows]
        kk = min(k, len(rows))
        for start in range(0, len(queries), 256):
            sims = queries[start : start + 256] @ sub.T
            top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            top_scores = np.take_along_axis(sims, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            scores[start : start + 256, :kk] = np.take_along_axis(top_scores, order, axis=1)
            labels[start : start + 256, :kk] = sub_ids[np.take_along_axis(top, order, axis=1)]
        return scores, labels

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, chunk ids) per query; padded with ``-inf`` / ``-1``.

        With ``allowed``, only those chunk ids are candidates and the search returns
        ``min(k, len(allowed))`` hits: a FAISS ID selector restricts the ANN search, and
        selective allow-lists (or HNSW rows that came back short) are answered exactly.
        """
        queries = _as_matrix(queries, self.dim)
        if allowed is None:
            scores, labels = self.index.search(queries, k)
        else:
            rows = self._positions(allowed)
            if len(rows) <= EXACT_FILTER_MAX:
                return self._exact(queries, k, rows)
            keep = np.ascontiguousarray(self._ids[rows])
            selector = faiss.IDSelectorBatch(keep)  # held here: params keep a raw pointer
            if self._hnsw:  # explore in proportion to what the filter leaves out
                wider = -(-2 * k * self.ntotal // len(rows))
                params = faiss.SearchParametersHNSW(
                    sel=selector, efSearch=min(self.ntotal, max(self._ef_search, wider))
                )
            else:
                params = faiss.SearchParameters(sel=selector)
            scores, labels = self.index.search(queries, k, params=params)
            short = np.flatnonzero((labels >= 0).sum(axis=1) < min(k, len(rows)))
            if len(short):
                scores[short], labels[short] = self._exact(queries[short], k, rows)
        scores = np.where(labels < 0, -np.inf, scores).astype(np.float32)
        return scores, labels.astype(np.int64)
