"""One-off search start-up: ``instructor-index search`` as a fresh process, phase by phase.

Three kinds of fresh process, in alternating rounds (the order rotates each round):

- ``query-encoder``: today's path, ``Retriever(index).search(query)``: the model's verified
  ONNX export through :class:`~instructor_search.encoder.query.QueryEncoder` (onnxruntime and
  tokenizers, no torch, no transformers);
- ``instructor``: the path before it, the same search with the model loaded as
  ``Instructor(model, precision="auto")`` (torch + transformers, the ONNX export for queries);
- ``floor``: ``python -c "import torch, transformers"``, what the old path pays before any work.

Each search process reports its phases (import, index open, model load, first query) measured
inside it; the parent measures every process's wall time, interpreter start included. Also
timed: the CLI itself, ``python -m instructor_search.indexer.cli search INDEX QUERY``.

    python bench/startup.py                  # the sample corpus, built once into a temporary index
    python bench/startup.py --index PATH --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "sample_corpus" / "documents"
QUERY = "how do neutron stars form"
GOAL_SECONDS = 1.5

_CHILD = """
import json, sys, time
started = time.perf_counter()
from instructor_search.search.retriever import Retriever
imported = time.perf_counter()
retriever = Retriever(sys.argv[1])
opened = time.perf_counter()
if sys.argv[3] == "instructor":
    from instructor_search import Instructor
    name = retriever.index.settings.model
    retriever = Retriever(retriever.index, Instructor(name, precision="auto"))
model = retriever.model
loaded = time.perf_counter()
hits = retriever.search(sys.argv[2], k=10)
searched = time.perf_counter()
heavy = [m for m in ("torch", "transformers") if m in sys.modules]
print(json.dumps({
    "import": imported - started, "open": opened - imported, "model": loaded - opened,
    "query": searched - loaded, "hits": [h.chunk_id for h in hits], "heavy": heavy,
    "encoder": type(model).__name__,
}))
"""


def run(command: list[str]) -> tuple[float, str]:
    """Wall seconds of a fresh process, and its last line of output."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    return wall, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", type=Path, default=None, help="default: the sample corpus")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--query", default=QUERY)
    args = parser.parse_args()
    python = sys.executable
    index = args.index
    if index is None:
        from instructor_search.indexer.build import build

        index = Path(tempfile.mkdtemp(prefix="bench-startup-")) / "sample-index"
        build([SAMPLE], index)
    # One search in this process saves the query encoder beside the export (once per model).
    from instructor_search.search.retriever import Retriever

    with Retriever(index) as retriever:
        retriever.search(args.query)
        print(f"index {index}: {retriever.index.stats().chunks} chunks, model {retriever.model!r}")
    print(
        f"python {sys.version.split()[0]}  cores {len(os.sched_getaffinity(0))}  "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )

    kinds = {
        "query-encoder": [python, "-c", _CHILD, str(index), args.query, "query-encoder"],
        "instructor": [python, "-c", _CHILD, str(index), args.query, "instructor"],
        "floor": [python, "-c", "import torch, transformers"],
        "cli": [python, "-m", "instructor_search.indexer.cli", "search", str(index), args.query],
    }
    walls: dict[str, list[float]] = {name: [] for name in kinds}
    phases: dict[str, list[dict]] = {"query-encoder": [], "instructor": []}
    names = list(kinds)
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            wall, last = run(kinds[name])
            walls[name].append(wall)
            if name in phases:
                phases[name].append(json.loads(last))
        print(
            f"round {round_ + 1} ({' > '.join(order)}): "
            + "  ".join(f"{name} {walls[name][-1]:.2f} s" for name in names)
            + f"  load {os.getloadavg()[0]:.1f}"
        )
    same = phases["query-encoder"][0]["hits"] == phases["instructor"][0]["hits"]
    print("summary (median over rounds, seconds):")
    for name in ("query-encoder", "instructor"):
        parts = {
            key: statistics.median(p[key] for p in phases[name])
            for key in ("import", "open", "model", "query")
        }
        first = phases[name][0]
        print(
            f"  {name:14s} wall {statistics.median(walls[name]):5.2f}  = interpreter + "
            + "  ".join(f"{key} {value:.3f}" for key, value in parts.items())
            + f"   encoder {first['encoder']}, torch/transformers imported: {first['heavy'] or 'none'}"
        )
    print(
        f"  {'floor':14s} wall {statistics.median(walls['floor']):5.2f}  (import torch, transformers)"
    )
    cli = statistics.median(walls["cli"])
    print(f"  {'cli':14s} wall {cli:5.2f}  (instructor-index search, the query encoder)")
    ratio = statistics.median(walls["instructor"]) / statistics.median(walls["query-encoder"])
    print(f"query-encoder vs instructor: {ratio:.2f}x faster; same top-10: {same}")
    print(
        f"goal (one-off CLI search <= {GOAL_SECONDS} s): {'met' if cli <= GOAL_SECONDS else 'NOT met'}"
        f" ({cli:.2f} s, load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
