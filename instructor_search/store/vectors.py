"""The one factory for FAISS index types, the ``vectors.faiss`` file format, and :class:`Vectors`:
a saved index plus the delta of changes since, searched as one.

Vectors are L2-normalised, so inner product is cosine similarity. The index type is chosen by
size: exact :class:`faiss.IndexFlatIP` (in an :class:`faiss.IndexIDMap2`) up to
:data:`FLAT_MAX` vectors; above, IVF with ``nlist = 4 sqrt(n)`` lists of float16 codes
(:class:`faiss.IndexIVFScalarQuantizer`, ``QT_fp16``, not by residual: a stored vector is the
float16 rounding of the embedding, half the bytes of float32, so half the pages a reader keeps;
scores move by ~1e-4) and the smallest ``nprobe`` whose recall@10 against exact float32 search
reaches :data:`TARGET_RECALL`, *measured* on queries that are not points of the index
(:func:`held_out_queries`). Both take ``add_with_ids`` and ``remove_ids``, so a merge costs
what changed. Labels are chunk ids. (Files written before float16 hold float32 lists
(:class:`faiss.IndexIVFFlat`); they are read, searched and merged as they are.)

File format (``vectors.faiss``): a plain FAISS index file (``faiss.write_index``, so it can be
memory-mapped by ``faiss.read_index``), then a trailer, little-endian::

    magic b"ISVF" | version u16 | kind u16 (0 flat, 1 IVF) | generation i64 | count i64
    | dim u32 | crc32(index bytes) u32 | index length u64

The trailer ties the file to the SQLite ``generation`` it was built from; ``nprobe`` is part of
the serialized index, so it persists with the file. Files of version 1 (header first) read as
missing, and are rebuilt once.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..errors import IndexStoreError, InputError

log = logging.getLogger(__name__)

#: Largest collection searched exactly. Exact search over 50,000 x 384 float32 vectors takes a
#: few milliseconds per query on one core, and is always right; above it IVF is built.
FLAT_MAX = 50_000
#: IVF lists per square root of the collection size, training vectors per list, k-means rounds.
IVF_LISTS_PER_SQRT = 4
IVF_TRAIN_PER_LIST = 32
IVF_TRAIN_ITERATIONS = 10
#: nprobe values tried in order until the measured recall@10 reaches TARGET_RECALL.
NPROBE_STEPS = (4, 8, 16, 32, 64, 128, 256, 512)
TARGET_RECALL = 0.95
RECALL_SAMPLE = 200
#: Held-out queries are index vectors plus noise of this norm (then normalised): cosine ~0.7
#: to the vector they came from, about a real query's cosine to its best passage.
QUERY_NOISE = 1.0
#: Filters allowing at most this many ids are answered by exact search on those ids' vectors
#: (~4 ms per 10,000 vectors of 384 dims here).
EXACT_FILTER_MAX = 32_768

MAGIC = b"ISVF"
VERSION = 2
KIND_FLAT, KIND_IVF = 0, 1
_TRAILER = struct.Struct("<4sHHqqIIQ")
_CRC_BLOCK = 1 << 24


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


def ivf_lists(n: int) -> int:
    """``nlist`` for ``n`` vectors."""
    return max(1, round(IVF_LISTS_PER_SQRT * math.sqrt(n)))


def trained_ivf(vectors: np.ndarray) -> faiss.IndexIVFScalarQuantizer:
    """An empty IVF index of float16 codes for ``vectors``, its ``4 sqrt(n)`` lists trained
    on a sample of them (the same sample, so the same lists, every time)."""
    n, d = vectors.shape
    nlist = ivf_lists(n)
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_fp16,
        faiss.METRIC_INNER_PRODUCT, False,  # not by residual: codes are the vectors' float16
    )  # fmt: skip
    index.cp.niter = IVF_TRAIN_ITERATIONS
    index.cp.seed = 0
    # The sample is IVF_TRAIN_PER_LIST points per list on purpose: FAISS would warn on stderr
    # below its default of 39 (the bound only decides that warning).
    index.cp.min_points_per_centroid = IVF_TRAIN_PER_LIST
    sample = min(n, IVF_TRAIN_PER_LIST * nlist)
    rows = np.sort(np.random.default_rng(0).choice(n, size=sample, replace=False))
    index.train(vectors[rows])
    return index


#: Fills a trained, empty IVF index (without a direct map) with ``(ids, vectors)`` and returns
#: it; each list must hold its ids in the order of ``ids``, as :func:`add_serially` leaves them.
IvfFiller = Callable[[faiss.Index, np.ndarray, np.ndarray], faiss.Index]


def add_serially(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    """The default :data:`IvfFiller`: ``add_with_ids`` here, on FAISS's own threads."""
    index.add_with_ids(vectors, ids)
    return index


