"""The build pipeline and the build/info/delete commands, on real files, SQLite and FAISS."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from instructor_search import IndexMismatchError, IndexStoreError, ReaderError
from instructor_search.indexer.build import BuildSettings, build
from instructor_search.indexer.cli import cli
from instructor_search.store.index import Index

REPORT_KEYS = {
    "documents_added",
    "documents_updated",
    "documents_deleted",
    "documents_unchanged",
    "documents_failed",
    "chunks_embedded",
    "documents_total",
    "chunks_total",
    "seconds",
}


def write_corpus(root: Path, count: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    topics = ["comets", "mortgages", "sourdough", "contracts", "vaccines", "b-trees"]
    for n in range(count):
        topic = topics[n % len(topics)]
        (root / f"doc{n:03d}.md").write_text(
            f"# Notes on {topic} {n}\n\n" + f"This note is about {topic}. " * 8 + f"Number {n}.\n"
        )
    return root


@pytest.fixture()
def settings(tiny_path) -> BuildSettings:
    return BuildSettings(model=str(tiny_path), commit_documents=4)


def test_embedding_pools_do_not_change_what_is_stored(tmp_path, settings, tiny):
    """Pools smaller than a document, or than a commit, map every vector to its own chunk."""
    corpus = write_corpus(tmp_path / "corpus", count=9)
    stored = []
    for name, pool_chunks in (("one-pool", 1024), ("small-pools", 1)):
        index = tmp_path / name
        pooled = dataclasses.replace(settings, pool_chunks=pool_chunks)
        report = build([corpus], index, pooled, model=tiny)
        assert report.documents_added == 9 and report.chunks_embedded == report.chunks_total
        with Index.open(index, readonly=True) as opened:
            ids = list(range(1, report.chunks_total + 1))
            stored.append(
                ([(r.doc_id, r.text) for r in opened.chunks(ids)], opened.embeddings(ids))
            )
    (chunks, vectors), (small_chunks, small_vectors) = stored
    assert chunks == small_chunks
    np.testing.assert_allclose(vectors, small_vectors, atol=1e-5)


def test_build_then_noop_then_incremental(tmp_path, settings, tiny):
    corpus = write_corpus(tmp_path / "corpus")
    index = tmp_path / "index"
    first = build([corpus], index, settings, model=tiny)
    assert (first.documents_added, first.documents_total) == (6, 6)
    assert first.chunks_embedded == first.chunks_total > 0
    assert (first.backend, first.precision) == (tiny.backend, "fp32")  # reported with the counts
    assert set(first.to_dict()) >= REPORT_KEYS

    again = build([corpus], index, settings, model=tiny)
    assert (again.chunks_embedded, again.documents_unchanged, again.documents_added) == (0, 6, 0)
    assert again.backend is None  # nothing embedded: no encoder to report

    (corpus / "doc001.md").write_text("# Changed\n\nEntirely new words about telescopes.")
    (corpus / "doc002.md").unlink()
    (corpus / "new.txt").write_text("A fresh note\n\nAbout index funds and fees.")
    third = build([corpus], index, settings, model=tiny)
    assert (third.documents_added, third.documents_updated, third.documents_deleted) == (1, 1, 1)
    assert third.documents_unchanged == 4 and third.documents_total == 6
    with Index.open(index, readonly=True) as opened:
        assert "doc002.md" not in opened.document_hashes()
        assert opened.document("doc001.md").title == "Changed"
        assert [cid for cid, _ in opened.keyword_search("telescopes", 5)]
        assert not opened.keyword_search("sourdough 2", 5) or all(
            record.doc_id != "doc002.md"
            for record in opened.chunks([cid for cid, _ in opened.keyword_search("sourdough", 20)])
        )


def test_bad_files_are_reported_and_lose_nothing(tmp_path, settings, tiny):
    corpus = write_corpus(tmp_path / "corpus", count=3)
    index = tmp_path / "index"
    build([corpus], index, settings, model=tiny)
    (corpus / "doc000.md").write_bytes(b"\xff\xfe\x00binary\x00junk")  # was good, now broken
    (corpus / "empty.txt").write_text("  \n")
    (corpus / "records.jsonl").write_text('{"_id": "r1", "text": "fine"}\n{broken\n')
    report = build([corpus], index, settings, model=tiny)
    assert report.documents_failed == 3
    assert {f.path for f in report.failures} == {"doc000.md", "empty.txt", "records.jsonl"}
    assert report.documents_deleted == 0  # the old doc000.md is kept, not lost
    assert report.documents_added == 1 and report.documents_total == 4


def test_another_model_or_instruction_pair_is_refused(tmp_path, settings, tiny):
    corpus = write_corpus(tmp_path / "corpus", count=2)
    index = tmp_path / "index"
    build([corpus], index, settings, model=tiny)
    other = BuildSettings(
        model=str(settings.model), document_instruction="Represent the law text: "
    )
    with pytest.raises(IndexMismatchError, match="--rebuild"):
        build([corpus], index, other, model=tiny)
    rebuilt = build(
        [corpus], index, BuildSettings(**{**other.__dict__, "rebuild": True}), model=tiny
    )
    assert rebuilt.documents_added == 2


def test_missing_source_and_foreign_folder_are_clear_errors(tmp_path, settings, tiny):
    with pytest.raises(ReaderError, match="does not exist"):
        build([tmp_path / "nope"], tmp_path / "index", settings, model=tiny)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(IndexStoreError, match="no index"):
        build([write_corpus(tmp_path / "c", 1)], foreign, settings, model=tiny)
    assert not (foreign / "index.sqlite").exists()


def test_cli_build_info_delete(tmp_path, tiny_path):
    corpus = write_corpus(tmp_path / "corpus", count=3)
    index = tmp_path / "index"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["build", str(corpus), "--index", str(index), "--model", str(tiny_path), "--json", "-q"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= REPORT_KEYS and report["documents_added"] == 3

    info = json.loads(runner.invoke(cli, ["info", str(index), "--json"]).stdout)
    assert info["documents"] == 3 and info["model"] == str(tiny_path.resolve())
    assert info["index_type"] == "flat" and info["recall_at_10"] == 1.0
    assert {"type", "folder", "size"} <= set(info["fields"])  # the filterable fields, listed
    for key in (
        "chunks",
        "model_fingerprint",
        "dimension",
        "document_instruction",
        "query_instruction",
        "chunk_tokens",
        "chunk_overlap",
        "schema_version",
        "size_bytes",
        "built_at",
    ):
        assert key in info

    deleted = runner.invoke(cli, ["delete", str(index), "doc000.md", "--json"])
    assert json.loads(deleted.stdout)["documents_deleted"] == 1
    missing = runner.invoke(cli, ["info", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "instructor-index build" in missing.output
    assert not (tmp_path / "nowhere").exists()


def _committed_documents(index: Path) -> int:
    try:
        with sqlite3.connect(f"file:{index / 'index.sqlite'}?mode=ro", uri=True, timeout=30) as db:
            return db.execute("SELECT count(*) FROM documents").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_kill_9_at_any_point_keeps_the_last_committed_state(tmp_path, tiny_path):
    corpus = write_corpus(tmp_path / "corpus", count=240)
    index = tmp_path / "index"
    command = [
        sys.executable,
        "-m",
        "instructor_search.indexer.cli",
        "build",
        str(corpus),
        "--index",
        str(index),
        "--model",
        str(tiny_path),
        "--commit-every",
        "8",
        "--pool-chunks",
        "16",
        "-q",
        "--json",
    ]
    for wait_for in (8, 64, 160):  # kill after at least this many documents are committed
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _committed_documents(index) < wait_for and process.poll() is None:
            assert time.monotonic() < deadline, "the build made no progress"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        with Index.open(index, readonly=True) as opened:  # opens and searches its last state
            committed = opened.stats().documents
            assert committed >= wait_for
            assert opened.keyword_search("comets", 3)
            hashes = opened.document_hashes()
            records = opened.chunks(list(range(1, opened.stats().chunks + 200)))
            assert {r.doc_id for r in records} == set(hashes)  # no document without its chunks
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["documents_added"] == 240 - committed  # nothing committed is embedded again
    assert report["documents_total"] == 240


def test_cli_search_shows_hits_and_json(tmp_path, tiny_path):
    corpus = write_corpus(tmp_path / "corpus", count=6)
    index = tmp_path / "index"
    runner = CliRunner()
    assert (
        runner.invoke(
            cli, ["build", str(corpus), "--index", str(index), "--model", str(tiny_path), "-q"]
        ).exit_code
        == 0
    )
    human = runner.invoke(
        cli, ["search", str(index), "notes about sourdough", "-k", "2", "--mode", "keyword"]
    )
    assert human.exit_code == 0, human.output
    assert "sourdough" in human.output.lower() and " 1. " in human.output
    hits = json.loads(
        runner.invoke(
            cli, ["search", str(index), "sourdough", "--json", "--where", "type=md"]
        ).stdout
    )
    assert hits and set(hits[0]) >= {
        "rank",
        "score",
        "chunk_id",
        "doc_id",
        "title",
        "source",
        "text",
        "metadata",
        "span",
    }
    bad = runner.invoke(cli, ["search", str(index), "x", "--where", "colour=red"])
    assert bad.exit_code == 1 and "known fields" in bad.output


def test_parse_where_builds_lists_and_ranges():
    from instructor_search.indexer.cli import parse_where

    where = parse_where(("type=pdf", "type=md", "year>=2020", "year<2024", "folder=law"))
    assert where == {"type": ["pdf", "md"], "year": {">=": 2020, "<": 2024}, "folder": "law"}


def test_add_documents_from_python(tmp_path, settings, tiny):
    from instructor_search import Document
    from instructor_search.indexer.build import add_documents

    index = tmp_path / "index"
    docs = [
        Document(id="a", text="Comets have icy nuclei.", title="Comets", metadata={"year": 2024}),
        Document(id="b", text="Index funds track a market index."),
    ]
    first = add_documents(docs, index, settings, model=tiny)
    assert (first.documents_added, first.documents_total) == (2, 2)
    again = add_documents(
        [docs[0], Document(id="b", text="Changed text.")], index, settings, model=tiny
    )
    assert (again.documents_unchanged, again.documents_updated, again.chunks_embedded) == (1, 1, 1)
    with Index.open(index, readonly=True) as opened:
        assert opened.document("b").text == "Changed text."
        assert opened.document("a").metadata["year"] == 2024


def test_parse_where_reads_booleans_and_quoted_text():
    from instructor_search.indexer.cli import parse_where

    assert parse_where(("draft=true", 'title="1984"', "code='007'", "n=7")) == {
        "draft": True,
        "title": "1984",
        "code": "007",
        "n": 7,
    }
