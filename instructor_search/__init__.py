"""instructor-search: local, instruction-aware semantic search on INSTRUCTOR embeddings.

Importing this package is cheap: the classes that need torch, FAISS or SQLite are imported
on first use (``from instructor_search import Retriever`` loads the retriever then).
"""

from __future__ import annotations

import importlib
import os as _os
from typing import TYPE_CHECKING, Any

# ONNX Runtime (1.32) sends telemetry to mobile.events.data.microsoft.com unless this is set
# before onnxruntime is imported (disable_telemetry_events() does not stop it); nothing of ours
# leaves the machine. A value the user set wins.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

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

__version__ = "0.1.0"

#: Public name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "Chunk": "documents",
    "Document": "documents",
    "Instructor": "encoder.instructor",
    "ModelProfile": "encoder.profiles",
    "Index": "store.index",
    "IndexStats": "store.index",
    "CollectionSettings": "store.index",
    "Retriever": "search.retriever",
    "Hit": "search.retriever",
    "Comparison": "search.retriever",
    "InstructionPair": "instructions",
    "instruction": "instructions",
    "presets": "instructions",
}

__all__ = [
    "Chunk",
    "CollectionSettings",
    "Comparison",
    "Document",
    "FilterError",
    "Hit",
    "Index",
    "IndexCorruptError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexStats",
    "IndexStoreError",
    "InputError",
    "InstructionPair",
    "Instructor",
    "InstructorSearchError",
    "ModelError",
    "ModelNotFoundError",
    "ModelProfile",
    "ReaderError",
    "Retriever",
    "__version__",
    "instruction",
    "presets",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .documents import Chunk, Document
    from .encoder.instructor import Instructor
    from .encoder.profiles import ModelProfile
    from .instructions import InstructionPair, instruction, presets
    from .search.retriever import Comparison, Hit, Retriever
    from .store.index import CollectionSettings, Index, IndexStats
