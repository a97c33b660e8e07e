"""The build pipeline: scan → diff against the index → chunk → embed → store, resumable.

Work is committed in batches of documents, each batch one SQLite transaction, so a build
killed at any moment leaves the index at its last committed batch; rerunning the same build
skips every document already stored with the same content hash.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instructor_search.documents import Chunk, Document
from instructor_search.encoder.checkpoints import Checkpoint, resolve
from instructor_search.encoder.instructor import Instructor
from instructor_search.encoder.profiles import profile_for
from instructor_search.errors import IndexStoreError, InputError, ReaderError
from instructor_search.store.index import INDEX_FILE, CollectionSettings, Index

from .chunking import Chunker, ChunkSettings
from .readers import ReaderSettings, ReadFailure, Skipped, scan

logger = logging.getLogger(__name__)

#: Longest title (in tokens) prepended to each chunk for embedding; longer ones are cut.
MAX_TITLE_TOKENS = 48


@dataclass(frozen=True)
class BuildSettings:
    """What a build embeds and how. ``None`` instructions take the model profile's defaults."""

    model: str | None = None
    document_instruction: str | None = None
    query_instruction: str | None = None
    chunk: ChunkSettings = field(default_factory=ChunkSettings)
    reader: ReaderSettings = field(default_factory=ReaderSettings)
    batch_size: int = 32
    #: Documents per committed transaction.
    commit_documents: int = 64
    #: Chunks embedded together (sorted by length into batches) before their documents are
    #: committed: a larger pool pads less (9.2% padded tokens with 64 SciFact documents per
    #: pool, 1.4% with ~1,000 chunks); a crash re-embeds at most one pool.
    pool_chunks: int = 1024
    rebuild: bool = False
    #: Encoder backend: "auto" (ONNX Runtime if it passes its fidelity gate), "torch", "onnx".
    backend: str = "auto"
    #: "auto" (bf16 on CPUs that have it, once it passes its fidelity gate), "fp32", "bf16".
    precision: str = "auto"


@dataclass
class BuildReport:
    """What a build did; ``to_dict`` is what ``instructor-index build --json`` prints."""

    documents_added: int = 0
    documents_updated: int = 0
    documents_deleted: int = 0
    documents_unchanged: int = 0
    documents_failed: int = 0
    chunks_embedded: int = 0
    documents_total: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    #: How chunks were embedded when any were: ``Instructor.backend`` and ``.precision``.
    backend: str | None = None
    precision: str | None = None
    failures: list[ReadFailure] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = [asdict(f) for f in self.failures]
        data["skipped"] = [asdict(s) for s in self.skipped]
        return data


@dataclass
class _Scan:
    """The corpus as scanned: documents to embed, ids seen, and files that failed."""

    pending: list[tuple[Document, bool]] = field(default_factory=list)  # (doc, is_update)
    seen: set[str] = field(default_factory=set)
    roots: list[Path] = field(default_factory=list)
    failed_files: set[str] = field(default_factory=set)


Progress = Callable[[str, int], None]


def build(
    sources: Sequence[str | os.PathLike[str]],
    index_path: str | os.PathLike[str],
    settings: BuildSettings | None = None,
    *,
    model: Instructor | None = None,
    show_progress: bool = False,
) -> BuildReport:
    """Bring the index at ``index_path`` in line with ``sources`` (folders, files, record files).

    New and changed documents are embedded, documents gone from a scanned source are removed,
    unchanged ones cost a hash comparison. Returns what was done.
    """
    settings = settings or BuildSettings()
    roots = [_checked_source(Path(source)) for source in sources]

    def collect(index: Index, report: BuildReport) -> tuple[list[tuple[Document, bool]], list[str]]:
        found = _scan(roots, settings.reader, index.document_hashes(), report)
        return found.pending, _gone(index, found)

    return _run(Path(index_path), settings, model, show_progress, collect)


