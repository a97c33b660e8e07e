"""``Retriever``: ranked :class:`Hit`\\ s for a query: dense, keyword (BM25) or hybrid, with
filters before the search, MMR, and a best-chunk-per-document view.

Hybrid fuses the dense and the FTS5 BM25 chunk lists, each ``max(100, 4k)`` deep, by reciprocal
rank fusion (:func:`~instructor_search.search.ranking.fuse`, where the constants and their measurements
are); then each document keeps its best chunk. MMR reranks the best ``4k`` candidates
(:func:`~instructor_search.search.ranking.mmr_order`). Equal scores are ordered by document id,
then chunk ordinal (:func:`~instructor_search.search.ranking.stable_order`), never by row ids,
which differ between builds of the same corpus; a candidate list is cut only between two
different scores: ties at the cut are fetched whole and ordered, then the list is cut. A
hybrid query is embedded on a worker thread while its keyword list is found
(:mod:`~instructor_search.search.embedding`): it costs the slower of the two, not their sum.

Queries are checked against the index (``k``, ``mode``, ``where``'s fields and values) before
any model loads, and the model loads on the first query that needs it (never for
``mode="keyword"``): a :class:`~instructor_search.encoder.query.QueryEncoder` (ONNX Runtime and
tokenizers, no torch) when the model's verified export is cached, else an ``Instructor``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..encoder.instructor import Instructor
from ..encoder.query import QueryEncoder
from ..errors import InputError
from ..store.index import ChunkRecord, Index
from .comparison import Comparison, compared
from .embedding import embedding
from .models import checked, model_for
from .ranking import fuse, mmr_order, stable_order, through_ties

log = logging.getLogger(__name__)

MODES = ("dense", "keyword", "hybrid")
#: The mode that measured best on every labelled collection we have (``bench/RESULTS.md``).
DEFAULT_MODE = "hybrid"
#: Candidates taken from each list before fusion, deduplication or MMR: max(MIN, FACTOR * k).
MIN_CANDIDATES = 100
CANDIDATE_FACTOR = 4
#: MMR reranks the best ``MMR_POOL_FACTOR * k`` candidates.
MMR_POOL_FACTOR = 4
#: A hybrid query whose words hold more postings than this keeps the caller's thread busy
#: longer than its embedding takes (~15 ms for the ~3M of a SciFact claim at 1M chunks, ~3 ms
#: for ~0.3M at 100k): its embedding then leaves the caller a core (QueryEncoder.background).
BUSY_POSTINGS = 1_000_000
#: Up to this many queries are searched on one FAISS thread (see ``_one_thread``).
FEW_QUERIES = 4
_RETRIES = 3  # a writer replacing chunks between the ANN search and the fetch: search again


@dataclass
class Hit:
    """One search result: a chunk of a document, with the document's fields.

    ``score`` is the ranking score of the mode: cosine similarity (dense), ``-bm25()``
    (keyword) or the fused RRF score (hybrid). ``span`` is the chunk's ``(start, end)``
    character offsets in the document's text. ``metadata`` is the document's metadata.
    """

    rank: int
    score: float
    chunk_id: int
    doc_id: str
    title: str
    source: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    span: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the field names (``span`` as a two-item list)."""
        data = asdict(self)
        data["span"] = list(self.span)
        return data


