"""Retrieval quality on labelled data: BEIR-layout loading and the trec_eval IR metrics.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``, ``metadata``),
``queries.jsonl`` (``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``,
``score``, with a header). Only queries that appear in the qrels are evaluated.

The metrics follow trec_eval / pytrec_eval (as BEIR and MTEB report them):

- nDCG@k (``ndcg_cut_k``): gain = the graded relevance (linear), discount ``log2(rank + 1)``,
  normalised by the DCG of the ideal ordering of the query's judged documents;
- Recall@k: relevant documents (grade >= 1) in the top k / all relevant documents;
- MRR@k: ``1 / rank`` of the first relevant document in the top k, else 0.

Each is averaged over all judged queries; a query with no hit counts as 0 (trec_eval ``-c``;
pytrec_eval would leave it out). Documents are ranked by their best chunk
(``Retriever.search(..., documents=True)``).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .documents import Document
from .errors import InputError, ReaderError

if TYPE_CHECKING:
    from .search.retriever import Retriever

Qrels = dict[str, dict[str, int]]
METRIC_KEYS = ("ndcg_at_10", "recall_at_10", "recall_at_100", "mrr_at_10")


@dataclass
class BeirData:
    """A BEIR folder: the corpus as documents, the judged queries and their qrels."""

    corpus: list[Document]
    queries: dict[str, str]
    qrels: Qrels


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise ReaderError(f"{path} is missing; a BEIR folder holds corpus.jsonl and queries.jsonl")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ReaderError(f"{path}, line {number}: not JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or "_id" not in record:
                raise ReaderError(f"{path}, line {number}: a record needs an '_id' field")
            yield number, record


def load_corpus(path: str | Path) -> list[Document]:
    """``corpus.jsonl`` as documents (id = ``_id``; ``metadata`` kept when it is a dict)."""
    path = Path(path)
    documents = []
    for _, record in _jsonl(path):
        meta = record.get("metadata")
        documents.append(
            Document(
                id=str(record["_id"]),
                text=str(record.get("text") or ""),
                title=str(record.get("title") or ""),
                source=path.name,
                metadata=meta if isinstance(meta, dict) else {},
            )
        )
    return documents


def load_queries(path: str | Path) -> dict[str, str]:
    """``queries.jsonl`` as ``{query_id: text}``."""
    return {str(r["_id"]): str(r.get("text") or "") for _, r in _jsonl(Path(path))}


def load_qrels(path: str | Path) -> Qrels:
    """A qrels TSV with a header (``query-id corpus-id score``) as ``{qid: {doc_id: grade}}``."""
    path = Path(path)
    if not path.is_file():
        raise ReaderError(f"{path} is missing; a BEIR folder holds qrels/<split>.tsv")
    qrels: Qrels = {}
    with path.open(encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        header = next(rows, None)
        if header is None or len(header) < 3:
            raise ReaderError(f"{path}: expected a header 'query-id corpus-id score'")
        for number, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
            except (IndexError, ValueError) as exc:
                raise ReaderError(
                    f"{path}, line {number}: expected 'qid<TAB>doc<TAB>grade'"
                ) from exc
    return qrels


def load_beir(folder: str | Path, split: str = "test") -> BeirData:
    """Load a BEIR folder; the queries are those judged in ``qrels/<split>.tsv``."""
    folder = Path(folder)
    qrels = load_qrels(folder / "qrels" / f"{split}.tsv")
    queries = load_queries(folder / "queries.jsonl")
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise ReaderError(
            f"{folder}: {len(missing)} judged queries are not in queries.jsonl, e.g. {missing[:3]}"
        )
    return BeirData(load_corpus(folder / "corpus.jsonl"), {q: queries[q] for q in qrels}, qrels)


# -- metrics --------------------------------------------------------------------------------------


def ndcg_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k of one ranking (trec_eval ``ndcg_cut``: linear gains, log2 discount)."""
    dcg = sum(
        max(judged.get(doc, 0), 0) / math.log2(rank + 1)
        for rank, doc in enumerate(ranking[:k], start=1)
    )
    ideal_gains = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    ideal = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal_gains, start=1))
    return dcg / ideal if ideal > 0 else 0.0


