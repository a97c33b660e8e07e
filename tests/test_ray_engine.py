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

import numpy as np
import pytest
from click.testing import CliRunner

from instructor_search.indexer.build import BuildSettings, build
from instructor_search.indexer.chunking import ChunkSettings
from instructor_search.indexer.cli import cli
from instructor_search.search.retriever import Retriever
from instructor_search.store.index import Index

ray = pytest.importorskip("ray", reason="pip install 'instructor-search[distributed]'")
from instructor_search.engines.ray_engine import DISTRIBUTED, RaySettings  # noqa: E402

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
        chunks = {
            (c.doc_id, c.ordinal): (c.text, c.start, c.end, ix.embeddings([c.chunk_id])[0])
            for c in ix.chunks(ids)
        }
    return {"documents": docs, "chunks": chunks}


def assert_same_index(got: Path, want: Path) -> None:
    """Same documents, chunk texts and spans; vectors equal to float32 rounding."""
    a, b = contents(got), contents(want)
    assert a["documents"] == b["documents"]
    assert a["chunks"].keys() == b["chunks"].keys()
    for key, (text, start, end, vector) in a["chunks"].items():
        assert (text, start, end) == b["chunks"][key][:3], key
        np.testing.assert_allclose(vector, b["chunks"][key][3], rtol=0, atol=1e-6)


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

    def kill_the_worker(event) -> None:
        if event.phase == DISTRIBUTED and event.done and not killed:
            killed.extend(actor_pids())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    path = tmp_path / "index"
    report = build([corpus], path, SETTINGS, engine=ENGINE, on_progress=kill_the_worker)
    assert killed, "no actor process was found to kill"
    assert (report.documents_added, report.documents_failed) == (10, 0)
    assert_same_index(path, local_index)


DRIVER = """
import sys, time
from pathlib import Path
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
