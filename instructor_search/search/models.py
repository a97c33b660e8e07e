"""Which model embeds a :class:`~instructor_search.search.retriever.Retriever`'s queries: the
index's recorded model as a ``QueryEncoder`` (ONNX Runtime + tokenizers, no torch) when its
verified export is cached, else an ``Instructor`` (whose query encoder is then saved for the
next start); either is checked against the fingerprint the index was built with.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from ..encoder.checkpoints import BUNDLED_MODEL_ID
from ..encoder.instructor import Instructor
from ..encoder.query import QueryEncoder
from ..errors import IndexMismatchError, ModelError
from ..store.index import Index

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _load_model(name: str | None, backend: str = "auto", precision: str = "auto") -> Instructor:
    return Instructor(name, backend=backend, precision=precision)


def model_for(
    index: Index, model: str | None, backend: str = "auto", precision: str = "auto"
) -> Instructor | QueryEncoder:
    """The model to search ``index`` with, checked against the fingerprint it was built with:
    the recorded model's ``QueryEncoder`` when one is saved (not for ``backend="torch"``), else
    an ``Instructor``, whose ``QueryEncoder`` is then saved for the next start."""
    settings = index.settings
    recorded = model is None or model == settings.model
    if recorded and backend != "torch":
        encoder = QueryEncoder.open(settings.model_fingerprint)
        if encoder is not None:
            log.info("Query encoder: the verified ONNX export in %s (no torch)", encoder.folder)
            return checked(index, encoder)
    name = model if model is not None else settings.model
    try:
        loaded = _load_model(None if name == BUNDLED_MODEL_ID else name, backend, precision)
    except ModelError as exc:
        raise type(exc)(
            f"The index at {index.path} was built with model {settings.model!r}, which "
            f"could not be loaded: {exc}"
        ) from exc
    log.info("Query encoder: %r", loaded)
    checked(index, loaded)
    if recorded and backend != "torch":
        QueryEncoder.save(loaded)
    return loaded


def checked(index: Index, model: Instructor | QueryEncoder) -> Instructor | QueryEncoder:
    """``model``, when its fingerprint and dimension are the index's (else IndexMismatchError)."""
    settings = index.settings
    if model.fingerprint != settings.model_fingerprint or model.dimension != settings.dimension:
        raise IndexMismatchError(
            f"The index at {index.path} was built with model {settings.model!r} "
            f"(fingerprint {settings.model_fingerprint[:12]}, {settings.dimension} dimensions), "
            f"not with {model.model_name!r} (fingerprint {model.fingerprint[:12]}). Search it with "
            f"Retriever({str(index.path)!r}) to load the model it needs, or rebuild the index "
            "with this model."
        )
    return model
