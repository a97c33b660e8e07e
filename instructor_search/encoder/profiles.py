"""Model profiles: how each model family uses instructions.

INSTRUCTOR checkpoints were trained with the instruction prepended to the text and its tokens
excluded from mean pooling. Other families were not; for the bundled all-MiniLM-L6-v2 a
prepended instruction measurably hurts retrieval (SciFact nDCG@10 0.6451 without, 0.6102
with), so its profile drops instructions unless the user forces them on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from ..errors import InputError

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


def profile_for(model_name: str, folder_name: str = "") -> ModelProfile:
    """The profile of a model, from its hub id or folder name; unknown families get GENERIC."""
    names = f"{model_name} {folder_name}".lower().replace("_", "-")
    if "instructor" in names:
        return INSTRUCTOR
    if "all-minilm" in names:
        return MINILM
    logger.warning(
        "No profile for model %r: using the generic one (instructions are dropped). "
        "Pass profile='instructor' or instruction_mode='prepend' to change that.",
        model_name,
    )
    return GENERIC


def get_profile(name: str) -> ModelProfile:
    """A profile by family name; the error lists the known families."""
    try:
        return PROFILES[name]
    except KeyError:
        raise InputError(f"profile {name!r} must be one of {sorted(PROFILES)}") from None