def add_documents(
    documents: Iterable[Document],
    index_path: str | os.PathLike[str],
    settings: BuildSettings | None = None,
    *,
    model: Instructor | None = None,
    show_progress: bool = False,
) -> BuildReport:
    """Embed and store :class:`Document` objects made in Python (no files needed).

    A document whose id is already stored with the same content is skipped, one with other
    content is replaced; nothing else in the index is touched (use :func:`delete_documents`).
    """

    def collect(index: Index, report: BuildReport) -> tuple[list[tuple[Document, bool]], list[str]]:
        stored, pending = index.document_hashes(), {}
        for doc in documents:  # the last of several documents with one id wins
            pending[doc.id] = doc
        return _changed(pending.values(), stored, report), []

    return _run(Path(index_path), settings or BuildSettings(), model, show_progress, collect)


Collector = Callable[[Index, BuildReport], tuple[list[tuple[Document, bool]], list[str]]]


def _run(
    index_path: Path,
    settings: BuildSettings,
    model: Instructor | None,
    show_progress: bool,
    collect: Collector,
) -> BuildReport:
    """Open (or create) the index, then delete and embed what ``collect`` says."""
    validate(settings)
    started = time.perf_counter()
    checkpoint = model.checkpoint if model else resolve(settings.model)
    loaded: list[Instructor] = [model] if model else []

    def the_model() -> Instructor:  # loaded at most once, and only when needed
        if not loaded:
            loaded.append(
                Instructor(checkpoint, backend=settings.backend, precision=settings.precision)
            )
        return loaded[0]

    collection = _collection_settings(checkpoint, settings, model)
    index = _open_index(index_path, collection, settings.rebuild, lambda: the_model().dimension)
    report = BuildReport()
    try:
        pending, gone = collect(index, report)
        report.documents_deleted = index.delete(gone)
        if pending:
            _embed_and_store(
                index, the_model(), collection, settings, pending, report, show_progress
            )
        index.sync_derived()
        stats = index.stats()
        report.documents_total, report.chunks_total = stats.documents, stats.chunks
    finally:
        index.close()
    report.seconds = round(time.perf_counter() - started, 3)
    if report.chunks_embedded:
        report.backend, report.precision = loaded[0].backend, loaded[0].precision
    return report


def _changed(
    documents: Iterable[Document], stored: dict[str, str], report: BuildReport
) -> list[tuple[Document, bool]]:
    """The documents whose content differs from the stored one: ``(document, is_update)``."""
    pending = []
    for doc in documents:
        held = stored.get(doc.id)
        if held == doc.content_hash:
            report.documents_unchanged += 1
        else:
            pending.append((doc, held is not None))
    return pending


def _checked_source(source: Path) -> Path:
    if not source.exists():
        raise ReaderError(
            f"Source {source} does not exist; pass a folder, a file or a JSONL/CSV file"
        )
    return source.resolve()


def _collection_settings(
    checkpoint: Checkpoint, settings: BuildSettings, model: Instructor | None
) -> CollectionSettings:
    profile = model.profile if model else profile_for(checkpoint.name, checkpoint.folder.name)
    document = settings.document_instruction
    query = settings.query_instruction
    return CollectionSettings(
        model=checkpoint.name,
        model_fingerprint=checkpoint.fingerprint,
        dimension=0,  # known once the model is loaded; checked through the fingerprint
        document_instruction=profile.document_instruction if document is None else document,
        query_instruction=profile.query_instruction if query is None else query,
        chunk_tokens=settings.chunk.chunk_tokens,
        chunk_overlap=settings.chunk.chunk_overlap,
    )