def fill_part(trained: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """One part of a parallel fill: the trained, empty index ``trained``
    (``faiss.serialize_index``) with ``(ids, vectors)`` added, serialized again."""
    index = faiss.deserialize_index(trained)
    index.add_with_ids(_as_matrix(vectors), np.ascontiguousarray(ids, dtype=np.int64))
    return faiss.serialize_index(index)


def merge_parts(index: faiss.Index, parts: Iterable[np.ndarray]) -> faiss.Index:
    """``index`` (trained, empty) with the lists of ``parts`` (:func:`fill_part` of consecutive
    slices of the ids, in order) appended: the lists a serial add of all of them makes."""
    for part in parts:
        faiss.merge_into(index, faiss.deserialize_index(part), False)
    return index


def build_vector_index(
    ids: np.ndarray,
    vectors: np.ndarray,
    *,
    flat_max: int | None = None,
    fill: IvfFiller | None = None,
) -> tuple[faiss.Index, VectorIndexInfo]:
    """Build the ANN structure for ``vectors`` labelled with ``ids`` (int64 chunk ids).

    Flat (exact) up to ``flat_max`` (default :data:`FLAT_MAX`) vectors; IVF above: lists
    trained here on a sample (:func:`trained_ivf`), filled by ``fill`` (default
    :func:`add_serially`; e.g. in parallel on a cluster), then nprobe raised until recall@10
    on held-out queries is at least :data:`TARGET_RECALL` (flat again if it never is).
    """
    vectors = _as_matrix(vectors)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) != len(vectors):
        raise InputError(f"{len(ids)} ids for {len(vectors)} vectors")
    if len(vectors) <= (FLAT_MAX if flat_max is None else flat_max):
        return _flat(ids, vectors), VectorIndexInfo("flat", 1.0)
    return tuned_ivf((fill or add_serially)(trained_ivf(vectors), ids, vectors), ids, vectors)


def tuned_ivf(
    index: faiss.Index, ids: np.ndarray, vectors: np.ndarray
) -> tuple[faiss.Index, VectorIndexInfo]:
    """The IVF ``index`` filled with ``(ids, vectors)``, given a direct map and the smallest
    nprobe of :data:`NPROBE_STEPS` whose recall@10 on held-out queries reaches
    :data:`TARGET_RECALL`; exact search instead if none does."""
    if index.ntotal != len(ids):
        raise IndexStoreError(f"the IVF lists hold {index.ntotal} of {len(ids)} vectors")
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct and remove by id
    queries = held_out_queries(vectors)
    truth = _exact_top10(vectors, ids, queries)
    recall = 0.0
    for nprobe in NPROBE_STEPS:
        index.nprobe = min(nprobe, index.nlist)
        recall = _recall(index.search(queries, truth.shape[1])[1], truth)
        log.info("IVF%d nprobe=%d: recall@10 %.4f on %d held-out queries, %d vectors",
                 index.nlist, index.nprobe, recall, len(queries), len(ids))  # fmt: skip
        if recall >= TARGET_RECALL:
            return index, VectorIndexInfo(describe(index), recall)
        if index.nprobe == index.nlist:
            break
    log.warning("IVF recall@10 %.3f < %.2f even at nprobe=%d; using exact search instead",
                recall, TARGET_RECALL, index.nprobe)  # fmt: skip
    return _flat(ids, vectors), VectorIndexInfo("flat", 1.0)


def held_out_queries(vectors: np.ndarray, sample: int = RECALL_SAMPLE, seed: int = 0) -> np.ndarray:
    """Queries that are not points of the index: a random sample of ``vectors`` plus Gaussian
    noise of norm ~:data:`QUERY_NOISE`, normalised."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    noise = rng.standard_normal((len(rows), vectors.shape[1])).astype(np.float32)
    queries = vectors[rows] + noise * (QUERY_NOISE / math.sqrt(vectors.shape[1]))
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


#: Vectors scored against all queries at once by :func:`_exact_top10` (numpy's BLAS: about 5x
#: faster here than ``faiss.IndexFlatIP.search`` for a few hundred queries).
EXACT_BLOCK = 65_536


def _exact_top10(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The ids of each query's 10 best vectors by inner product (fewer if there are fewer)."""
    k = min(10, len(vectors))
    best = np.empty((len(queries), 0), np.float32)
    rows = np.empty((len(queries), 0), np.int64)
    for start in range(0, len(vectors), EXACT_BLOCK):
        block = vectors[start : start + EXACT_BLOCK]
        scores = np.hstack([best, queries @ block.T])
        here = np.arange(start, start + len(block))
        rows = np.hstack([rows, np.broadcast_to(here, (len(queries), len(block)))])
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best, rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
    return ids[rows]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(t.tolist()) & set(f.tolist())) for t, f in zip(truth, found, strict=True)]
    return float(np.sum(hits) / truth.size)


