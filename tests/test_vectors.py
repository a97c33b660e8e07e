"""vectors.py and vector_search.py against brute force: exact search is exact, IVF recall is
measured independently, a saved index plus a delta answers as a rebuilt one."""

from __future__ import annotations

from itertools import pairwise

import faiss
import numpy as np
import pytest

from instructor_search.errors import IndexStoreError
from instructor_search.store import vectors
from instructor_search.store.vector_search import Vectors, merged
from instructor_search.store.vectors import (
    VectorFileError,
    build_vector_index,
    load,
    measure_recall_at_10,
    read_generation,
    save,
)


def normalised(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Random-ish vectors around 200 centres, like embeddings of a multi-topic corpus."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim))
    return normalised(centres[rng.integers(0, 200, n)] + 0.5 * rng.standard_normal((n, dim)))


def near(matrix: np.ndarray, n: int, seed: int, cos: float = 0.9) -> np.ndarray:
    """Queries that are not stored vectors: each at cosine ``cos`` to a random stored one
    (about how close a real query is to its best document)."""
    rng = np.random.default_rng(seed)
    source = matrix[rng.choice(len(matrix), n)]
    noise = rng.standard_normal(source.shape)
    noise -= (noise * source).sum(axis=1, keepdims=True) * source
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return normalised(cos * source + np.sqrt(1 - cos**2) * noise)


def brute_force(queries: np.ndarray, matrix: np.ndarray, ids: np.ndarray, k: int):
    sims = queries @ matrix.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), ids[order]


def as_stored(matrix: np.ndarray) -> np.ndarray:
    """What an IVF index stores of ``matrix``: its float16 rounding."""
    return matrix.astype(np.float16).astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return sum(hits) / truth.size


def test_flat_is_exact():
    rng = np.random.default_rng(1)
    matrix = normalised(rng.standard_normal((3000, 32)))
    ids = rng.permutation(100_000)[:3000].astype(np.int64)  # labels are chunk ids, not rows
    index, info = build_vector_index(ids, matrix)
    assert info == vectors.VectorIndexInfo("flat", 1.0)
    assert vectors.describe(index) == "flat"
    queries = normalised(rng.standard_normal((20, 32)))
    scores, labels = Vectors(index).search(queries, 10)
    want_scores, want_labels = brute_force(queries, matrix, ids, 10)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert measure_recall_at_10(index, matrix, ids=ids) == 1.0


def test_flat_pads_and_filters():
    rng = np.random.default_rng(2)
    matrix = normalised(rng.standard_normal((50, 8)))
    ids = np.arange(100, 150, dtype=np.int64)
    searcher = Vectors(build_vector_index(ids, matrix)[0])
    query = matrix[:1]
    scores, labels = searcher.search(query, 60)
    assert (labels[0, :50] >= 0).all() and (labels[0, 50:] == -1).all()
    assert np.isneginf(scores[0, 50:]).all()
    allowed = np.array([101, 120, 149, 9999])  # 9999 is not in the index
    scores, labels = searcher.search(query, 5, allowed)
    _, want = brute_force(query, matrix[[1, 20, 49]], ids[[1, 20, 49]], 3)
    assert labels[0, :3].tolist() == want[0].tolist() and labels[0, 3:].tolist() == [-1, -1]
    empty = Vectors(build_vector_index(np.empty(0, np.int64), np.empty((0, 8), np.float32))[0])
    assert empty.search(query, 3)[1].tolist() == [[-1, -1, -1]]


@pytest.fixture(scope="module")
def ivf():
    matrix = clustered(60_000, 64)
    ids = np.arange(60_000, dtype=np.int64) * 7 + 3
    index, info = build_vector_index(ids, matrix)
    return index, info, matrix, ids


