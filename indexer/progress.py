"""A build's progress, phase by phase: reading files, loading the model, chunking documents,
embedding chunks (or, with the Ray engine, documents embedded on Ray); an ingest's: storing the
shards' chunks, merging the keyword index (a bulk load's end), writing the derived files.

The build reports :class:`BuildProgress` events to a callback; :class:`ProgressBars` is the
callback the CLI uses (one tqdm bar per phase, on stderr). The embedding phase counts chunks
embedded out of the chunks this build has to embed (known before the first is embedded), and
its rate is averaged over the whole phase, so its ETA holds once a pool has been embedded
(a pool runs longest chunks first: a rate measured on its first slices alone is too slow).
A Ray build's phase counts documents (their chunks are known only once a worker has chunked
them) and carries the chunks done so far, drawn beside the bar with their rate.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

READING, LOADING, CHUNKING, EMBEDDING = "reading", "loading", "chunking", "embedding"
#: The Ray engine's phase: documents done of those sent to the cluster, and their chunks.
DISTRIBUTED = "embedding on Ray"
#: An ingest's phases: the shards' rows read and stored (or found unchanged), then one step each.
STORING, MERGING, DERIVING = "storing", "merging", "deriving"
_UNITS = {READING: "file", LOADING: "model", CHUNKING: "doc", EMBEDDING: "chunk"}
_UNITS.update({DISTRIBUTED: "doc", STORING: "chunk", MERGING: "step", DERIVING: "step"})
_LABELS = {READING: "Reading", LOADING: "Loading the model", CHUNKING: "Chunking"}
_LABELS.update({EMBEDDING: "Embedding", DISTRIBUTED: "Embedding on Ray"})
_LABELS.update({STORING: "Storing", MERGING: "Merging the keyword index"})
_LABELS[DERIVING] = "Writing vectors.faiss and keywords.bm25"


@dataclass(frozen=True)
class BuildProgress:
    """Where a build is: ``done`` of ``total`` in ``phase`` (``total`` is None while unknown);
    ``chunks``: chunks done so far, in a phase that counts documents (:data:`DISTRIBUTED`)."""

    phase: str
    done: int
    total: int | None
    chunks: int | None = None


ProgressCallback = Callable[[BuildProgress], None]


def progress_callback(show: bool, callback: ProgressCallback | None) -> ProgressCallback:
    """The callback a build or an ingest reports to: the caller's, tqdm bars, or nothing."""
    if callback is not None:
        return callback
    return ProgressBars() if show else lambda event: None


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
        if event.chunks is not None:
            elapsed = self._bar.format_dict["elapsed"]
            rate = f", {event.chunks / elapsed:,.1f} chunks/s" if elapsed > 0 else ""
            self._bar.set_postfix_str(f"{event.chunks:,} chunks{rate}", refresh=False)
        self._bar.update(event.done - self._bar.n)
        if event.total is not None and event.done >= event.total:
            self.close()  # a finished phase stops its clock

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._phase, self._bar = None, None
