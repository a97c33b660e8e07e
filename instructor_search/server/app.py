"""``create_app``: the FastAPI app of ``instructor-index serve``.

Routes are plain (``def``) functions: FastAPI runs them on its thread pool, so the event loop
keeps accepting and refusing requests while a search runs, and :class:`~.live.LiveIndex` runs
the searches one at a time. They return their JSON ready-made (the hits' ``to_dict()``, as the
CLI prints them): the response models document the bodies (``/docs``) and the tests check the
bodies against them, without a second trip through the thread pool to validate each response. Library errors become HTTP statuses in one place
(:data:`STATUSES`); every error body is an :class:`~.models.ErrorResponse`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .. import __version__
from ..documents import Document
from ..errors import FilterError, IndexStoreError, InputError, InstructorSearchError, ModelError
from ..search.retriever import Retriever
from .guards import BearerKey, BodyLimit
from .live import LiveIndex
from .models import (
    BatchRequest,
    BatchResponse,
    CompareRequest,
    CompareResponse,
    ErrorResponse,
    HealthResponse,
    InfoResponse,
    SearchOptions,
    SearchRequest,
    SearchResponse,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Library errors -> HTTP status, the first match wins: bad input is the client's (400); an
#: index that cannot answer (missing, corrupt, built with a model that will not load) is 503,
#: and the server answers again once the index is back.
STATUSES: tuple[tuple[type[InstructorSearchError], int], ...] = (
    (FilterError, 400),
    (InputError, 400),
    (IndexStoreError, 503),
    (ModelError, 503),
)


@dataclass(frozen=True)
class ServerSettings:
    """How the API serves an index."""

    #: Every request needs ``Authorization: Bearer <api_key>`` when set.
    api_key: str | None = None
    #: The query encoder's backend ("auto", "torch", "onnx"), as ``Retriever(backend=)``.
    backend: str = "auto"
    max_k: int = 1000
    #: Most queries in one ``/search/batch`` request.
    max_batch: int = 256
    max_body_bytes: int = 1_000_000
    #: Source folders a watcher keeps in sync in this process (shown by ``/info``).
    watching: tuple[str, ...] = ()


def status_of(error: InstructorSearchError) -> int:
    """The HTTP status of a library error (500 for one :data:`STATUSES` does not name)."""
    return next((status for kind, status in STATUSES if isinstance(error, kind)), 500)


def create_app(index_path: str | os.PathLike[str], settings: ServerSettings | None = None) -> Any:
    """The ASGI app serving the index at ``index_path`` (an index that is missing or broken
    gives 503 until it is back; the server needs no restart)."""
    settings = settings or ServerSettings()
    live = LiveIndex(index_path, backend=settings.backend)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:  # load the model and the vectors now, not on the first request
            live.call(_warm_up)
        except InstructorSearchError as error:
            log.warning("serving %s, which cannot answer yet: %s", index_path, error)
        yield
        live.close()

    app = FastAPI(
        title="instructor-search",
        version=__version__,
        description="Instruction-aware semantic search over a local index.",
        lifespan=lifespan,
        responses={
            400: {"model": ErrorResponse},
            401: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    _add_error_handlers(app)
    _add_routes(app, live, settings)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(BearerKey, key=settings.api_key)  # added last: runs first
    app.state.live = live
    return app


def _warm_up(retriever: Retriever) -> None:
    retriever.search("warm up", k=1)


def _timed(live: LiveIndex, work: Callable[[Retriever], T]) -> tuple[T, float]:
    def run(retriever: Retriever) -> tuple[T, float]:
        started = time.perf_counter()
        result = work(retriever)
        return result, round(1000 * (time.perf_counter() - started), 3)

    return live.call(run)


def _options(body: SearchOptions, settings: ServerSettings) -> dict[str, Any]:
    if isinstance(body.k, int) and body.k > settings.max_k:
        raise InputError(f"k must be at most {settings.max_k} on this server, got {body.k}")
    return {"k": body.k, "where": body.where, "mode": body.mode, "mmr": body.mmr} | {
        "documents": body.documents
    }


def _add_routes(app: FastAPI, live: LiveIndex, settings: ServerSettings) -> None:
    @app.post("/search", response_model=SearchResponse)
    def search(body: SearchRequest) -> JSONResponse:
        """The best hits for one query (``Retriever.search``; requests alike that arrive
        together are searched as one batch)."""
        options = _options(body, settings)
        hits, took = live.search(body.query, instruction=body.instruction, **options)
        return JSONResponse({"hits": [hit.to_dict() for hit in hits], "took_ms": took})

    @app.post("/search/batch", response_model=BatchResponse)
    def search_batch(body: BatchRequest) -> JSONResponse:
        """The best hits for each of several queries (``Retriever.search_batch``)."""
        options = _options(body, settings)
        if len(body.queries) > settings.max_batch:
            raise InputError(
                f"at most {settings.max_batch} queries per batch on this server, "
                f"got {len(body.queries)}"
            )
        results, took = _timed(
            live, lambda r: r.search_batch(body.queries, instruction=body.instruction, **options)
        )
        results = [[hit.to_dict() for hit in hits] for hits in results]
        return JSONResponse({"results": results, "took_ms": took})

    @app.post("/compare", response_model=CompareResponse)
    def compare(body: CompareRequest) -> JSONResponse:
        """One query ranked under two instructions, and how each hit of B moved against A."""
        options = _options(body, settings)
        k = options.pop("k")
        found, took = _timed(
            live,
            lambda r: r.compare(body.query, body.instruction_a, body.instruction_b, k, **options),
        )
        movements = [
            {"rank": m.hit.rank, "chunk_id": m.hit.chunk_id, "doc_id": m.hit.doc_id}
            | {"change": m.change, "previous_rank": m.previous_rank, "label": m.label}
            for m in found.movements
        ]
        return JSONResponse(
            {
                "query": found.query,
                "instruction_a": found.instruction_a,
                "instruction_b": found.instruction_b,
                "hits_a": [hit.to_dict() for hit in found.hits_a],
                "hits_b": [hit.to_dict() for hit in found.hits_b],
                "movements": movements,
                "dropped": [hit.to_dict() for hit in found.dropped],
                "took_ms": took,
            }
        )

    @app.get("/info", response_model=InfoResponse)
    def info() -> JSONResponse:
        """What the index holds and how it was built (``instructor-index info``)."""
        stats, backend = live.call(lambda r: (r.index.stats(), r.model.backend))
        return JSONResponse(
            {"index": stats.to_dict(), "backend": backend, "max_k": settings.max_k}
            | {
                "max_batch": settings.max_batch,
                "watching": list(settings.watching),
            }
        )

    @app.get("/documents/{doc_id:path}", response_model=Document)
    def document(doc_id: str) -> JSONResponse:
        """A stored document with its whole text (ids may hold slashes: ``notes/a.md``)."""
        found = live.call(lambda r: r.index.document(doc_id))
        if found is None:
            raise HTTPException(404, f"No document {doc_id!r} in the index")
        return JSONResponse(asdict(found))

    @app.get("/health", response_model=HealthResponse)
    def health() -> JSONResponse:
        """200 while the index can answer, else 503 with the reason."""
        return JSONResponse({"status": "ok", "generation": live.call(lambda r: r.index.generation)})


def _add_error_handlers(app: FastAPI) -> None:
    def error(status: int, name: str, message: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": name, "message": message}, status, headers=headers or None)

    @app.exception_handler(InstructorSearchError)
    async def library_error(_: Request, exc: InstructorSearchError) -> JSONResponse:
        status = status_of(exc)
        if status == 500:
            log.error("unexpected library error: %s", exc)
        extra = {"Retry-After": "1"} if status == 503 else {}
        return error(status, type(exc).__name__, str(exc), **extra)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            detail = "; ".join(str(p.get("ctx", {}).get("error", p["msg"])) for p in problems)
            return error(400, "MalformedJSON", f"The request body is not valid JSON: {detail}")
        described = "; ".join(
            f"{'.'.join(str(part) for part in p['loc'] if part != 'body') or 'body'}: {p['msg']}"
            for p in problems
        )
        return error(422, "InvalidRequest", described)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        from http import HTTPStatus

        return error(exc.status_code, HTTPStatus(exc.status_code).phrase, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return error(500, "InternalError", f"{type(exc).__name__}: {exc}")
