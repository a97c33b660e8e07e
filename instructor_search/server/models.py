"""The request and response bodies of the HTTP API.

Requests are pydantic models that refuse unknown keys; the values themselves (an empty query,
k ≤ 0, an unknown mode, a filter on an unknown field) are checked by the library, so the API
answers with the library's own messages. Responses reuse the library's dataclasses
(:class:`~instructor_search.search.retriever.Hit`, :class:`~instructor_search.store.index.IndexStats`,
:class:`~instructor_search.documents.Document`), so a hit is exactly the CLI's ``--json`` hit.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..search.retriever import DEFAULT_MODE, MODES, Hit
from ..store.index import IndexStats

_MODE = Field(
    DEFAULT_MODE,
    description=f"Ranking: one of {', '.join(MODES)}.",
    json_schema_extra={"enum": list(MODES)},
)
_WHERE = Field(
    None,
    description="Filter on document fields and metadata before the search, e.g. "
    '{"type": ["pdf", "md"], "year": {">=": 2020}}.',
)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchOptions(_Request):
    """What every search takes besides its query (as :meth:`Retriever.search`)."""

    k: int = Field(10, description="How many hits (at most the server's max_k).")
    mode: str = _MODE
    where: dict[str, Any] | None = _WHERE
    mmr: float | None = Field(
        None, description="Diversify by maximal marginal relevance, 0..1 (1 = relevance only)."
    )
    documents: bool = Field(False, description="One hit per document (its best chunk).")


class SearchRequest(SearchOptions):
    query: str = Field(..., description="The text to search for.")
    instruction: str | None = Field(
        None, description="Query instruction for this search (default: the index's)."
    )

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"query": "how do vaccines protect people?", "k": 3}]}
    )


class BatchRequest(SearchOptions):
    queries: list[str] = Field(..., description="Several queries, embedded and searched together.")
    instruction: str | None = Field(
        None, description="Query instruction for all of them (default: the index's)."
    )


class CompareRequest(SearchOptions):
    query: str
    instruction_a: str
    instruction_b: str


class SearchResponse(BaseModel):
    hits: list[Hit]
    took_ms: float = Field(
        description="Milliseconds the retriever took for the batch this search was part of "
        "(concurrent requests alike are searched together; queueing excluded)."
    )


class BatchResponse(BaseModel):
    results: list[list[Hit]] = Field(description="One list of hits per query, in their order.")
    took_ms: float


class Movement(BaseModel):
    """Where hit ``rank`` of ranking B stood in ranking A."""

    rank: int
    chunk_id: int
    doc_id: str
    change: str = Field(description="new, up, down or same")
    previous_rank: int | None
    label: str = Field(description='"new", "up 3", "down 2" or "same"')


class CompareResponse(BaseModel):
    query: str
    instruction_a: str
    instruction_b: str
    hits_a: list[Hit]
    hits_b: list[Hit]
    movements: list[Movement] = Field(description="One per hit of B, in B's order.")
    dropped: list[Hit] = Field(description="Hits of A that are not among B's.")
    took_ms: float


class InfoResponse(BaseModel):
    index: IndexStats
    backend: str = Field(description="The query encoder's backend (onnx or torch).")
    max_k: int
    max_batch: int
    watching: list[str] = Field(description="Source folders kept in sync (serve --watch).")


class HealthResponse(BaseModel):
    status: str
    generation: int = Field(description="Bumped by every committed change to the index.")


class ErrorResponse(BaseModel):
    """Every error: the library's exception name (or the HTTP reason) and its message."""

    error: str
    message: str
