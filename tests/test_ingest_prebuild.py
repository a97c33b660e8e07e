"""The IVF index a fresh ingest builds beside its writes (:mod:`.vector_prebuild`) is the one
built from SQLite afterwards, or, when the stored vectors are not the shards' (a bad document),
built from SQLite; a fresh ingest killed at any point and rerun gives a clean build's index; the
keyword matrix read on two connections (:mod:`.keyword_instances`) is the one read on one."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from test_shards import contents, corpus, embedding_with, hits, rewrite, set_column
from test_store import SETTINGS

from instructor_search.indexer import ingest as ingest_module
from instructor_search.indexer.ingest import ingest
from instructor_search.store import (
    keyword_file,
    keyword_instances,
    keywords,
    vector_prebuild,
    vectors,
)
from instructor_search.store.connection import KEYWORD_WEIGHTS
from instructor_search.store.index import Index
from instructor_search.store.writes import KEYWORD_SETTINGS

REBUILT = "is missing or older than the change log"


@pytest.fixture
def shards(tmp_path, monkeypatch):
    monkeypatch.setattr(vectors, "FLAT_MAX", 100)  # IVF at this corpus's ~240 chunks
    monkeypatch.setattr(vector_prebuild, "FLAT_MAX", 100)
    with Index.create(tmp_path / "src", SETTINGS) as ix:
        ix.upsert(corpus(np.random.default_rng(3), count=120))
        ix.export_shards(tmp_path / "shards", rows_per_file=50)
    # One file's rows shuffled: documents interleaved, chunks out of ordinal order.
    file = sorted((tmp_path / "shards").glob("*.parquet"))[1]
    table = pq.read_table(file)
    pq.write_table(table.take(np.random.default_rng(0).permutation(table.num_rows)), file)
    return tmp_path / "shards"


def saved_index(path: Path) -> bytes:
    index, _ = vectors.load(path / "vectors.faiss", mmap=False)
    return faiss.serialize_index(index).tobytes()


def rebuilt_from_sqlite(path: Path) -> bytes:
    (path / "vectors.faiss").unlink()
    with Index.open(path) as ix:
        ix.sync_derived()
    return saved_index(path)


def test_prebuilt_ivf_is_the_one_built_from_sqlite(shards, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        report = ingest([shards], tmp_path / "copy")
    assert report.documents_added == 120 and report.documents_failed == 0
    assert REBUILT not in caplog.text  # the prebuilt index was taken
    with Index.open(tmp_path / "copy", readonly=True) as ix:
        assert ix._collection()["index_type"].startswith("ivf")
    before = hits(tmp_path / "copy", np.random.default_rng(5))
    assert saved_index(tmp_path / "copy") == rebuilt_from_sqlite(tmp_path / "copy")
    assert hits(tmp_path / "copy", np.random.default_rng(5)) == before


def test_bad_document_falls_back_to_sqlite(shards, tmp_path, caplog):
    file = sorted(shards.glob("*.parquet"))[0]
    rewrite(file, lambda t: set_column(t, "embedding", embedding_with(t, 3, float("nan"))))
    with caplog.at_level(logging.INFO):
        report = ingest([shards], tmp_path / "copy")
    assert report.documents_failed == 1
    assert REBUILT in caplog.text
    assert saved_index(tmp_path / "copy") == rebuilt_from_sqlite(tmp_path / "copy")


def test_stored_order_is_read_shards_order(shards):
    from instructor_search.store.shards import read_manifest, read_shard, shard_files

    manifest = read_manifest(shards)
    files = shard_files(shards)
    stored = [v for f in files for _, _, v in read_shard(f, manifest)]
    expected = vector_prebuild.stored_order_vectors(files, SETTINGS.dimension)
    assert np.array_equal(np.concatenate(stored), expected)


def matrix_arrays(matrix) -> tuple:
    return (
        matrix.generation, matrix.tokenize, matrix.vocabulary, matrix.chunk_ids.tolist(),
        matrix.lengths.tolist(), matrix.offsets.tolist(), matrix.rows.tolist(),
        matrix.freq.tobytes(), matrix.lengths.dtype, matrix.rows.dtype, matrix.offsets.dtype,
    )  # fmt: skip


def test_keyword_matrix_read_on_two_connections_is_the_one_read_on_one(
    shards, tmp_path, monkeypatch
):
    ingest([shards], tmp_path / "copy")
    monkeypatch.setattr(keyword_instances, "SLICE_INSTANCES", 50)  # many term slices
    built = {}
    for readers in (1, 2):
        monkeypatch.setattr(keyword_instances, "READERS", readers)
        with Index.open(tmp_path / "copy") as ix, ix._snapshot():
            built[readers] = keywords.build(ix._db.conn, "chunks_fts", KEYWORD_WEIGHTS, 1)
    assert len(keyword_instances._slices([1] * 100)) > 1
    assert matrix_arrays(built[1]) == matrix_arrays(built[2])
    saved = keyword_file.load(tmp_path / "copy" / "keywords.bm25")
    assert matrix_arrays(saved)[1:] == matrix_arrays(built[2])[1:]


def test_a_second_connection_that_sees_other_rows_is_not_used(shards, tmp_path):
    ingest([shards], tmp_path / "copy")
    with Index.open(tmp_path / "copy") as ix, ix._snapshot():
        assert keyword_instances._same_view(ix._db.conn, "chunks_fts") is not None
        with Index.open(tmp_path / "copy") as writer:  # commits beside the snapshot
            writer.upsert(corpus(np.random.default_rng(9), count=2))
        assert keyword_instances._same_view(ix._db.conn, "chunks_fts") is None


CHILD = r"""
import os, signal, sys
sys.path.insert(0, {tests!r})
from instructor_search.indexer import ingest
from instructor_search.store import keyword_file, vector_prebuild, vectors
from instructor_search.store.writes import IndexWrites

