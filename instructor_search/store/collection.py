"""What an index records about itself: the settings it was built with and its statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CollectionSettings:
    """How an index was built; an index is only searched or extended with the same ones."""

    model: str
    model_fingerprint: str
    dimension: int
    document_instruction: str
    query_instruction: str
    chunk_tokens: int
    chunk_overlap: int


@dataclass(frozen=True)
class IndexStats:
    """What ``instructor-index info`` shows."""

    documents: int
    chunks: int
    model: str
    model_fingerprint: str
    dimension: int
    document_instruction: str
    query_instruction: str
    chunk_tokens: int
    chunk_overlap: int
    index_type: str
    recall_at_10: float | None
    schema_version: int
    size_bytes: int
    built_at: str | None
    generation: int
    path: str
    #: Filterable fields -> kind (``Index.fields()``: built-in columns and indexed metadata keys).
    fields: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
