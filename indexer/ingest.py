"""Ingest: upsert documents with embeddings computed elsewhere, read from shard folders
(:mod:`instructor_search.store.shards`), exactly as a build would store them: unchanged
documents (same id and content hash) are skipped, changed ones replaced, new ones added; nothing
is embedded. The report is a build's (:class:`~.build.BuildReport`); ``chunks_embedded`` counts
the chunks stored from the shards. The shard format has no token counts: chunks are stored with
``token_count`` 0 unless :data:`TokenCounts` are given (the Ray engine's workers send theirs;
:func:`token_counter` counts again on the model's tokenizer).

Into an empty index, the IVF index is trained and filled on another thread while the rows go
in (:mod:`~instructor_search.store.vector_prebuild`), and written by ``sync_derived`` when no
other writer came between; the writes skip the change log while no derived file exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from instructor_search.documents import Chunk, Document
from instructor_search.store.index import Index
from instructor_search.store.shards import (
    ShardFailure,
    read_manifest,
    read_shard,
    shard_files,
    shard_rows,
)
from instructor_search.store.vector_prebuild import VectorPrebuild

from .build import BuildReport, changed_documents, open_index
from .chunking import _plain_tokenizer
from .progress import (
    DERIVING,
    MERGING,
    STORING,
    BuildProgress,
    ProgressBars,
    ProgressCallback,
    progress_callback,
)
from .reader_base import ReadFailure

logger = logging.getLogger(__name__)

#: A batch (one transaction) closes after this many documents or chunks; into an empty index
#: (a bulk load, :meth:`~instructor_search.store.writes.IndexWrites.bulk_load`) after
#: :data:`BULK_BATCH_DOCUMENTS`: FTS5 writes a transaction's terms as one segment, and fewer,
#: larger segments cost less to merge.
BATCH_DOCUMENTS = 256
BULK_BATCH_DOCUMENTS = 2048
BATCH_CHUNKS = 16_384
#: Documents read from the shards ahead of the writes, on another thread (a few batches: the
#: next file is read and converted while the writes of the current one end).
READ_AHEAD = 2048
#: An ingest's progress is told after about this many of the shards' rows.
PROGRESS_ROWS = 8192

T = TypeVar("T")

#: The token counts of one document's chunks, given its id and chunks: what its chunker counted
#: (each chunk text's own tokens, without special tokens), as a build stores them.
TokenCounts = Callable[[str, list[Chunk]], list[int]]


def token_counter(tokenizer: Any) -> TokenCounts:
    """:data:`TokenCounts` counted again on a fast tokenizer (the model's ``tokenizer``), as
    :class:`~.chunking.Chunker` counts."""
    plain = _plain_tokenizer(tokenizer)

    def count(doc_id: str, chunks: list[Chunk]) -> list[int]:
        texts = [chunk.text for chunk in chunks]
        return [len(e.ids) for e in plain.encode_batch(texts, add_special_tokens=False)]

    return count


def ingest(
    shards: Sequence[str | os.PathLike[str]],
    index_path: str | os.PathLike[str],
    *,
    show_progress: bool = False,
    on_progress: ProgressCallback | None = None,
) -> BuildReport:
    """Create the index at ``index_path`` from the first manifest (or open it and check every
    manifest against it, as a build checks its model), upsert the shards' documents and bring
    the derived files up to date. ``show_progress`` draws bars on stderr; ``on_progress`` gets
    each :class:`~.progress.BuildProgress` instead (phases ``storing``, ``merging``,
    ``deriving``)."""
    started = time.perf_counter()
    folders = [Path(folder) for folder in shards]
    manifests = [read_manifest(folder) for folder in folders]
    first = manifests[0].settings()
    progress = progress_callback(show_progress, on_progress)
    index = open_index(Path(index_path), first, False, lambda: first.dimension)
    try:
        report = ingest_into(index, folders, progress=progress)
        stats = index.stats()
        report.documents_total, report.chunks_total = stats.documents, stats.chunks
    finally:
        index.close()
        if isinstance(progress, ProgressBars):
            progress.close()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def ingest_into(
    index: Index,
    shards: Sequence[str | os.PathLike[str]],
    *,
    token_counts: TokenCounts | None = None,
    sync: bool = True,
    progress: ProgressCallback | None = None,
) -> BuildReport:
    """Upsert the documents of ``shards`` into the open ``index`` (what :meth:`Index.ingest`
    runs); every manifest must match the index's settings. ``token_counts`` gives the stored
    chunks their token counts (0 without it). ``sync=False`` leaves the derived files to the
    caller's :meth:`Index.sync_derived` (a build ingesting batch after batch syncs once).
    ``progress`` is told the rows of the shards' documents read so far (not of failed ones)."""
    report = BuildReport()
    folders = [Path(folder) for folder in shards]
    manifests = [read_manifest(folder) for folder in folders]
    for manifest in manifests:
        index.check_compatible(manifest.settings())
    stored = index.document_hashes()
    files = [
        (manifest, shard_files(folder)) for folder, manifest in zip(folders, manifests, strict=True)
    ]
    # A fresh index's vector index is built on another thread, beside the writes.
    beside = (
        _Beside(index, [f for _, names in files for f in names]) if sync and not stored else None
    )
    bulk = not stored  # into an empty index: a bulk load, in larger batches
    batches = _Batches(index, report, beside, BULK_BATCH_DOCUMENTS if bulk else BATCH_DOCUMENTS)
    told = progress_callback(False, progress)
    # the shards' footers are read for a total only when someone is told it (not per Ray batch)
    total = sum(shard_rows(file) for _, names in files for file in names) if progress else 0
    rows = _RowsDone(told, total)
    seen: set[str] = set()
    read = (
        (file, item)
        for manifest, names in files
        for file in names
        for item in read_shard(file, manifest)
    )
    try:
        with index.bulk_load() if bulk else contextlib.nullcontext():
            for file, item in _ahead(read, READ_AHEAD):
                if isinstance(item, ShardFailure):
                    _failed(report, item.path, item.line, item.reason)
                    continue
                doc, chunks, vectors = item
                rows.add(len(chunks))
                if doc.id in seen:
                    _failed(report, str(file), None, f"duplicate id {doc.id!r} (another file)")
                    continue
                seen.add(doc.id)
                for pending, is_update in changed_documents([doc], stored, report):
                    if token_counts:
                        chunks = _counted(token_counts, doc.id, chunks)
                    batches.add(pending, chunks, vectors, is_update)
            batches.flush()
            rows.close()
            if bulk:
                told(BuildProgress(MERGING, 0, 1))
        if bulk:
            told(BuildProgress(MERGING, 1, 1))
    except BaseException:
        if beside is not None:
            beside.abandon()
        raise
    if sync:
        told(BuildProgress(DERIVING, 0, 1))
    if beside is not None:
        beside.finish()
    if sync:
        index.sync_derived()
        told(BuildProgress(DERIVING, 1, 1))
    return report


class _RowsDone:
    """The shards' rows done, told to a progress callback every :data:`PROGRESS_ROWS`."""

    def __init__(self, progress: ProgressCallback, total: int) -> None:
        self._progress, self._total = progress, total
        self._done = self._told = 0
        progress(BuildProgress(STORING, 0, total))

    def add(self, rows: int) -> None:
        self._done += rows
        if self._done - self._told >= PROGRESS_ROWS:
            self.close()

    def close(self) -> None:
        """Tell where it is now (the last time: at the end of the shards)."""
        self._told = self._done
        self._progress(BuildProgress(STORING, self._done, self._total))


class _Batches:
    """Documents upserted a batch (one transaction) at a time, counted in the report and
    handed to the vector index built beside the writes."""

    def __init__(
        self, index: Index, report: BuildReport, beside: _Beside | None, most_documents: int
    ) -> None:
        self._index, self._report, self._beside = index, report, beside
        self._most_documents = most_documents
        self._batch: list[tuple[Document, list[Chunk], np.ndarray, bool]] = []
        self._chunks = 0

    def add(self, doc: Document, chunks: list[Chunk], vectors: np.ndarray, is_update: bool) -> None:
        self._batch.append((doc, chunks, vectors, is_update))
        self._chunks += len(chunks)
        if len(self._batch) >= self._most_documents or self._chunks >= BATCH_CHUNKS:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        batch = self._batch
        ids = self._index.upsert([(doc, chunks, vectors) for doc, chunks, vectors, _ in batch])
        if self._beside is not None:
            self._beside.add(ids, batch)
        for _, chunks, _, is_update in batch:
            self._report.chunks_embedded += len(chunks)
            if is_update:
                self._report.documents_updated += 1
            else:
                self._report.documents_added += 1
        self._batch, self._chunks = [], 0


class _Beside:
    """The vector index of a fresh ingest, built beside its writes (:mod:`.vector_prebuild`)
    and handed to the index when no other writer came between."""

    def __init__(self, index: Index, files: list[Path]) -> None:
        self._index, self._generation = index, index.generation
        self._vectors = VectorPrebuild(files, index.settings.dimension)

    def add(
        self, ids: np.ndarray, batch: list[tuple[Document, list[Chunk], np.ndarray, bool]]
    ) -> None:
        """One upserted batch (one generation) and the chunk ids it was given."""
        self._generation += 1
        self._vectors.add(ids, np.concatenate([vectors for _, _, vectors, _ in batch]))

    def abandon(self) -> None:
        self._vectors.abandon()

    def finish(self) -> None:
        built = self._vectors.finish()
        if built is not None and not self._index.adopt_vector_index(self._generation, built):
            logger.info("the index changed beside the ingest; its vectors are built from SQLite")


def _ahead(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items`` in order, taken from an iterator run on another thread up to ``depth`` items
    ahead (Parquet reads release the GIL; SQLite's writes too); its error is raised here. The
    thread stops when the caller stops iterating."""
    held: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                held.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
        except BaseException as exc:  # raised in the caller's thread
            put("error", exc)
        else:
            put("done", None)

    thread = threading.Thread(target=produce, name="shard-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = held.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()


def _counted(token_counts: TokenCounts, doc_id: str, chunks: list[Chunk]) -> list[Chunk]:
    counts = token_counts(doc_id, chunks)
    return [
        dataclasses.replace(chunk, token_count=count)
        for chunk, count in zip(chunks, counts, strict=True)
    ]


def _failed(report: BuildReport, path: str, line: int | None, reason: str) -> None:
    report.failures.append(ReadFailure(path, line, reason))
    report.documents_failed += 1
    logger.warning("could not ingest %s%s: %s", path, f":{line}" if line else "", reason)
