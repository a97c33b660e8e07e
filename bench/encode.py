"""Encoding throughput: instructor-search vs sentence-transformers, same model, same texts, one run.

Rounds alternate between the two encoders; each round reports tokens/s of both and their
ratio, and the summary gives the median ratio and the minimum cosine between the vectors.

    python bench/encode.py                       # bundled all-MiniLM-L6-v2, 512 SciFact passages
    python bench/encode.py --texts 2000 --rounds 5 --model PATH
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "bench-data" / "scifact" / "corpus.jsonl"


def load_texts(path: Path, count: int) -> list[str]:
    texts = []
    with path.open() as handle:
        for line in handle:
            record = json.loads(line)
            texts.append(f"{record['title']} {record['text']}".strip())
            if len(texts) == count:
                break
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model folder (default: the bundled one)")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--corpus", type=Path, default=SCIFACT)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from instructor_search import Instructor
    from instructor_search.checkpoints import bundled_model_folder

    folder = args.model or str(bundled_model_folder())
    ours = Instructor(folder, device="cpu")
    peer = SentenceTransformer(folder, device="cpu")
    peer.max_seq_length = ours.max_seq_length
    texts = load_texts(args.corpus, args.texts)
    tokens = sum(
        len(ids)
        for ids in ours.tokenizer(texts, truncation=True, max_length=ours.max_seq_length)[
            "input_ids"
        ]
    )
    print(
        f"model {ours.model_name}  texts {len(texts)}  tokens {tokens}  max_seq_length {ours.max_seq_length}"
    )
    print(
        f"torch {torch.__version__}  threads {torch.get_num_threads()}  {platform.processor() or platform.machine()}"
    )

    def run_ours() -> np.ndarray:
        return ours.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)

    def run_peer() -> np.ndarray:
        return peer.encode(
            texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )

    run_ours(), run_peer()  # warm-up
    ratios = []
    for round_ in range(1, args.rounds + 1):
        rates = {}
        for name, run in (("ours", run_ours), ("sentence-transformers", run_peer)):
            start = time.perf_counter()
            vectors = run()
            rates[name] = tokens / (time.perf_counter() - start)
            if name == "ours":
                our_vectors = vectors
            else:
                peer_vectors = vectors
        ratios.append(rates["ours"] / rates["sentence-transformers"])
        print(
            f"round {round_}: ours {rates['ours']:8.0f} tok/s   sentence-transformers "
            f"{rates['sentence-transformers']:8.0f} tok/s   ratio {ratios[-1]:.2f}x"
        )
    cosine = float(np.min(np.sum(our_vectors * peer_vectors, axis=1)))
    print(f"median ratio {statistics.median(ratios):.2f}x   min cosine {cosine:.6f}")


if __name__ == "__main__":
    main()
