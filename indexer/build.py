"""The build pipeline: scan → diff against the index → chunk → embed → store, resumable.

Work is committed in batches of documents, each batch one SQLite transaction, so a build
killed at any moment leaves the index at its last committed batch; rerunning the same build
skips every document already stored with the same content hash (and, unless asked to rehash,
every file whose size and modification time are those stored: :mod:`.diff`). Vectors embedded for a pool
whose documents are not committed yet are kept in the build journal (:mod:`.journal`) slice
by slice, so a rerun re-embeds at most the slice that was in flight.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from instructor_search.documents import Document
from instructor_search.encoder.checkpoints import Checkpoint, resolve
from instructor_search.encoder.instructor import Instructor
from instructor_search.encoder.profiles import profile_for
from instructor_search.encoder.query import QueryEncoder
from instructor_search.engines.ray_engine import RaySettings, embed_on_ray, ray_settings
from instructor_search.errors import IndexStoreError, InputError
from instructor_search.store.index import INDEX_FILE, CollectionSettings, Index
from instructor_search.training.output import RECORD_FILE, read_record

from .chunking import Chunker, ChunkSettings
from .diff import changed_documents, changed_paths, gone, scan_sources
from .embedding import embed_and_store
from .journal import JOURNAL_FILE, discard
from .progress import LOADING, BuildProgress, ProgressBars, ProgressCallback, progress_callback
from .readers import ReaderSettings, ReadFailure, Skipped, checked_source

logger = logging.getLogger(__name__)


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
    #: pool, 1.4% with ~1,000 chunks). Its vectors are journaled slice by slice as they are
    #: embedded, so a crash re-embeds at most one slice (:data:`EMBED_SLICE` chunks).
    pool_chunks: int = 1024
    rebuild: bool = False
    #: Read and hash every file. Without it a file whose size and modification time are the
    #: ones stored is kept unread, which misses a file rewritten with both unchanged.
    rehash: bool = False
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
    #: Files whose documents were kept as stored without opening them (same size and
    #: modification time; in a watch batch, also record files that no event named).
    files_not_read: int = 0
    #: Chunks the model embedded in this build.
    chunks_embedded: int = 0
    #: Chunks whose vectors a killed build had embedded (taken from the journal, not embedded).
    chunks_resumed: int = 0
    documents_total: int = 0
    chunks_total: int = 0
    seconds: float = 0.0
    #: How chunks were embedded when any were: ``Instructor.backend`` and ``.precision``.
    backend: str | None = None
    precision: str | None = None
    #: Instructions given none and taken from the model's tuning record (a folder written by
    #: ``instructor-index tune``): ``{"document_instruction": ..., "query_instruction": ...}``.
    tuned_instructions: dict[str, str] = field(default_factory=dict)
    failures: list[ReadFailure] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = [asdict(f) for f in self.failures]
        data["skipped"] = [asdict(s) for s in self.skipped]
        return data


def build(
    sources: Sequence[str | os.PathLike[str]],
    index_path: str | os.PathLike[str],
    settings: BuildSettings | None = None,
    *,
    model: Instructor | None = None,
    show_progress: bool = False,
    on_progress: ProgressCallback | None = None,
    engine: str | RaySettings = "local",
    changed: Iterable[str | os.PathLike[str]] | None = None,
) -> BuildReport:
    """Bring the index at ``index_path`` in line with ``sources`` (folders, files, record files).

    New and changed documents are embedded, documents gone from a scanned source are removed,
    unchanged ones cost a hash comparison, or nothing when their file's size and modification
    time are those stored (``settings.rehash`` reads every file). ``changed`` names the paths
    (files or folders, deleted ones too) that may have changed since the index was last
    brought in line with ``sources``, as a watcher knows them: the other files it holds
    documents from are then kept unread, record files included. Document ids are unique
    across sources (see :mod:`.doc_ids`). ``show_progress`` draws bars on stderr;
    ``on_progress`` gets each :class:`~.progress.BuildProgress` instead. ``engine="ray"`` (or
    a :class:`~instructor_search.engines.ray_engine.RaySettings`) chunks and embeds on Ray.
    Returns what was done.
    """
    settings = settings or BuildSettings()
    roots = list(dict.fromkeys(checked_source(source).resolve() for source in sources))
    named = None if changed is None else changed_paths(changed)

    def collect(index: Index, report: BuildReport, progress: ProgressCallback) -> _Collected:
        found = scan_sources(
            roots, settings.reader, index, report, progress, rehash=settings.rehash, changed=named
        )
        return found.pending, gone(found)

    progress = progress_callback(show_progress, on_progress)
    return _run(Path(index_path), settings, model, progress, collect, engine)


def add_documents(
    documents: Iterable[Document],
    index_path: str | os.PathLike[str],
    settings: BuildSettings | None = None,
    *,
    model: Instructor | None = None,
    show_progress: bool = False,
    on_progress: ProgressCallback | None = None,
) -> BuildReport:
    """Embed and store :class:`Document` objects made in Python (no files needed).

    A document whose id is already stored with the same content is skipped, one with other
    content is replaced; nothing else in the index is touched (use :func:`delete_documents`).
    """

    def collect(index: Index, report: BuildReport, progress: ProgressCallback) -> _Collected:
        stored, pending = index.document_hashes(), {}
        for doc in documents:  # the last of several documents with one id wins
            pending[doc.id] = doc
        return changed_documents(pending.values(), stored, report), []

    progress = progress_callback(show_progress, on_progress)
    return _run(Path(index_path), settings or BuildSettings(), model, progress, collect)


#: What a build embeds (``(document, is_update)``) and the ids of documents it removes.
_Collected = tuple[list[tuple[Document, bool]], list[str]]
Collector = Callable[[Index, "BuildReport", ProgressCallback], _Collected]


def _run(
    index_path: Path,
    settings: BuildSettings,
    model: Instructor | None,
    progress: ProgressCallback,
    collect: Collector,
    engine: str | RaySettings = "local",
) -> BuildReport:
    """Open (or create) the index, then delete and embed what ``collect`` says."""
    try:
        return _build(index_path, settings, model, progress, collect, engine)
    finally:
        if isinstance(progress, ProgressBars):
            progress.close()


def _build(
    index_path: Path,
    settings: BuildSettings,
    model: Instructor | None,
    progress: ProgressCallback,
    collect: Collector,
    engine: str | RaySettings,
) -> BuildReport:
    validate(settings)
    ray = None if engine == "local" else ray_settings(engine)
    started = time.perf_counter()
    checkpoint = model.checkpoint if model else resolve(settings.model)
    loaded: list[Instructor] = [model] if model else []

    def the_model() -> Instructor:  # loaded at most once, and only when needed
        if not loaded:
            progress(BuildProgress(LOADING, 0, 1))
            loaded.append(
                Instructor(checkpoint, backend=settings.backend, precision=settings.precision)
            )
            progress(BuildProgress(LOADING, 1, 1))
        return loaded[0]

    collection, tuned = _collection_settings(checkpoint, settings, model)

    def prepared() -> int:  # a new index: the model's dimension, once its chunk window is valid
        loaded_model = the_model()
        max_text = loaded_model.max_text_tokens(collection.document_instruction)
        Chunker(loaded_model.tokenizer, settings.chunk, max_text_tokens=max_text)
        return loaded_model.dimension

    index = open_index(index_path, collection, settings.rebuild, prepared)
    if settings.rebuild:
        discard(index_path)  # vectors a killed build of the replaced index had embedded
    report = BuildReport(tuned_instructions=tuned)
    try:
        pending, gone = collect(index, report, progress)
        report.documents_deleted = index.delete(gone)
        if pending and ray:
            source = str(checkpoint.folder) if model else settings.model
            embed_on_ray(index, source, settings, pending, report, progress, ray)
        elif pending:
            embed_and_store(index, the_model(), collection, settings, pending, report, progress)
        index.sync_derived()
        if loaded:  # the first search after this build starts without torch
            QueryEncoder.saved(loaded[0])
        stats = index.stats()
        report.documents_total, report.chunks_total = stats.documents, stats.chunks
    finally:
        index.close()
    discard(index_path)  # all is committed: what a killed build journaled is of no more use
    report.seconds = round(time.perf_counter() - started, 3)
    if report.chunks_embedded and not report.backend:  # the Ray engine sets its workers'
        report.backend, report.precision = loaded[0].backend, loaded[0].precision
    return report


def _collection_settings(
    checkpoint: Checkpoint, settings: BuildSettings, model: Instructor | None
) -> tuple[CollectionSettings, dict[str, str]]:
    """The index's settings, and the instructions among them taken from a tuning record."""
    given = {
        "document_instruction": settings.document_instruction,
        "query_instruction": settings.query_instruction,
    }
    tuned = {
        name: value for name, value in tuned_instructions(checkpoint).items() if given[name] is None
    }
    if tuned:
        logger.info(
            "Instructions %s were not given: using those %s was tuned with (%s): %s",
            " and ".join(tuned), checkpoint.name, RECORD_FILE, tuned,
        )  # fmt: skip
    profile = model.profile if model else profile_for(checkpoint)
    defaults = {
        "document_instruction": profile.document_instruction,
        "query_instruction": profile.query_instruction,
    }
    chosen = {
        name: value if value is not None else tuned.get(name, defaults[name])
        for name, value in given.items()
    }
    collection = CollectionSettings(
        model=checkpoint.name,
        model_fingerprint=checkpoint.fingerprint,
        dimension=0,  # known once the model is loaded; checked through the fingerprint
        chunk_tokens=settings.chunk.chunk_tokens,
        chunk_overlap=settings.chunk.chunk_overlap,
        **chosen,
    )
    return collection, tuned


