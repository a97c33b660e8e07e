"""End-to-end query latency of ``Retriever.search`` at 10k and 100k chunks.

    python bench/query.py [--workdir /tmp/instructor-search-bench] [--sizes 10000 100000]

What is timed is one ``Retriever.search(query, k=10)`` call: the real query embedding with the
bundled model (all-MiniLM-L6-v2 on the torch path), the ANN search (FAISS flat up to 50k
vectors, HNSW above, as the store chooses), BM25 for hybrid (the keyword matrix,
``keywords.bm25``), and the SQLite fetch of the hits. ``Index.keyword_search`` at the depth
hybrid asks for (100) is also timed alone, and the one-off time to write ``keywords.bm25`` (what
the end of a build adds) with its size on disk.

The collections are synthetic but realistic: 2,000 real SciFact passages are embedded once;
chunk ``i`` carries passage ``i % 2000``'s text (with a serial word appended) and its vector plus
small Gaussian noise (sigma 0.02 per dimension before re-normalising), so the ANN structure,
the FTS5 index and the SQLite rows have the sizes and shapes of a real index. Queries are the
real SciFact claims. Indexes are cached under ``--workdir``.

txtai (the issue's peer, measured before at p50 20 ms / p99 46 ms on 2,000 passages) is
timed on the same 2,000 passages with the same model when it is installed; else skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from instructor_search import Chunk, Document, Instructor
from instructor_search.search.retriever import MIN_CANDIDATES, Retriever
from instructor_search.store.index import KEYWORDS_FILE, CollectionSettings, Index

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "bench-data" / "scifact"
PASSAGES = 2000
NOISE = 0.02


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def passages(count: int) -> list[tuple[str, str]]:
    rows = []
    with (SCIFACT / "corpus.jsonl").open() as handle:
        for line in handle:
            record = json.loads(line)
            rows.append((record["title"], record["text"]))
            if len(rows) == count:
                break
    return rows


def queries() -> list[str]:
    with (SCIFACT / "queries.jsonl").open() as handle:
        return [json.loads(line)["text"] for line in handle]


def base_vectors(workdir: Path, model: Instructor, texts: list[tuple[str, str]]) -> np.ndarray:
    cache = workdir / f"passages-{len(texts)}-{model.fingerprint[:12]}.npy"
    if cache.is_file():
        return np.load(cache)
    log(f"embedding {len(texts)} passages (once; cached in {cache})")
    vectors = model.embed([f"{title} {text}" for title, text in texts])
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def synthetic_index(
    path: Path, size: int, model: Instructor, texts: list[tuple[str, str]], base: np.ndarray
) -> Path:
    if (path / "index.sqlite").is_file():
        with Index.open(path) as index:
            if index.stats().chunks == size:
                return path
    settings = CollectionSettings(
        model=model.model_name,
        model_fingerprint=model.fingerprint,
        dimension=model.dimension,
        document_instruction="",
        query_instruction="",
        chunk_tokens=256,
        chunk_overlap=32,
    )
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with Index.create(path, settings, overwrite=True) as index:
        for start in range(0, size, 5000):
            rows = []
            ids = np.arange(start, min(size, start + 5000))
            noisy = base[ids % len(base)] + rng.normal(0, NOISE, (len(ids), base.shape[1]))
            noisy = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
            for row, i in enumerate(ids):
                title, text = texts[i % len(texts)]
                text = f"{text} serial{i}"
                doc = Document(f"doc{i}", text, title=title, metadata={"group": int(i % 10)})
                rows.append((doc, [Chunk(0, text, 0, len(text), 200)], noisy[row : row + 1]))
            index.upsert(rows)
        log(f"  stored {size} chunks ({time.perf_counter() - started:.0f} s); building vectors")
        index.sync_derived()
        log(f"  {index.stats().index_type}, recall@10 {index.stats().recall_at_10}")
    return path


def keyword_file(path: Path) -> str:
    """Time writing ``keywords.bm25`` from scratch, as the end of a build does."""
    (path / KEYWORDS_FILE).unlink(missing_ok=True)
    with Index.open(path) as index:
        started = time.perf_counter()
        index.sync_derived()  # vectors.faiss is current: only keywords.bm25 is written
        seconds = time.perf_counter() - started
    megabytes = (path / KEYWORDS_FILE).stat().st_size / 1e6
    return f"keywords.bm25 written in {seconds:.1f} s, {megabytes:.0f} MB on disk"


def timed(call, items: list, warmup: int = 20) -> list[float]:
    for text in items[:warmup]:
        call(text)
    times = []
    for text in items[warmup:]:
        started = time.perf_counter()
        call(text)
        times.append((time.perf_counter() - started) * 1000)
    return times


def row(name: str, times: list[float]) -> str:
    p50, p99 = np.percentile(times, 50), np.percentile(times, 99)
    return f"| {name} | {len(times)} | {p50:.1f} | {p99:.1f} | {np.mean(times):.1f} |"


def txtai_times(texts: list[tuple[str, str]], items: list[str]) -> list[float] | None:
    try:
        from txtai import Embeddings
    except ImportError:
        log("txtai is not installed: skipped")
        return None
    from instructor_search.encoder.checkpoints import bundled_model_folder

    embeddings = Embeddings(path=str(bundled_model_folder()), content=True)
    embeddings.index([(i, f"{t} {x}", None) for i, (t, x) in enumerate(texts)])
    return timed(lambda q: embeddings.search(q, 10), items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/instructor-search-bench"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--modes", nargs="*", default=["dense", "hybrid", "keyword"])
    parser.add_argument("--no-txtai", action="store_true")
    parser.add_argument(
        "--backend", choices=["auto", "torch"], default="auto", help="the query encoder's backend"
    )
    args = parser.parse_args()

    import faiss
    import torch

    model = Instructor(backend=args.backend)
    texts = passages(PASSAGES)
    base = base_vectors(args.workdir, model, texts)
    items = queries()[: args.queries + 20]
    print("# Query latency: Retriever.search(query, k=10), end to end\n")
    print(
        f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__}, "
        f"model {model.model_name}, backend {model.backend} ({args.backend} requested), "
        f"precision {model.precision}\n"
    )
    print(
        f"load average before the run: {os.getloadavg()[0]:.2f} (2 cores: above ~0.5 means "
        "other processes share them, and every figure below is inflated)\n"
    )
    print("| what | queries | p50 ms | p99 ms | mean ms |")
    print("| --- | --- | --- | --- | --- |")
    print(row("query embedding only", timed(lambda q: model.embed([q]), items)), flush=True)
    notes = []
    for size in args.sizes:
        path = synthetic_index(args.workdir / f"latency-{size}", size, model, texts, base)
        notes.append(f"{size:,} chunks: {keyword_file(path)}")  # also for indexes cached before
        with Retriever(path, model) as retriever:
            groups = [{"group": g} for g in range(10)]  # each filter new: no remembered ids
            times = timed(lambda w: retriever.index.matching_chunk_ids(w), groups, warmup=0)
            print(row(f"{size:,} chunks, first lookup of a filter's chunk ids", times), flush=True)
            for where in (None, {"group": 3}):
                times = timed(
                    lambda q, w=where: retriever.index.keyword_search(q, MIN_CANDIDATES, w), items
                )
                what = "" if where is None else ", where group=3"
                print(row(f"{size:,} chunks, Index.keyword_search k=100{what}", times), flush=True)
            kind = retriever.index.stats().index_type
            for mode in args.modes:
                times = timed(lambda q, m=mode: retriever.search(q, k=10, mode=m), items)
                print(row(f"{size:,} chunks ({kind}), {mode}", times), flush=True)
            times = timed(lambda q: retriever.search(q, k=10, where={"group": 3}), items)
            print(row(f"{size:,} chunks, default mode, where group=3 (10%)", times), flush=True)
    if not args.no_txtai:
        times = txtai_times(texts, items)
        if times is not None:
            print(row(f"txtai, {PASSAGES:,} passages, same model", times))

    print("\n" + "\n".join(f"- {note}" for note in notes))
    print(f"\nload average after the run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
