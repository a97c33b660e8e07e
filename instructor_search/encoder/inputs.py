"""Input preparation: ``[instruction, text]`` pairs (or bare strings) to model inputs.

The rules are the reference INSTRUCTOR's: the instruction is prepended to the stripped text,
and its leading tokens are excluded from mean pooling (the profile says whether an instruction
is excluded, pooled, or dropped). Batches are cut by count and by padded tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from . import profiles


@dataclass(frozen=True)
class Prepared:
    """One input after the reference's string rules: the model input and the instruction."""

    model_input: str
    instruction: str  # the stripped instruction whose tokens are excluded from pooling ("" = none)
    sort_key: int  # the reference sorts by the character length of the text


def prepare(
    sentences: Sequence[Any], profile: profiles.ModelProfile, lower_case: bool
) -> list[Prepared]:
    """Check ``sentences`` (all strings or all pairs) and apply the profile's instruction rule."""
    if not isinstance(sentences, (list, tuple)):
        raise InputError(
            f"sentences must be a string, a list of strings or a list of [instruction, text] "
            f"pairs, got {type(sentences).__name__}"
        )
    if not sentences:
        return []
    pairs = isinstance(sentences[0], (list, tuple))
    prepared = []
    for position, item in enumerate(sentences):
        if pairs != isinstance(item, (list, tuple)):
            raise InputError(
                f"sentences[{position}] is {type(item).__name__} but sentences[0] is "
                f"{type(sentences[0]).__name__}: give all [instruction, text] pairs or all strings"
            )
        prepared.append(
            _prepare_pair(item, position, profile, lower_case)
            if pairs
            else _prepare_text(item, position, lower_case)
        )
    return prepared


def _prepare_text(text: Any, position: int, lower_case: bool) -> Prepared:
    if not isinstance(text, str):
        raise InputError(f"sentences[{position}] must be a str, got {type(text).__name__}")
    model_input = text.strip()
    if lower_case:
        model_input = model_input.lower()
    return Prepared(model_input, "", len(text))


def _prepare_pair(
    pair: Sequence[Any], position: int, profile: profiles.ModelProfile, lower_case: bool
) -> Prepared:
    if len(pair) < 2 or not isinstance(pair[0], str) or not isinstance(pair[1], str):
        raise InputError(
            f"sentences[{position}] must be [instruction, text] with two strings, got {pair!r}"
        )
    instruction, text = pair[0], pair[1].strip()
    mode = profile.instruction_mode
    if mode == profiles.DROP:
        model_input, instruction = text, ""
    else:
        model_input = (instruction + text).strip()
        instruction = instruction.strip() if mode == profiles.EXCLUDE_FROM_POOLING else ""
    if lower_case:
        model_input, instruction = model_input.lower(), instruction.lower()
    return Prepared(model_input, instruction, len(text))


class InstructionTokens:
    """How many leading tokens of an input are its instruction's (excluded from pooling), with
    the reference's "≤ 1 → 0" rule; counted once per instruction and sequence limit."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._counts: dict[tuple[str, int], int] = {}

    def count(self, instruction: str, max_seq_length: int) -> int:
        if not instruction:
            return 0
        key = (instruction, max_seq_length)
        if key not in self._counts:
            ids = self._tokenizer(
                instruction, truncation="longest_first", max_length=max_seq_length
            )["input_ids"]
            count = len(ids) - 1
            self._counts[key] = count if count > 1 else 0
        return self._counts[key]


def token_budget_batches(
    order: list[int], lengths: list[int], batch_size: int, max_tokens: int
) -> list[list[int]]:
    """Cut ``order`` (longest first) into batches of at most ``batch_size`` inputs and
    ``max_tokens`` padded tokens (rows x the first, longest row); never an empty batch."""
    batches: list[list[int]] = []
    for index in order:
        if batches:
            batch = batches[-1]
            if len(batch) < batch_size and (len(batch) + 1) * lengths[batch[0]] <= max_tokens:
                batch.append(index)
                continue
        batches.append([index])
    return batches
