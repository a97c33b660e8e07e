"""Crash safety of updates and merges: a real subprocess killed with SIGKILL at several points of
an upsert, of writing ``vectors.faiss`` / ``keywords.bm25`` and of pruning the change log; the
index then opens and answers as a clean rebuild from SQLite does."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_keywords import QUERIES, SETTINGS, corpus

from instructor_search.store.index import KEYWORDS_FILE, VECTORS_FILE, Index

pytestmark = pytest.mark.slow

CHILD = r"""
import os, signal, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_keywords import corpus
from instructor_search.store import derived, keyword_file, vectors
from instructor_search.store.index import Index
from instructor_search.store.reads import IndexReads
from instructor_search.store.connection import IndexBase

point = {point!r}
derived.MERGE_MIN, derived.MERGE_FRACTION = 0, 0.0  # every sync merges

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def after(original):
    def run(*args, **kwargs):
        original(*args, **kwargs)
        die()
    return run

if point == "in the upsert transaction":
    IndexBase._bump = after(IndexBase._bump)
elif point == "before vectors.faiss is renamed":
    vectors.os.replace = die
elif point == "after vectors.faiss, before keywords.bm25":
    keyword_file.save = die
elif point == "after both files, before the log is pruned":
    IndexReads._prune_changes = die
with Index.open({path!r}) as ix:
    for round in range(1000):
        batch = corpus(5, seed=100 + round)
        ix.upsert([(doc.__class__(f"new{{round}}-{{doc.id}}", doc.text, doc.title), chunks, vecs)
                   for doc, chunks, vecs in batch])
        ix.delete([f"d{{round * 3:03d}}"])
        ix.sync_derived()
        print(round, flush=True)
"""

POINTS = [
    "in the upsert transaction",
    "before vectors.faiss is renamed",
    "after vectors.faiss, before keywords.bm25",
    "after both files, before the log is pruned",
]


@pytest.fixture
def index_path(tmp_path):
    with Index.create(tmp_path / "idx", SETTINGS) as ix:
        ix.upsert(corpus(120))
        ix.sync_derived()
    return tmp_path / "idx"


def answers(path: Path, readonly: bool = True) -> list:
    rng = np.random.default_rng(3)
    queries = rng.standard_normal((8, SETTINGS.dimension)).astype(np.float32)
    with Index.open(path, readonly=readonly) as ix:
        found = [ix.search_vectors(queries, 10)[1].tolist()]
        found += [ix.keyword_search(q, 50) for q in QUERIES]
        found.append(ix.stats().chunks)
    return found


def clean_rebuild(path: Path, tmp: Path) -> list:
    copy = tmp / "clean"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(path, copy)
    for name in (VECTORS_FILE, KEYWORDS_FILE):
        (copy / name).unlink(missing_ok=True)
    with Index.open(copy) as ix:
        ix.sync_derived()  # everything from SQLite
    return answers(copy)


def run_child(path: Path, point: str, kill_after: float | None = None) -> int:
    tests = str(Path(__file__).parent)
    code = CHILD.format(tests=tests, point=point, path=str(path))
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    if kill_after is not None:
        child.stdout.readline()  # one round done: now it is working
        time.sleep(kill_after)
        child.send_signal(signal.SIGKILL)
    _, err = child.communicate(timeout=120)
    assert b"Traceback" not in err, err.decode()
    return child.returncode


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_a_point_of_an_update_or_merge(index_path, tmp_path, point):
    assert run_child(index_path, point) == -signal.SIGKILL
    assert answers(index_path) == clean_rebuild(index_path, tmp_path)  # a reader, as left
    assert answers(index_path, readonly=False) == clean_rebuild(index_path, tmp_path)
    with Index.open(index_path) as ix:  # the next writer carries on
        ix.sync_derived()
    assert answers(index_path) == clean_rebuild(index_path, tmp_path)


def test_kill_at_random_moments(index_path, tmp_path):
    for delay in (0.0, 0.05, 0.13, 0.31):
        with Index.open(index_path, readonly=True) as ix:
            before = ix.generation
        assert run_child(index_path, "none", kill_after=delay) == -signal.SIGKILL
        with Index.open(index_path, readonly=True) as ix:
            assert ix.generation > before  # it was killed while working, not before
        assert answers(index_path) == clean_rebuild(index_path, tmp_path)