def measure_recall_at_10(
    index: faiss.Index,
    vectors: np.ndarray,
    sample: int = RECALL_SAMPLE,
    *,
    ids: np.ndarray | None = None,
    seed: int = 0,
) -> float:
    """Mean overlap of ``index``'s top-10 with exact top-10 over ``vectors``, for held-out
    queries (:func:`held_out_queries`); ``ids`` are the labels ``index`` returns for
    ``vectors`` (row positions when omitted)."""
    vectors = _as_matrix(vectors)
    if len(vectors) == 0:
        return 1.0
    labels = np.arange(len(vectors)) if ids is None else np.asarray(ids, dtype=np.int64)
    queries = held_out_queries(vectors, sample, seed)
    truth = _exact_top10(vectors, labels, queries)
    return _recall(index.search(queries, truth.shape[1])[1], truth)


def _inner(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index) if hasattr(index, "id_map") else index


def describe(index: faiss.Index) -> str:
    """A short name of the index type: ``"flat"``, ``"ivf400,fp16,nprobe=16"`` (float16
    codes) or ``"ivf400,nprobe=16"`` (float32 lists, written before float16)."""
    inner = faiss.downcast_index(_inner(index))
    if isinstance(inner, faiss.IndexIVFScalarQuantizer):
        return f"ivf{inner.nlist},fp16,nprobe={inner.nprobe}"
    if isinstance(inner, faiss.IndexIVF):
        return f"ivf{inner.nlist},nprobe={inner.nprobe}"
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    return type(inner).__name__


def save(index: faiss.Index, path: str | os.PathLike, generation: int) -> None:
    """Write ``index`` to ``path`` atomically (temporary file in the same folder, fsync,
    rename): FAISS's own file, then the trailer."""
    path = Path(path)
    kind = KIND_IVF if isinstance(faiss.downcast_index(_inner(index)), faiss.IndexIVF) else 0
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        faiss.write_index(index, temporary)
        length, crc = _crc(temporary)
        with open(temporary, "ab") as handle:
            handle.write(
                _TRAILER.pack(MAGIC, VERSION, kind, generation, index.ntotal, index.d, crc, length)
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _crc(path: str | os.PathLike, length: int | None = None) -> tuple[int, int]:
    """(bytes read, crc32) of the first ``length`` bytes of ``path`` (all when ``None``)."""
    crc, done = 0, 0
    with open(path, "rb") as handle:
        while length is None or done < length:
            block = handle.read(_CRC_BLOCK if length is None else min(_CRC_BLOCK, length - done))
            if not block:
                break
            crc, done = zlib.crc32(block, crc), done + len(block)
    return done, crc


def _trailer(path: str | os.PathLike) -> tuple | None:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < _TRAILER.size:
                return None
            handle.seek(size - _TRAILER.size)
            trailer = _TRAILER.unpack(handle.read(_TRAILER.size))
    except OSError:
        return None
    return (*trailer, size) if trailer[0] == MAGIC else None


def read_generation(path: str | os.PathLike) -> int | None:
    """The generation in ``path``'s trailer, or ``None`` when missing or not ours (cheap)."""
    trailer = _trailer(path)
    return None if trailer is None else int(trailer[3])


def load(path: str | os.PathLike, *, mmap: bool = True) -> tuple[faiss.Index, int]:
    """Read ``path`` written by :func:`save`: ``(index, generation)``; memory-mapped (pages
    shared by every reader) unless ``mmap=False`` (a copy that can be added to).

    Raises ``FileNotFoundError`` when missing, :class:`VectorFileError` when unreadable.
    """
    size = os.stat(path).st_size
    trailer = _trailer(path)
    if trailer is None:
        raise VectorFileError(f"{path}: truncated or not an instructor-search vector file")
    _, version, kind, generation, count, dim, crc, length, _ = trailer
    if version != VERSION:
        raise VectorFileError(f"{path}: unknown vector file version {version}")
    if length != size - _TRAILER.size:
        raise VectorFileError(f"{path}: truncated ({size - _TRAILER.size} of {length} bytes)")
    if _crc(path, length)[1] != crc:
        raise VectorFileError(f"{path}: checksum mismatch")
    flags = (faiss.IO_FLAG_MMAP if kind == KIND_IVF else faiss.IO_FLAG_MMAP_IFC) if mmap else 0
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise VectorFileError(f"{path}: FAISS could not read it ({exc})") from exc
    if index.ntotal != count or index.d != dim:
        raise VectorFileError(
            f"{path}: trailer says {count}x{dim}, index is {index.ntotal}x{index.d}"
        )
    return index, int(generation)
