"""The Ray engine of a build: the pending documents chunked and embedded on a Ray cluster.

The driver scans and diffs by content hash as a local build does; only the documents to embed
become Ray Data work items. ``map_batches`` runs them through
:class:`~.ray_workers.EmbedShards` on an actor pool (one model per actor, ``workers`` actors),
which chunks and embeds with the very functions of a local build
(:mod:`instructor_search.indexer.embedding`) and writes each batch as a shard folder
(:mod:`instructor_search.store.shards`); the driver ingests the folders as they arrive, with
the chunks' token counts the workers send beside them (the shard format has no such column). A folder is named by its documents' ids and content hashes and
appears whole, so a batch Ray retries after a worker died rewrites the same folder, and a rerun
after the driver was killed ingests the folders already written and sends only the rest.

While the session is up, ``vectors.faiss`` is built with its IVF lists filled on Ray tasks
(:class:`~.ray_workers.RayFiller`) whenever the index rebuilds it above ``FLAT_MAX``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from instructor_search.documents import Chunk, Document
from instructor_search.errors import InputError
from instructor_search.indexer.progress import DISTRIBUTED, BuildProgress
from instructor_search.store.collection import CollectionSettings
from instructor_search.store.shards import (
    ShardFailure,
    ShardManifest,
    read_manifest,
    read_shard,
    shard_files,
)

from .ray_workers import ASIDE, BATCH, EmbedShards, RayFiller, work_item

if TYPE_CHECKING:
    from instructor_search.indexer.build import BuildReport, BuildSettings
    from instructor_search.indexer.ingest import TokenCounts
    from instructor_search.indexer.progress import ProgressCallback
    from instructor_search.store.index import Index


logger = logging.getLogger(__name__)

EXTRA = "pip install 'instructor-search[distributed]'"
#: Where shards go when no folder is given: inside the index folder.
SHARDS_FOLDER = "ray-shards"
#: Batches each worker gets at least, when batches are sized by text: the last batches
#: leave a worker idle for less of the build.
BATCHES_PER_WORKER = 8
#: About how many characters of text a model token covers (English prose; a batch's size
#: in chunks is estimated from it before the workers chunk the text).
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class RaySettings:
    """Where and how a build runs on Ray. ``None`` sizes to the machine or cluster."""

    #: A cluster to join (``ray.init(address=...)``); ``None`` starts a local instance.
    address: str | None = None
    #: Actors, each with its own model: locally the physical cores, on a cluster its CPUs - 1.
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    #: Shard folders go here (default: ``ray-shards`` in the index folder).
    shards: str | os.PathLike[str] | None = None
    #: Keep the shard folders after they are ingested (removed by default).
    keep_shards: bool = False
    #: Documents per Ray Data batch (one shard folder each). ``None`` groups documents by
    #: their text's length instead: a batch is about ``pool_chunks`` chunks (sorted by length
    #: within it, so it pads as little as a local build's pool), or less so that every worker
    #: gets :data:`BATCHES_PER_WORKER` batches.
    documents_per_task: int | None = None
    #: Ray's own logs and Ray Data's bars on the console.
    verbose: bool = False


def require_ray() -> Any:
    """The ``ray`` module, or an :class:`InputError` naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError(f"--engine ray needs Ray Data: {EXTRA}") from None
    return ray


def ray_settings(engine: str | RaySettings) -> RaySettings:
    """The settings of ``build(engine=...)`` other than ``"local"``, checked before any work:
    ``"ray"`` (sized to the machine or cluster) or :class:`RaySettings`; Ray must be installed."""
    if engine == "ray":
        engine = RaySettings()
    if not isinstance(engine, RaySettings):
        raise InputError(f"engine must be 'local', 'ray' or RaySettings, got {engine!r}")
    if engine.workers is not None and engine.workers < 1:
        raise InputError(f"workers must be at least 1, got {engine.workers}")
    if engine.documents_per_task is not None and engine.documents_per_task < 1:
        raise InputError(f"documents_per_task must be at least 1, got {engine.documents_per_task}")
    require_ray()
    return engine


def _physical_cores() -> int:
    from instructor_search.encoder.forward import physical_cores

    return physical_cores()