def tuned_instructions(checkpoint: Checkpoint) -> dict[str, str]:
    """The instruction pair a model folder written by ``instructor-index tune`` was trained
    with (its ``instructor-search.json``); empty for any other model."""
    record = read_record(checkpoint.folder) or {}
    names = ("document_instruction", "query_instruction")
    return {name: record[name] for name in names if isinstance(record.get(name), str)}


def open_index(
    path: Path, collection: CollectionSettings, rebuild: bool, dimension: Callable[[], int]
) -> Index:
    """Open the index there, or create it in a new or empty folder; never adopt another folder.

    ``dimension`` loads the model (and checks what depends on it) before anything is created.
    A folder that holds only what a killed build left of ours (an unfinished ``index.sqlite``,
    a temporary one, a journal) counts as empty.
    """
    exists = Index.exists(path)
    if exists and not rebuild:
        index = Index.open(path)
        try:
            index.check_compatible(
                CollectionSettings(**{**asdict(collection), "dimension": index.settings.dimension})
            )
        except BaseException:
            index.close()
            raise
        return index
    if not exists and path.is_dir() and any(not _ours(entry.name) for entry in path.iterdir()):
        raise IndexStoreError(
            f"{path} is a folder with other files in it and no index; "
            f"pass a new or empty folder to --index"
        )
    created = CollectionSettings(**{**asdict(collection), "dimension": dimension()})
    return Index.create(path, created, overwrite=rebuild)


