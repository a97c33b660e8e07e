"""A build killed early loses little (the journal), its progress is honest, and what a killed
create or a refused build leaves behind never blocks the next command. Real builds of the tiny
model, real subprocesses killed with SIGKILL, real SQLite."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from instructor_search.errors import InputError
from instructor_search.indexer.build import BuildSettings, build
from instructor_search.indexer.chunking import ChunkSettings
from instructor_search.indexer.cli import cli
from instructor_search.indexer.embedding import EMBED_SLICE
from instructor_search.indexer.journal import JOURNAL_FILE
from instructor_search.indexer.progress import CHUNKING, EMBEDDING, READING, BuildProgress
from instructor_search.store.index import INDEX_FILE, Index

SMALL_CHUNKS = ("--chunk-tokens", "32", "--chunk-overlap", "4")
STEMS = [
    "comet",
    "loan",
    "bread",
    "deed",
    "virus",
    "tree",
    "river",
    "stone",
    "glass",
    "wire",
    "salt",
    "moon",
]
WORDS = [word for stem in STEMS for word in (stem, stem + "s", stem + "ed", "un" + stem)]


def write_corpus(root: Path, documents: int, words: int = 60, seed: int = 7) -> Path:
    """Documents of distinct random prose (no two rank alike for a query)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for n in range(documents):
        text = " ".join(
            rng.choice(WORDS) + ("." if rng.random() < 0.1 else "") for _ in range(words)
        )
        (root / f"doc{n:03d}.md").write_text(f"# Note {n} on {rng.choice(WORDS)}\n\n{text}\n")
    return root


def _count(file: Path, sql: str) -> int:
    if not file.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{file}?mode=ro", uri=True, timeout=30) as db:
            return db.execute(sql).fetchone()[0]
    except sqlite3.Error:  # not created yet, or being created
        return 0


def stored_progress(index: Path) -> int:
    """Chunks a build has kept so far: committed to the index, or held in its journal."""
    committed = _count(index / INDEX_FILE, "SELECT count(*) FROM chunks")
    return committed + _count(index / JOURNAL_FILE, "SELECT count(*) FROM embedded")


def contents(index: Path) -> dict[str, tuple[str, list[tuple]]]:
    """doc id -> (content hash, [(ordinal, text, start, end, embedding)] by ordinal)."""
    with sqlite3.connect(f"file:{index / INDEX_FILE}?mode=ro", uri=True) as db:
        found = {d: (h, []) for d, h in db.execute("SELECT id, content_hash FROM documents")}
        rows = db.execute('SELECT doc_id, ordinal, text, start, "end", embedding FROM chunks')
        for doc_id, ordinal, text, start, end, blob in rows:
            vector = np.frombuffer(blob, dtype=np.float32)
            found[doc_id][1].append((ordinal, text, start, end, vector))
    return {d: (h, sorted(chunks, key=lambda r: r[0])) for d, (h, chunks) in found.items()}


def top_k(index: Path, queries: np.ndarray, k: int = 10) -> list[list[tuple[str, int, float]]]:
    with Index.open(index, readonly=True) as opened:
        scores, ids = opened.search_vectors(queries, k)
        ranked = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            records = {r.chunk_id: r for r in opened.chunks(row_ids.tolist())}
            ranked.append(
                [
                    (records[i].doc_id, records[i].ordinal, float(s))
                    for s, i in zip(row_scores, row_ids.tolist(), strict=True)
                ]
            )
    return ranked


def assert_same_ranking(
    got: list[tuple[str, int, float]], want: list[tuple[str, int, float]]
) -> None:
    """The same hits with the same scores (1e-5); only hits tied within that may swap."""
    assert {(d, o) for d, o, _ in got} == {(d, o) for d, o, _ in want}
    np.testing.assert_allclose([s for *_, s in got], [s for *_, s in want], atol=1e-5)
    for (d1, o1, s1), (d2, o2, _) in zip(got, want, strict=True):
        if (d1, o1) != (d2, o2):
            assert any(abs(s1 - s) < 1e-5 for dd, oo, s in want if (dd, oo) == (d1, o1))