def test_ivf_above_flat_max_and_recall_is_measured_on_held_out_queries(ivf):
    index, info, matrix, ids = ivf
    assert len(ids) > vectors.FLAT_MAX
    assert info.index_type == f"ivf{vectors.ivf_lists(60_000)},fp16,nprobe={index.nprobe}"
    assert info.recall_at_10 is not None and info.recall_at_10 >= 0.95
    # the lists hold each vector's float16 rounding (half of float32's bytes)
    stored = faiss.downcast_index(index).reconstruct_batch(ids[[0, 7, 59_999]])
    np.testing.assert_array_equal(stored, as_stored(matrix[[0, 7, 59_999]]))
    held_out = vectors.held_out_queries(matrix)
    assert not np.isin(held_out.view("V256"), matrix.view("V256")).any()  # not index points
    # Independently of measure_recall_at_10: other fresh queries vs numpy.
    queries = near(matrix, 300, seed=7)
    _, found = index.search(queries, 10)
    _, truth = brute_force(queries, matrix, ids, 10)
    assert recall(found, truth) >= 0.95


def test_ivf_filtered_search(ivf):
    index, _, matrix, ids = ivf
    searcher = Vectors(index)
    rng = np.random.default_rng(8)
    queries = near(matrix, 20, seed=8)
    # selective: answered exactly, over the stored vectors
    rows = rng.choice(len(ids), 12, replace=False)
    _, labels = searcher.search(queries, 10, ids[rows])
    _, truth = brute_force(queries, as_stored(matrix[rows]), ids[rows], 10)
    np.testing.assert_array_equal(labels, truth)
    # broad: FAISS selector; always k hits, all allowed, recall vs brute force on the subset
    rows = np.sort(rng.choice(len(ids), 40_000, replace=False))
    _, labels = searcher.search(queries, 10, ids[rows])
    assert (labels >= 0).all() and np.isin(labels, ids[rows]).all()
    _, truth = brute_force(queries, matrix[rows], ids[rows], 10)
    assert recall(labels, truth) >= 0.9


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_base_plus_delta_answers_as_the_current_set(kind, ivf, tmp_path):
    if kind == "ivf":
        index, _, matrix, ids = ivf
        path = tmp_path / "v.faiss"
        save(index, path, generation=1)
        index, _ = load(path)  # memory-mapped, as readers use it
    else:
        matrix = clustered(3000, 64, seed=5)
        ids = np.arange(3000, dtype=np.int64) * 2 + 1
        index, _ = build_vector_index(ids, matrix)
    rng = np.random.default_rng(11)
    gone = np.sort(rng.choice(ids, 300, replace=False))
    new_ids = ids.max() + 1 + np.arange(200, dtype=np.int64)
    new = clustered(200, 64, seed=6)
    first = Vectors(index).advanced(new_ids[:120], new[:120], gone[:200])
    current = first.advanced(new_ids[120:], new[120:], np.r_[gone[200:], new_ids[:20]])
    live = ~np.isin(ids, gone)
    every_ids = np.r_[ids[live], new_ids[20:]]
    every = np.concatenate([matrix[live], new[20:]])
    assert current.ntotal == len(every_ids) and current.delta == 180 + 300
    queries = near(every, 30, seed=12)
    _, truth = brute_force(queries, every, every_ids, 10)
    _, labels = current.search(queries, 10)
    assert not np.isin(labels, np.r_[gone, new_ids[:20]]).any()
    assert recall(labels, truth) >= (1.0 if kind == "flat" else 0.95)
    allowed = np.sort(np.r_[every_ids[::97], gone[:5]])  # deleted ids in a filter never come back
    _, labels = current.search(queries, 10, allowed)
    stored = np.r_[as_stored(matrix[live]), new[20:]] if kind == "ivf" else every  # delta: exact
    _, truth = brute_force(queries, stored[::97], every_ids[::97], 10)
    np.testing.assert_array_equal(labels, truth)
    base = load(path, mmap=False)[0] if kind == "ivf" else build_vector_index(ids, matrix)[0]
    folded = Vectors(merged(current, base))
    assert folded.delta == 0 and folded.ntotal == len(every_ids)
    _, again = folded.search(queries, 10)
    np.testing.assert_array_equal(again, current.search(queries, 10)[1])


