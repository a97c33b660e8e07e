"""An index made by the code before issue 13 (commit 93973fe, run from ``git archive`` in a real
subprocess) opens with this code, is upgraded by migration m002, and answers as before."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_keywords import QUERIES, SETTINGS, fts5_truth

from instructor_search.store import keyword_file, vectors
from instructor_search.store.index import KEYWORDS_FILE, VECTORS_FILE, Index
from instructor_search.store.migrations import SCHEMA_VERSION

pytestmark = pytest.mark.slow
OLD = "93973fe"
REPO = Path(__file__).resolve().parents[1]

MAKE = r"""
import sys
import numpy as np
import instructor_search
from instructor_search.documents import Chunk, Document
from instructor_search.store.index import CollectionSettings, Index
assert instructor_search.__file__.startswith(sys.argv[2]), instructor_search.__file__
settings = CollectionSettings(**__import__("json").loads(sys.argv[3]))
words = "the quick brown fox runs running runner database indexing search of and a".split()
rng = np.random.default_rng(0)
items = []
for i in range(60):
    parts = [" ".join(rng.choice(words, size=int(rng.integers(2, 30)))) for _ in range(1 + i % 3)]
    chunks, start = [], 0
    for ordinal, part in enumerate(parts):
        chunks.append(Chunk(ordinal, part, start, start + len(part), len(part.split())))
        start += len(part) + 1
    meta = {"lang": "en" if i % 3 else "fr", "year": 2019 + i % 5, "tags": ["t%d" % (i % 4)]}
    vecs = rng.standard_normal((len(chunks), settings.dimension)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    items.append((Document(f"d{i:03d}", " ".join(parts), title=f"title{i}", metadata=meta),
                  chunks, vecs))
with Index.create(sys.argv[1], settings) as ix:
    ix.upsert(items)
    ix.delete(["d005"])
    ix.sync_derived()
"""


@pytest.fixture(scope="module")
def old_index(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git repository")
    source = tmp_path_factory.mktemp("old-code")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD, "instructor_search"],
                             capture_output=True, check=False)  # fmt: skip
    if archive.returncode:
        pytest.skip(f"commit {OLD} is not in this repository")
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    path = tmp_path_factory.mktemp("old-index") / "idx"
    env = {**os.environ, "PYTHONPATH": str(source)}
    settings = json.dumps(dataclasses.asdict(SETTINGS))
    subprocess.run([sys.executable, "-c", MAKE, str(path), str(source), settings],
                   check=True, env=env, cwd=source)  # fmt: skip
    return path


def test_old_index_is_upgraded_and_answers_as_before(old_index, tmp_path):
    path = tmp_path / "idx"
    shutil.copytree(old_index, path)
    assert vectors.read_generation(path / VECTORS_FILE) is None  # the old file format
    searched = tmp_path / "searched"
    shutil.copytree(old_index, searched)
    with Index.open(searched, readonly=True) as reader:  # a first search upgrades it once
        assert reader.readonly and reader.stats().schema_version == SCHEMA_VERSION
        assert reader.fields()["lang"] == "text" and len(reader.document_hashes()) == 59
    with Index.open(path) as ix:  # a writer upgrades it
        assert ix.stats().schema_version == SCHEMA_VERSION
        assert ix.fields()["lang"] == "text" and ix.fields()["year"] == "number"
        assert len(ix.document_hashes()) == 59
        assert ix.fields()["tags"] == "json"
        texts = ix._db.execute("SELECT text, text_in_chunks FROM documents").fetchall()
        assert all(text and not in_chunks for text, in_chunks in texts)  # m007 keeps them
        parts = ix._db.execute("SELECT text FROM chunks WHERE doc_id = 'd001' ORDER BY ordinal")
        assert ix.document("d001").text == " ".join(p for (p,) in parts)
        for where, sql in (
            ({"lang": "en"}, "json_extract(d.metadata, '$.lang') = 'en'"),
            ({"year": {">=": 2021}}, "json_extract(d.metadata, '$.year') >= 2021"),
            ({"lang": ["fr"]}, "json_extract(d.metadata, '$.lang') IN ('fr')"),
            ({"tags": ["t1", "t3"]}, "d.metadata LIKE '%\"t1\"%' OR d.metadata LIKE '%\"t3\"%'"),
        ):
            truth = ix._db.execute(
                "SELECT c.id FROM documents d JOIN chunks c ON c.doc_id = d.id "
                f"WHERE {sql} ORDER BY c.id"
            ).fetchall()
            found = ix.matching_chunk_ids(where)
            assert found.tolist() == [r[0] for r in truth] and found.size > 0
        for query in QUERIES:  # keywords.bm25 of the old format: FTS5 answers, the same
            assert ix.keyword_search(query, 50) == fts5_truth(path, query, 50)
        ix.sync_derived()
    assert vectors.read_generation(path / VECTORS_FILE) is not None
    assert keyword_file.read_generation(path / KEYWORDS_FILE) is not None
    with Index.open(path, readonly=True) as reader:
        for query in QUERIES:
            assert reader.keyword_search(query, 50) == fts5_truth(path, query, 50)
        rng = np.random.default_rng(0)
        q = rng.standard_normal(SETTINGS.dimension).astype(np.float32)
        _, labels = reader.search_vectors(q, 5)
        ids = np.array([r[0] for r in reader._db.execute("SELECT id FROM chunks")])
        sims = reader.embeddings(ids) @ q
        assert labels[0].tolist() == ids[np.argsort(-sims, kind="stable")[:5]].tolist()