def test_progress_counts_chunks_to_embed_and_moves_before_the_first_commit(
    tmp_path, tiny_path, tiny
):
    corpus = write_corpus(tmp_path / "corpus", documents=60)
    index = tmp_path / "index"
    events: list[BuildProgress] = []
    committed_at_first_advance: list[int] = []

    def record(event: BuildProgress) -> None:
        if event.phase == EMBEDDING and event.done and not committed_at_first_advance:
            with Index.open(index, readonly=True) as opened:
                committed_at_first_advance.append(opened.stats().documents)
        events.append(event)

    settings = BuildSettings(model=str(tiny_path), chunk=ChunkSettings(32, 4))
    report = build([corpus], index, settings, model=tiny, on_progress=record)
    assert report.chunks_total > EMBED_SLICE  # one pool, several slices
    phases = [e.phase for e in events]
    assert phases[0] == READING and events[0].done == 1  # moves from the first file
    assert phases == sorted(phases, key=[READING, CHUNKING, EMBEDDING].index)
    reading = [e for e in events if e.phase == READING]
    assert reading[-1].done == reading[-1].total == 60  # the phase ends, its bar stops
    chunking = [e for e in events if e.phase == CHUNKING]
    assert [e.done for e in chunking] == list(range(1, 61)) and {e.total for e in chunking} == {60}
    embedding = [e for e in events if e.phase == EMBEDDING]
    assert {e.total for e in embedding} == {report.chunks_embedded} == {report.chunks_total}
    assert [e.done for e in embedding] == sorted({e.done for e in embedding})
    assert embedding[0].done == 0 and embedding[-1].done == report.chunks_total
    assert embedding[1].done == EMBED_SLICE  # a slice at a time ...
    assert committed_at_first_advance == [0]  # ... before the pool's first commit

    (corpus / "doc000.md").write_text("# Changed\n\nA new text about rivers and stones.\n")
    events.clear()
    again = build([corpus], index, settings, model=tiny, on_progress=record)
    assert {e.total for e in events if e.phase == EMBEDDING} == {again.chunks_embedded} != {0}
    assert again.chunks_embedded < report.chunks_total  # the total is what is left to embed


