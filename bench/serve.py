"""The HTTP API under load, against the one-off CLI search, and how soon a watched edit is found.

    python bench/serve.py [--workdir /tmp/instructor-search-bench] [--clients 4] [--requests 500]

For each index (the sample corpus; the synthetic 100k-chunk index of ``bench/query.py``, built
from SciFact passages and cached under ``--workdir``), ``instructor-index serve`` runs in its own
process and ``--clients`` threads each send ``--requests`` ``POST /search`` (a SciFact claim,
k=10, the default mode) one after another over a kept-alive connection. Latency is per request
as a client sees it (queueing in the server included); requests/s is all requests over the wall
time; the server's CPU time per request (user + system, all its threads) is what bounds
requests/s on a quiet machine (2 cores: at most 2,000 / that). The peer, measured in the same
run: ``instructor-index search INDEX QUERY --json``, the one-off command, which loads the model
for every query.

Then the sample corpus is copied, served with ``--watch`` on the copy, and a file is edited
(a new word appended) a few times: the time from the write to the first search that finds the
word.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from query import PASSAGES, base_vectors, passages, queries, synthetic_index

from instructor_search import Instructor
from instructor_search.indexer.build import build
from instructor_search.store.index import Index

SAMPLE = Path(__file__).resolve().parents[1] / "sample_corpus" / "documents"
CLI = [sys.executable, "-m", "instructor_search.indexer.cli"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "serve", str(index), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server for {index} exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not come up")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(url: str, items: list[str], clients: int, requests: int) -> dict[str, float]:
    """``clients`` threads, ``requests`` each; latencies in ms, errors, requests/s."""
    times: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as session:
            for i in range(10):  # warm the connection
                session.post("/search", json={"query": items[i], "k": 10})
            barrier.wait()
            for i in range(requests):
                query = items[(n * requests + i) % len(items)]
                started = time.perf_counter()
                response = session.post("/search", json={"query": query, "k": 10})
                times[n].append((time.perf_counter() - started) * 1000)
                if response.status_code != 200 or not response.json()["hits"]:
                    errors[n] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    every = np.concatenate([np.array(t) for t in times])
    return {
        "requests": len(every),
        "errors": sum(errors),
        "p50": float(np.percentile(every, 50)),
        "p99": float(np.percentile(every, 99)),
        "rps": len(every) / wall,
    }


def one_off(index: Path, items: list[str], runs: int) -> list[float]:
    """Wall seconds of ``instructor-index search INDEX QUERY --json``, one process per query."""
    seconds = []
    for query in items[:runs]:
        started = time.perf_counter()
        subprocess.run([*CLI, "search", str(index), query, "--json"], check=True,
                       capture_output=True)  # fmt: skip
        seconds.append(time.perf_counter() - started)
    return seconds


def in_process(index: Path, items: list[str], count: int = 200) -> float:
    """p50 ms of ``Retriever.search`` called in this process, one query after another."""
    from instructor_search.search.retriever import Retriever

    times = []
    with Retriever(index) as retriever:
        for n, query in enumerate(items[: count + 10]):
            started = time.perf_counter()
            retriever.search(query, k=10)
            if n >= 10:
                times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50))


def watch_latency(workdir: Path, edits: int) -> list[float]:
    """Seconds from an edit's write to the first search that finds it (serve --watch)."""
    corpus, index = workdir / "watched-corpus", workdir / "watched-index"
    shutil.rmtree(corpus, ignore_errors=True)
    shutil.rmtree(index, ignore_errors=True)
    shutil.copytree(SAMPLE, corpus)
    build([corpus], index)
    process, url = start_server(index, "--watch", str(corpus))
    target = min(corpus.rglob("*.md"), key=lambda path: path.stat().st_size)  # a small document
    original = target.read_text()
    found = []
    try:
        with httpx.Client(base_url=url, timeout=60) as session:
            for n in range(edits):
                word = f"quokka{n}x{os.getpid()}"
                target.write_text(f"{original}\nA {word} was seen here.\n")
                written = time.perf_counter()
                while time.perf_counter() - written < 30:
                    body = {"query": word, "k": 1, "mode": "keyword"}
                    if session.post("/search", json=body).json()["hits"]:
                        break
                    time.sleep(0.01)
                found.append(time.perf_counter() - written)
                time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(30)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/instructor-search-bench"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--cli-runs", type=int, default=3)
    parser.add_argument("--edits", type=int, default=5)
    args = parser.parse_args()

    items = queries()
    sample = args.workdir / "sample-index"
    if not (sample / "index.sqlite").is_file():
        log(f"building {sample}")
        build([SAMPLE], sample)
    model = Instructor()
    texts = passages(PASSAGES)
    large = synthetic_index(
        args.workdir / f"latency-{args.size}", args.size, model, texts,
        base_vectors(args.workdir, model, texts),
    )  # fmt: skip
    del model
    for index in (sample, large):  # schema migrations and derived files current before timing
        with Index.open(index) as opened:
            opened.sync_derived()
    print("# HTTP API: POST /search (SciFact claims, k=10, hybrid)\n")
    print(f"load average before: {os.getloadavg()[0]:.2f}\n")
    print(
        "| index | clients x requests | errors | p50 ms | p99 ms | requests/s "
        "| server CPU ms/request |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    peers = []
    for name, index in (("sample corpus", sample), (f"{args.size:,} chunks", large)):
        process, url = start_server(index)
        try:
            for clients, requests in ((args.clients, args.requests), (1, args.requests // 2)):
                cpu = cpu_seconds(process.pid)
                result = load(url, items, clients, requests)
                cpu = (cpu_seconds(process.pid) - cpu) * 1000 / result["requests"]
                print(
                    f"| {name} | {clients} x {requests} | {result['errors']} | "
                    f"{result['p50']:.1f} | {result['p99']:.1f} | {result['rps']:.0f} | "
                    f"{cpu:.1f} |",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(30)
        peers.append((name, in_process(index, items), one_off(index, items, args.cli_runs)))
    print("\n| index | in-process Retriever.search p50 ms (one caller) | one-off CLI search s |")
    print("| --- | --- | --- |")
    for name, local, cli in peers:
        print(f"| {name} | {local:.1f} | {np.median(cli):.2f} (median of {len(cli)}) |")
    found = watch_latency(args.workdir, args.edits)
    print(
        f"\nserve --watch, sample corpus: an edit found by search after "
        f"{', '.join(f'{s:.2f}' for s in found)} s (median {np.median(found):.2f} s)"
    )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
