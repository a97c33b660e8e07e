"""A build's progress, phase by phase: reading files, loading the model, chunking documents,
embedding chunks.

The build reports :class:`BuildProgress` events to a callback; :class:`ProgressBars` is the
callback the CLI uses (one tqdm bar per phase, on stderr). The embedding phase counts chunks
embedded out of the chunks this build has to embed (known before the first is embedded), and
its rate is averaged over the whole phase, so its ETA holds once a pool has been embedded
(a pool runs longest chunks first: a rate measured on its first slices alone is too slow).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

READING, LOADING, CHUNKING, EMBEDDING = "reading", "loading", "chunking", "embedding"
_UNITS = {READING: "file", LOADING: "model", CHUNKING: "doc", EMBEDDING: "chunk"}
_LABELS = {READING: "Reading", LOADING: "Loading the model", CHUNKING: "Chunking"}
_LABELS[EMBEDDING] = "Embedding"


@dataclass(frozen=True)
class BuildProgress:
    """Where a build is: ``done`` of ``total`` in ``phase`` (``total`` is None while unknown)."""

    phase: str
    done: int
    total: int | None


ProgressCallback = Callable[[BuildProgress], None]


class ProgressBars:
    """Draws :class:`BuildProgress` events as one tqdm bar per phase (a callback for builds)."""

    def __init__(self) -> None:
        self._phase: str | None = None
        self._bar: Any = None

    def __call__(self, event: BuildProgress) -> None:
        if event.phase != self._phase:
            self.close()
            from tqdm.auto import tqdm

            self._phase = event.phase
            self._bar = tqdm(
                total=event.total,
                desc=_LABELS.get(event.phase, event.phase),
                unit=_UNITS.get(event.phase, "it"),
                file=sys.stderr,
                dynamic_ncols=True,
                smoothing=0,  # the average rate of the phase, not of its last slice
            )
        self._bar.update(event.done - self._bar.n)
        if event.total is not None and event.done >= event.total:
            self.close()  # a finished phase stops its clock

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._phase, self._bar = None, None