class Retriever:
    """Searches one index with the model it was built with.

    ``index`` is an :class:`Index` or the path of an index folder (then opened read-only).
    ``model`` is an :class:`Instructor` (or a ``QueryEncoder``), a model name, or ``None`` for
    the model recorded in the index; its fingerprint must match the index's
    (:class:`IndexMismatchError` otherwise). A model named or recorded loads on the first query
    that needs it: the model's ``QueryEncoder`` when its verified ONNX export is cached (unless
    ``backend="torch"``), else ``Instructor(name, backend=backend, precision=precision)``, the
    gated fast path by default. A Retriever is cheap to call repeatedly: it keeps the index, the
    model and the loaded vectors; it picks up a new generation written by another process on
    its next search.
    """

    def __init__(
        self,
        index: Index | str | os.PathLike[str],
        model: Instructor | QueryEncoder | str | None = None,
        *,
        backend: str = "auto",
        precision: str = "auto",
    ):
        self.index = index if isinstance(index, Index) else Index.open(Path(index), readonly=True)
        self._owns_index = not isinstance(index, Index)
        if model is not None and not isinstance(model, (str, Instructor, QueryEncoder)):
            raise InputError(f"model must be an Instructor, a model name or None, got {model!r}")
        self._model = (
            None if model is None or isinstance(model, str) else checked(self.index, model)
        )
        self._model_name, self._backend, self._precision = model, backend, precision

    @property
    def model(self) -> Instructor | QueryEncoder:
        """The model that embeds queries (loaded on first use)."""
        if self._model is None:
            self._model = model_for(self.index, self._model_name, self._backend, self._precision)
        return self._model

    # -- public API ----------------------------------------------------------------------------

    @property
    def query_instruction(self) -> str:
        """The instruction the index was built to be queried with (the default)."""
        return self.index.settings.query_instruction

    def search(
        self,
        query: str,
        k: int = 10,
        instruction: str | None = None,
        where: Mapping[str, Any] | None = None,
        mode: str = DEFAULT_MODE,
        mmr: float | None = None,
        documents: bool = False,
    ) -> list[Hit]:
        """The ``k`` best hits for ``query``, best first.

        ``instruction`` overrides the index's query instruction; ``where`` filters on document
        fields and metadata before the search (``{"type": "pdf", "mtime": {">=": t}}``);
        ``mode`` is one of :data:`MODES`; ``mmr`` (0..1) reranks for diversity by maximal
        marginal relevance (1 = relevance only, 0 = diversity only); ``documents`` keeps only
        the best chunk of each document.
        """
        return self.search_batch([query], k, instruction, where, mode, mmr, documents)[0]

    def search_batch(
        self,
        queries: Sequence[str],
        k: int = 10,
        instruction: str | None = None,
        where: Mapping[str, Any] | None = None,
        mode: str = DEFAULT_MODE,
        mmr: float | None = None,
        documents: bool = False,
    ) -> list[list[Hit]]:
        """:meth:`search` for many queries: one embedding call and one vector search for all."""
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise InputError("queries must be a list of strings; use search() for one query")
        instruction = self.query_instruction if instruction is None else instruction
        return self._search([(q, instruction) for q in queries], k, where, mode, mmr, documents)

    def compare(
        self, query: str, instruction_a: str, instruction_b: str, k: int = 10, **options: Any
    ) -> Comparison:
        """Rank ``query`` under two instructions and report how each hit of B moved against A.

        ``options`` are those of :meth:`search`. Hits are matched by chunk (by document when
        ``documents=True``). A model whose profile drops instructions ranks the same under both.
        """
        unknown = set(options) - {"where", "mode", "mmr", "documents"}
        if unknown:
            raise InputError(
                f"Unknown option(s) {sorted(unknown)}; valid: documents, mmr, mode, where"
            )
        for name, value in (("instruction_a", instruction_a), ("instruction_b", instruction_b)):
            if not isinstance(value, str):
                raise InputError(f"{name} must be a string, got {type(value).__name__}")
        hits_a, hits_b = self._search(
            [(query, instruction_a), (query, instruction_b)], k, **options
        )
        instructions = (instruction_a, instruction_b)
        return compared(query, instructions, hits_a, hits_b, bool(options.get("documents")))

    def close(self) -> None:
        """Close the index if this Retriever opened it."""
        if self._owns_index:
            self.index.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = self._model.model_name if self._model is not None else self.index.settings.model
        return f"Retriever({str(self.index.path)!r}, model={name!r})"

    # -- the pipeline --------------------------------------------------------------------------

    def _search(
        self,
        pairs: list[tuple[str, str]],
        k: int,
        where: Mapping[str, Any] | None = None,
        mode: str = DEFAULT_MODE,
        mmr: float | None = None,
        documents: bool = False,
    ) -> list[list[Hit]]:
        _check_options(k, mode, mmr)
        for position, (query, instruction) in enumerate(pairs):
            if not isinstance(query, str):
                raise InputError(f"query {position} must be a string, got {type(query).__name__}")
            if not query.strip():
                raise InputError(f"query {position} is empty; give some text to search for")
            if not isinstance(instruction, str):
                raise InputError(f"instruction must be a string, got {type(instruction).__name__}")
        if not pairs:
            return []
        if where:
            self.index.matching_chunk_ids(where)  # a bad filter fails here, before any model loads
        vectors = None
        if mode != "keyword":  # hybrid: embedded while the keyword side runs (_candidates)
            inputs = [[instruction, query] for query, instruction in pairs]
            busy = mode == "hybrid" and any(
                self.index.keyword_postings(query) > BUSY_POSTINGS for query, _ in pairs
            )
            vectors = embedding(self.model, inputs, mode == "hybrid", leave_a_core=busy)
        for _ in range(_RETRIES):
            ranked = self._ranked(pairs, vectors, k, where, mode, mmr, documents)
            wanted = list(dict.fromkeys(cid for ranking in ranked for cid, _ in ranking[:k]))
            records = {r.chunk_id: r for r in self.index.chunks(wanted)}
            if len(records) == len(wanted):
                break
            log.info("chunks changed during the search (a writer committed); searching again")
        results = []
        for ranking in ranked:
            kept = [(cid, score) for cid, score in ranking[:k] if cid in records]
            results.append([_hit(rank, s, records[c]) for rank, (c, s) in enumerate(kept, 1)])
        return results

    def _ranked(
        self,
        pairs: list[tuple[str, str]],
        vectors: Future[np.ndarray] | None,
        k: int,
        where: Mapping[str, Any] | None,
        mode: str,
        mmr: float | None,
        documents: bool,
    ) -> list[list[tuple[int, float]]]:
        """Per query: ``(chunk_id, score)`` best first, at least ``k`` long when possible."""
        deep = mode == "hybrid" or documents or mmr is not None
        depth = max(MIN_CANDIDATES, CANDIDATE_FACTOR * k) if deep else k
        results: list[list[tuple[int, float]]] = [[] for _ in pairs]
        todo = list(range(len(pairs)))
        while todo:
            lists = self._candidates([pairs[i][0] for i in todo], vectors, todo, depth, where, mode)
            deeper = []
            for i, (ranking, full) in zip(todo, lists):
                if documents:
                    ranking = self._best_per_document(ranking)
                    if len(ranking) < k and full:
                        deeper.append(i)  # more chunks exist: look further for more documents
                        continue
                if mmr is not None and len(ranking) > 1:
                    ranking = self._mmr(ranking[: MMR_POOL_FACTOR * k], k, mmr)
                results[i] = ranking[:k] if documents or mmr is not None else ranking
            todo, depth = deeper, depth * 4
        return results

    def _candidates(
        self,
        queries: list[str],
        vectors: Future[np.ndarray] | None,
        rows: list[int],
        depth: int,
        where: Mapping[str, Any] | None,
        mode: str,
    ) -> list[tuple[list[tuple[int, float]], bool]]:
        """Per query: the mode's ranking at ``depth`` and whether a list was cut at ``depth``
        (so that more candidates exist)."""
        keyword = [self._keyword(q, depth, where) for q in queries] if mode != "dense" else []
        dense: list[list[tuple[int, float]]] = []
        if vectors is not None:
            dense = self._dense(vectors.result()[rows], depth, where)
        if mode == "dense":
            return [(ranking, len(ranking) >= depth) for ranking in dense]
        if mode == "keyword":
            return [(ranking, len(ranking) >= depth) for ranking in keyword]
        return [(fuse(d, kw), len(d) >= depth or len(kw) >= depth) for d, kw in zip(dense, keyword)]

    def _dense(
        self, vectors: np.ndarray, depth: int, where: Mapping[str, Any] | None
    ) -> list[list[tuple[int, float]]]:
        """Per query vector: ``(chunk_id, cosine)`` best first, at least ``depth`` long when
        possible, cut between two different scores, ties in :func:`stable_order`."""
        results: list[list[tuple[int, float]]] = [[] for _ in vectors]
        todo, fetch = list(range(len(vectors))), depth + 1
        while todo:
            with _one_thread(len(todo) <= FEW_QUERIES):
                scores, ids = self.index.search_vectors(vectors[todo], fetch, where)
            deeper = []
            for i, row_ids, row_scores in zip(todo, ids, scores):
                ranking = [(int(c), float(s)) for c, s in zip(row_ids, row_scores) if c >= 0]
                closed = through_ties(ranking, depth, fetch)
                if closed is None:
                    deeper.append(i)  # a tie runs past the list's end: look further
                else:
                    results[i] = self._stable(closed)[:depth]
            todo, fetch = deeper, fetch * 4
        return results

    def _keyword(
        self, query: str, depth: int, where: Mapping[str, Any] | None
    ) -> list[tuple[int, float]]:
        """:meth:`Index.keyword_search`, cut between two different scores, ties in stable order."""
        return self._stable(self.index.keyword_search(query, depth, where, ties=True))[:depth]

    def _stable(self, ranking: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """``ranking`` with equal scores ordered by document id, then chunk ordinal."""
        counts = Counter(score for _, score in ranking)
        tied = [cid for cid, score in ranking if counts[score] > 1]
        if not tied:
            return ranking
        return stable_order(ranking, self.index.chunk_places(tied))

    def _best_per_document(self, ranking: list[tuple[int, float]]) -> list[tuple[int, float]]:
        places = self.index.chunk_places([c for c, _ in ranking])
        seen: set[str] = set()
        best = []
        for chunk_id, score in ranking:
            doc = places.get(chunk_id, (None, 0))[0]
            if doc is not None and doc not in seen:
                seen.add(doc)
                best.append((chunk_id, score))
        return best

    def _mmr(self, pool: list[tuple[int, float]], k: int, lam: float) -> list[tuple[int, float]]:
        embeddings = self.index.embeddings([c for c, _ in pool])
        order = mmr_order(np.array([s for _, s in pool], dtype=np.float64), embeddings, k, lam)
        return [pool[i] for i in order]


# -- helpers --------------------------------------------------------------------------------------


def _hit(rank: int, score: float, r: ChunkRecord) -> Hit:
    span = (r.start, r.end)
    return Hit(rank, score, r.chunk_id, r.doc_id, r.title, r.source, r.text, r.metadata, span)


@contextmanager
def _one_thread(few: bool) -> Iterator[None]:
    """FAISS on one OpenMP thread for a few queries: one query gains little from a thread team,
    and on a busy machine the team waits for its descheduled member. ``bench/query.py`` on 2
    shared cores, dense ``search`` p50 minus the query embedding's: 37.8 -> 2.6 ms at 10k chunks
    (flat), 13.8 -> 1.6 ms at 100k (HNSW). The OpenMP runtime may be torch's too (setting
    torch's thread count changes FAISS's), so the count is restored after."""
    import faiss

    threads = faiss.omp_get_max_threads()
    if few and threads > 1:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        if few and threads > 1:
            faiss.omp_set_num_threads(threads)


def _check_options(k: Any, mode: Any, mmr: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    if mode not in MODES:
        raise InputError(f"mode {mode!r} must be one of {list(MODES)}")
    if mmr is not None and (
        isinstance(mmr, bool) or not isinstance(mmr, (int, float)) or not 0 <= mmr <= 1
    ):
        raise InputError(f"mmr must be a number from 0 to 1 (or None), got {mmr!r}")