@contextmanager
def _held_stderr(verbose: bool) -> Iterator[None]:
    """What Ray's C++ core writes to the process's stderr while Ray starts (a line saying it
    read ``RAY_BACKEND_LOG_LEVEL``) held back, unless ``verbose``; shown if the start fails."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class Session:
    """A Ray session for one build: joins ``address`` or starts a local instance sized to this
    machine (one logical CPU beyond the actors' own, so they never claim every CPU: Ray Data
    hangs then), and shuts down only what it started."""

    def __init__(self, settings: RaySettings) -> None:
        self.ray = require_ray()
        self.settings = settings
        #: True when this session starts a local instance (no address, none running).
        self.local = settings.address is None and not self.ray.is_initialized()
        self.started = False

    def __enter__(self) -> Session:
        ray, settings = self.ray, self.settings
        level = logging.INFO if settings.verbose else logging.ERROR
        for name in ("ray", "ray.data"):  # Ray's console noise, unless --verbose
            logging.getLogger(name).setLevel(level)
        quiet = {"log_to_driver": settings.verbose, "logging_level": level}
        if not settings.verbose:  # Ray's C++ core logs warnings to stderr (read at ray.init)
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        if self.local:
            cpus = math.ceil(self.workers * settings.cpus_per_worker) + 1
            with _held_stderr(settings.verbose):
                ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
            self.started = True
        elif not ray.is_initialized():
            with _held_stderr(settings.verbose):
                ray.init(address=settings.address, **quiet)
            self.started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = settings.verbose
        context.print_on_execution_start = settings.verbose
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.ray.shutdown()

    @property
    def workers(self) -> int:
        if self.settings.workers is not None:
            return self.settings.workers
        if self.local:
            return _physical_cores()
        cpus = self.ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // self.settings.cpus_per_worker) - 1)

    @property
    def threads(self) -> int | None:
        """Torch threads per actor: this machine's cores shared out, or the actor's CPUs."""
        if self.local:
            return max(1, _physical_cores() // self.workers)
        return max(1, int(self.settings.cpus_per_worker))


def shards_folder(index: Index, ray_settings: RaySettings) -> Path:
    return Path(ray_settings.shards) if ray_settings.shards else Path(index.path) / SHARDS_FOLDER


def _held(folder: Path, manifest: ShardManifest, wanted: dict[str, str]) -> bool:
    """Whether a folder a killed build left holds only documents this build wants, as they
    are now (same id and content hash), and nothing broken."""
    try:
        if read_manifest(folder) != manifest:
            return False
        for file in shard_files(folder):
            for item in read_shard(file, manifest):
                if isinstance(item, ShardFailure) or wanted.get(item[0].id) != item[0].content_hash:
                    return False
    except Exception:  # an unreadable folder is of no use: embed its documents again
        return False
    return True


def embed_on_ray(
    index: Index,
    model: str | None,
    settings: BuildSettings,
    pending: list[tuple[Document, bool]],
    report: BuildReport,
    progress: ProgressCallback,
    ray_settings: RaySettings,
) -> None:
    """Embed ``pending`` on Ray and store it in ``index``: first what a killed build's shard
    folders already hold, then the rest, batch by batch, ingested every ``pool_chunks`` chunks;
    all of it while the Ray session is up; the derived files are brought up to date once at
    the end, when the workers are done, so that IVF lists are filled on every CPU's Ray task."""
    from instructor_search.store.vectors import build_vector_index

    manifest = ShardManifest.of(index.settings)
    folder = shards_folder(index, ray_settings)
    folder.mkdir(parents=True, exist_ok=True)
    for aside in folder.glob(ASIDE + "*"):  # half-written by a worker that was killed
        shutil.rmtree(aside, ignore_errors=True)
    wanted = {doc.id: doc.content_hash for doc, _ in pending}
    left = [f for f in sorted(folder.glob(BATCH + "*")) if _held(f, manifest, wanted)]
    token_counts = ChunkTokens(model)
    with Session(ray_settings) as session:
        filler = RayFiller(session.ray)
        index.use_vector_builder(functools.partial(build_vector_index, fill=filler))
        try:
            if left:
                _ingest(index, left, report, token_counts, resumed=True)
                logger.info("ingested %d shard folders a killed build had written", len(left))
            stored = index.document_hashes()
            rest = [(d, update) for d, update in pending if stored.get(d.id) != d.content_hash]
            _embed(session, index, model, settings, folder, rest, report, progress, token_counts)
            index.sync_derived()  # once, the actors done: the IVF lists filled on every CPU
        finally:
            index.use_vector_builder(None)
    if not ray_settings.keep_shards:
        for batch in folder.glob(BATCH + "*"):
            shutil.rmtree(batch, ignore_errors=True)
        if not ray_settings.shards and not any(folder.iterdir()):
            folder.rmdir()


def _embed(
    session: Session,
    index: Index,
    model: str | None,
    settings: BuildSettings,
    folder: Path,
    rest: list[tuple[Document, bool]],
    report: BuildReport,
    progress: ProgressCallback,
    token_counts: ChunkTokens,
) -> None:
    """Send ``rest`` through the Ray Data pipeline and ingest its shard folders as they come."""
    dimension = index.settings.dimension
    by_id = {doc.id: doc for doc, _ in rest}
    done, chunks, ready, ready_chunks = 0, 0, [], 0
    progress(BuildProgress(DISTRIBUTED, 0, len(rest), 0))
    if not rest:
        return
    for row in _dataset(session, model, index.settings, settings, folder, rest).iter_rows():
        report.backend, report.precision = row["backend"], row["precision"]
        token_counts.known.update(json.loads(row["tokens"]))
        for path, reason in json.loads(row["failures"]):
            _failed(report, path, reason)
        empty = [by_id[doc_id] for doc_id in json.loads(row["empty"])]
        if empty:  # documents without text have no rows in a shard
            index.upsert([(doc, [], np.empty((0, dimension), np.float32)) for doc in empty])
            report.documents_added += len(empty)
        if row["folder"]:
            ready.append(Path(row["folder"]))
            ready_chunks += row["chunks"]
        if ready_chunks >= settings.pool_chunks:
            _ingest(index, ready, report, token_counts, resumed=False)
            ready, ready_chunks = [], 0
        done += row["documents"] + len(json.loads(row["failures"])) + len(empty)
        chunks += row["chunks"]
        progress(BuildProgress(DISTRIBUTED, done, len(rest), chunks))
    if ready:
        _ingest(index, ready, report, token_counts, resumed=False)