def test_save_load_roundtrip_keeps_generation_and_nprobe(tmp_path, ivf):
    index, info, matrix, _ = ivf
    path = tmp_path / "vectors.faiss"
    save(index, path, generation=42)
    assert read_generation(path) == 42
    loaded, generation = load(path)
    assert generation == 42 and loaded.ntotal == index.ntotal
    assert vectors.describe(loaded) == info.index_type  # nprobe travels with the file
    np.testing.assert_array_equal(loaded.search(matrix[:5], 10)[1], index.search(matrix[:5], 10)[1])
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.faiss"]  # no temp file left behind


def test_unreadable_files(tmp_path):
    matrix = normalised(np.random.default_rng(3).standard_normal((100, 16)))
    path = tmp_path / "vectors.faiss"
    save(build_vector_index(np.arange(100), matrix)[0], path, generation=3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + data[-vectors._TRAILER.size :])
    with pytest.raises(VectorFileError, match="truncated"):
        load(path)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VectorFileError, match="truncated"):
        load(path)
    path.write_bytes(data[:10])
    with pytest.raises(VectorFileError, match="truncated"):
        load(path)
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(VectorFileError):
        load(path)
    assert read_generation(path) is None
    path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    with pytest.raises(VectorFileError, match="checksum"):
        load(path)
    assert issubclass(VectorFileError, IndexStoreError)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.faiss")
    assert read_generation(tmp_path / "missing.faiss") is None


def test_falls_back_to_flat_when_recall_is_low(monkeypatch):
    monkeypatch.setattr(vectors, "TARGET_RECALL", 1.01)  # unreachable
    matrix = clustered(2000, 16, seed=4)
    index, info = build_vector_index(np.arange(2000), matrix, flat_max=100)
    assert info.index_type == "flat" and info.recall_at_10 == 1.0
    assert isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)


def list_ids(index: faiss.Index) -> list[list[int]]:
    lists = faiss.extract_index_ivf(index).invlists
    return [
        faiss.rev_swig_ptr(lists.get_ids(n), lists.list_size(n)).tolist()
        for n in range(lists.nlist)
    ]


def test_ivf_filled_in_parts_and_merged_is_the_serial_index():
    matrix = clustered(3000, 16, seed=9)
    ids = np.random.default_rng(9).permutation(100_000)[:3000].astype(np.int64)

    def in_parts(index: faiss.Index, ids: np.ndarray, rows: np.ndarray) -> faiss.Index:
        trained, cuts = faiss.serialize_index(index), [0, 700, 701, 2500, 3000]
        parts = [vectors.fill_part(trained, ids[a:b], rows[a:b]) for a, b in pairwise(cuts)]
        return vectors.merge_parts(index, parts)

    serial, serial_info = build_vector_index(ids, matrix, flat_max=1000)
    merged, merged_info = build_vector_index(ids, matrix, flat_max=1000, fill=in_parts)
    assert serial_info == merged_info and serial_info.index_type.startswith("ivf")
    assert list_ids(merged) == list_ids(serial)  # same lists, same ids, same order
    queries = near(matrix, 50, seed=10)
    for k in (1, 10):
        np.testing.assert_array_equal(merged.search(queries, k)[1], serial.search(queries, k)[1])
    merged.remove_ids(ids[:5])  # the direct map is set on the merged lists too
    assert merged.ntotal == 2995


def test_a_filler_that_loses_vectors_is_an_error():
    matrix = clustered(2000, 16, seed=4)
    ids = np.arange(2000, dtype=np.int64)
    with pytest.raises(IndexStoreError, match="1000 of 2000"):
        build_vector_index(
            ids,
            matrix,
            flat_max=100,
            fill=lambda i, d, v: vectors.add_serially(i, d[:1000], v[:1000]),
        )