vectors.FLAT_MAX = vector_prebuild.FLAT_MAX = 100
ingest.BATCH_DOCUMENTS = ingest.BULK_BATCH_DOCUMENTS = 10
point = {point!r}

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if point == "after the third batch":
    upsert, calls = IndexWrites.upsert, []
    def counted(self, batch):
        calls.append(1)
        if len(calls) == 4:
            die()
        return upsert(self, batch)
    IndexWrites.upsert = counted
elif point == "merging the keyword segments at the end of the load":
    settings = IndexWrites._keyword_settings
    def merging(self, values, optimize=False):
        if optimize:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO chunks_fts (chunks_fts) VALUES ('optimize')")
            die()
        return settings(self, values, optimize)
    IndexWrites._keyword_settings = merging
elif point == "after vectors.faiss, before keywords.bm25":
    keyword_file.save = die
elif point == "before vectors.faiss is written":
    vectors.save = die
ingest.ingest([{shards!r}], {path!r})
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        "after the third batch",
        "merging the keyword segments at the end of the load",
        "before vectors.faiss is written",
        "after vectors.faiss, before keywords.bm25",
    ],
)
def test_fresh_ingest_killed_then_rerun_gives_a_clean_builds_hits(shards, tmp_path, point):
    path = tmp_path / "killed"
    code = CHILD.format(
        tests=str(Path(__file__).parent), point=point, shards=str(shards), path=str(path)
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    with Index.open(path, readonly=True) as ix:  # it opens, as left
        assert ix.stats().chunks > 0
    ingest([shards], path)
    ingest([shards], tmp_path / "clean")
    assert hits(path, np.random.default_rng(5)) == hits(
        tmp_path / "clean", np.random.default_rng(5)
    )
    assert contents(path) == contents(tmp_path / "clean")
    with Index.open(path, readonly=True) as ix:  # FTS5's own settings, not the bulk load's
        held = dict(ix._db.execute("SELECT k, v FROM chunks_fts_config").fetchall())
        assert {k: held[k] for k in KEYWORD_SETTINGS} == KEYWORD_SETTINGS


def log_rows(path: Path) -> tuple[int, int, int]:
    with Index.open(path, readonly=True) as ix:
        rows = ix._db.execute("SELECT count(*) FROM chunk_changes").fetchone()[0]
        since = ix._db.execute("SELECT changes_since FROM collection").fetchone()[0]
        return rows, since, ix.generation


def test_no_change_log_without_derived_files(shards, tmp_path, monkeypatch):
    """Nothing can be brought forward by the log while no derived file exists: a fresh
    ingest's writes skip it and move ``changes_since`` instead; once the files exist, writes
    log again (and readers apply the log)."""
    monkeypatch.setattr(ingest_module, "BULK_BATCH_DOCUMENTS", 10)  # a fresh ingest's batches
    with Index.create(tmp_path / "copy", SETTINGS) as ix:
        ingest_module.ingest_into(ix, [shards], sync=False)
    rows, since, generation = log_rows(tmp_path / "copy")
    assert rows == 0 and since == generation > 1
    changed = corpus(np.random.default_rng(9), count=2)
    with Index.open(tmp_path / "copy") as ix:
        ix.sync_derived()
        ix.upsert(changed)
    rows, since, generation = log_rows(tmp_path / "copy")
    assert rows > 0 and since == generation - 1
    with Index.open(tmp_path / "copy", readonly=True) as ix:  # the files, brought forward
        for doc, chunks, vecs in changed:
            _, labels = ix.search_vectors(vecs, 1)
            found = [(c.doc_id, c.ordinal, c.text) for c in ix.chunks(labels[:, 0])]
            assert found == [(doc.id, c.ordinal, c.text) for c in chunks]
        words = keywords.query_words(changed[0][1][0].text)
        assert ix.keyword_search(" ".join(words), 10) == ix._fts5_search(words, 10, None)
