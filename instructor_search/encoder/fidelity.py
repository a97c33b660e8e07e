"""The fidelity gate: a faster way of running a model is used only if it embeds like torch fp32.

Both fast paths (the ONNX export, bf16 on the CPU) are checked the same way: the calibration set
(``data/calibration.json``, real ``[instruction, text]`` pairs from one word to > 512 tokens)
is embedded by the torch fp32 path and by the candidate, and the minimum cosine between the two
must reach the candidate's threshold. The verdict also records the largest absolute difference
between the two (``max_abs_diff``): a candidate within :data:`EXACT_ATOL` can stand in for the
exact path (the drop-in ``Instructor`` default). The verdict is a small JSON file kept beside what
it judges, with a ``key`` naming everything it depends on; a changed key runs the gate again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..files import write_atomically

logger = logging.getLogger(__name__)

Verdict = dict[str, Any]
#: The drop-in contract: the reference's vectors within this absolute difference, at any batch size.
EXACT_ATOL = 1e-5


def calibration_pairs() -> list[list[str]]:
    """The gate's ``[instruction, text]`` pairs (real text, one word to > 512 tokens)."""
    return [list(pair) for pair in _calibration()["pairs"]]


def calibration_digest() -> str:
    """A short hash of the calibration set: part of every verdict's key."""
    return hashlib.sha256(_calibration_file().read_bytes()).hexdigest()[:16]


def check(
    file: Path,
    *,
    key: dict[str, Any],
    threshold: float,
    reference: Callable[[], np.ndarray],
    candidate: Callable[[], np.ndarray],
    label: str,
) -> Verdict:
    """The verdict on ``candidate`` (cached in ``file`` under ``key``): ``passed`` when the
    minimum cosine between its calibration embeddings and ``reference``'s reaches ``threshold``;
    ``max_abs_diff`` is the largest absolute difference between the two (``inf`` on failure).

    An exception from ``candidate`` (a broken export fails inside its runtime) is a failed
    verdict that records the error, not an exception.
    """
    cached = read_json(file)
    if (
        cached.get("key") == key
        and cached.get("threshold") == threshold
        and "max_abs_diff" in cached
    ):
        return cached
    started = time.perf_counter()
    failure = None
    try:
        want, got = reference(), candidate()
        min_cosine = float(np.min(_cosines(want, got)))
        max_abs_diff = float(np.max(np.abs(want - got)))
    except Exception as error:  # runtimes raise their own exception types
        min_cosine, max_abs_diff, failure = 0.0, float("inf"), f"{type(error).__name__}: {error}"
    verdict = {
        "passed": failure is None and min_cosine >= threshold,
        "min_cosine": min_cosine,
        "max_abs_diff": max_abs_diff,
        "threshold": threshold,
        "texts": len(calibration_pairs()),
        "error": failure,
        "key": key,
        "seconds": round(time.perf_counter() - started, 2),
    }
    file.parent.mkdir(parents=True, exist_ok=True)
    write_json(file, verdict)
    logger.info(
        "Fidelity gate for %s: minimum cosine %.7f (needs %s), max abs diff %.1e: %s",
        label,
        min_cosine,
        threshold,
        max_abs_diff,
        "passed" if verdict["passed"] else f"failed{f' ({failure})' if failure else ''}",
    )
    return verdict


def version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` as JSON, atomically: a crash never leaves half a file."""
    write_atomically(path, [json.dumps(value, indent=1).encode("utf-8")])


def _cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-12)


def _calibration() -> dict[str, Any]:
    return json.loads(_calibration_file().read_text(encoding="utf-8"))


def _calibration_file() -> Any:
    return importlib.resources.files("instructor_search") / "data" / "calibration.json"
