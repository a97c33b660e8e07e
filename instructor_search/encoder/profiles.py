"""Model profiles: how each model family uses instructions.

INSTRUCTOR checkpoints were trained with the instruction prepended to the text and its tokens
excluded from mean pooling. Other families were not; for the bundled all-MiniLM-L6-v2 a
prepended instruction measurably hurts retrieval (SciFact nDCG@10 0.6451 without, 0.6102
with), so its profile drops instructions unless the user forces them on.

A checkpoint's family is read from what it holds (:func:`profile_for`), in this order: the
``instructor-search.json`` this project writes into the folders it saves (its ``"profile"``
key); the architecture, where a T5 encoder followed by a Dense module is INSTRUCTOR's layout
(GTR and sentence-T5 share it, so a name that says one of them wins over it); the hub id or
folder name; else the generic profile. The choice and its reason are logged (INFO).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InputError
from .checkpoints import Checkpoint, read_checkpoint

logger = logging.getLogger(__name__)

#: Instruction tokens are prepended and excluded from pooling (INSTRUCTOR).
EXCLUDE_FROM_POOLING = "exclude"
#: The instruction is prepended and pooled like the text (models without instruction training).
PREPEND = "prepend"
#: The instruction is ignored: only the text is embedded.
DROP = "drop"
INSTRUCTION_MODES = (EXCLUDE_FROM_POOLING, PREPEND, DROP)


@dataclass(frozen=True)
class ModelProfile:
    """How a model family uses instructions, and its default retrieval instruction pair."""

    family: str
    instruction_mode: str
    query_instruction: str = ""
    document_instruction: str = ""
    #: Forces ``max_seq_length`` at load time (the reference INSTRUCTOR sets 512 whatever the config says).
    max_seq_length: int | None = None

    def with_mode(self, instruction_mode: str) -> ModelProfile:
        """The same profile with another instruction mode (e.g. to force instructions on)."""
        if instruction_mode not in INSTRUCTION_MODES:
            raise InputError(
                f"instruction_mode {instruction_mode!r} must be one of {list(INSTRUCTION_MODES)}"
            )
        return replace(self, instruction_mode=instruction_mode)


INSTRUCTOR = ModelProfile(
    family="instructor",
    instruction_mode=EXCLUDE_FROM_POOLING,
    # INSTRUCTOR's general-purpose retrieval pair (its MSMARCO / NQ evaluation instructions).
    query_instruction="Represent the question for retrieving supporting documents: ",
    document_instruction="Represent the document for retrieval: ",
    max_seq_length=512,
)
MINILM = ModelProfile(family="all-minilm", instruction_mode=DROP)
#: Unknown families embed plain text, as their authors' sentence-transformers usage does.
GENERIC = ModelProfile(family="generic", instruction_mode=DROP)

PROFILES = {profile.family: profile for profile in (INSTRUCTOR, MINILM, GENERIC)}


#: The file, in a model folder's root, where this project records how a model it saved is used.
PROFILE_FILE = "instructor-search.json"
#: Names (in a hub id or folder name) -> family; the first that occurs wins.
_NAMES = (
    ("instructor", "instructor"),
    ("all-minilm", "all-minilm"),
    ("gtr-t5", "generic"),  # T5 encoder + Dense like INSTRUCTOR, trained without instructions
    ("sentence-t5", "generic"),
)
_T5_TYPES = ("t5", "mt5", "umt5")


def profile_for(model: Checkpoint | str, folder_name: str = "") -> ModelProfile:
    """The profile of a model: from what its checkpoint holds (a :class:`Checkpoint`, or a
    name that is a folder), else from its hub id or folder name; unknown families get
    :data:`GENERIC` (with a warning)."""
    checkpoint = model if isinstance(model, Checkpoint) else _local_checkpoint(model)
    name = checkpoint.name if checkpoint else str(model)
    names = f"{name} {folder_name or (checkpoint.folder.name if checkpoint else '')}"
    profile, reason = _choose(checkpoint, names.lower().replace("_", "-"))
    if profile is None:
        logger.warning(
            "No profile for model %r: using the generic one (instructions are dropped). "
            "Pass profile='instructor' or instruction_mode='prepend' to change that.",
            name,
        )
        return GENERIC
    logger.info("Profile %r for model %r: %s", profile.family, name, reason)
    return profile


def _choose(checkpoint: Checkpoint | None, names: str) -> tuple[ModelProfile | None, str]:
    by_name = next((family for word, family in _NAMES if word in names), None)
    if checkpoint is not None:
        saved = _saved_profile(checkpoint.folder)
        if saved is not None:
            return saved, f"{checkpoint.folder / PROFILE_FILE} says so"
        if _instructor_layout(checkpoint) and by_name in (None, "instructor"):
            return INSTRUCTOR, "a T5 encoder followed by a Dense module (INSTRUCTOR's layout)"
    if by_name is not None:
        return PROFILES[by_name], f"its name contains {next(w for w, _ in _NAMES if w in names)!r}"
    return None, ""


def _local_checkpoint(name: str) -> Checkpoint | None:
    """The checkpoint in folder ``name``, or None when ``name`` is no model folder."""
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        return None
    try:
        return read_checkpoint(path.resolve(), name=name)
    except Exception:  # a malformed folder is reported when the model loads
        return None


def _saved_profile(folder: Path) -> ModelProfile | None:
    """The profile recorded in the folder's ``instructor-search.json``, if it names a known one."""
    file = folder / PROFILE_FILE
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        profile = PROFILES[record["profile"]]
        mode = record.get("instruction_mode")
        return profile.with_mode(mode) if mode and mode != profile.instruction_mode else profile
    except (OSError, ValueError, KeyError, TypeError, InputError) as error:
        logger.warning("Ignoring %s: no known profile in it (%s)", file, error)
        return None


def _instructor_layout(checkpoint: Checkpoint) -> bool:
    """A T5 encoder (config ``model_type``/``architectures``) with a Dense module after it."""
    try:
        config = json.loads((checkpoint.folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    t5 = config.get("model_type") in _T5_TYPES or "T5EncoderModel" in config.get(
        "architectures", []
    )
    return bool(t5) and any(module.kind == "dense" for module in checkpoint.modules)


def get_profile(name: str) -> ModelProfile:
    """A profile by family name; the error lists the known families."""
    try:
        return PROFILES[name]
    except KeyError:
        raise InputError(f"profile {name!r} must be one of {sorted(PROFILES)}") from None
