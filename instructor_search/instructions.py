"""INSTRUCTOR instructions: the template builder and the published retrieval presets.

INSTRUCTOR (Su et al., 2023, arXiv 2212.09741) embeds a text together with an instruction
written on one template, ``Represent the (domain) text_type for (task_objective): ``, e.g.
``"Represent the Medicine sentence for retrieving duplicate sentences: "``. :func:`instruction`
builds such strings.

The presets are the query/document instruction pairs that INSTRUCTOR's own MTEB evaluation used
for its 26 retrieval tasks, exact strings (lower-case "represent", semicolons and the trailing
space included), taken from ``HKUNLP/instructor-embedding``,
``evaluation/MTEB/mteb/abstasks/AbsTaskRetrieval.py`` (``DEFINITIONS``, commit ``bbf254d``),
shipped as ``data/instructor_retrieval_instructions.json``. The evaluation picked one table per
model size (``--prompt hkunlp/instructor-<size>``); :data:`PRESETS` is the table of
``hkunlp/instructor-large``. The general-purpose names in :data:`ALIASES` point at one of those
tasks each (e.g. ``"general"`` is the MSMARCO pair); none is made up here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from .errors import InputError

DATA_FILE = "instructor_retrieval_instructions.json"
MODEL_SIZES = ("base", "large", "xl")
DEFAULT_MODEL_SIZE = "large"

#: General-purpose preset names -> the published task whose pair they are.
ALIASES: dict[str, str] = {
    "general": "MSMARCO",  # web questions -> passages: the default retrieval pair
    "wikipedia": "NQ",
    "science": "SCIDOCS",  # science questions -> papers
    "scientific-claims": "SciFact",  # claims -> supporting abstracts
    "medicine": "NFCorpus",  # medical questions -> medical documents
    "coronavirus": "TRECCOVID",
    "finance": "FiQA2018",
    "fact-checking": "FEVER",
    "climate": "ClimateFEVER",
    "arguments": "ArguAna",  # an argument -> its counter-arguments
    "duplicate-questions": "QuoraRetrieval",
    "programming": "CQADupstackProgrammersRetrieval",
}


@dataclass(frozen=True)
class InstructionPair:
    """A query instruction and the document instruction it was paired with."""

    query: str
    document: str
    name: str
    source: str


def instruction(
    text_type: str,
    domain: str | None = None,
    objective: str | None = None,
    *,
    article: str = "the",
) -> str:
    """An instruction on INSTRUCTOR's template: ``Represent the (domain) text_type for (objective): ``.

    >>> instruction("sentence", "Medicine", "retrieving duplicate sentences")
    'Represent the Medicine sentence for retrieving duplicate sentences: '
    >>> instruction("title", "Science")
    'Represent the Science title: '
    >>> instruction("question", objective="retrieving supporting documents", article="a")
    'Represent a question for retrieving supporting documents: '

    ``article`` is ``"the"``, ``"a"``/``"an"`` or ``""`` (none, e.g. for plurals:
    ``Represent questions: ``). An objective is written as it follows "for", without the colon.
    """
    parts = []
    for name, value in (("text_type", text_type), ("domain", domain), ("objective", objective)):
        if value is not None and not isinstance(value, str):
            raise InputError(f"{name} must be a string, got {type(value).__name__}")
    text_type = (text_type or "").strip()
    if not text_type:
        raise InputError("text_type must name what is embedded, e.g. 'question' or 'document'")
    if article not in ("the", "a", "an", ""):
        raise InputError(f"article {article!r} must be one of ['the', 'a', 'an', '']")
    if article:
        parts.append(article)
    if domain and domain.strip():
        parts.append(domain.strip())
    parts.append(text_type)
    objective = (objective or "").strip().rstrip(":;").strip()
    if objective:
        parts += ["for", objective]
    return "Represent " + " ".join(parts) + ": "


@cache
def _table() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def _size(model_size: str) -> str:
    size = model_size.rsplit("instructor-", 1)[-1].lower()
    if size not in MODEL_SIZES:
        raise InputError(
            f"model_size {model_size!r} must be one of {list(MODEL_SIZES)} "
            "(or a model id such as 'hkunlp/instructor-large')"
        )
    return size


def presets(model_size: str = DEFAULT_MODEL_SIZE) -> dict[str, InstructionPair]:
    """The published retrieval pairs for ``hkunlp/instructor-<model_size>``, by task name
    (``"SciFact"``, ``"NFCorpus"``, ...) and by the general names of :data:`ALIASES`."""
    return dict(_presets(_size(model_size)))


@cache
def _presets(size: str) -> dict[str, InstructionPair]:
    table = _table()
    model = f"hkunlp/instructor-{size}"
    where = f"{model} in {table['source']}"
    tasks = {
        task: InstructionPair(pair["query"], pair["corpus"], task, f"task {task}, {where}")
        for task, pair in table["instructions"][model].items()
    }
    aliases = {
        alias: InstructionPair(tasks[task].query, tasks[task].document, alias, tasks[task].source)
        for alias, task in ALIASES.items()
    }
    return tasks | aliases


def get_preset(name: str, model_size: str = DEFAULT_MODEL_SIZE) -> InstructionPair:
    """One preset by task or general name (case-insensitive); the error lists them all."""
    table = presets(model_size)
    folded = {key.lower(): pair for key, pair in table.items()}
    try:
        return folded[name.lower()]
    except (KeyError, AttributeError):
        raise InputError(f"Unknown preset {name!r}; presets: {', '.join(table)}") from None


#: The presets of ``hkunlp/instructor-large`` (the default INSTRUCTOR size).
PRESETS: dict[str, InstructionPair] = presets(DEFAULT_MODEL_SIZE)

__all__ = [
    "ALIASES",
    "MODEL_SIZES",
    "PRESETS",
    "InstructionPair",
    "get_preset",
    "instruction",
    "presets",
]
