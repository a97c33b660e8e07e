"""Query embeddings, computed on a worker thread while the keyword side of a hybrid search runs.

The encoders (ONNX Runtime, torch) release the GIL while they compute, and the keyword search
needs none of their output, so a hybrid query costs the slower of the two instead of their sum.
The workers are shared by the process; a process forked from one makes its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

#: Queries embedded at once in the background (more wait for a worker).
WORKERS = 4

_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the pid that made it, the pool)


def embedding(
    model: Any, inputs: Sequence[Sequence[str]], background: bool, leave_a_core: bool = False
) -> Future[np.ndarray]:
    """``model.encode(inputs, normalize_embeddings=True)``: on a worker thread when
    ``background`` (its error, if any, is raised by ``result()``), else now, as a done future.
    With ``leave_a_core`` (the caller computes meanwhile), a query encoder's
    :meth:`~instructor_search.encoder.query.QueryEncoder.background` twin embeds them."""
    if leave_a_core and hasattr(model, "background"):
        model = model.background()
    if background:
        return _workers().submit(model.encode, list(inputs), normalize_embeddings=True)
    done: Future[np.ndarray] = Future()
    done.set_result(model.encode(list(inputs), normalize_embeddings=True))
    return done


def _workers() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid():  # a forked child has no worker threads
            _pool = (os.getpid(), ThreadPoolExecutor(WORKERS, "query-embedding"))
        return _pool[1]
