"""The Ray engine against a local build of the same passages, in one run.

    python bench/distributed.py                 # 2,000 SciFact passages, bundled model
    python bench/distributed.py --passages 400  # a loaded machine

Builds the same JSONL passages three times into fresh indexes: ``--engine local``, then Ray
with 1 worker (all cores to it) and with 2 workers (the cores shared out), each Ray build
starting its own local instance as the CLI does. Prints wall time, the overhead against the
local build, chunks/s per worker over the Ray embedding phase (first to last batch back), and
the start-up cost (a bare ``ray.init`` + ``shutdown``, and the build's time to its first batch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "bench-data" / "scifact" / "corpus.jsonl"


def write_records(path: Path, source: Path, count: int) -> None:
    with source.open() as handle, path.open("w") as out:
        for n, line in enumerate(handle):
            if n == count:
                break
            record = json.loads(line)
            out.write(json.dumps({k: record[k] for k in ("_id", "title", "text")}) + "\n")


def timed_build(records: Path, index: Path, settings, engine) -> dict:
    from instructor_search.engines.ray_engine import DISTRIBUTED
    from instructor_search.indexer.build import build

    marks: list[tuple[float, int]] = []

    def note(event) -> None:
        if event.phase == DISTRIBUTED:
            marks.append((time.perf_counter(), event.done))

    start = time.perf_counter()
    report = build([records], index, settings, engine=engine, on_progress=note)
    wall = time.perf_counter() - start
    row = {"wall_s": round(wall, 2), "chunks": report.chunks_embedded, "backend": report.backend}
    row["precision"] = report.precision
    if marks:
        sent = marks[0][0]
        first = next(t for t, done in marks if done)
        row["to_first_batch_s"] = round(first - sent, 2)
        row["ray_phase_s"] = round(marks[-1][0] - sent, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--corpus", type=Path, default=SCIFACT)
    parser.add_argument("--model", default=None, help="default: the bundled model")
    parser.add_argument(
        "--documents-per-task",
        type=int,
        default=None,
        help="documents per Ray batch (default: batches sized by text, as the CLI does)",
    )
    parser.add_argument(
        "--ray-niceness",
        default="0",
        help="nice of Ray's workers (Ray's own default is 15: on a machine shared with other "
        "jobs its workers then get less CPU than the local build; 0 compares equal cores)",
    )
    args = parser.parse_args()
    os.environ["RAY_worker_niceness"] = args.ray_niceness  # noqa: SIM112 (Ray's spelling)

    import ray

    from instructor_search.engines.ray_engine import RaySettings
    from instructor_search.indexer.build import BuildSettings

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"load average before: {os.getloadavg()}; Ray workers at nice {args.ray_niceness}")
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    try:
        records = work / "passages.jsonl"
        write_records(records, args.corpus, args.passages)
        settings = BuildSettings(model=args.model)
        start = time.perf_counter()
        ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray.shutdown()
        bare = time.perf_counter() - start
        rows = {"local": timed_build(records, work / "local", settings, "local")}
        for workers in (1, 2):
            engine = RaySettings(workers=workers, documents_per_task=args.documents_per_task)
            rows[f"ray, {workers} worker(s)"] = timed_build(
                records, work / f"ray{workers}", settings, engine
            )
        local = rows["local"]["wall_s"]
        print(f"{args.passages} passages; bare ray.init + shutdown: {bare:.1f}s")
        for name, row in rows.items():
            line = f"{name:18s} {row['wall_s']:7.1f}s  {row['chunks']} chunks"
            line += f"  ({row['backend']}, {row['precision']})"
            if name != "local":
                workers = int(name.split(",")[1].split()[0])
                per = row["chunks"] / row["ray_phase_s"] / workers
                line += f"  overhead {100 * (row['wall_s'] - local) / local:+.0f}%"
                line += f"  {per:.1f} chunks/s per worker over the Ray phase"
                line += f"  first batch after {row['to_first_batch_s']:.1f}s"
            else:
                line += f"  {row['chunks'] / row['wall_s']:.1f} chunks/s"
            print(line)
        print(json.dumps(rows))
        print(f"load average after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
