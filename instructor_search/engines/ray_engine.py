"""The Ray engine of a build: the pending documents chunked and embedded on a Ray cluster.

The driver scans and diffs by content hash as a local build does; only the documents to embed
become Ray Data work items. ``map_batches`` runs them through :class:`EmbedShards` on an actor
pool (one model per actor, ``workers`` actors), which chunks and embeds with the very functions
of a local build (:mod:`instructor_search.indexer.embedding`) and writes each batch as a shard
folder (:mod:`instructor_search.store.shards`); the driver ingests the folders as they arrive
(:meth:`Index.ingest`). A folder is named by the digest of its documents' ids and content
hashes and appears whole (written aside, then renamed), so a batch Ray retries after a worker
died rewrites the same folder, and a rerun after the driver was killed ingests the folders
already written and sends only the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from instructor_search.documents import Document
from instructor_search.errors import InputError, ModelError
from instructor_search.store.collection import CollectionSettings
from instructor_search.store.shards import (
    MANIFEST,
    ShardFailure,
    ShardManifest,
    _schema,
    read_manifest,
    read_shard,
    shard_files,
)

if TYPE_CHECKING:
    from instructor_search.indexer.build import BuildReport, BuildSettings
    from instructor_search.indexer.progress import ProgressCallback
    from instructor_search.store.index import Index

logger = logging.getLogger(__name__)

EXTRA = "pip install 'instructor-search[distributed]'"
#: The progress phase of a Ray build: documents done out of those sent to the cluster.
DISTRIBUTED = "embedding on Ray"
#: Where shards go when no folder is given: inside the index folder.
SHARDS_FOLDER = "ray-shards"
_BATCH, _ASIDE = "batch-", ".aside-"


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
    #: Documents per Ray Data batch (one shard folder each).
    documents_per_task: int = 32
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
    if engine.documents_per_task < 1:
        raise InputError(f"documents_per_task must be at least 1, got {engine.documents_per_task}")
    require_ray()
    return engine


def _physical_cores() -> int:
    from instructor_search.encoder.forward import physical_cores

    return physical_cores()


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
            ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
            self.started = True
        elif not ray.is_initialized():
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


def batch_folder(items: list[dict[str, Any]]) -> str:
    """The shard folder name of a batch: the digest of its documents' ids and content hashes."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda item: item["id"]):
        digest.update(f"{item['id']}\x00{item['hash']}\x00".encode())
    return _BATCH + digest.hexdigest()[:24]


def _item(doc: Document) -> dict[str, Any]:
    return {
        "id": doc.id,
        "text": doc.text,
        "title": doc.title,
        "source": doc.source,
        "metadata": json.dumps(doc.metadata),
        "hash": doc.content_hash,
    }


def _path_of(doc: Document) -> str:
    """How a failure names a document: its file (as a build's reader does), else its id."""
    return str(doc.metadata.get("path") or doc.source or doc.id)


