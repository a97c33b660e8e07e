"""Build throughput: the whole pipeline vs encoding the same chunks alone, a no-op rebuild,
and txtai building the same passages (when it is installed), in one run.

    python bench/build.py                     # 2,000 SciFact passages, bundled model
    python bench/build.py --passages 500 --noop-documents 10000 --txtai

The pipeline overhead is (build time - encode-only time) / encode-only time, measured on the
same chunks in the same process, so model speed cancels out.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "bench-data" / "scifact" / "corpus.jsonl"


def write_records(path: Path, source: Path, count: int) -> list[dict]:
    records = []
    with source.open() as handle:
        for line in handle:
            record = json.loads(line)
            records.append({"_id": record["_id"], "title": record["title"], "text": record["text"]})
            if len(records) == count:
                break
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def time_journal(folder: Path, texts: list[str], model) -> float:
    """Seconds the build journal costs a build of ``texts``: keys, one lookup, a committed put
    per slice, one forget (what ``indexer/embedding.py`` does besides embedding)."""
    import numpy as np

    from instructor_search.indexer.embedding import EMBED_SLICE
    from instructor_search.indexer.journal import Journal

    folder.mkdir()
    vectors = np.random.default_rng(0).standard_normal((len(texts), model.dimension))
    start = time.perf_counter()
    journal = Journal(folder, model.fingerprint, "", model.dimension)
    keys = [journal.key(text) for text in texts]
    journal.get(keys)
    for at in range(0, len(texts), EMBED_SLICE):
        journal.put(keys[at : at + EMBED_SLICE], vectors[at : at + EMBED_SLICE])
    journal.forget(keys)
    journal.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--noop-documents", type=int, default=10000)
    parser.add_argument("--corpus", type=Path, default=SCIFACT)
    parser.add_argument("--txtai", action="store_true", help="also time txtai (pip install txtai)")
    args = parser.parse_args()

    import torch

    from instructor_search import Instructor
    from instructor_search.indexer.build import BuildSettings, build
    from instructor_search.store.index import Index

    work = Path(tempfile.mkdtemp(prefix="instructor-search-bench-"))
    try:
        model = Instructor()
        print(
            f"model {model.model_name}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
            f"{platform.machine()}  backend {model.backend}  precision {model.precision}"
        )
        corpus = work / "passages.jsonl"
        write_records(corpus, args.corpus, args.passages)

        start = time.perf_counter()
        report = build([corpus], work / "index", BuildSettings(), model=model)
        build_seconds = time.perf_counter() - start

        with Index.open(work / "index", readonly=True) as index:
            records = index.chunks(list(range(1, report.chunks_total + 1)))
        titles = {}
        for line in corpus.read_text().splitlines():
            record = json.loads(line)
            titles[record["_id"]] = " ".join(record["title"].split())
        texts = [f"{titles[r.doc_id]} {r.text}" if titles[r.doc_id] else r.text for r in records]
        start = time.perf_counter()
        model.embed(texts, "")
        encode_seconds = time.perf_counter() - start
        overhead = (build_seconds - encode_seconds) / encode_seconds
        print(
            f"build {args.passages} passages ({report.chunks_total} chunks): {build_seconds:.1f} s; "
            f"encoding the same chunks alone: {encode_seconds:.1f} s; pipeline overhead {100 * overhead:+.1f}%"
        )
        journal_seconds = time_journal(work / "journal", texts, model)
        print(
            "build journal (keys, lookup, a put per 128-chunk slice, forget) for the "
            f"same chunks: {journal_seconds:.2f} s = {100 * journal_seconds / build_seconds:.2f}% "
            "of the build"
        )

        noop_corpus = work / "noop"
        noop_corpus.mkdir()
        for n in range(args.noop_documents):
            (noop_corpus / f"note-{n:05d}.txt").write_text(
                f"Note {n}\n\nA short note number {n} about nothing much.\n"
            )
        build([noop_corpus], work / "noop-index", BuildSettings(commit_documents=512), model=model)
        start = time.perf_counter()
        again = build([noop_corpus], work / "noop-index", BuildSettings(), model=model)
        noop_seconds = time.perf_counter() - start
        print(
            f"no-op rebuild of {again.documents_unchanged} unchanged documents: {noop_seconds:.2f} s "
            f"(embedded {again.chunks_embedded})"
        )

        if args.txtai:
            from txtai import Embeddings

            from instructor_search.encoder.checkpoints import bundled_model_folder

            data = [json.loads(line) for line in corpus.read_text().splitlines()]
            embeddings = Embeddings(path=str(bundled_model_folder()), content=True)
            start = time.perf_counter()
            embeddings.index([(d["_id"], f"{d['title']} {d['text']}", None) for d in data])
            txtai_seconds = time.perf_counter() - start
            print(
                f"txtai build of the same {len(data)} passages: {txtai_seconds:.1f} s; "
                f"ours is {txtai_seconds / build_seconds:.2f}x faster"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
