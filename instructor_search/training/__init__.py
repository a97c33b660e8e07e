"""Training: INSTRUCTOR's contrastive recipe on the user's own labelled data (``tune``).

BEIR folders or MEDI files in, a sentence-transformers model folder with its record file out.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it, imported on first use (torch loads there).
_LAZY = {
    "tune": "tune",
    "TuneReport": "tune",
    "TuneSettings": "settings",
    "Example": "data",
    "TrainingData": "data",
    "load_training_data": "data",
    "RECORD_FILE": "output",
}

__all__ = [
    "RECORD_FILE",
    "Example",
    "TrainingData",
    "TuneReport",
    "TuneSettings",
    "load_training_data",
    "tune",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from .data import Example, TrainingData, load_training_data
    from .output import RECORD_FILE
    from .settings import TuneSettings
    from .tune import TuneReport, tune
