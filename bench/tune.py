"""``tune`` on SciFact with the bundled model: does fine-tuning reach the issue's goal?

    python bench/tune.py [--workdir /tmp/instructor-search-tune-bench] [--epochs 1] ...

Trains all-MiniLM-L6-v2 on SciFact's ``qrels/train.tsv`` (809 claims, 919 pairs) with the
INSTRUCTOR recipe and SciFact's instruction pair, and scores base and tuned model on
``qrels/test.tsv`` (300 claims, same corpus) with every default of ``instructor-index eval``
(200-token chunks, hybrid = RRF of dense and BM25). The base index (the peer, measured in
the same run) is built once under ``--workdir`` and reused on later runs; hard negatives are
mined from it. Then, on the tuned model's index: the query instruction against none, and how
many hits the page's *compare instructions* view moves. Prints a markdown report on stdout.

Goal (issue 15): dense nDCG@10 0.66 -> >= 0.70, hybrid 0.72 -> >= 0.75, instruction > none.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

from instructor_search import Instructor, Retriever
from instructor_search.evaluate import evaluate, load_qrels, load_queries
from instructor_search.indexer.build import BuildSettings, build
from instructor_search.instructions import presets
from instructor_search.training import TuneSettings, tune

ROOT = Path(__file__).resolve().parent.parent
SCIFACT = ROOT.parent / "shared" / "bench-data" / "scifact"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def sampled(data: Path, docs: int, workdir: Path) -> Path:
    """A smaller BEIR folder for a loaded machine: every document judged in the test qrels,
    then train-judged and other documents (half and half, seeded) up to ``docs``; the train
    qrels keep the pairs whose document is in it. Scores on it are not the full set's."""
    folder = workdir / f"{data.name}-sample-{docs}"
    if (folder / "corpus.jsonl").is_file():
        return folder
    test, train = load_qrels(data / "qrels" / "test.tsv"), load_qrels(data / "qrels" / "train.tsv")
    lines = {json.loads(line)["_id"]: line for line in (data / "corpus.jsonl").open()}
    keep = {doc for judged in test.values() for doc in judged}
    rng = random.Random(0)
    trained = sorted({doc for judged in train.values() for doc in judged} - keep)
    others = sorted(set(lines) - keep - set(trained))
    room = max(0, docs - len(keep))
    keep |= set(rng.sample(trained, min(len(trained), room // 2)))
    keep |= set(rng.sample(others, min(len(others), docs - len(keep))))
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w") as corpus:
        corpus.writelines(lines[doc] for doc in sorted(keep))
    shutil.copy(data / "queries.jsonl", folder / "queries.jsonl")
    shutil.copy(data / "qrels" / "test.tsv", folder / "qrels" / "test.tsv")
    with (folder / "qrels" / "train.tsv").open("w") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for qid, judged in train.items():
            handle.writelines(
                f"{qid}\t{doc}\t{grade}\n" for doc, grade in judged.items() if doc in keep
            )
    return folder


def moved_hits(retriever: Retriever, queries: list[str], a: str, b: str) -> float:
    """Mean number of top-10 documents that change rank (or enter) from instruction a to b."""
    total = 0
    for query in queries:
        comparison = retriever.compare(query, a, b, k=10, documents=True)
        total += sum(m.change != "same" for m in comparison.movements)
    return total / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/instructor-search-tune-bench"))
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--hard-negatives", type=int, default=1)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument(
        "--sample-docs",
        type=int,
        default=0,
        help="Use a corpus of this many documents (all test-judged ones included); 0 = all.",
    )
    args = parser.parse_args()
    if args.sample_docs:
        args.data = sampled(args.data, args.sample_docs, args.workdir)

    started, load_at_start = time.perf_counter(), load()
    pair = presets()["SciFact"]
    base_index = args.workdir / f"{args.data.name}-base"
    log(f"base index {base_index} (built once, reused)")
    report = build([args.data / "corpus.jsonl"], base_index, BuildSettings(backend="torch"))
    base_build_seconds = report.seconds if report.chunks_embedded else None

    out = args.workdir / f"{args.data.name}-tuned"
    settings = TuneSettings(
        index=str(base_index),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        temperature=args.temperature,
        hard_negatives=args.hard_negatives,
        max_seq_length=args.max_seq_length,
        max_steps=args.max_steps,
        query_instruction=pair.query,
        document_instruction=pair.document,
        eval_split="test",
        overwrite=True,
        keep_work=True,
        checkpoint_every=10,
    )
    tuned_started = time.perf_counter()
    result = tune(args.data, out, settings, show_progress=True)
    tune_seconds = time.perf_counter() - tuned_started

    log("instruction against none, on the tuned model's index")
    model = Instructor(out, profile="instructor", backend="torch")
    queries = load_queries(args.data / "queries.jsonl")
    qrels = load_qrels(args.data / "qrels" / "test.tsv")
    ablation = {}
    with Retriever(out.parent / f"{out.name}.tune" / "tuned-index", model=model) as retriever:
        for name, instruction in (("pair", pair.query), ("none", "")):
            for mode in ("dense", "hybrid"):
                scores = evaluate(retriever, queries, qrels, mode=mode, instruction=instruction)
                ablation[(name, mode)] = scores["ndcg_at_10"]
        sample = [queries[qid] for qid in sorted(qrels)[:50]]
        moved = moved_hits(retriever, sample, "", pair.query)
    with Retriever(base_index, backend="torch") as retriever:
        moved_base = moved_hits(retriever, sample, "", pair.query)

    ev = result.evaluation or {}
    print(f"## Fine-tuning (`bench/tune.py`, {time.strftime('%Y-%m-%d %H:%M')})\n")
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average (1/5/15 min) {load_at_start} at the start, {load()} at the end "
        "(the cores are shared with other jobs)."
    )
    print(
        f"Settings: epochs {args.epochs}, batch {args.batch_size}, lr {args.learning_rate}, "
        f"temperature {args.temperature}, hard negatives {args.hard_negatives}, "
        f"max_seq_length {args.max_seq_length}, max_steps {args.max_steps}; pair "
        f"{pair.query!r} / {pair.document!r}.\n"
    )
    corpus = sum(1 for _ in (args.data / "corpus.jsonl").open())
    print(f"Data: {args.data} ({corpus} documents; {result.examples} training pairs).\n")
    print("| SciFact test (300 claims) | base (bundled MiniLM) | tuned | tuned / base |")
    print("| --- | --- | --- | --- |")
    for mode in ("dense", "hybrid"):
        for key, label in (("ndcg_at_10", "nDCG@10"), ("recall_at_100", "Recall@100")):
            base, tuned = ev["base"][mode][key], ev["tuned"][mode][key]
            print(f"| {mode} {label} | {base:.4f} | {tuned:.4f} | {tuned / base:.3f} |")
    print(
        f"| tuned, query instruction vs none (dense) | | {ablation[('pair', 'dense')]:.4f} vs "
        f"{ablation[('none', 'dense')]:.4f} | |"
    )
    print(
        f"| tuned, query instruction vs none (hybrid) | | {ablation[('pair', 'hybrid')]:.4f} vs "
        f"{ablation[('none', 'hybrid')]:.4f} | |"
    )
    print(
        f"| compare view: top-10 hits moved by the instruction (50 claims) | {moved_base:.2f} | "
        f"{moved:.2f} | |"
    )
    print()
    print(
        f"Training: {result.steps} steps over {result.examples} examples in "
        f"{result.training_seconds:.0f} s (loss {result.first_loss:.4f} -> {result.last_loss:.4f}); "
        f"the whole `tune` (mining, base and tuned evaluation, the tuned index, writing) "
        f"{tune_seconds:.0f} s; base index build "
        f"{'reused' if base_build_seconds is None else f'{base_build_seconds:.0f} s'}; "
        f"everything {time.perf_counter() - started:.0f} s."
    )
    print("\n```json\n" + json.dumps(result.record["hyperparameters"]) + "\n```")


if __name__ == "__main__":
    main()