@pytest.mark.slow
def test_kill_9_early_four_times_then_the_rerun_embeds_less_and_equals_a_clean_build(
    tmp_path, tiny_path, tiny
):
    corpus = write_corpus(tmp_path / "corpus", documents=500)
    # the killed builds are subprocesses; the clean build and the final rerun embed in this
    # one, with the same model, backend, precision and chunking
    settings = BuildSettings(model=str(tiny_path), chunk=ChunkSettings(32, 4), precision="fp32")
    base = [sys.executable, "-m", "instructor_search.indexer.cli", "build", str(corpus)]
    base += ["--model", str(tiny_path), *SMALL_CHUNKS, "-q", "--json"]
    base += ["--backend", tiny.backend, "--precision", "fp32"]
    clean_index, index = tmp_path / "clean", tmp_path / "index"
    total = build([corpus], clean_index, settings, model=tiny).chunks_total
    assert total > 10 * EMBED_SLICE  # 10% of the build is more than a slice

    kept = 0
    for share in (0.10, 0.15, 0.20, 0.25):  # kill at 10%, 15%, 20%, 25% of the whole build
        target = max(int(share * total), kept + 1)
        process = subprocess.Popen(
            [*base, "--index", str(index)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 300
        while stored_progress(index) < target and process.poll() is None:
            assert time.monotonic() < deadline, "the build made no progress"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        now = stored_progress(index)
        assert now >= target > kept  # what was kept survived the kill, and this run added to it
        kept = now
        assert kept < total  # killed early, not after the end

    report = build([corpus], index, settings, model=tiny).to_dict()
    assert report["chunks_total"] == total
    assert report["chunks_embedded"] < total  # less than a full build ...
    assert report["chunks_embedded"] <= total - int(0.25 * total)  # ... by what the kills kept
    assert not (index / JOURNAL_FILE).exists()  # emptied once committed, then removed

    final, reference = contents(index), contents(clean_index)
    assert final.keys() == reference.keys()
    for doc_id, (content_hash, rows) in reference.items():
        assert final[doc_id][0] == content_hash
        assert [r[:4] for r in final[doc_id][1]] == [r[:4] for r in rows]
        np.testing.assert_allclose(
            np.stack([r[4] for r in final[doc_id][1]]), np.stack([r[4] for r in rows]), atol=1e-5
        )
    queries = tiny.embed(
        ["comets and rivers", "glass wire stones", "a loan for bread", "virus trees"], ""
    )
    for got, want in zip(top_k(index, queries), top_k(clean_index, queries), strict=True):
        assert_same_ranking(got, want)


# -- what a failed command leaves behind ---------------------------------------------------------


@pytest.mark.parametrize("leftover", ["empty file", "no tables", "no collection row", "temporary"])
def test_a_half_created_index_never_blocks_the_next_command(tmp_path, tiny_path, leftover):
    """What an index create killed in its first milliseconds leaves (by this version: only a
    temporary file; by older ones: an index.sqlite with nothing in it) is finished by the next
    build; info and search say there is no index yet instead of refusing it as foreign."""
    corpus = write_corpus(tmp_path / "corpus", documents=2)
    index = tmp_path / "index"
    index.mkdir()
    file = index / (INDEX_FILE if leftover != "temporary" else f"{INDEX_FILE}.creating-99999")
    file.write_bytes(b"")
    if leftover in ("no tables", "no collection row"):
        with sqlite3.connect(file) as db:
            db.execute("PRAGMA journal_mode = WAL")
            if leftover == "no collection row":
                db.execute("CREATE TABLE _migrations (name TEXT)")
                db.execute("CREATE TABLE collection (id INTEGER PRIMARY KEY)")
    runner = CliRunner()
    info = runner.invoke(cli, ["info", str(index)])
    assert info.exit_code == 1 and "instructor-index build" in info.output
    assert "not an instructor-search index" not in info.output
    built = runner.invoke(
        cli, ["build", str(corpus), "--index", str(index), "--model", str(tiny_path), "-q"]
    )
    assert built.exit_code == 0, built.output
    assert sorted(p.name for p in index.iterdir() if not p.name.startswith(f"{INDEX_FILE}-")) == [
        INDEX_FILE,
        "keywords.bm25",
        "vectors.faiss",
    ]
    assert json.loads(runner.invoke(cli, ["info", str(index), "--json"]).stdout)["documents"] == 2


def test_a_damaged_or_foreign_database_is_never_replaced_unasked(tmp_path, tiny_path):
    corpus = write_corpus(tmp_path / "corpus", documents=1)
    index = tmp_path / "index"
    index.mkdir()
    with sqlite3.connect(index / INDEX_FILE) as db:
        db.execute("CREATE TABLE photos (id INTEGER)")
        db.execute("INSERT INTO photos VALUES (1)")
    built = CliRunner().invoke(
        cli, ["build", str(corpus), "--index", str(index), "--model", str(tiny_path), "-q"]
    )
    assert built.exit_code == 1 and "not an instructor-search index" in built.output
    with sqlite3.connect(index / INDEX_FILE) as db:
        assert db.execute("SELECT count(*) FROM photos").fetchone()[0] == 1


@pytest.mark.parametrize(
    "options",
    [
        ["--chunk-tokens", "5", "--chunk-overlap", "0"],
        ["--chunk-tokens", "5"],
        ["--chunk-overlap", "-1"],
        ["--chunk-tokens", "100", "--chunk-overlap", "100"],
        ["--batch-size", "0"],
        ["--commit-every", "0"],
        ["--pool-chunks", "-3"],
    ],
)
def test_refused_settings_write_nothing(tmp_path, tiny_path, options):
    corpus = write_corpus(tmp_path / "corpus", documents=2)
    index = tmp_path / "index"
    runner = CliRunner()
    refused = runner.invoke(
        cli, ["build", str(corpus), "--index", str(index), "--model", str(tiny_path), *options]
    )
    assert refused.exit_code == 1 and "Error:" in refused.output, refused.output
    assert not index.exists()
    built = runner.invoke(
        cli, ["build", str(corpus), "--index", str(index), "--model", str(tiny_path), "-q"]
    )
    assert built.exit_code == 0, built.output  # the default build is not refused afterwards


def test_a_chunk_window_the_model_cannot_hold_is_refused_before_the_index_exists(
    tmp_path, tiny, tiny_path
):
    corpus = write_corpus(tmp_path / "corpus", documents=1)
    index = tmp_path / "index"
    long_instruction = "Represent " + "the very long and winding instruction " * 200 + ":"
    settings = BuildSettings(model=str(tiny_path), document_instruction=long_instruction)
    with pytest.raises(InputError, match="too small"):
        build([corpus], index, settings, model=tiny)
    assert not index.exists() or not any(index.iterdir())
    with pytest.raises(InputError, match="backend"):
        build([corpus], index, BuildSettings(model=str(tiny_path), backend="gpu"))
    assert not index.exists() or not any(index.iterdir())
