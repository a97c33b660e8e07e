"""Asking a running ``instructor-index serve`` instead of loading the model (httpx only).

:func:`search_server` returns the same :class:`~instructor_search.search.retriever.Hit`\\ s as
``Retriever.search``; a server's error comes back as the library error it names (a 400
``FilterError`` is a :class:`FilterError` here), anything else as an :class:`InstructorSearchError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .. import errors
from ..search.retriever import Hit


def search_server(
    url: str,
    query: str,
    *,
    api_key: str | None = None,
    timeout: float = 30.0,
    **options: Any,
) -> list[Hit]:
    """``POST {url}/search`` with ``query`` and ``options`` (``k``, ``mode``, ``where``,
    ``instruction``, ``mmr``, ``documents``); ``api_key`` defaults to ``$INSTRUCTOR_SEARCH_API_KEY``."""
    import httpx

    key = api_key if api_key is not None else os.environ.get("INSTRUCTOR_SEARCH_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"query": query} | {name: value for name, value in options.items() if value is not None}
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/search", json=body, headers=headers, timeout=timeout
        )
    except httpx.HTTPError as exc:
        raise errors.InstructorSearchError(f"Could not reach the server at {url}: {exc}") from exc
    data = _json(response)
    if response.status_code != 200:
        raise _error(data, response.status_code)
    return [_hit(hit) for hit in data["hits"]]


def _json(response: Any) -> Mapping[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, Mapping):
        return {"error": "InstructorSearchError", "message": response.text[:500]}
    return data


def _error(data: Mapping[str, Any], status: int) -> errors.InstructorSearchError:
    kind = getattr(errors, str(data.get("error")), None)
    if not (isinstance(kind, type) and issubclass(kind, errors.InstructorSearchError)):
        kind = errors.InstructorSearchError
    return kind(f"The server answered {status}: {data.get('message', '')}")


def _hit(data: Mapping[str, Any]) -> Hit:
    return Hit(**{**data, "span": tuple(data["span"])})
