"""The embedding stage of a build: chunk → embed (pooled, journaled) → store.

Every pending document is chunked first, so the chunks to embed are known before the first is
embedded (the progress bar's total). Chunks are then embedded in pools (about a thousand,
sorted longest first so batches pad little) of slices; each slice's vectors go to the build
journal (:mod:`.journal`) as soon as they are embedded, and each pool's documents are
committed to the index, ``commit_documents`` per transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from instructor_search.documents import Chunk, Document
from instructor_search.encoder.instructor import Instructor
from instructor_search.store.index import CollectionSettings, Index

from .chunking import Chunker, ChunkSettings
from .journal import Journal
from .progress import CHUNKING, EMBEDDING, BuildProgress, ProgressCallback

if TYPE_CHECKING:
    from .build import BuildReport, BuildSettings

#: Longest title (in tokens) prepended to each chunk for embedding; longer ones are cut.
MAX_TITLE_TOKENS = 48


def embed_and_store(
    index: Index,
    model: Instructor,
    collection: CollectionSettings,
    settings: BuildSettings,
    pending: list[tuple[Document, bool]],
    report: BuildReport,
    progress: ProgressCallback,
) -> None:
    """Chunk every pending document (so the chunks to embed are known), then embed them pool
    by pool, journaling each slice, and commit each pool's documents."""
    instruction = collection.document_instruction
    max_text = model.max_text_tokens(instruction)
    chunkers = _Chunkers(model, settings.chunk)
    journal = Journal(index.path, model.fingerprint, instruction, model.dimension)
    try:
        work: list[_Pending] = []
        for n, (doc, is_update) in enumerate(pending, 1):
            pieces = _chunk(doc, chunkers, model, max_text)
            work.append((doc, is_update, pieces, [journal.key(text) for _, text, _ in pieces]))
            progress(BuildProgress(CHUNKING, n, len(pending)))
        held = journal.get([key for *_, keys in work for key in keys])
        to_embed = sum(key not in held for *_, keys in work for key in keys)
        report.chunks_resumed = sum(len(keys) for *_, keys in work) - to_embed
        progress(BuildProgress(EMBEDDING, 0, to_embed))

        def embedded(count: int) -> None:
            report.chunks_embedded += count
            progress(BuildProgress(EMBEDDING, report.chunks_embedded, to_embed))

        for pool in _pools(work, held, settings.pool_chunks):
            vectors = _embed_pool(pool, model, journal, held, instruction, settings, embedded)
            _commit_pool(index, pool, vectors, settings.commit_documents, report)
            journal.forget([key for *_, keys in pool for key in keys])
    finally:
        journal.close()


#: Texts per ``embed`` call inside a pool (longest first): each slice is journaled as soon as
#: it is embedded, and the progress bar moves between slices.
EMBED_SLICE = 128

_Piece = tuple[Chunk, str, int]  # a chunk, the text embedded for it, that text's token count
#: A document to store: is it an update, its pieces, and the journal key of each piece.
_Pending = tuple[Document, bool, list[_Piece], list[bytes]]


def _pools(
    work: list[_Pending], held: dict[bytes, np.ndarray], pool_chunks: int
) -> Iterator[list[_Pending]]:
    """Documents in groups of at least ``pool_chunks`` chunks to embed (the last: the rest);
    chunks the journal holds do not count."""
    pool: list[_Pending] = []
    size = 0
    for item in work:
        pool.append(item)
        size += sum(key not in held for key in item[3])
        if size >= pool_chunks:
            yield pool
            pool, size = [], 0
    if pool:
        yield pool


def _embed_pool(
    pool: list[_Pending],
    model: Instructor,
    journal: Journal,
    held: dict[bytes, np.ndarray],
    instruction: str,
    settings: BuildSettings,
    embedded: Callable[[int], None],
) -> np.ndarray:
    """The pool's chunk vectors in pool order: those the journal held, and the others embedded
    longest first in slices of :data:`EMBED_SLICE` texts (each slice pads little), each slice
    journaled (committed) as soon as it is embedded."""
    pieces = [
        pair for _, _, doc_pieces, keys in pool for pair in zip(doc_pieces, keys, strict=True)
    ]
    vectors = np.empty((len(pieces), model.dimension), dtype=np.float32)
    missing = []
    for i, (_, key) in enumerate(pieces):
        if key in held:
            vectors[i] = held[key]
        else:
            missing.append(i)
    missing.sort(key=lambda i: -pieces[i][0][2])
    for start in range(0, len(missing), EMBED_SLICE):
        part = missing[start : start + EMBED_SLICE]
        texts = [pieces[i][0][1] for i in part]
        vectors[part] = model.embed(texts, instruction, batch_size=settings.batch_size)
        journal.put([pieces[i][1] for i in part], vectors[part])
        embedded(len(part))
    return vectors


def _commit_pool(
    index: Index, pool: list[_Pending], vectors: np.ndarray, per_commit: int, report: BuildReport
) -> None:
    """Store the pool's documents with their vectors, ``per_commit`` per transaction."""
    offset = 0
    for start in range(0, len(pool), per_commit):
        group = pool[start : start + per_commit]
        rows = []
        for doc, _, pieces, _ in group:
            rows.append(
                (doc, [chunk for chunk, _, _ in pieces], vectors[offset : offset + len(pieces)])
            )
            offset += len(pieces)
        index.upsert(rows)
        updates = sum(is_update for _, is_update, _, _ in group)
        report.documents_updated += updates
        report.documents_added += len(group) - updates


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