class EmbedShards:
    """The callable class of ``map_batches``: loads the model once per actor, then turns each
    batch of work items into one shard folder (chunked and embedded as a local build does)."""

    def __init__(
        self,
        model: str | None,
        fingerprint: str,
        settings: BuildSettings,
        manifest: ShardManifest,
        folder: str,
        threads: int | None,
    ) -> None:
        from instructor_search.encoder.instructor import Instructor
        from instructor_search.indexer.embedding import _Chunkers

        self.model = Instructor(
            model, backend=settings.backend, precision=settings.precision, num_threads=threads
        )
        if self.model.fingerprint != fingerprint:
            raise ModelError(
                f"the worker's model {model!r} has other weights than the driver's "
                f"({self.model.fingerprint[:12]} != {fingerprint[:12]}); give every node the same"
            )
        self.settings, self.manifest, self.folder = settings, manifest, Path(folder)
        self.instruction = manifest.document_instruction
        self.chunkers = _Chunkers(self.model, settings.chunk)
        self.max_text = self.model.max_text_tokens(self.instruction)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        from instructor_search.indexer.embedding import EMBED_SLICE, _chunk

        items = [{name: batch[name][i] for name in batch} for i in range(len(batch["id"]))]
        rows, failures, empty = [], [], []
        for item in items:
            doc = Document(
                id=str(item["id"]),
                text=str(item["text"]),
                title=str(item["title"]),
                source=str(item["source"]),
                metadata=json.loads(str(item["metadata"])),
            )
            try:
                pieces = _chunk(doc, self.chunkers, self.model, self.max_text)
            except Exception as exc:  # one document's failure never fails its batch
                failures.append([_path_of(doc), f"{type(exc).__name__}: {exc}"])
                continue
            if not pieces:
                empty.append(doc.id)
            rows += [(doc, str(item["hash"]), piece) for piece in pieces]
        order = sorted(range(len(rows)), key=lambda i: -rows[i][2][2])  # longest first
        vectors = np.empty((len(rows), self.manifest.dimension), dtype=np.float32)
        for start in range(0, len(order), EMBED_SLICE):
            part = order[start : start + EMBED_SLICE]
            texts = [rows[i][2][1] for i in part]
            vectors[part] = self.model.embed(texts, self.instruction, self.settings.batch_size)
        folder = self._write(batch_folder(items), rows, vectors) if rows else ""
        return {
            "folder": [folder],
            "documents": [len({doc.id for doc, _, _ in rows})],
            "chunks": [len(rows)],
            "failures": [json.dumps(failures)],
            "empty": [json.dumps(empty)],
            "backend": [self.model.backend],
            "precision": [self.model.precision],
        }

    def _write(self, name: str, rows: list[tuple[Document, str, Any]], vectors: np.ndarray) -> str:
        """The batch as a shard folder, written aside and renamed into place whole."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        final = self.folder / name
        if final.exists():  # a retried batch whose first try finished writing
            return str(final)
        aside = self.folder / f"{_ASIDE}{name}-{uuid.uuid4().hex[:8]}"
        aside.mkdir(parents=True)
        schema = _schema(pa, self.manifest.dimension)
        columns = [
            [doc.id for doc, _, _ in rows],
            [content_hash for _, content_hash, _ in rows],
            [doc.title for doc, _, _ in rows],
            [doc.source for doc, _, _ in rows],
            [json.dumps(doc.metadata) for doc, _, _ in rows],
            *(
                [getattr(piece[0], name) for _, _, piece in rows]
                for name in ("ordinal", "start", "end")
            ),
            [piece[0].text for _, _, piece in rows],
        ]
        arrays = [pa.array(column, type=schema.field(i).type) for i, column in enumerate(columns)]
        embedding = pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.reshape(-1)), self.manifest.dimension
        )
        pq.write_table(
            pa.Table.from_arrays([*arrays, embedding], schema=schema), aside / "part-00000.parquet"
        )
        text = json.dumps(self.manifest.to_json(), indent=2) + "\n"
        (aside / MANIFEST).write_text(text, encoding="utf-8")
        try:
            os.rename(aside, final)
        except OSError:  # another try of the same batch got there first
            shutil.rmtree(aside, ignore_errors=True)
        return str(final)


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
    folders already hold, then the rest, batch by batch, ingested every ``pool_chunks`` chunks."""
    from instructor_search.indexer.progress import BuildProgress

    manifest = ShardManifest.of(index.settings)
    folder = shards_folder(index, ray_settings)
    folder.mkdir(parents=True, exist_ok=True)
    for aside in folder.glob(_ASIDE + "*"):  # half-written by a worker that was killed
        shutil.rmtree(aside, ignore_errors=True)
    wanted = {doc.id: doc.content_hash for doc, _ in pending}
    left = [f for f in sorted(folder.glob(_BATCH + "*")) if _held(f, manifest, wanted)]
    if left:
        _ingest(index, left, report, resumed=True)
        logger.info("ingested %d shard folders a killed build had written", len(left))
    stored = index.document_hashes()
    rest = [(doc, update) for doc, update in pending if stored.get(doc.id) != doc.content_hash]
    by_id = {doc.id: doc for doc, _ in rest}
    done, ready, ready_chunks = 0, [], 0
    progress(BuildProgress(DISTRIBUTED, 0, len(rest)))
    if rest:
        with Session(ray_settings) as session:
            for row in _dataset(session, model, index.settings, settings, folder, rest).iter_rows():
                report.backend, report.precision = row["backend"], row["precision"]
                for path, reason in json.loads(row["failures"]):
                    _failed(report, path, reason)
                empty = [by_id[doc_id] for doc_id in json.loads(row["empty"])]
                if empty:  # documents without text have no rows in a shard
                    index.upsert(
                        [(doc, [], np.empty((0, manifest.dimension), np.float32)) for doc in empty]
                    )
                    report.documents_added += len(empty)
                if row["folder"]:
                    ready.append(Path(row["folder"]))
                    ready_chunks += row["chunks"]
                if ready_chunks >= settings.pool_chunks:
                    _ingest(index, ready, report, resumed=False)
                    ready, ready_chunks = [], 0
                done += row["documents"] + len(json.loads(row["failures"])) + len(empty)
                progress(BuildProgress(DISTRIBUTED, done, len(rest)))
    if ready:
        _ingest(index, ready, report, resumed=False)
    if not ray_settings.keep_shards:
        for batch in folder.glob(_BATCH + "*"):
            shutil.rmtree(batch, ignore_errors=True)
        if not ray_settings.shards and not any(folder.iterdir()):
            folder.rmdir()


def _dataset(
    session: Session,
    model: str | None,
    index_settings: CollectionSettings,
    settings: BuildSettings,
    folder: Path,
    rest: list[tuple[Document, bool]],
) -> Any:
    """The Ray Data pipeline: work items → :class:`EmbedShards` on an actor pool."""
    ray, ray_settings = session.ray, session.settings
    per_task = ray_settings.documents_per_task
    items = [_item(doc) for doc, _ in rest]
    dataset = ray.data.from_items(
        items, override_num_blocks=max(1, math.ceil(len(items) / per_task))
    )
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
        batch_size=per_task,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=session.workers),
        num_cpus=ray_settings.cpus_per_worker,
        num_gpus=ray_settings.gpus_per_worker or None,
    )  # Ray Data restarts an actor that died (kill -9, a lost node) and retries its batches


def _ingest(index: Index, folders: list[Path], report: BuildReport, *, resumed: bool) -> None:
    """Ingest shard folders into the index and count what they stored in ``report``."""
    done = index.ingest(folders)
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