def _ours(name: str) -> bool:
    """A file name a build of ours makes in an index folder before its index is complete."""
    return name.startswith((INDEX_FILE, JOURNAL_FILE))


def delete_documents(index_path: str | os.PathLike[str], doc_ids: Iterable[str]) -> int:
    """Remove documents (and their chunks) from an index; returns how many were removed.

    Each of ``doc_ids`` is a document id (what a search hit and ``Index.documents()`` show) or
    the path of a file that was indexed (all of its records, for a record file). One that
    matches nothing is an :class:`InputError` naming it, and nothing is removed.
    """
    with Index.open(index_path) as index:
        sources = index.document_sources()
        chosen: list[str] = []
        unknown: list[str] = []
        for given in doc_ids:
            found = [given] if given in sources else _documents_of_file(given, sources)
            chosen += found
            if not found:
                unknown.append(given)
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            raise InputError(
                f"No document {names} in {index_path} (neither an id nor an indexed file); "
                f"instructor-index ls {index_path} lists the ids"
            )
        removed = index.delete(chosen)
        index.sync_derived()
    return removed


def _documents_of_file(path: str, sources: dict[str, str]) -> list[str]:
    """Ids of the documents read from the file at ``path`` (a file, or a record file)."""
    if not os.path.isfile(path):
        return []
    names = {os.path.abspath(path), os.path.realpath(path)}
    return [
        doc_id
        for doc_id, source in sources.items()
        if any(source == name or source.startswith((name + ":", name + "#")) for name in names)
    ]


def validate(settings: BuildSettings) -> None:
    """Raise :class:`InputError` for settings that cannot work, before anything is written."""
    from instructor_search.encoder.onnx_backend import BACKENDS
    from instructor_search.encoder.precision import PRECISIONS

    for name in ("batch_size", "pool_chunks", "commit_documents"):
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")
    if settings.backend not in BACKENDS:
        raise InputError(f"backend {settings.backend!r} must be one of {list(BACKENDS)}")
    if settings.precision not in PRECISIONS:
        raise InputError(f"precision {settings.precision!r} must be one of {list(PRECISIONS)}")
