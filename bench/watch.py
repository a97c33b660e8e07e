"""How long an incremental build costs when little or nothing changed, and a watched edit.

    python bench/watch.py [--workdir /tmp/instructor-search-bench] [--runs 5] [--edits 5]

On a copy of the sample corpus indexed with the bundled model: a no-op ``instructor-index
build`` (the one-off command, its own process; nothing is embedded, so no model is loaded),
the same with ``--rehash`` (every file read and hashed: the peer), the no-op
``build(...)`` call in-process, and ``bench/serve.py``'s watched-edit round trip
(``serve --watch`` on the copy; the smallest Markdown file gets a new word; the time from the
write to the first search that finds it). Prints the load average before and after.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from serve import CLI, SAMPLE, watch_latency

from instructor_search.indexer.build import BuildSettings, build


def cli_build(corpus: Path, index: Path, *extra: str) -> float:
    """Seconds of one ``instructor-index build CORPUS --index INDEX -q`` (a new process)."""
    started = time.perf_counter()
    subprocess.run([*CLI, "build", str(corpus), "--index", str(index), "-q", *extra], check=True)
    return time.perf_counter() - started


def load() -> str:
    """The load averages over 1, 5 and 15 minutes."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def median(times: list[float]) -> str:
    return (
        f"{np.median(times):.2f} s (median of {len(times)}: {', '.join(f'{t:.2f}' for t in times)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/instructor-search-bench"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--no-watch", action="store_true", help="Only the no-op builds.")
    args = parser.parse_args()
    corpus, index = args.workdir / "noop-corpus", args.workdir / "noop-index"
    shutil.rmtree(corpus, ignore_errors=True)
    shutil.rmtree(index, ignore_errors=True)
    shutil.copytree(SAMPLE, corpus)
    build([corpus], index)
    print(f"load average before: {load()}")
    files = sum(1 for path in corpus.rglob("*") if path.is_file())
    print(f"sample corpus copy: {files} files")
    print(f"no-op CLI build: {median([cli_build(corpus, index) for _ in range(args.runs)])}")
    rehash = "--rehash" in subprocess.run([*CLI, "build", "--help"], capture_output=True,
                                          text=True).stdout  # fmt: skip
    if rehash:
        times = [cli_build(corpus, index, "--rehash") for _ in range(args.runs)]
        print(f"no-op CLI build --rehash: {median(times)}")
    calls = []
    for _ in range(args.runs):
        started = time.perf_counter()
        build([corpus], index, BuildSettings())
        calls.append(time.perf_counter() - started)
    print(f"no-op build() in-process: {median(calls)}")
    if not args.no_watch:
        found = watch_latency(args.workdir, args.edits)
        print(f"serve --watch, an edit found by search after: {median(found)}")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