def _open_index(
    path: Path, collection: CollectionSettings, rebuild: bool, dimension: Callable[[], int]
) -> Index:
    """Open the index there, or create it in a new or empty folder; never adopt another folder."""
    if (path / INDEX_FILE).is_file() and not rebuild:
        index = Index.open(path)
        try:
            index.check_compatible(
                CollectionSettings(**{**asdict(collection), "dimension": index.settings.dimension})
            )
        except BaseException:
            index.close()
            raise
        return index
    if path.is_dir() and not (path / INDEX_FILE).is_file() and any(path.iterdir()):
        raise IndexStoreError(
            f"{path} is a folder with other files in it and no index; "
            f"pass a new or empty folder to --index"
        )
    created = CollectionSettings(**{**asdict(collection), "dimension": dimension()})
    return Index.create(path, created, overwrite=rebuild)


def _scan(
    roots: list[Path], reader: ReaderSettings, stored: dict[str, str], report: BuildReport
) -> _Scan:
    found = _Scan(roots=roots)
    for root in roots:
        for item in scan(root, reader):
            if isinstance(item, Skipped):
                report.skipped.append(item)
                logger.info("skipped %s: %s", item.path, item.reason)
            elif isinstance(item, ReadFailure):
                report.failures.append(item)
                report.documents_failed += 1
                found.failed_files.add(str(root / item.path if root.is_dir() else root))
                where = f"{item.path}:{item.line}" if item.line else item.path
                logger.warning("could not read %s: %s", where, item.reason)
            elif item.id in found.seen:
                report.failures.append(ReadFailure(item.source, None, f"duplicate id {item.id!r}"))
                report.documents_failed += 1
            else:
                found.seen.add(item.id)
                found.pending += _changed([item], stored, report)
    return found


def _gone(index: Index, found: _Scan) -> list[str]:
    """Stored documents that came from a scanned source and are not there any more.

    A document whose file failed to read this time is kept: a broken file loses nothing.
    """
    roots = [str(root) for root in found.roots]
    gone = []
    for doc_id, source in index.document_sources().items():
        if doc_id in found.seen or not any(_under(source, root) for root in roots):
            continue
        if any(_under(source, failed) for failed in found.failed_files):
            continue
        gone.append(doc_id)
    return gone


def _under(source: str, root: str) -> bool:
    return source == root or source.startswith((root + os.sep, root + ":"))


def _embed_and_store(
    index: Index,
    model: Instructor,
    collection: CollectionSettings,
    settings: BuildSettings,
    pending: list[tuple[Document, bool]],
    report: BuildReport,
    show_progress: bool,
) -> None:
    instruction = collection.document_instruction
    max_text = model.max_text_tokens(instruction)
    chunkers = _Chunkers(model, settings.chunk)
    progress = _progress_bar(len(pending), show_progress)
    try:
        pools = _pools(
            pending, settings.pool_chunks, lambda d: _chunk(d, chunkers, model, max_text)
        )
        for pool in pools:
            vectors = _embed_pool(pool, model, instruction, settings.batch_size, report, progress)
            offset = 0
            for start in range(0, len(pool), settings.commit_documents):
                group = pool[start : start + settings.commit_documents]
                rows = []
                for doc, _, pieces in group:
                    chunks = [chunk for chunk, _, _ in pieces]
                    rows.append((doc, chunks, vectors[offset : offset + len(pieces)]))
                    offset += len(pieces)
                index.upsert(rows)
                for _, is_update, pieces in group:
                    report.chunks_embedded += len(pieces)
                    if is_update:
                        report.documents_updated += 1
                    else:
                        report.documents_added += 1
                if progress is not None:
                    progress.update(len(group))
                    progress.set_postfix(chunks=report.chunks_embedded, refresh=False)
    finally:
        if progress is not None:
            progress.close()


#: Texts per ``embed`` call inside a pool (longest first): the progress bar moves between them.
EMBED_SLICE = 128

_Piece = tuple[Chunk, str, int]  # a chunk, the text embedded for it, that text's token count
_Pending = tuple[Document, bool, list[_Piece]]


