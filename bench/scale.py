"""Scale figures: ingest from shards, one-document updates, a fresh reader, query latency, RSS and
bytes per chunk, at 100k and 1M chunks (issue 13).

    python bench/scale.py [--workdir /tmp/instructor-search-scale] [--sizes 100000 1000000]
                          [--corpus mixed|repeated]

Collections are synthetic but shaped like real ones: 2,000 real SciFact passages are embedded
once with the bundled model (``bench/query.py``'s helpers and cache); chunk ``i`` carries
passage ``i % 2000``'s vector plus Gaussian noise (sigma 0.02 per dimension, then normalised),
so the vectors cluster as real chunk embeddings do. Its text is real text, in one of two
corpora (``--corpus``):

- ``mixed`` (the default): passage ``i % 2000``'s sentences, each kept with probability 0.8
  (in order, at least one), then one sentence of another passage drawn at random (seeded).
  Every chunk's text is its own, as in a real archive, while its words are its passage's.
- ``repeated``: passage ``i % 2000``'s text verbatim. Every text recurs ``size / 2000``
  times, so BM25 scores tie in groups of 50 (100k) or 500 (1M) chunks and the top 100 of a
  keyword query is one tie group, which hybrid search must order by document: the worst case
  for the keyword side, kept to show it.

Documents have 10 chunks and a ``group`` field 0..9 (a filter on one group matches 10%).
Queries are real SciFact claims, embedded for real on every query.

Stages are cached under ``--workdir`` (shards, then the index), so a run that is stopped can be
resumed. Peers measured in the same run: a full rebuild of the derived files from SQLite (what
every change cost before: the figure an update is compared with), exact search over all vectors
(numpy, for dense), and FTS5's own bm25() query (for keyword).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query import NOISE, base_vectors, log, passages, queries, row, timed

from instructor_search import Instructor
from instructor_search.store.index import KEYWORDS_FILE, VECTORS_FILE, Index
from instructor_search.store.shards import MANIFEST, ShardManifest

CHUNKS_PER_DOC = 10
ROWS_PER_FILE = 100_000
#: The mixed corpus: the share of its passage's sentences a chunk keeps, and where they end.
KEEP = 0.8
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
CORPORA = ("mixed", "repeated")


def chunk_texts(ids: np.ndarray, texts: list[tuple[str, str]], corpus: str) -> list[str]:
    """The texts of chunks ``ids`` in ``corpus`` (see the module's docstring); the same for the
    same ids in every run."""
    if corpus == "repeated":
        return [texts[i % len(texts)][1] for i in ids.tolist()]
    sentences = [SENTENCE_END.split(text) for _, text in texts]
    pool = [s for passage in sentences for s in passage]
    out = []
    for i in ids.tolist():
        rng = np.random.default_rng(i)
        own = sentences[i % len(texts)]
        kept = [s for s, keep in zip(own, rng.random(len(own)) < KEEP, strict=True) if keep]
        out.append(" ".join([*(kept or own[:1]), pool[int(rng.integers(len(pool)))]]))
    return out


def write_shards(
    folder: Path, size: int, model: Instructor, texts, base, corpus: str = "mixed"
) -> Path:
    """``size`` chunks of ``corpus`` as a shard folder (cached)."""
    from instructor_search.store.shards import write_shard

    if (folder / MANIFEST).is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    from instructor_search.indexer.chunking import ChunkSettings

    chunking = ChunkSettings()
    manifest = ShardManifest(model.model_name, model.fingerprint, model.dimension, "", "",
                             chunking.chunk_tokens, chunking.chunk_overlap)  # fmt: skip
    rng = np.random.default_rng(0)
    for part, start in enumerate(range(0, size, ROWS_PER_FILE)):
        ids = np.arange(start, min(size, start + ROWS_PER_FILE))
        noisy = base[ids % len(base)] + rng.normal(0, NOISE, (len(ids), base.shape[1]))
        noisy = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
        docs = ids // CHUNKS_PER_DOC
        chunk_text = chunk_texts(ids, texts, corpus)
        starts, ends, offset = [], [], {}
        for doc, text in zip(docs.tolist(), chunk_text, strict=True):
            at = offset.get(doc, 0)
            starts.append(at)
            ends.append(at + len(text))
            offset[doc] = at + len(text) + 1
        columns = [
            [f"doc{d}" for d in docs],
            [f"hash{d}" for d in docs],
            [texts[(d * CHUNKS_PER_DOC) % len(texts)][0] for d in docs],
            [f"/archive/doc{d}.pdf" for d in docs],
            [json.dumps({"group": int(d % 10)}) for d in docs],
            (ids % CHUNKS_PER_DOC).tolist(),
            starts,
            ends,
            chunk_text,
        ]
        write_shard(folder / f"part-{part:05d}.parquet", columns, noisy)
        log(f"  shard part {part}: {len(ids)} chunks")
    (folder / MANIFEST).write_text(json.dumps(manifest.to_json()))
    return folder


def disk(path: Path, chunks: int) -> list[str]:
    lines = []
    for name in ("index.sqlite", "index.sqlite-wal", VECTORS_FILE, KEYWORDS_FILE):
        file = path / name
        if file.exists():
            size = file.stat().st_size
            lines.append(f"{name}: {size / 1e6:,.0f} MB, {size / chunks:,.0f} B/chunk")
    return lines


def one_document_shard(folder: Path, index: Path, doc_id: str, text: str, model) -> Path:
    """A shard folder holding one document (new or changed) with real embeddings."""
    from instructor_search.store.shards import write_shard

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with Index.open(index, readonly=True) as ix:
        manifest = ShardManifest.of(ix.settings)
    vector = model.embed([text])
    columns = [[doc_id], [f"hash-{text}"], ["t"], ["/x"], ["{}"], [0], [0], [len(text)], [text]]
    write_shard(folder / "a.parquet", columns, vector)
    (folder / MANIFEST).write_text(json.dumps(manifest.to_json()))
    return folder


def seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


READER = r"""
import json, os, sys, time
t0 = time.perf_counter()
from instructor_search.search.retriever import Retriever
path, items = sys.argv[1], json.load(open(sys.argv[2]))
t1 = time.perf_counter()
r = Retriever(path)  # as a user's reader: the index's saved query encoder, no torch
r.search(items[0], k=10, mode="hybrid")
first = time.perf_counter() - t1
out = {"import_s": t1 - t0, "first_hybrid_s": first}
def timed(call, qs):
    times = []
    for q in qs:
        s = time.perf_counter(); call(q); times.append((time.perf_counter() - s) * 1000)
    return times
for mode in ("hybrid", "dense"):
    timed(lambda q: r.search(q, k=10, mode=mode), items[1:11])
    out[mode] = timed(lambda q: r.search(q, k=10, mode=mode), items[11:])
s = time.perf_counter(); r.index.matching_chunk_ids({"group": 7}); out["first_filter_ms"] = (time.perf_counter() - s) * 1000
out["filtered"] = timed(lambda q: r.search(q, k=10, mode="hybrid", where={"group": 3}), items[11:])
# VmHWM, not ru_maxrss: Linux carries the maxrss of the process that spawned this one across
# exec, so ru_maxrss here would report the benchmark's own peak
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
out["rss_mb"] = int(hwm.split()[1]) / 1024
out["stats"] = r.index.stats().to_dict()
print(json.dumps(out))
"""


def fresh_reader(path: Path, items: list[str], workdir: Path) -> dict:
    file = workdir / "queries.json"
    file.write_text(json.dumps(items))
    done = subprocess.run([sys.executable, "-c", READER, str(path), str(file)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def peers(path: Path, model: Instructor, items: list[str]) -> list[str]:
    """Exact dense search over every vector (numpy) and FTS5's own keyword query."""
    with Index.open(path, readonly=True) as ix:
        exact = ix.embeddings(vectors_ids(ix))
        embedded = model.embed(items[:60])
        dense = timed(lambda q: np.argpartition(-(exact @ q), 10)[:10], list(embedded), 10)
        from instructor_search.store import keywords

        fts5 = timed(lambda q: ix._fts5_search(keywords.query_words(q), 100, None), items[:40], 5)
        matrix = timed(lambda q: ix.keyword_search(q, 100), items[:40], 5)
    return [row("peer: exact dense search, numpy over all vectors (no embedding)", dense),
            row("peer: FTS5 bm25() keyword query k=100", fts5),
            row("keywords.bm25 (base + delta) keyword query k=100", matrix)]  # fmt: skip


def vectors_ids(ix: Index) -> np.ndarray:
    return np.array([r[0] for r in ix._db.execute("SELECT id FROM chunks")], dtype=np.int64)


def run_size(size: int, args, model, texts, base, items) -> None:
    work = args.workdir / (f"n{size}" if args.corpus == "repeated" else f"n{size}-{args.corpus}")
    shards = write_shards(work / "shards", size, model, texts, base, args.corpus)
    path = work / "index"
    print(f"\n## {size:,} chunks, {args.corpus} corpus\n")
    print(f"load average at the start: {os.getloadavg()[0]:.2f}\n")
    if not (path / "done").is_file():
        shutil.rmtree(path, ignore_errors=True)
        # as a user runs it: `instructor-index ingest` in its own process (start included)
        command = [sys.executable, "-m", "instructor_search.indexer.cli", "ingest", str(shards),
                   "--index", str(path), "--json"]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        took = time.perf_counter() - started
        (path / "done").write_text(
            json.dumps({"ingest_s": took, "report": json.loads(done.stdout)})
        )
    cached = json.loads((path / "done").read_text())
    print(f"- ingest of {size:,} chunks from shards (`instructor-index ingest`, derived files "
          f"included): {cached['ingest_s']:.0f} s")  # fmt: skip
    for line in disk(path, size):
        print(f"- on disk: {line}")
    from instructor_search.indexer.build import BuildSettings, build, delete_documents
    from instructor_search.indexer.ingest import ingest

    update = work / "update"
    text = f"A new finding about telomeres {time.time()}"
    add = one_document_shard(update, path, "new-doc", text, model)
    print(f"- add one document through ingest: {seconds(lambda: ingest([add], path)):.2f} s")
    change = one_document_shard(update, path, "new-doc", text + " changed", model)
    print(f"- replace one document through ingest: {seconds(lambda: ingest([change], path)):.2f} s")
    print(f"- delete one document: {seconds(lambda: delete_documents(path, ['new-doc'])):.2f} s")
    source = work / "changed.jsonl"
    source.write_text(json.dumps({"id": "built", "text": text, "title": "t"}) + "\n")
    settings = BuildSettings(document_instruction="", query_instruction="", backend=model.backend)
    took = seconds(lambda: build([source], path, settings, model=model))
    print(f"- build of a new file (model loaded): {took:.2f} s")
    source.write_text(json.dumps({"id": "built", "text": text + " edited", "title": "t"}) + "\n")
    took = seconds(lambda: build([source], path, settings, model=model))
    print(f"- build of that file changed (model loaded): {took:.2f} s")
    with Index.open(path) as ix:
        delta = ix._derived.vectors(ix.generation).delta
    print(f"- after these updates the delta holds {delta} changed chunks (merged above "
          f"{max(2048, int(0.02 * size))})\n")  # fmt: skip
    reader = fresh_reader(path, items[: args.queries + 11], args.workdir)
    print(f"- fresh reader process (`Retriever(path)`: the saved query encoder): import "
          f"{reader['import_s']:.1f} s, then open + model + first hybrid query "
          f"{reader['first_hybrid_s']:.2f} s")  # fmt: skip
    print(f"- first lookup of a new filter (10% of documents): {reader['first_filter_ms']:.0f} ms")
    print(f"- reader RSS (max): {reader['rss_mb']:,.0f} MB")
    stats = reader["stats"]
    print(f"- ANN: {stats['index_type']}, recall@10 {stats['recall_at_10']} (held-out queries)\n")
    print("| what | queries | p50 ms | p99 ms | mean ms |")
    print("| --- | --- | --- | --- | --- |")
    for mode in ("hybrid", "dense"):
        print(row(f"{mode}, query embedding included", reader[mode]))
    print(row("hybrid where group=3 (10%)", reader["filtered"]))
    for line in peers(path, model, items):
        print(line)
    if size <= args.rebuild_peer_max:
        copy = work / "rebuild"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns(VECTORS_FILE, KEYWORDS_FILE))
        with Index.open(copy) as ix:
            took = seconds(ix.sync_derived)
        shutil.rmtree(copy)
        print(f"\n- peer: rebuilding both derived files from SQLite (what any change cost "
              f"before): {took:.1f} s")  # fmt: skip
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/instructor-search-scale"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--corpus", choices=CORPORA, default="mixed", help="chunk texts")
    parser.add_argument(
        "--rebuild-peer-max",
        type=int,
        default=100_000,
        help="largest size at which the full rebuild of the derived files is timed",
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    import faiss

    model = Instructor()
    texts = passages(2000)
    base = base_vectors(Path("/tmp/instructor-search-bench"), model, texts)
    items = queries()
    print("# Scale: ingest, updates, a fresh reader, latency (bench/scale.py)\n")
    print(f"{platform.platform()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
          f"Python {platform.python_version()}, faiss {faiss.__version__}, model "
          f"{model.model_name} ({model.dimension} dims), backend {model.backend}")  # fmt: skip
    for size in args.sizes:
        run_size(size, args, model, texts, base, items)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}; "
          f"bench process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
