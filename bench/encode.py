"""Encoding throughput: instructor-search vs sentence-transformers, same model, same texts, one run.

Four encoders, measured in alternating rounds (the order rotates each round): the drop-in
default ``Instructor()`` (exact: fp32, on ONNX Runtime where the export measured within 1e-5 of
torch), the fast path that builds, ``eval`` and the Retriever use (``precision="auto"``: batches
in bf16 on a CPU with native bf16, small batches on ONNX Runtime, each behind its fidelity
gate), ours in fp32 on torch, and sentence-transformers. Each round prints
tokens/s and the ratio of ours to sentence-transformers; the summary gives the median ratio, the
minimum cosine between our vectors and sentence-transformers', the fraction of the fp32
ceiling (useful FLOPs of the real, unpadded tokens over the machine's measured fp32 peak), and
the latency of embedding one short query (p50/p99); the largest absolute difference of each
of ours from the torch fp32 path checks the exact default's contract (<= 1e-5).

    python bench/encode.py                       # bundled all-MiniLM-L6-v2, 512 SciFact passages
    python bench/encode.py --texts 2000 --rounds 7 --model PATH --onnx-cache /tmp/onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "bench-data" / "scifact" / "corpus.jsonl"
#: fp32 GFLOP/s of the 2-core benchmark machine, measured with a large matmul (issue 7).
PEAK_GFLOPS = 149.0
GOAL_RATIO, GOAL_COSINE, GOAL_QUERY_MS = 1.5, 0.99, 5.0
QUERY = [
    "Represent the question for retrieving supporting documents: ",
    "do statins cause diabetes",
]


def load_texts(path: Path, count: int) -> list[str]:
    texts = []
    with path.open() as handle:
        for line in handle:
            record = json.loads(line)
            texts.append(f"{record['title']} {record['text']}".strip())
            if len(texts) == count:
                break
    return texts


def flop_per_text(config, length: int) -> float:
    """Forward FLOPs of one unpadded input: 2 x the layers' weights + the attention products."""
    hidden = getattr(config, "d_model", None) or config.hidden_size
    layers = getattr(config, "num_layers", None) or config.num_hidden_layers
    inner = getattr(config, "d_ff", None) or config.intermediate_size
    attention = getattr(config, "num_heads", None) or config.num_attention_heads
    width = getattr(config, "d_kv", hidden // attention) * attention
    gated = 2 if "gated" in str(getattr(config, "feed_forward_proj", "")) else 1
    weights = 4 * hidden * width + (1 + gated) * hidden * inner  # Q, K, V, O + feed-forward
    return layers * (2 * weights * length + 4 * width * length * length)


def latency_ms(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    for _ in range(5):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the bundled one)")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--corpus", type=Path, default=SCIFACT)
    parser.add_argument(
        "--onnx-cache",
        default=None,
        help="ONNX export cache (default: a new temporary folder, as on a fresh install)",
    )
    parser.add_argument("--peak-gflops", type=float, default=PEAK_GFLOPS)
    parser.add_argument("--query-repeats", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="  [log] %(message)s")

    import onnxruntime
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    from instructor_search import Instructor
    from instructor_search.encoder.checkpoints import bundled_model_folder
    from instructor_search.encoder.fidelity import EXACT_ATOL

    folder = args.model or str(bundled_model_folder())
    cache = args.onnx_cache or tempfile.mkdtemp(prefix="bench-onnx-")
    started = time.perf_counter()
    auto = Instructor(folder, device="cpu", precision="auto", onnx_cache=cache)  # the fast path
    auto_load = time.perf_counter() - started
    started = time.perf_counter()
    exact = Instructor(folder, device="cpu", onnx_cache=cache)  # the drop-in default
    cached_load = time.perf_counter() - started
    plain = Instructor(folder, device="cpu", backend="torch", precision="fp32")
    peer = SentenceTransformer(folder, device="cpu")
    peer.max_seq_length = auto.max_seq_length
    texts = load_texts(args.corpus, args.texts)
    lengths = [
        len(ids)
        for ids in auto.tokenizer(texts, truncation=True, max_length=auto.max_seq_length)[
            "input_ids"
        ]
    ]
    tokens = sum(lengths)
    flop = sum(flop_per_text(auto.encoder.config, n) for n in lengths)
    ceiling = args.peak_gflops * 1e9 * tokens / flop
    print(
        f"model {auto.model_name}  texts {len(texts)}  tokens {tokens}  "
        f"max_seq_length {auto.max_seq_length}  batch_size {args.batch_size}  "
        f"max_tokens_per_batch {auto.max_tokens_per_batch}"
    )
    print(
        f"torch {torch.__version__}  onnxruntime {onnxruntime.__version__}  transformers "
        f"{transformers.__version__}  sentence-transformers {sentence_transformers.__version__}"
    )
    print(
        f"cpu {platform.processor() or platform.machine()}  cores {len(os.sched_getaffinity(0))}  "
        f"threads torch {torch.get_num_threads()}  load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"default (exact) -> backend {exact.backend}, precision {exact.precision}; fast path "
        f"(precision='auto') -> backend {auto.backend}, precision {auto.precision}  (first load "
        f"{auto_load:.1f} s incl. export and gates; cached load {cached_load:.1f} s; cache {cache})"
    )
    print(
        f"fp32 ceiling: {flop / tokens / 1e6:.2f} MFLOP/token x {args.peak_gflops:.0f} GFLOP/s "
        f"-> {ceiling:,.0f} tokens/s"
    )

    default = f"ours-default-exact({exact.backend},{exact.precision})"
    fast = f"ours-fast({auto.backend},{auto.precision})"
    runs: dict[str, Callable[[], np.ndarray]] = {
        default: lambda: exact.encode(texts, batch_size=args.batch_size, normalize_embeddings=True),
        fast: lambda: auto.encode(texts, batch_size=args.batch_size, normalize_embeddings=True),
        "ours-torch-fp32": lambda: plain.encode(
            texts, batch_size=args.batch_size, normalize_embeddings=True
        ),
        "sentence-transformers": lambda: peer.encode(
            texts,
            batch_size=args.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ),
    }
    names = list(runs)
    vectors = {name: run() for name, run in runs.items()}  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names[:-1]}
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            start = time.perf_counter()
            vectors[name] = runs[name]()
            rates[name].append(tokens / (time.perf_counter() - start))
        for name in ratios:
            ratios[name].append(rates[name][-1] / rates["sentence-transformers"][-1])
        print(
            f"round {round_ + 1} ({' > '.join(order)}): "
            + "   ".join(f"{name} {rates[name][-1]:6.0f} tok/s" for name in names)
            + "   ratios "
            + "  ".join(f"{ratios[name][-1]:.2f}x" for name in ratios)
        )

    peer_vectors = vectors["sentence-transformers"]
    print("summary (median over rounds; spread = min..max of the per-round ratio):")
    for name in names:
        rate = statistics.median(rates[name])
        line = f"  {name:30s} {rate:7.0f} tok/s  {rate / ceiling:5.1%} of the fp32 ceiling"
        if name in ratios:
            cosine = float(np.min(np.sum(vectors[name] * peer_vectors, axis=1)))
            diff = float(np.abs(vectors[name] - vectors["ours-torch-fp32"]).max())
            line += (
                f"   ratio {statistics.median(ratios[name]):.2f}x "
                f"({min(ratios[name]):.2f}..{max(ratios[name]):.2f})   min cosine {cosine:.6f}"
                f"   max abs diff to torch fp32 {diff:.1e}"
            )
        print(line)

    print(f"single short query ({len(auto.tokenizer(QUERY[1])['input_ids'])} tokens), ms:")
    latencies = {
        default: lambda: exact.encode([QUERY], normalize_embeddings=True),
        fast: lambda: auto.encode([QUERY], normalize_embeddings=True),
        "ours-torch-fp32": lambda: plain.encode([QUERY], normalize_embeddings=True),
        "sentence-transformers": lambda: peer.encode(
            [QUERY[1]], normalize_embeddings=True, show_progress_bar=False
        ),
    }
    query_p50 = {}
    for name, run in latencies.items():
        p50, p99 = latency_ms(run, args.query_repeats)
        query_p50[name] = p50
        print(f"  {name:30s} p50 {p50:6.2f}   p99 {p99:6.2f}")

    ratio = statistics.median(ratios[fast])
    cosine = float(np.min(np.sum(vectors[fast] * peer_vectors, axis=1)))
    met = ratio >= GOAL_RATIO and cosine >= GOAL_COSINE and query_p50[fast] <= GOAL_QUERY_MS
    print(
        f"goal (fast path >= {GOAL_RATIO}x at min cosine >= {GOAL_COSINE}, query p50 <= "
        f"{GOAL_QUERY_MS:.0f} ms): {'met' if met else 'NOT met'} "
        f"({ratio:.2f}x, {cosine:.6f}, {query_p50[fast]:.2f} ms)"
    )
    diff = float(np.abs(vectors[default] - vectors["ours-torch-fp32"]).max())
    print(
        f"exact default within {EXACT_ATOL} of torch fp32: {'yes' if diff <= EXACT_ATOL else 'NO'}"
        f" ({diff:.1e})"
    )


if __name__ == "__main__":
    main()
