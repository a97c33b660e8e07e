"""The IVF index of a fresh ingest, built on a second thread while the rows go into SQLite.

A fresh ingest stores every vector of its shards, in an order known before the first row is
written: file after file, each file's documents in order of first appearance, each document's
chunks by ordinal (what :func:`~.shards.read_shard` yields). :class:`VectorPrebuild` reads the
shards' ``embedding`` columns in that order, trains the IVF lists on them
(:func:`~.vectors.trained_ivf`) and adds each batch the writer stores, with the chunk ids it was
given, as it comes. FAISS and numpy release the GIL, so this runs beside the writer's SQLite
work. Each stored batch is compared with the vectors read ahead; when every one matched, the
result is what :func:`~.vectors.build_vector_index` makes from SQLite afterwards (the same
vectors in the same order: the same lists, the same nprobe). Anything else (a document that
failed or came twice, an unreadable file, too few vectors for IVF) makes :meth:`finish`
return ``None``, and the derived files are built from SQLite as before.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from .vectors import FLAT_MAX, VectorIndexInfo, trained_ivf, tuned_ivf

log = logging.getLogger(__name__)


def stored_order_vectors(files: Sequence[Path], dimension: int) -> np.ndarray:
    """The ``embedding`` rows of the shard ``files`` in the order an ingest stores them."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = []
    for file in files:
        table = pq.read_table(file, columns=["doc_id", "ordinal", "embedding"])
        documents = pc.dictionary_encode(table.column("doc_id")).combine_chunks().indices
        ordinals = table.column("ordinal").to_numpy()
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = flat.astype(np.float32, copy=False).reshape(table.num_rows, dimension)
        parts.append(vectors[np.lexsort((ordinals, documents.to_numpy()))])
    return np.concatenate(parts) if parts else np.empty((0, dimension), np.float32)


class VectorPrebuild:
    """Builds the IVF index of the vectors in ``files`` on its own thread; :meth:`add` each
    stored batch, then :meth:`finish`."""

    def __init__(self, files: Sequence[Path], dimension: int) -> None:
        self._files = list(files)
        self._dimension = dimension
        self._batches: queue.SimpleQueue[tuple[np.ndarray, np.ndarray] | None] = queue.SimpleQueue()
        self._result: tuple[faiss.Index, VectorIndexInfo] | None = None
        self._thread = threading.Thread(target=self._run, name="vector-prebuild", daemon=True)
        self._thread.start()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """One stored batch: its chunk ids and their vectors, in the order stored."""
        self._batches.put((ids, vectors))

    def finish(self) -> tuple[faiss.Index, VectorIndexInfo] | None:
        """The built index and its info once every batch is added; ``None`` when the stored
        vectors were not the ones read ahead (or the build failed: logged)."""
        self._batches.put(None)
        self._thread.join()
        return self._result

    def abandon(self) -> None:
        """Stop after the current step, without waiting (the ingest failed)."""
        self._batches.put(None)

    def _run(self) -> None:
        try:
            expected = stored_order_vectors(self._files, self._dimension)
            if len(expected) <= FLAT_MAX:
                self._drain()
                return
            faiss.omp_set_num_threads(1)  # this thread's FAISS only: the writer has the other core
            index = trained_ivf(expected)
            self._result = self._filled(index, expected)
        except Exception as exc:  # the derived files are then built from SQLite, as before
            log.warning("building the vector index beside the ingest failed (%s)", exc)
            self._drain()

    def _filled(
        self, index: faiss.Index, expected: np.ndarray
    ) -> tuple[faiss.Index, VectorIndexInfo] | None:
        done, ids = 0, []
        while (batch := self._batches.get()) is not None:
            batch_ids, vectors = batch
            end = done + len(batch_ids)
            if end > len(expected) or not np.array_equal(expected[done:end], vectors):
                log.info("stored vectors differ from the shards' read ahead; building from SQLite")
                self._drain()
                return None
            index.add_with_ids(vectors, batch_ids)
            ids.append(batch_ids)
            done = end
        if done != len(expected):
            return None
        return tuned_ivf(index, np.concatenate(ids), expected)

    def _drain(self) -> None:
        while self._batches.get() is not None:
            pass
