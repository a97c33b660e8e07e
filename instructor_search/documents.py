"""The units of a corpus: a :class:`Document` as read, and the :class:`Chunk` windows it is cut into."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
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
