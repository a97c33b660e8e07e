"""``build --engine ray``: the same index as a local build, on a real local Ray instance.

One Ray session serves the module (``ray.init(num_cpus=2)``: a start costs seconds); builds
use one worker (one actor claims one CPU, leaving one to Ray Data). The model is the tiny
checkpoint, in fp32 on torch, so both engines do the same arithmetic.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from click.testing import CliRunner

from instructor_search.indexer.build import BuildSettings, build
from instructor_search.indexer.chunking import ChunkSettings
from instructor_search.indexer.cli import cli
from instructor_search.search.retriever import Retriever
from instructor_search.store import vectors
from instructor_search.store.index import Index

ray = pytest.importorskip("ray", reason="pip install 'instructor-search[distributed]'")
from test_vectors import list_ids  # noqa: E402

from instructor_search.engines import ray_engine  # noqa: E402
from instructor_search.engines.ray_engine import DISTRIBUTED, RaySettings  # noqa: E402
from instructor_search.engines.ray_workers import RayFiller  # noqa: E402

pytestmark = pytest.mark.slow

TINY = Path(__file__).parent / "fixtures" / "instructor-tiny"
SETTINGS = BuildSettings(model=str(TINY), backend="torch", precision="fp32", pool_chunks=1)
#: Two documents per Ray batch: the corpus is several batches, so faults land mid-build.
ENGINE = RaySettings(workers=1, documents_per_task=2)
TOPICS = ["comets", "mortgages", "sourdough", "contracts", "vaccines", "b-trees", "tides"]
QUERIES = ["how do comets get their tails", "fixed rate loans", "bread starter", "tree index"]


def write_corpus(root: Path, count: int = 10) -> Path:
    root.mkdir(parents=True)
    for n in range(count):
        topic = TOPICS[n % len(TOPICS)]
        words = " ".join(
            f"{topic} note {n} sentence {i} explains a detail." for i in range(8 + 9 * n)
        )
        (root / f"doc{n:02d}.md").write_text(f"# About {topic} {n}\n\n{words}\n", encoding="utf-8")
    return root


def contents(path: Path) -> dict:
    """Documents (title, source, metadata, hash) and chunks (text, span, vector) by position."""
    with Index.open(path, readonly=True) as ix:
        ids = [int(r[0]) for r in ix._db.execute("SELECT id FROM chunks ORDER BY id")]
        docs = {
            d: (ix.document(d).title, ix.document(d).source, ix.document(d).metadata, h)
            for d, h in ix.document_hashes().items()
        }
        tokens = dict(ix._db.execute("SELECT id, token_count FROM chunks").fetchall())
        chunks = {
            (c.doc_id, c.ordinal): (
                c.text, c.start, c.end, tokens[c.chunk_id], ix.embeddings([c.chunk_id])[0]
            )
            for c in ix.chunks(ids)
        }  # fmt: skip
    return {"documents": docs, "chunks": chunks}


def assert_same_index(got: Path, want: Path) -> None:
    """Same documents, chunk texts, spans and token counts; vectors equal to float32 rounding."""
    a, b = contents(got), contents(want)
    assert a["documents"] == b["documents"]
    assert a["chunks"].keys() == b["chunks"].keys()
    for key, (*fields, vector) in a["chunks"].items():
        assert fields == list(b["chunks"][key][:4]), key
        np.testing.assert_allclose(vector, b["chunks"][key][4], rtol=0, atol=1e-6)
    assert all(c[3] > 0 for c in a["chunks"].values())  # counted, not the shards' missing 0


def top10(path: Path) -> list:
    with Retriever(path, str(TINY), backend="torch", precision="fp32") as retriever:
        return [
            [(hit.doc_id, hit.span) for hit in retriever.search(q, k=10, mode="dense")]
            for q in QUERIES
        ]


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("ray") / "corpus")


@pytest.fixture(scope="module")
def local_index(corpus, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("local") / "index"
    build([corpus], path, SETTINGS)
    return path


def test_cli_ray_build_is_the_local_index(ray_session, corpus, local_index, tmp_path):
    path = tmp_path / "index"
    args = ["build", str(corpus), "--index", str(path), "--model", str(TINY), "--engine", "ray"]
    args += ["--workers", "1", "--backend", "torch", "--precision", "fp32", "--json", "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert '"documents_added": 10' in result.output and "ray" not in result.output.lower()
    assert not (path / "ray-shards").exists()  # ingested, then removed
    assert_same_index(path, local_index)
    assert top10(path) == top10(local_index)
    again = build([corpus], path, SETTINGS, engine=ENGINE)  # nothing changed: nothing sent
    assert (again.documents_unchanged, again.chunks_embedded) == (10, 0)


def test_cli_output_holds_no_ray_noise(ray_session, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", count=2)
    args = ["build", str(corpus), "--index", str(tmp_path / "index"), "--model", str(TINY)]
    args += ["--engine", "ray", "--ray-address", ray_session, "--workers", "1", "-q"]
    cli_main = "from instructor_search.indexer.cli import main; main()"
    env = {k: v for k, v in os.environ.items() if k != "RAY_BACKEND_LOG_LEVEL"}  # the CLI's
    done = subprocess.run(
        [sys.executable, "-c", cli_main, *args], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")  # -q: no bar, no summary, and nothing of Ray's


def actor_pids() -> list[int]:
    """The processes of our Ray actors (their title names the class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"EmbedShards" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return pids


def test_worker_killed_mid_build_is_retried(ray_session, corpus, local_index, tmp_path):
    killed: list[int] = []
    events = []

    def kill_the_worker(event) -> None:
        events.append(event)
        if event.phase == DISTRIBUTED and event.done and not killed:
            killed.extend(actor_pids())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    path = tmp_path / "index"
    report = build([corpus], path, SETTINGS, engine=ENGINE, on_progress=kill_the_worker)
    assert killed, "no actor process was found to kill"
    assert (report.documents_added, report.documents_failed) == (10, 0)
    assert_same_index(path, local_index)
    ray_events = [e for e in events if e.phase == DISTRIBUTED]  # documents and chunks done
    assert (ray_events[-1].done, ray_events[-1].total) == (10, 10)
    assert ray_events[-1].chunks == report.chunks_embedded > 0
    assert [e.chunks for e in ray_events] == sorted(e.chunks for e in ray_events)


def test_ray_filled_ivf_lists_are_the_serial_ones(ray_session):
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((3000, 16)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = rng.permutation(100_000)[:3000].astype(np.int64)
    filler = RayFiller(ray, parts=3, min_part=1)
    merged, merged_info = vectors.build_vector_index(ids, matrix, flat_max=500, fill=filler)
    serial, serial_info = vectors.build_vector_index(ids, matrix, flat_max=500)
    assert merged_info == serial_info and serial_info.index_type.startswith("ivf")
    assert list_ids(merged) == list_ids(serial)  # same lists, same ids, same order
    queries = vectors.held_out_queries(matrix, 50, seed=4)
    np.testing.assert_array_equal(merged.search(queries, 10)[1], serial.search(queries, 10)[1])


class CountedFiller(RayFiller):
    """The engine's filler in parts of any size, noting each call and whether Ray was up."""

    calls: ClassVar[list[tuple[int, bool]]] = []

    def __init__(self, ray_module) -> None:
        super().__init__(ray_module, parts=2, min_part=1)

    def __call__(self, index, ids, matrix):
        self.calls.append((len(ids), ray.is_initialized()))
        return super().__call__(index, ids, matrix)


def test_build_fills_ivf_lists_on_ray_above_flat_max(ray_session, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(vectors, "FLAT_MAX", 8)  # IVF at this corpus's few dozen chunks
    monkeypatch.setattr(ray_engine, "RayFiller", CountedFiller)
    CountedFiller.calls.clear()
    path = tmp_path / "index"
    one_batch = dataclasses.replace(ENGINE, documents_per_task=10)  # vectors.faiss built at once
    report = build([corpus], path, SETTINGS, engine=one_batch)
    assert CountedFiller.calls and all(up for _, up in CountedFiller.calls)
    assert CountedFiller.calls[-1][0] <= report.chunks_total
    index, _ = vectors.load(path / "vectors.faiss")
    assert vectors.describe(index).startswith("ivf")
    with Index.open(path) as ix:  # the builder is the default again once the build is done
        assert ix._derived.build_vectors is vectors.build_vector_index


DRIVER = """
import sys, time
from pathlib import Path
from typing import ClassVar
import ray
from instructor_search.indexer.build import BuildSettings, build
from instructor_search.engines.ray_engine import DISTRIBUTED, RaySettings

ray.init(address=sys.argv[1], log_to_driver=False)
def stall(event):
    if event.phase == DISTRIBUTED and event.done:
        Path(sys.argv[4]).touch()
        time.sleep(600)  # killed here, shards still coming in
settings = BuildSettings(model=sys.argv[5], backend="torch", precision="fp32", pool_chunks=1)
build([sys.argv[2]], sys.argv[3], settings, engine=RaySettings(workers=1, documents_per_task=2),
      on_progress=stall)
"""


def test_driver_killed_then_rerun_ingests_the_written_shards(
    ray_session, corpus, local_index, tmp_path
):
    path, marker = tmp_path / "index", tmp_path / "stalled"
    args = [ray_session, str(corpus), str(path), str(marker), str(TINY)]
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVER), *args])
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the driver never got a batch back"
        shards = path / "ray-shards"
        while len(list(shards.glob("batch-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # the worker goes on while the driver stalls
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    with Index.open(path, readonly=True) as ix:  # a killed driver leaves an index that opens
        stored = ix.stats().documents
    assert 1 <= stored < 10
    report = build([corpus], path, SETTINGS, engine=ENGINE)
    assert report.documents_unchanged == stored
    assert report.chunks_resumed > 0  # folders written before the kill, not embedded again
    total = len(contents(local_index)["chunks"])
    assert report.chunks_embedded < total - report.chunks_resumed
    assert_same_index(path, local_index)


def test_document_failing_on_a_worker_is_reported_by_path(ray_session, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", count=3)
    # A title of 48+ tokens beside a long instruction leaves its chunks too small a window.
    title = " ".join(f"w{i}" for i in range(60))
    (corpus / "long-title.md").write_text(f"# {title}\n\nsome text\n", encoding="utf-8")
    instruction = "Represent the document for retrieval: " + "very " * 115
    chunk = ChunkSettings(chunk_overlap=8)  # less than the other documents' windows
    settings = dataclasses.replace(SETTINGS, document_instruction=instruction, chunk=chunk)
    report = build([corpus], tmp_path / "index", settings, engine=ENGINE)
    assert report.documents_failed == 1 and report.documents_added == 3
    assert [f.path for f in report.failures] == ["long-title.md"]
    assert "too small" in report.failures[0].reason


def test_without_ray_the_engine_names_the_extra(tmp_path):
    code = "import sys; sys.modules['ray'] = None; from instructor_search.indexer.cli import main; main()"
    corpus = write_corpus(tmp_path / "corpus", count=1)
    args = ["build", str(corpus), "--index", str(tmp_path / "index"), "--engine", "ray"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert done.returncode == 1
    assert "pip install 'instructor-search[distributed]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "index").exists()


def test_batches_are_sized_by_text_so_each_worker_gets_several():
    from instructor_search.documents import Document

    docs = [Document(id=f"d{n}", text="word " * (50 + 400 * (n % 3))) for n in range(60)]
    settings = BuildSettings()
    groups = ray_engine.batches(docs, settings, 2, RaySettings())
    assert [doc for group in groups for doc in group] == docs  # consecutive, all, in order
    assert len(groups) >= 2 * ray_engine.BATCHES_PER_WORKER - 1
    sizes = [sum(len(doc.text) for doc in group) for group in groups[:-1]]
    assert max(sizes) < 2 * min(sizes)  # by text, not by count: long documents, fewer a batch
    one_big = ray_engine.batches(docs[:1], settings, 2, RaySettings())
    assert one_big == [docs[:1]]
    fixed = ray_engine.batches(docs, settings, 2, RaySettings(documents_per_task=25))
    assert [len(group) for group in fixed] == [25, 25, 10]
