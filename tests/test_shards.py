"""Shards: export an index, ingest it elsewhere (real Parquet files, SQLite and FAISS), and
every kind of bad shard named by file, row or document and field."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_store import SETTINGS, item

from instructor_search.errors import IndexMismatchError, ReaderError
from instructor_search.indexer.build import BuildReport
from instructor_search.indexer.cli import cli
from instructor_search.indexer.ingest import ingest
from instructor_search.store.index import Index
from instructor_search.store.shards import MANIFEST, read_manifest

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def corpus(rng: np.random.Generator, count: int = 12) -> list:
    docs = []
    for i in range(count):
        parts = [" ".join(rng.choice(WORDS, size=5)) for _ in range(1 + i % 3)]
        docs.append(item(f"d{i:02d}.md", parts, rng, f"Title {i}", lang="en", n=i))
    return docs


@pytest.fixture
def source(tmp_path):
    rng = np.random.default_rng(1)
    with Index.create(tmp_path / "src", SETTINGS) as ix:
        ix.upsert(corpus(rng))
        ix.delete(["d03.md"])  # chunk ids with a gap
        ix.sync_derived()
    return tmp_path / "src"


@pytest.fixture
def shards(source, tmp_path):
    with Index.open(source, readonly=True) as ix:
        report = ix.export_shards(tmp_path / "shards", rows_per_file=7)
    assert len(report.files) >= 2 and report.documents == 11
    return tmp_path / "shards"


def contents(path: Path) -> dict:
    """Documents, chunks (by doc and ordinal) with their embedding bytes."""
    with Index.open(path, readonly=True) as ix:
        ids = [int(r[0]) for r in ix._db.execute("SELECT id FROM chunks ORDER BY id")]
        docs = {
            d: (ix.document(d).title, ix.document(d).source, ix.document(d).metadata, h)
            for d, h in ix.document_hashes().items()
        }
        chunks = {
            (c.doc_id, c.ordinal): (c.text, c.start, c.end, ix.embeddings([c.chunk_id]).tobytes())
            for c in ix.chunks(ids)
        }
    return {"documents": docs, "chunks": chunks}


def hits(path: Path, rng: np.random.Generator) -> list:
    queries = rng.standard_normal((5, SETTINGS.dimension)).astype(np.float32)
    found = []
    with Index.open(path, readonly=True) as ix:
        for q in queries:
            scores, labels = ix.search_vectors(q, 5)
            named = [(c.doc_id, c.ordinal) for c in ix.chunks(labels[0])]
            found.append((named, scores[0].tolist()))
        for words in ("alpha beta", "Title 4 kappa", "mu"):
            result = ix.keyword_search(words, 5)
            named = [(c.doc_id, c.ordinal) for c in ix.chunks([i for i, _ in result])]
            found.append((named, [s for _, s in result]))
    return found


def test_export_then_ingest_gives_the_same_index(source, shards, tmp_path):
    report = ingest([shards], tmp_path / "copy")
    assert report.documents_added == 11 and report.documents_failed == 0
    assert contents(tmp_path / "copy") == contents(source)
    assert hits(tmp_path / "copy", np.random.default_rng(5)) == hits(
        source, np.random.default_rng(5)
    )
    with Index.open(tmp_path / "copy", readonly=True) as ix, Index.open(source) as src:
        assert ix.document("d05.md").text == src.document("d05.md").text
        assert ix.settings == src.settings


def keyword_segments_and_settings(path: Path) -> tuple[int, dict]:
    with Index.open(path, readonly=True) as ix:
        segments = ix._db.execute("SELECT count(DISTINCT segid) FROM chunks_fts_idx").fetchone()
        settings = ix._db.execute("SELECT k, v FROM chunks_fts_config WHERE k != 'version'")
        return segments[0], dict(settings.fetchall())


def test_a_fresh_ingest_leaves_one_keyword_segment_and_fts5s_own_settings(
    source, shards, tmp_path, monkeypatch
):
    from instructor_search.indexer import ingest as ingest_module
    from instructor_search.store.writes import BULK_KEYWORD_SETTINGS, KEYWORD_SETTINGS

    monkeypatch.setattr(ingest_module, "BULK_BATCH_DOCUMENTS", 1)  # a transaction, a segment each
    ingest([shards], tmp_path / "copy")
    assert keyword_segments_and_settings(tmp_path / "copy") == (1, KEYWORD_SETTINGS)
    assert hits(tmp_path / "copy", np.random.default_rng(5)) == hits(
        source, np.random.default_rng(5)
    )
    with Index.open(tmp_path / "copy") as ix:  # a bulk load killed before its end ...
        ix._keyword_settings(BULK_KEYWORD_SETTINGS)
    with Index.open(tmp_path / "copy", readonly=True):  # ... is left so by a reader,
        assert keyword_segments_and_settings(tmp_path / "copy")[1] == BULK_KEYWORD_SETTINGS
    Index.open(tmp_path / "copy").close()  # and settled by the next writer
    assert keyword_segments_and_settings(tmp_path / "copy")[1] == KEYWORD_SETTINGS


def test_a_writer_opening_beside_a_running_load_does_not_wait_to_set_fts5_back(source):
    import sqlite3
    import time

    from instructor_search.store.writes import BULK_KEYWORD_SETTINGS, KEYWORD_SETTINGS

    with Index.open(source) as ix:  # a bulk load, still running in another process
        ix._keyword_settings(BULK_KEYWORD_SETTINGS)
    loader = sqlite3.connect(source / "index.sqlite", isolation_level=None)
    loader.execute("BEGIN IMMEDIATE")
    started = time.perf_counter()
    with Index.open(source) as ix:
        assert time.perf_counter() - started < 15  # not the 30 s busy timeout
        assert ix._db.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    assert keyword_segments_and_settings(source)[1] == BULK_KEYWORD_SETTINGS
    loader.execute("COMMIT")
    loader.close()
    Index.open(source).close()
    assert keyword_segments_and_settings(source)[1] == KEYWORD_SETTINGS


def test_ingest_again_skips_unchanged_and_replaces_changed(source, shards, tmp_path):
    ingest([shards], tmp_path / "copy")
    again = ingest([shards], tmp_path / "copy")
    assert (again.documents_unchanged, again.documents_added, again.chunks_embedded) == (11, 0, 0)
    # a changed document: new text and hash for d05.md
    rng = np.random.default_rng(9)
    with Index.open(source) as ix:
        ix.upsert([item("d05.md", ["omega omega", "psi"], rng, "New title")])
        ix.export_shards(tmp_path / "changed")
    report = ingest([tmp_path / "changed"], tmp_path / "copy")
    assert (report.documents_updated, report.documents_unchanged) == (1, 10)
    assert contents(tmp_path / "copy") == contents(source)


def test_cli_ingest_json_has_builds_keys_and_export(source, tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["export", str(source), "--shards", str(tmp_path / "s"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["chunks"] == 23
    result = runner.invoke(cli, ["ingest", str(tmp_path / "s"), "--index", str(tmp_path / "i"),
                                 "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == set(BuildReport().to_dict())
    assert (data["documents_added"], data["chunks_total"]) == (11, 23)
    for bar in ("Storing", "23/23", "Merging the keyword index", "Writing vectors.faiss"):
        assert bar in result.stderr
    again = runner.invoke(cli, ["ingest", str(tmp_path / "s"), "--index", str(tmp_path / "i"),
                                "--quiet"])  # fmt: skip
    assert again.exit_code == 0 and again.stderr == "", again.output
    assert "0 added, 0 updated, 11 unchanged" in again.stdout


def test_ingest_tells_its_progress_phase_by_phase(source, shards, tmp_path):
    events = []
    ingest([shards], tmp_path / "copy", on_progress=events.append)
    phases = [e.phase for e in events]
    assert phases == sorted(phases, key=["storing", "merging", "deriving"].index)
    storing = [e for e in events if e.phase == "storing"]
    assert storing[0].done == 0 and storing[-1].done == storing[-1].total == 23
    assert [(e.done, e.total) for e in events if e.phase != "storing"] == [(0, 1), (1, 1)] * 2
    events.clear()
    ingest([shards], tmp_path / "copy", on_progress=events.append)  # into a full index: no merge
    assert {e.phase for e in events} == {"storing", "deriving"}


def test_manifest_mismatch_is_builds_error(shards, tmp_path):
    with Index.create(tmp_path / "other", replace(SETTINGS, model_fingerprint="sha256:zzz")):
        pass
    with pytest.raises(IndexMismatchError, match="model_fingerprint"):
        ingest([shards], tmp_path / "other")


def test_manifest_not_json_or_incomplete(shards, tmp_path):
    (shards / MANIFEST).write_text("{not json")
    with pytest.raises(ReaderError, match=r"manifest\.json: not a JSON manifest"):
        ingest([shards], tmp_path / "x")
    (shards / MANIFEST).write_text(json.dumps({"format": "instructor-search-shards", "version": 1}))
    with pytest.raises(ReaderError, match="field 'model'"):
        read_manifest(shards)
    assert not (tmp_path / "x").exists()


def rewrite(file: Path, change) -> None:
    table = pq.read_table(file)
    pq.write_table(change(table), file)


def set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


def embedding_with(table: pa.Table, row: int, value: float, dim: int = SETTINGS.dimension):
    flat = table.column("embedding").combine_chunks().flatten().to_numpy().copy()
    flat[row * dim : (row + 1) * dim] = value
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)


def ordinals_with(table: pa.Table, row: int, value: int) -> pa.Array:
    values = table.column("ordinal").to_pylist()
    values[row] = value
    return pa.array(values, pa.int32())


FILE_DAMAGE = {
    "missing column": (lambda t: t.drop_columns(["title"]), "column 'title' is missing"),
    "mistyped column": (
        lambda t: set_column(t, "ordinal", t.column("ordinal").cast(pa.int64())),
        "column 'ordinal' is int64, expected int32",
    ),
    "wrong dimension": (
        lambda t: set_column(
            t,
            "embedding",
            pa.FixedSizeListArray.from_arrays(pa.array(np.ones(t.num_rows * 8, np.float32)), 8),
        ),
        "column 'embedding' is fixed_size_list<element: float>[8], "
        "expected fixed_size_list<float32>[16]",
    ),
}


@pytest.mark.parametrize("damage", sorted(FILE_DAMAGE))
def test_bad_file_is_one_failure_and_the_rest_is_stored(shards, tmp_path, damage):
    change, message = FILE_DAMAGE[damage]
    first = sorted(shards.glob("*.parquet"))[0]
    lost = set(pq.read_table(first).column("doc_id").to_pylist())
    rewrite(first, change)
    report = ingest([shards], tmp_path / "copy")
    assert report.documents_failed == 1
    (failure,) = report.failures
    assert failure.path == str(first) and message in failure.reason
    with Index.open(tmp_path / "copy", readonly=True) as ix:
        assert not lost & set(ix.document_hashes())
        assert report.documents_added == 11 - len(lost) == len(ix.document_hashes())


def test_truncated_parquet_file(shards, tmp_path):
    first = sorted(shards.glob("*.parquet"))[0]
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    report = ingest([shards], tmp_path / "copy")
    assert report.documents_failed == 1
    assert report.failures[0].path == str(first)
    assert "unreadable Parquet file" in report.failures[0].reason


DOCUMENT_DAMAGE = {
    "NaN": (lambda t, r: set_column(t, "embedding", embedding_with(t, r, np.nan)),
            "field 'embedding' holds NaN or infinity"),
    "infinity": (lambda t, r: set_column(t, "embedding", embedding_with(t, r, np.inf)),
                 "field 'embedding' holds NaN or infinity"),
    "zero vector": (lambda t, r: set_column(t, "embedding", embedding_with(t, r, 0.0)),
                    "field 'embedding' holds a zero vector"),
    "duplicate ordinal": (lambda t, r: set_column(t, "ordinal", ordinals_with(t, r, 0)),
                          "field 'ordinal' must be 0..2: repeated [0]"),
    "missing ordinal": (lambda t, r: set_column(t, "ordinal", ordinals_with(t, r, 7)),
                        "field 'ordinal' must be 0..2: missing [2]"),
}  # fmt: skip


@pytest.mark.parametrize("damage", sorted(DOCUMENT_DAMAGE))
def test_bad_document_is_counted_and_not_half_stored(shards, tmp_path, damage):
    change, message = DOCUMENT_DAMAGE[damage]
    file, row = None, None
    for candidate in sorted(shards.glob("*.parquet")):  # the last chunk of a 3-chunk document
        table = pq.read_table(candidate)
        ordinals = table.column("ordinal").to_pylist()
        if 2 in ordinals:
            file, row = candidate, ordinals.index(2)
            break
    doc_id = pq.read_table(file).column("doc_id")[row].as_py()
    rewrite(file, lambda t: change(t, row))
    report = ingest([shards], tmp_path / "copy")
    assert (report.documents_failed, report.documents_added) == (1, 10)
    (failure,) = report.failures
    assert failure.path == str(file) and f"document {doc_id!r}" in failure.reason
    assert message in failure.reason and failure.line == row - 1
    with Index.open(tmp_path / "copy", readonly=True) as ix:
        assert doc_id not in ix.document_hashes()
        (n,) = ix._db.execute("SELECT count(*) FROM chunks WHERE doc_id = ?", [doc_id]).fetchone()
        assert n == 0


def test_document_text_rebuilt_from_chunks_is_the_spans_written_in_order():
    import random

    from instructor_search.documents import Chunk, spelled_text

    def painted(chunks):  # every chunk's text written over its span, in order
        text = [" "] * max((c.end for c in chunks), default=0)
        for c in chunks:
            text[c.start : c.end] = c.text
        return "".join(text)

    rng = random.Random(7)
    for _ in range(500):
        chunks, start = [], rng.randrange(4)
        for ordinal in range(rng.randrange(1, 6)):
            size = rng.randrange(0, 9)
            text = "".join(rng.choice("abc") for _ in range(size))
            chunks.append(Chunk(ordinal, text, start, start + size, 0))
            start = max(0, start + rng.randrange(-3, 10))  # overlaps, gaps, shorter spans
        assert spelled_text(chunks) == painted(chunks)


def test_shards_read_ahead_keep_order_raise_errors_and_stop_with_the_caller():
    from instructor_search.indexer.ingest import _ahead

    assert list(_ahead(iter(range(1000)), 7)) == list(range(1000))

    def failing():
        yield from range(5)
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for value in _ahead(failing(), 2):
            got.append(value)
    assert got == list(range(5))  # everything before the error, in order
    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    reader = _ahead(endless(), 3)
    assert [next(reader) for _ in range(4)] == [0, 1, 2, 3]
    reader.close()  # the caller stops: so does the thread, a few items ahead at most
    assert len(produced) <= 4 + 3 + 2
    assert "shard-reader" not in [t.name for t in threading.enumerate()]
