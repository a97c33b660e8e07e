"""Retrieval quality of keyword, dense and hybrid search, with the RRF settings tried.

    python bench/quality.py [--workdir /tmp/instructor-search-bench] [--data DIR ...]

On BEIR-layout folders (default: ``../shared/bench-data/scifact``) and on the project's
``sample_corpus`` (when it has ``eval/``), with the bundled model (all-MiniLM-L6-v2): builds an
index of each corpus once under ``--workdir`` (reused on later runs; embedding SciFact takes
~5 minutes on 2 cores), then prints nDCG@10, Recall@10, Recall@100 and MRR@10 per mode, and a
grid of reciprocal-rank-fusion constants, as markdown tables on stdout.

The index is built as ``indexer/build.py`` does it: each chunk embedded as
``title + " " + chunk`` with the document instruction, chunks of at most
``min(--chunk-tokens, model.max_text_tokens(instruction))`` tokens minus the title's.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sqlite3
import sys
import time
from pathlib import Path

from instructor_search import Instructor
from instructor_search.documents import Chunk, Document
from instructor_search.evaluate import evaluate as run_eval
from instructor_search.evaluate import load_beir, load_qrels, load_queries, score_run
from instructor_search.indexer.chunking import Chunker, ChunkSettings
from instructor_search.search.retriever import MODES, Retriever, fuse
from instructor_search.store.index import CollectionSettings, Index

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT.parent / "shared" / "bench-data" / "scifact"
#: RRF settings tried: (c, dense weight, keyword weight, what is ranked before fusing).
#: "chunk": chunks are fused, then each document keeps its best (what Retriever does);
#: "document": each list is first cut to one chunk per document, then documents are fused.
GRID = [(c, 1.0, 1.0, "chunk") for c in (5, 10, 20, 40, 60, 100, 200)]
GRID += [(60, wd, wk, "chunk") for wd, wk in ((1.0, 1.5), (1.0, 2.0), (1.5, 1.0), (2.0, 1.0))]
GRID += [(c, 1.0, 1.0, "document") for c in (20, 60)]
DEPTH = 400  # candidates per list for the grid: max(100, 4 * k) at k = 100


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_index(
    folder: Path, documents: list[Document], model: Instructor, chunk_tokens: int
) -> Index:
    """Chunk, embed and store ``documents`` in a new index at ``folder`` (or reuse it).

    ``chunk_tokens=0``: one chunk per document holding its whole text, embedded as the
    published baselines embed documents (``title + " " + text``, truncated by the model).
    """
    instruction = model.profile.document_instruction
    if (folder / "index.sqlite").is_file():
        index = Index.open(folder)
        if (
            index.stats().documents == len(documents)
            and index.settings.chunk_tokens == chunk_tokens
        ):
            log(f"reusing {folder}")
            index.sync_derived()  # an index cached by an older version may lack keywords.bm25
            return index
        index.close()
    settings = CollectionSettings(
        model=model.model_name,
        model_fingerprint=model.fingerprint,
        dimension=model.dimension,
        document_instruction=instruction,
        query_instruction=model.profile.query_instruction,
        chunk_tokens=chunk_tokens,
        chunk_overlap=32,
    )
    index = Index.create(folder, settings, overwrite=True)
    max_text = model.max_text_tokens(instruction)
    started = time.perf_counter()
    for start in range(0, len(documents), 512):
        batch = documents[start : start + 512]
        pieces = []
        for doc in batch:
            title = " ".join(doc.title.split())
            if chunk_tokens == 0:
                whole = Chunk(0, doc.text, 0, len(doc.text), len(doc.text.split()))
                pieces.append((doc, [whole], [f"{title} {doc.text}".strip()]))
                continue
            budget = max_text - (
                len(model.tokenizer(title, add_special_tokens=False)["input_ids"]) + 1
                if title
                else 0
            )
            chunker = Chunker(
                model.tokenizer, ChunkSettings(chunk_tokens, 32), max_text_tokens=budget
            )
            chunks = chunker.chunk(doc.text)
            pieces.append((doc, chunks, [f"{title} {c.text}" if title else c.text for c in chunks]))
        vectors = model.embed([t for _, _, texts in pieces for t in texts], instruction)
        rows, offset = [], 0
        for doc, chunks, texts in pieces:
            rows.append((doc, chunks, vectors[offset : offset + len(texts)]))
            offset += len(texts)
        index.upsert(rows)
        done = start + len(batch)
        log(f"  embedded {done}/{len(documents)} documents ({time.perf_counter() - started:.0f} s)")
    index.sync_derived()
    return index


def grid_runs(retriever: Retriever, queries: dict[str, str], k: int = 100) -> dict:
    """Per RRF setting, the document run of hybrid search (lists fetched once, fused offline)."""
    ids = list(queries)
    vectors = retriever.model.encode(
        [[retriever.query_instruction, queries[q]] for q in ids], normalize_embeddings=True
    )
    scores, labels = retriever.index.search_vectors(vectors, DEPTH)
    dense = {
        q: [(int(c), float(s)) for c, s in zip(row, srow) if c >= 0]
        for q, row, srow in zip(ids, labels, scores)
    }
    keyword = {q: retriever.index.keyword_search(queries[q], DEPTH) for q in ids}
    every = {c for lists in (dense, keyword) for ranking in lists.values() for c, _ in ranking}
    doc_of = {r.chunk_id: r.doc_id for r in retriever.index.chunks(sorted(every))}

    def per_document(ranking: list[tuple[int, float]]) -> list[tuple[str, float]]:
        best: dict[str, float] = {}
        for cid, score in ranking:
            best.setdefault(doc_of[cid], score)
        return list(best.items())

    runs = {}
    for c, wd, wk, level in GRID:
        run = {}
        for q in ids:
            if level == "document":
                fused = fuse(per_document(dense[q]), per_document(keyword[q]), c, wd, wk)
                run[q] = [doc for doc, _ in fused][:k]
            else:
                fused = fuse(dense[q], keyword[q], c=c, dense_weight=wd, keyword_weight=wk)
                run[q] = list(dict.fromkeys(doc_of[cid] for cid, _ in fused))[:k]
        runs[(c, wd, wk, level)] = run
    return runs


def report(name: str, retriever: Retriever, queries: dict[str, str], qrels: dict) -> dict:
    print(f"\n### {name}: {len(qrels)} judged queries, {retriever.index.stats().chunks} chunks\n")
    print("| mode | nDCG@10 | Recall@10 | Recall@100 | MRR@10 | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    results = {}
    for mode in MODES:
        result = run_eval(retriever, queries, qrels, mode=mode)
        results[mode] = result
        print(
            f"| {mode} | {result['ndcg_at_10']:.4f} | {result['recall_at_10']:.4f} | "
            f"{result['recall_at_100']:.4f} | {result['mrr_at_10']:.4f} | {result['seconds']:.1f} |",
            flush=True,
        )
    print("\nRRF settings (hybrid; c, dense weight : keyword weight):\n")
    print("| c | w_dense : w_keyword | fused | nDCG@10 | Recall@10 | Recall@100 | MRR@10 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    grid = {}
    for (c, wd, wk, level), run in grid_runs(retriever, {q: queries[q] for q in qrels}).items():
        m = score_run(run, qrels)
        grid[f"c={c} {wd}:{wk} {level}"] = m
        print(
            f"| {c} | {wd:g} : {wk:g} | {level} | {m['ndcg_at_10']:.4f} | {m['recall_at_10']:.4f} | "
            f"{m['recall_at_100']:.4f} | {m['mrr_at_10']:.4f} |",
            flush=True,
        )
    return {"modes": results, "grid": grid}


def fts5_one_field_run(documents: list[Document], queries: dict[str, str], k: int = 100) -> dict:
    """The published FTS5 reference (``bench-data/REFERENCE_SCORES.md``): one FTS5 row per
    document holding ``title + " " + text`` (``porter unicode61``), OR of the query terms,
    ``bm25()``. Built here in memory, outside the store, to check the metric code."""
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE VIRTUAL TABLE docs USING fts5(id UNINDEXED, body, tokenize='porter unicode61')"
    )
    db.executemany(
        "INSERT INTO docs (id, body) VALUES (?, ?)",
        [(d.id, f"{d.title} {d.text}".strip()) for d in documents],
    )
    run = {}
    for qid, text in queries.items():
        terms = dict.fromkeys(t.lower() for t in re.findall(r"[^\W_]+", text))
        match = " OR ".join(f'"{t}"' for t in terms)
        rows = db.execute(
            "SELECT id FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT ?", [match, k]
        ).fetchall()
        run[qid] = [r[0] for r in rows]
    return run


def anchors(folder: Path, workdir: Path, model: Instructor, data) -> dict:
    """The issue's anchors, in the set-up they were measured in: one chunk per document."""
    print(f"\n### {folder.name} anchors: one chunk per document (the published set-up)\n")
    print("| system | nDCG@10 | Recall@10 | Recall@100 | MRR@10 | anchor |")
    print("| --- | --- | --- | --- | --- | --- |")
    figures = {}
    reference = score_run(fts5_one_field_run(data.corpus, data.queries), data.qrels)
    figures["fts5 one field"] = reference
    print(_row("FTS5 `bm25()`, title+text in one field (outside the store)", reference, "0.6874"))
    index = build_index(workdir / f"{folder.name}-minilm-0", data.corpus, model, 0)
    with Retriever(index, model) as retriever:
        for mode, anchor in (("keyword", "0.6874"), ("dense", "0.6451"), ("hybrid", "")):
            result = run_eval(retriever, data.queries, data.qrels, mode=mode)
            figures[mode] = result
            print(_row(f"store, one chunk per document, {mode}", result, anchor))
    index.close()
    return figures


