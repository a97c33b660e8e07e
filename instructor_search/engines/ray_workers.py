"""What runs on the Ray cluster for a build: :class:`EmbedShards`, the callable class of Ray
Data's ``map_batches`` (one model per actor; each batch chunked and embedded with the local
build's own functions and written as one shard folder), and :class:`RayFiller`, which fills a
trained IVF index's lists in parallel Ray tasks.

A batch's folder is named by the digest of its documents' ids and content hashes and appears
whole (written aside, then renamed), so a batch Ray retries after a worker died rewrites the
same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from instructor_search.documents import Document
from instructor_search.errors import ModelError
from instructor_search.store.shards import ShardManifest, write_manifest, write_shard

if TYPE_CHECKING:
    import faiss

    from instructor_search.indexer.build import BuildSettings

#: Shard folders of batches are ``batch-<digest>``; a folder being written is ``.aside-...``.
BATCH, ASIDE = "batch-", ".aside-"
#: Fewest vectors a fill task adds: below that, shipping them costs more than adding them.
MIN_PART = 20_000


def batch_folder(items: list[dict[str, Any]]) -> str:
    """The shard folder name of a batch: the digest of its documents' ids and content hashes."""
    digest = hashlib.sha256()
    for item in sorted(items, key=lambda item: item["id"]):
        digest.update(f"{item['id']}\x00{item['hash']}\x00".encode())
    return BATCH + digest.hexdigest()[:24]


def work_item(doc: Document) -> dict[str, Any]:
    """A document as an item of a batch (a row of the Ray dataset is one batch's items, as
    JSON)."""
    return {
        "id": doc.id,
        "text": doc.text,
        "title": doc.title,
        "source": doc.source,
        "metadata": doc.metadata,
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

        items = [item for row in batch["documents"] for item in json.loads(str(row))]
        rows, failures, empty = [], [], []
        for item in items:
            doc = Document(
                id=item["id"],
                text=item["text"],
                title=item["title"],
                source=item["source"],
                metadata=item["metadata"],
            )
            try:
                pieces = _chunk(doc, self.chunkers, self.model, self.max_text)
            except Exception as exc:  # one document's failure never fails its batch
                failures.append([_path_of(doc), f"{type(exc).__name__}: {exc}"])
                continue
            if not pieces:
                empty.append(doc.id)
            rows += [(doc, item["hash"], piece) for piece in pieces]
        order = sorted(range(len(rows)), key=lambda i: -rows[i][2][2])  # longest first
        vectors = np.empty((len(rows), self.manifest.dimension), dtype=np.float32)
        for start in range(0, len(order), EMBED_SLICE):
            part = order[start : start + EMBED_SLICE]
            texts = [rows[i][2][1] for i in part]
            vectors[part] = self.model.embed(texts, self.instruction, self.settings.batch_size)
        folder = self._write(batch_folder(items), rows, vectors) if rows else ""
        tokens: dict[str, list[int]] = {}  # the shard format has no token counts: sent aside
        for doc, _, piece in rows:
            tokens.setdefault(doc.id, []).append(piece[0].token_count)
        return {
            "folder": [folder],
            "documents": [len({doc.id for doc, _, _ in rows})],
            "chunks": [len(rows)],
            "failures": [json.dumps(failures)],
            "empty": [json.dumps(empty)],
            "tokens": [json.dumps(tokens)],
            "backend": [self.model.backend],
            "precision": [self.model.precision],
        }

    def _write(self, name: str, rows: list[tuple[Document, str, Any]], vectors: np.ndarray) -> str:
        """The batch as a shard folder, written aside and renamed into place whole."""
        final = self.folder / name
        if final.exists():  # a retried batch whose first try finished writing
            return str(final)
        aside = self.folder / f"{ASIDE}{name}-{uuid.uuid4().hex[:8]}"
        aside.mkdir(parents=True)
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
        write_shard(aside / "part-00000.parquet", columns, vectors)
        write_manifest(aside, self.manifest)
        try:
            os.rename(aside, final)
        except OSError:  # another try of the same batch got there first
            shutil.rmtree(aside, ignore_errors=True)
        return str(final)


class RayFiller:
    """An :data:`~instructor_search.store.vectors.IvfFiller` on Ray: the trained, empty index
    and consecutive parts of the vectors go to Ray tasks of one CPU each, each adds its part to
    its copy (:func:`~instructor_search.store.vectors.fill_part`), and the parts are merged in
    order (:func:`~instructor_search.store.vectors.merge_parts`): the lists a serial add makes.

    ``parts`` defaults to the CPUs free when it is called, less one (as a build's Ray session
    leaves one), so the tasks never wait on CPUs a running actor pool holds; with fewer than
    two parts (or under ``min_part`` vectors a part, default :data:`MIN_PART`) it adds here,
    on FAISS's own threads.
    A task whose worker dies is retried by Ray. Call it only while Ray is initialised.
    """

    def __init__(self, ray: Any, parts: int | None = None, min_part: int | None = None) -> None:
        self.ray, self.parts, self.min_part = ray, parts, min_part

    def __call__(self, index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
        import faiss

        from instructor_search.store.vectors import add_serially, fill_part, merge_parts

        parts = self.parts
        if parts is None:
            parts = int(self.ray.available_resources().get("CPU", 0)) - 1
        parts = min(parts, len(ids) // max(1, self.min_part or MIN_PART))
        if parts < 2:
            return add_serially(index, ids, vectors)
        task = self.ray.remote(num_cpus=1)(fill_part)
        trained = self.ray.put(faiss.serialize_index(index))
        cuts = np.linspace(0, len(ids), parts + 1).astype(np.int64)
        refs = [task.remote(trained, ids[a:b], vectors[a:b]) for a, b in pairwise(cuts)]
        return merge_parts(index, (self.ray.get(ref) for ref in refs))