def recall_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents (grade >= 1) found in the top ``k``."""
    relevant = {doc for doc, grade in judged.items() if grade >= 1}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def mrr_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document (grade >= 1) in the top ``k``, else 0."""
    for rank, doc in enumerate(ranking[:k], start=1):
        if judged.get(doc, 0) >= 1:
            return 1.0 / rank
    return 0.0


def score_run(run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]]) -> dict:
    """Mean nDCG@10, Recall@10, Recall@100 and MRR@10 of ``run`` (``{qid: [doc ids best first]}``)
    over every query of ``qrels`` (a query missing from ``run`` scores 0)."""
    if not qrels:
        raise InputError("no judged queries: the qrels are empty")
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    for qid, judged in qrels.items():
        ranking = list(dict.fromkeys(run.get(qid, ())))  # a document counts once, at its best
        totals["ndcg_at_10"] += ndcg_at_k(ranking, judged, 10)
        totals["recall_at_10"] += recall_at_k(ranking, judged, 10)
        totals["recall_at_100"] += recall_at_k(ranking, judged, 100)
        totals["mrr_at_10"] += mrr_at_k(ranking, judged, 10)
    return {key: value / len(qrels) for key, value in totals.items()}


# -- running a retriever --------------------------------------------------------------------------


def run_queries(
    retriever: Retriever,
    queries: Mapping[str, str],
    *,
    k: int = 100,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    show_progress: bool = False,
    **search: Any,
) -> dict[str, list[str]]:
    """``{qid: [doc ids best first]}``: each query's top ``k`` documents (by best chunk).

    ``search`` holds options of :meth:`Retriever.search_batch` (``mode``, ``instruction``,
    ``where``, ``mmr``). ``progress(done, total)`` is called after each batch;
    ``show_progress`` draws a tqdm bar on stderr.
    """
    items = list(queries.items())
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="Queries", unit="query", file=sys.stderr)
    run: dict[str, list[str]] = {}
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            asked = [(qid, text) for qid, text in batch if text.strip()]
            results = retriever.search_batch([t for _, t in asked], k, documents=True, **search)
            run |= {qid: [] for qid, text in batch if not text.strip()}  # nothing to search
            for (qid, _), hits in zip(asked, results):
                run[qid] = [hit.doc_id for hit in hits]
            if bar is not None:
                bar.update(len(batch))
            if progress is not None:
                progress(len(run), len(items))
    finally:
        if bar is not None:
            bar.close()
    return run


def evaluate(
    retriever: Retriever,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    mode: str | None = None,
    k: int = 100,
    *,
    instruction: str | None = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Run every judged query and score the run.

    Returns ``ndcg_at_10``, ``recall_at_10``, ``recall_at_100``, ``mrr_at_10``, ``queries``
    (how many were judged), ``mode``, ``model`` and ``seconds`` (wall time of the searches).
    ``mode`` defaults to the Retriever's default; ``k`` (at least 100 for Recall@100) is how
    many documents each query retrieves.
    """
    from .search.retriever import DEFAULT_MODE

    mode = mode or DEFAULT_MODE
    if isinstance(k, bool) or not isinstance(k, int) or k < 100:
        raise InputError(f"k must be an int of at least 100 (for Recall@100), got {k!r}")
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise InputError(f"{len(missing)} judged queries have no text, e.g. {missing[:3]}")
    judged = {qid: queries[qid] for qid in qrels}
    started = time.perf_counter()
    run = run_queries(
        retriever,
        judged,
        k=k,
        batch_size=batch_size,
        progress=progress,
        show_progress=show_progress,
        mode=mode,
        instruction=instruction,
    )
    seconds = time.perf_counter() - started
    return score_run(run, qrels) | {
        "queries": len(judged),
        "mode": mode,
        "model": retriever.model.model_name,
        "seconds": round(seconds, 3),
    }
