"""Keeping an index in line with folders while they change (``instructor-index watch``).

A :class:`Watcher` listens to file events (watchdog), waits for a burst of them to go quiet
(``debounce``) and for the changed files to stop growing (``stable``), then runs the same
incremental :func:`~instructor_search.indexer.build.build` over the sources: added and edited
files are embedded, deleted ones removed, a rename is both. The first build scans everything
(what changed while nobody watched); a batch's build is told the paths its events named, so
it reads only those and keeps every other file as stored (files whose size or modification
time moved without an event are read too). One batch is one build, so stopping between
batches (Ctrl+C) leaves nothing half done, and a build interrupted anyway leaves the index at
its last committed transaction; the paths of a batch that failed go into the next one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from instructor_search.encoder.instructor import Instructor
from instructor_search.errors import InstructorSearchError
from instructor_search.store.index import INDEX_FILE, Index

from .build import BuildReport, BuildSettings, build
from .chunking import ChunkSettings

log = logging.getLogger(__name__)

#: File events that can change what a build reads (watchdog's ``event_type`` names). Opening
#: and closing a file without writing, which a build itself does to every file, are not.
CHANGES = frozenset({"created", "modified", "deleted", "moved", "closed"})


@dataclass(frozen=True)
class WatchSettings:
    """How a :class:`Watcher` turns file events into batches (seconds)."""

    #: A batch starts once no event has come for this long (an editor's save is a burst).
    debounce: float = 0.3
    #: ...and once every changed file has kept its size and modification time this long, so
    #: that a file still being written is not read half.
    stable: float = 0.2
    #: A file still changing after this long is read as it is (a log that never stops).
    max_wait: float = 30.0


def settings_for_index(
    index_path: str | os.PathLike[str], settings: BuildSettings
) -> BuildSettings:
    """``settings`` with what the index at ``index_path`` was built with (model, instruction
    pair, chunking) wherever they are left at their defaults, so that a watcher extends an
    existing index the way it was built. Unchanged when there is no index yet."""
    path = Path(index_path)
    if not (path / INDEX_FILE).is_file():
        return settings
    with Index.open(path, readonly=True) as index:
        held = index.settings
    chunk = ChunkSettings(held.chunk_tokens, held.chunk_overlap)
    return replace(
        settings,
        model=settings.model or held.model,
        document_instruction=settings.document_instruction
        if settings.document_instruction is not None
        else held.document_instruction,
        query_instruction=settings.query_instruction
        if settings.query_instruction is not None
        else held.query_instruction,
        chunk=chunk if settings.chunk == ChunkSettings() else settings.chunk,
    )


class Watcher:
    """Applies changes under ``sources`` (folders, files, record files) to ``index_path``.

    :meth:`run` builds once (catching up on what changed while nobody watched), then once per
    batch of events, until :meth:`stop`. ``on_batch`` gets each build's report, ``on_error``
    each library error of a batch (the watcher goes on: the next change tries again).
    """

    def __init__(
        self,
        sources: Sequence[str | os.PathLike[str]],
        index_path: str | os.PathLike[str],
        settings: BuildSettings | None = None,
        watch: WatchSettings | None = None,
        *,
        model: Instructor | None = None,
        on_batch: Callable[[BuildReport], None] | None = None,
        on_error: Callable[[InstructorSearchError], None] | None = None,
    ) -> None:
        self.sources = [Path(os.path.abspath(source)) for source in sources]
        self.index_path = Path(os.path.abspath(index_path))
        self.settings = settings_for_index(self.index_path, settings or BuildSettings())
        self.watch = watch or WatchSettings()
        self.on_batch = on_batch
        self.on_error = on_error
        #: Set once the first build is done (or failed): the index is as current as it gets.
        self.ready = threading.Event()
        self._model = model
        self._stopped = threading.Event()
        self._events = threading.Condition()
        self._changed: set[str] = set()
        #: The paths of batches whose build failed; ``None`` while a full scan is due.
        self._unapplied: set[str] | None = None
        self._last_event = 0.0

    def run(self) -> None:
        """Watch until :meth:`stop`; the batch in progress then completes first."""
        from watchdog.observers import Observer

        observer = Observer()
        handler = _Handler(self._record)
        for folder, recursive in self._folders():
            observer.schedule(handler, str(folder), recursive=recursive)
        observer.start()  # before the first build: what changes during it is seen
        try:
            self._apply(None)
            self.ready.set()
            while (batch := self._next_batch()) is not None:
                log.info("%d changed path(s): %s", len(batch), ", ".join(sorted(batch)[:5]))
                self._apply(batch)
        finally:
            self.ready.set()
            observer.stop()
            observer.join()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in progress (safe from any thread)."""
        self._stopped.set()
        with self._events:
            self._events.notify_all()

    # -- events ------------------------------------------------------------------------------

    def _folders(self) -> list[tuple[Path, bool]]:
        """What to observe: each source folder recursively, a source file's folder alone."""
        return [(s, True) if s.is_dir() else (s.parent, False) for s in self.sources]

    def _relevant(self, path: str) -> bool:
        target = Path(path)
        if target == self.index_path or self.index_path in target.parents:
            return False  # the index itself, when it lies inside a watched folder
        for source in self.sources:
            if target == source:
                return True
            if source in target.parents:  # hidden files are never read (nor editors' temps)
                return not any(p.startswith(".") for p in target.relative_to(source).parts)
        return False

    def _record(self, paths: Sequence[str]) -> None:
        relevant = [p for p in paths if self._relevant(p)]
        if relevant:
            with self._events:
                self._changed.update(relevant)
                self._last_event = time.monotonic()
                self._events.notify_all()

    def _next_batch(self) -> set[str] | None:
        """The paths of the next batch, once quiet and stable; ``None`` when stopped."""
        with self._events:
            while not self._changed and not self._stopped.is_set():
                self._events.wait()
            while not self._stopped.is_set():
                quiet = self._last_event + self.watch.debounce - time.monotonic()
                if quiet <= 0:
                    break
                self._events.wait(quiet)
            batch, self._changed = self._changed, set()
        if self._stopped.is_set():
            return None
        self._wait_until_stable(batch)
        return None if self._stopped.is_set() else batch

    def _wait_until_stable(self, paths: set[str]) -> None:
        deadline = time.monotonic() + self.watch.max_wait
        before = _stamps(paths)
        while time.monotonic() < deadline and not self._stopped.wait(self.watch.stable):
            after = _stamps(paths)
            if after == before:
                return
            before = after
        if not self._stopped.is_set():
            log.warning("files still changing after %.0f s; reading them as they are",
                        self.watch.max_wait)  # fmt: skip

    # -- building ----------------------------------------------------------------------------

    def _apply(self, changed: set[str] | None) -> None:
        """One build: of everything (``None``, or while a full one is due), or of the paths a
        batch's events named with those of batches that failed."""
        if changed is not None and self._unapplied is not None:
            changed = changed | self._unapplied
        else:
            changed = None
        try:
            if self._model is None:  # loaded once, here: a batch then costs what changed
                self._model = Instructor(
                    self.settings.model,
                    backend=self.settings.backend,
                    precision=self.settings.precision,
                )
            report = build(
                self.sources, self.index_path, self.settings, model=self._model, changed=changed
            )
        except InstructorSearchError as error:
            self._unapplied = changed  # tried again with the next batch
            log.error("watch batch failed: %s", error)
            if self.on_error is not None:
                self.on_error(error)
            return
        self._unapplied = set()
        log.info("watch batch: %s", summary(report))
        if self.on_batch is not None:
            self.on_batch(report)


def summary(report: BuildReport) -> str:
    """One line: what a batch changed, and how long it took."""
    return (
        f"{report.documents_added} added, {report.documents_updated} updated, "
        f"{report.documents_deleted} deleted, {report.documents_failed} failed "
        f"({report.seconds:.2f} s)"
    )


def _stamps(paths: set[str]) -> dict[str, tuple[int, int] | None]:
    stamps: dict[str, tuple[int, int] | None] = {}
    for path in paths:
        try:
            stat = os.stat(path)
            stamps[path] = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamps[path] = None
    return stamps


class _Handler:
    """A watchdog event handler that hands the paths of changing events to ``record``."""

    def __init__(self, record: Callable[[Sequence[str]], None]) -> None:
        self.record = record

    def dispatch(self, event: Any) -> None:
        if event.event_type not in CHANGES:
            return
        if event.is_directory and event.event_type in ("modified", "closed"):
            return  # a folder's own "modified" comes with its children's events
        paths = [os.fsdecode(event.src_path)]
        if getattr(event, "dest_path", ""):
            paths.append(os.fsdecode(event.dest_path))
        self.record(paths)