class ChunkTokens:
    """The :data:`~instructor_search.indexer.ingest.TokenCounts` of a Ray build: the counts the
    workers' chunkers sent with each batch (the shard format has none), or for a document no
    worker of this build sent (a killed build's shards), counted again on the model's tokenizer
    (loaded on the driver the first time)."""

    def __init__(self, model: str | None) -> None:
        self.model = model
        #: document id -> its chunks' token counts, by ordinal; taken when ingested.
        self.known: dict[str, list[int]] = {}
        self._recount: TokenCounts | None = None

    def __call__(self, doc_id: str, chunks: list[Chunk]) -> list[int]:
        counts = self.known.pop(doc_id, None)
        if counts is not None and len(counts) == len(chunks):
            return counts
        if self._recount is None:
            import transformers

            from instructor_search.encoder.checkpoints import resolve
            from instructor_search.indexer.ingest import token_counter

            folder = str(resolve(self.model).folder)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, use_fast=True)
            self._recount = token_counter(tokenizer)
        return self._recount(doc_id, chunks)


def _dataset(
    session: Session,
    model: str | None,
    index_settings: CollectionSettings,
    settings: BuildSettings,
    folder: Path,
    rest: list[tuple[Document, bool]],
) -> Any:
    """The Ray Data pipeline: one row per batch of work items → :class:`EmbedShards` on an
    actor pool."""
    ray, ray_settings = session.ray, session.settings
    groups = batches([doc for doc, _ in rest], settings, session.workers, ray_settings)
    rows = [{"documents": json.dumps([work_item(doc) for doc in group])} for group in groups]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    return dataset.map_batches(
        EmbedShards,
        fn_constructor_kwargs={
            "model": model,
            "fingerprint": index_settings.model_fingerprint,
            "settings": settings,
            "manifest": ShardManifest.of(index_settings),
            "folder": str(folder.resolve()),
            "threads": session.threads,
        },
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=session.workers),
        num_cpus=ray_settings.cpus_per_worker,
        num_gpus=ray_settings.gpus_per_worker or None,
    )  # Ray Data restarts an actor that died (kill -9, a lost node) and retries its batches


def batches(
    docs: list[Document], settings: BuildSettings, workers: int, ray_settings: RaySettings
) -> list[list[Document]]:
    """``docs`` cut into consecutive batches: ``documents_per_task`` each, or by text length
    (see :attr:`RaySettings.documents_per_task`)."""
    if ray_settings.documents_per_task is not None:
        per = ray_settings.documents_per_task
        return [docs[i : i + per] for i in range(0, len(docs), per)]
    sizes = [len(doc.text) + len(doc.title) for doc in docs]
    pool = settings.pool_chunks * settings.chunk.chunk_tokens * CHARS_PER_TOKEN
    target = min(pool, sum(sizes) / (workers * BATCHES_PER_WORKER))
    groups: list[list[Document]] = [[]]
    filled = 0
    for doc, size in zip(docs, sizes, strict=True):
        if groups[-1] and filled + size / 2 > target:  # the document goes where it fits best
            groups.append([])
            filled = 0
        groups[-1].append(doc)
        filled += size
    return [group for group in groups if group]


def _ingest(
    index: Index,
    folders: list[Path],
    report: BuildReport,
    token_counts: ChunkTokens,
    *,
    resumed: bool,
) -> None:
    """Ingest shard folders into the index and count what they stored in ``report``."""
    from instructor_search.indexer.ingest import ingest_into

    done = ingest_into(index, folders, token_counts=token_counts, sync=False)
    report.documents_added += done.documents_added
    report.documents_updated += done.documents_updated
    if resumed:
        report.chunks_resumed += done.chunks_embedded
    else:
        report.chunks_embedded += done.chunks_embedded
    report.failures += done.failures
    report.documents_failed += done.documents_failed


def _failed(report: BuildReport, path: str, reason: str) -> None:
    from instructor_search.indexer.reader_base import ReadFailure

    report.failures.append(ReadFailure(path, None, reason))
    report.documents_failed += 1
    logger.info("could not read %s: %s", path, reason)