def _row(name: str, m: dict, anchor: str) -> str:
    return (
        f"| {name} | {m['ndcg_at_10']:.4f} | {m['recall_at_10']:.4f} | "
        f"{m['recall_at_100']:.4f} | {m['mrr_at_10']:.4f} | {anchor} |"
    )


def sample_corpus_documents(root: Path) -> list[Document]:
    from instructor_search.indexer.readers import scan

    docs = [item for item in scan(root / "documents") if isinstance(item, Document)]
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/instructor-search-bench"))
    parser.add_argument("--data", type=Path, nargs="*", default=[SCIFACT])
    parser.add_argument("--sample-corpus", type=Path, default=ROOT / "sample_corpus")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--splits", nargs="*", default=["test", "train"], help="qrels to score")
    parser.add_argument("--json", type=Path, help="also write all figures to this JSON file")
    args = parser.parse_args()

    model = Instructor()
    print(f"# Retrieval quality: {model.model_name}, chunk_tokens {args.chunk_tokens}")
    print(
        f"\n{platform.platform()}, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    figures = {}
    for folder in args.data:
        data = load_beir(folder)
        all_queries = load_queries(folder / "queries.jsonl")  # every split
        index = build_index(
            args.workdir / f"{folder.name}-minilm-{args.chunk_tokens}",
            data.corpus,
            model,
            args.chunk_tokens,
        )
        if folder.name == "scifact":
            figures["scifact/anchors"] = anchors(folder, args.workdir, model, data)
        with Retriever(index, model) as retriever:
            for split in args.splits:
                if not (folder / "qrels" / f"{split}.tsv").is_file():
                    continue
                qrels = load_qrels(folder / "qrels" / f"{split}.tsv")
                name = f"{folder.name} ({split}, {'held-out check' if split != 'test' else 'the issue anchors'})"
                figures[f"{folder.name}/{split}"] = report(name, retriever, all_queries, qrels)
        index.close()
    eval_dir = args.sample_corpus / "eval"
    if (eval_dir / "queries.jsonl").is_file():
        docs = sample_corpus_documents(args.sample_corpus)
        qrels = load_qrels(eval_dir / "qrels" / "test.tsv")
        queries = load_queries(eval_dir / "queries.jsonl")
        folder = args.workdir / f"sample_corpus-minilm-{args.chunk_tokens}"
        index = build_index(folder, docs, model, args.chunk_tokens)
        with Retriever(index, model) as retriever:
            figures["sample_corpus"] = report("sample_corpus", retriever, queries, qrels)
        index.close()
    else:
        log(f"{eval_dir} has no queries.jsonl: sample corpus not evaluated")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=float))


if __name__ == "__main__":
    main()
