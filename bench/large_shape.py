"""What instructor-large costs on this machine, measured on a checkpoint of its shape (issue 14).

    python bench/large_shape.py [--workdir /tmp/instructor-search-large-shape] [--texts 8]

instructor-large's weights cannot be downloaded here, so the script builds a checkpoint of the
same shape with random weights (never committed): hkunlp/instructor-large's published
configuration (a T5 encoder, d_model 1024, 24 layers, 16 heads, d_kv 64, d_ff 4096, ReLU,
vocabulary 32,128; mean pooling; a 1024 -> 768 Dense without bias; normalisation), laid out as
the tiny INSTRUCTOR fixture is, whose tokenizer it borrows. Speed and memory depend on the shape,
not on the weights' values; the vectors mean nothing.

Each phase runs in a fresh process and reports its wall time and max RSS: the torch load, the
first default load (ONNX export and its fidelity gate), a second default load (the cached
export), and ``precision="auto"`` (the bf16 gate). Throughput is tokens/s over ``--texts``
SciFact passages at the model's max length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode import load_texts

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT.parent / "shared" / "fixtures" / "instructor-tiny"
CORPUS = ROOT.parent / "shared" / "bench-data" / "scifact" / "corpus.jsonl"
LARGE = {
    "d_model": 1024,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "num_heads": 16,
    "d_kv": 64,
    "d_ff": 4096,
    "feed_forward_proj": "relu",
    "dense_act_fn": "relu",
    "is_gated_act": False,
    "vocab_size": 32128,
}
DENSE_OUT = 768

PHASE = r"""
import json, logging, resource, sys, time
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
started = time.perf_counter()
from instructor_search import Instructor
folder, kwargs, texts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
model = Instructor(folder, **kwargs)
loaded = time.perf_counter() - started
tokens = sum(len(model.tokenizer(t, truncation=True, max_length=model.max_seq_length)["input_ids"])
             for t in texts)
model.embed(texts[:1])  # warm
began = time.perf_counter()
model.embed(texts)
took = time.perf_counter() - began
print(json.dumps({"load_s": loaded, "backend": model.backend, "precision": model.precision,
                  "tokens": tokens, "tokens_per_s": tokens / took,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_checkpoint(folder: Path) -> Path:
    """The tiny fixture's layout with instructor-large's shape and random weights (cached)."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import T5Config, T5EncoderModel

    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(TINY, folder)
    config = json.loads((TINY / "config.json").read_text()) | LARGE
    torch.manual_seed(0)
    model = T5EncoderModel(T5Config(**config))
    model.save_pretrained(folder, safe_serialization=True)
    dense = {"in_features": LARGE["d_model"], "out_features": DENSE_OUT, "bias": False,
             "activation_function": "torch.nn.modules.linear.Identity"}  # fmt: skip
    (folder / "2_Dense" / "config.json").write_text(json.dumps(dense))
    weight = torch.randn(DENSE_OUT, LARGE["d_model"]) / LARGE["d_model"] ** 0.5
    torch.save({"linear.weight": weight}, folder / "2_Dense" / "pytorch_model.bin")
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    pooling["word_embedding_dimension"] = LARGE["d_model"]
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def phase(folder: Path, kwargs: dict, texts: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PHASE, str(folder), json.dumps(kwargs), json.dumps(texts)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - started
    out["log"] = [line for line in done.stderr.splitlines() if "gate" in line or "diff" in line]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/instructor-search-large-shape"))
    parser.add_argument("--texts", type=int, default=8)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    folder = build_checkpoint(args.workdir / "instructor-large-shaped")
    built = time.perf_counter() - started
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    texts = load_texts(CORPUS, args.texts)
    cache = args.workdir / "onnx-cache"
    shutil.rmtree(cache, ignore_errors=True)
    print("# instructor-large's shape, random weights (bench/large_shape.py)\n")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"checkpoint built in {built:.0f} s, {size / 1e9:.2f} GB on disk\n")  # fmt: skip
    print("| phase | wall s | load s | backend | precision | tokens/s | max RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, kwargs in [
        ("torch fp32 load", {"backend": "torch"}),
        ("default, first load (ONNX export + gate)", {"onnx_cache": str(cache)}),
        ("default, second load (cached export)", {"onnx_cache": str(cache)}),
        ('precision="auto" (bf16 gate)', {"onnx_cache": str(cache), "precision": "auto"}),
    ]:
        out = phase(folder, kwargs, texts)
        print(f"| {name} | {out['wall_s']:.1f} | {out['load_s']:.1f} | {out['backend']} | "
              f"{out['precision']} | {out['tokens_per_s']:.0f} | {out['max_rss_mb']:,.0f} |",
              flush=True)  # fmt: skip
        for line in out["log"]:
            print(f"    {line}", file=sys.stderr)
    print(f"\n{out['tokens']} tokens per pass; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
