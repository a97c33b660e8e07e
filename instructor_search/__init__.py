"""instructor-search: local, instruction-aware semantic search on INSTRUCTOR embeddings.

Importing this package is cheap: torch and transformers load only when a model does.
"""

from __future__ import annotations

from .documents import Chunk, Document
from .embedder import Instructor
from .errors import (
    FilterError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexStoreError,
    InputError,
    InstructorSearchError,
    ModelError,
    ModelNotFoundError,
    ReaderError,
)
from .profiles import ModelProfile

__version__ = "0.1.0"

__all__ = [
    "Chunk",
    "Document",
    "FilterError",
    "IndexCorruptError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexStoreError",
    "InputError",
    "Instructor",
    "InstructorSearchError",
    "ModelError",
    "ModelNotFoundError",
    "ModelProfile",
    "ReaderError",
    "__version__",
]