def _embed_pool(
    pool: list[_Pending],
    model: Instructor,
    instruction: str,
    batch_size: int,
    report: BuildReport,
    progress: Any,
) -> np.ndarray:
    """The pool's chunk vectors in pool order, embedded longest first in slices of
    :data:`EMBED_SLICE` texts (each slice pads little; the progress bar counts the chunks)."""
    texts = [text for _, _, pieces in pool for _, text, _ in pieces]
    tokens = [count for _, _, pieces in pool for _, _, count in pieces]
    order = sorted(range(len(texts)), key=lambda i: -tokens[i])
    vectors = np.empty((len(texts), model.dimension), dtype=np.float32)
    for start in range(0, len(order), EMBED_SLICE):
        part = order[start : start + EMBED_SLICE]
        vectors[part] = model.embed([texts[i] for i in part], instruction, batch_size=batch_size)
        if progress is not None:
            done = report.chunks_embedded + start + len(part)
            progress.set_postfix(chunks=done, refresh=True)
    return vectors


def _pools(
    pending: list[tuple[Document, bool]],
    pool_chunks: int,
    chunk: Callable[[Document], list[_Piece]],
) -> Iterator[list[_Pending]]:
    """Chunked documents in groups of at least ``pool_chunks`` chunks (the last: the rest)."""
    pool: list[_Pending] = []
    size = 0
    for doc, is_update in pending:
        pieces = chunk(doc)
        pool.append((doc, is_update, pieces))
        size += len(pieces)
        if size >= pool_chunks:
            yield pool
            pool, size = [], 0
    if pool:
        yield pool


def _chunk(doc: Document, chunkers: _Chunkers, model: Instructor, max_text: int) -> list[_Piece]:
    """The document's chunks, each with the text to embed (``title + " " + chunk``) and about
    how many tokens that text has.

    The title's tokens (+1 for the seam) come off every chunk's budget, so that no embedded
    input is ever truncated.
    """
    title = _short_title(doc.title, model)
    title_tokens = 0
    if title:
        title_tokens = len(model.tokenizer(title, add_special_tokens=False)["input_ids"]) + 1
    chunks = chunkers.get(max_text - title_tokens).chunk(doc.text)
    return [
        (chunk, f"{title} {chunk.text}" if title else chunk.text, chunk.token_count + title_tokens)
        for chunk in chunks
    ]


class _Chunkers:
    """One :class:`Chunker` per token budget (making one copies the tokenizer: ~20 ms)."""

    def __init__(self, model: Instructor, settings: ChunkSettings) -> None:
        self.model, self.settings = model, settings
        self._by_budget: dict[int, Chunker] = {}

    def get(self, max_text_tokens: int) -> Chunker:
        window = min(self.settings.chunk_tokens, max_text_tokens)  # what the Chunker will use
        if window not in self._by_budget:
            self._by_budget[window] = Chunker(
                self.model.tokenizer, self.settings, max_text_tokens=window
            )
        return self._by_budget[window]


def _short_title(title: str, model: Instructor) -> str:
    title = " ".join(title.split())
    if not title:
        return ""
    encoded = model.tokenizer(title, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if len(offsets) <= MAX_TITLE_TOKENS:
        return title
    return title[: offsets[MAX_TITLE_TOKENS - 1][1]]


def _progress_bar(total: int, show: bool) -> Any:
    if not show:
        return None
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Embedding", unit="doc", file=sys.stderr, dynamic_ncols=True)


def delete_documents(index_path: str | os.PathLike[str], doc_ids: Iterable[str]) -> int:
    """Remove documents (and their chunks) from an index; returns how many were there."""
    with Index.open(index_path) as index:
        removed = index.delete(list(doc_ids))
        index.sync_derived()
    return removed


def validate(settings: BuildSettings) -> None:
    """Raise :class:`InputError` for settings that cannot work, before any work is done."""
    if settings.batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {settings.batch_size}")
    if settings.pool_chunks < 1:
        raise InputError(f"pool_chunks must be at least 1, got {settings.pool_chunks}")
    if settings.commit_documents < 1:
        raise InputError(f"commit_documents must be at least 1, got {settings.commit_documents}")
