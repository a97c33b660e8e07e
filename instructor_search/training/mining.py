"""Hard negatives mined from an index: the top dense hits of each query that are not labelled
relevant to it (the documents the base model confuses with the answer)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from .data import Example, document_text

if TYPE_CHECKING:
    from ..search.retriever import Retriever

logger = logging.getLogger(__name__)

#: How many hits past the relevant ones are searched per query for its negatives.
DEPTH_MARGIN = 10


def mine_hard_negatives(
    examples: list[Example],
    retriever: Retriever,
    count: int,
    document_instruction: str,
    *,
    batch_size: int = 64,
) -> list[Example]:
    """``examples`` with ``count`` hard negatives each, mined by ``retriever`` (dense search
    with the index's query instruction), paired with ``document_instruction``."""
    if count < 1 or not examples:
        return examples
    queries = {e.query_id: e for e in examples}  # one search per query
    depth = count + max(len(e.relevant) for e in examples) + DEPTH_MARGIN
    found: dict[str, list[str]] = {}
    ids = sorted(queries)
    for start in range(0, len(ids), batch_size):
        part = ids[start : start + batch_size]
        results = retriever.search_batch(
            [queries[qid].query[1] for qid in part], depth, mode="dense", documents=True
        )
        for qid, hits in zip(part, results):
            relevant = queries[qid].relevant
            found[qid] = [h.doc_id for h in hits if h.doc_id not in relevant][:count]
    texts: dict[str, str] = {}
    for doc_id in sorted({doc for docs in found.values() for doc in docs}):
        doc = retriever.index.document(doc_id)
        if doc is not None:
            texts[doc_id] = document_text(doc)
    mined = []
    short = 0
    for example in examples:
        keys = tuple(doc for doc in found[example.query_id] if doc in texts)
        short += len(keys) < count
        mined.append(
            replace(
                example,
                negatives=tuple((document_instruction, texts[doc]) for doc in keys),
                negative_keys=keys,
            )
        )
    if short:
        logger.info("%d examples got fewer than %d hard negatives (small index)", short, count)
    return mined
