"""The units of a corpus: a :class:`Document` as read, and the :class:`Chunk` windows it is cut into."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any


@dataclass
class Document:
    """One document of a corpus.

    ``id`` is stable across builds: the path relative to the corpus root for files, the
    record's own id for JSONL/CSV records. ``text`` is what gets chunked and embedded;
    ``title`` is prepended to the text for embedding (``title + " " + text``, as BEIR does).
    """

    id: str
    text: str
    title: str = ""
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        """SHA-256 of what decides the embeddings: title and text."""
        digest = hashlib.sha256()
        digest.update(self.title.encode("utf-8"))
        digest.update(b"\x00")
        digest.update(self.text.encode("utf-8"))
        return digest.hexdigest()


@dataclass(frozen=True)
class Chunk:
    """A window of a document's text, as embedded and stored.

    ``start``/``end`` are character offsets into ``Document.text`` (``text == doc.text[start:end]``);
    ``token_count`` counts the model's tokens of ``text`` without special tokens.
    """

    ordinal: int
    text: str
    start: int
    end: int
    token_count: int


def spelled_text(chunks: Sequence[Chunk]) -> str:
    """The text that ``chunks`` spell at their offsets: spaces where no chunk covers it, and
    where chunks overlap, the later one's text. A shard's document text is rebuilt so, and a
    stored document whose chunks spell its text does not store it again."""
    if chunks and _in_order(chunks):  # each chunk's text up to where the next one starts
        pieces, covered = [], 0
        starts = [c.start for c in chunks[1:]] + [chunks[-1].end]
        for chunk, upto in zip(chunks, starts, strict=True):
            pieces.append(" " * (chunk.start - covered))
            pieces.append(chunk.text[: max(0, min(chunk.end, upto) - chunk.start)])
            covered = max(chunk.start, min(chunk.end, upto))
        return "".join(pieces)
    size = max((c.end for c in chunks), default=0)
    text = [" "] * size
    for chunk in chunks:
        text[chunk.start : chunk.end] = chunk.text
    return "".join(text)


def _in_order(chunks: Sequence[Chunk]) -> bool:
    """Whether each chunk's text fills its span and starts and ends never go back."""
    return all(len(c.text) == c.end - c.start for c in chunks) and all(
        a.start <= b.start and a.end <= b.end for a, b in pairwise(chunks)
    )
