"""Instruction template and the published INSTRUCTOR retrieval presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructor_search.errors import InputError
from instructor_search.instructions import (
    ALIASES,
    PRESETS,
    InstructionPair,
    get_preset,
    instruction,
    presets,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "bench-data"
PACKAGED = Path(__file__).resolve().parents[1] / "instructor_search" / "data"


def test_template_matches_published_instructions():
    assert (
        instruction("sentence", "Medicine", "retrieving duplicate sentences")
        == "Represent the Medicine sentence for retrieving duplicate sentences: "
    )
    assert instruction("title", "Science") == "Represent the Science title: "
    assert (
        instruction("document", objective="retrieval") == "Represent the document for retrieval: "
    )
    assert (
        instruction("Science question", objective="retrieving supporting papers", article="a")
        == PRESETS["SCIDOCS"].query
    )
    assert instruction("questions", article="") == "Represent questions: "
    assert instruction(" question ", " ", " retrieving answers: ") == (
        "Represent the question for retrieving answers: "
    )


def test_template_rejects_bad_input():
    with pytest.raises(InputError, match="text_type"):
        instruction("")
    with pytest.raises(InputError, match="article"):
        instruction("question", article="some")
    with pytest.raises(InputError, match="domain"):
        instruction("question", domain=3)  # type: ignore[arg-type]


def test_presets_are_the_published_pairs_of_instructor_large():
    table = json.loads((PACKAGED / "instructor_retrieval_instructions.json").read_text())
    assert table["source"].startswith("HKUNLP/instructor-embedding")
    large = table["instructions"]["hkunlp/instructor-large"]
    assert len(large) == 26
    for task, pair in large.items():
        assert PRESETS[task] == InstructionPair(
            pair["query"], pair["corpus"], task, PRESETS[task].source
        )
        assert "hkunlp/instructor-large" in PRESETS[task].source
        assert f"task {task}" in PRESETS[task].source
    assert PRESETS["SciFact"].query == (
        "Represent a Scientific query for retrieving a supporting passage; "
    )
    assert PRESETS["SciFact"].document == "represent the Scientific passage for retrieval; "


def test_packaged_copy_equals_the_shared_one():
    shared = SHARED / "instructor_retrieval_instructions.json"
    if not shared.is_file():
        pytest.skip(f"{shared} is not in this checkout")
    packaged = PACKAGED / "instructor_retrieval_instructions.json"
    assert json.loads(packaged.read_text()) == json.loads(shared.read_text())


def test_aliases_point_at_published_tasks():
    assert PRESETS["general"].query == PRESETS["MSMARCO"].query
    assert PRESETS["general"].document == PRESETS["MSMARCO"].document
    for alias, task in ALIASES.items():
        assert (PRESETS[alias].query, PRESETS[alias].document) == (
            PRESETS[task].query,
            PRESETS[task].document,
        )
        assert PRESETS[alias].name == alias and f"task {task}" in PRESETS[alias].source


def test_sizes_and_lookup():
    xl = presets("xl")
    assert xl["SciFact"].query == (
        "Represent the Scientific queries for retrieving a supporting passage: "
    )
    assert presets("hkunlp/instructor-base")["ArguAna"].document == (
        "Represent the Counter debate argument: "
    )
    assert get_preset("scifact") == PRESETS["SciFact"]
    assert get_preset("SCIFACT", "xl") == xl["SciFact"]
    with pytest.raises(InputError, match="MSMARCO"):
        get_preset("nope")
    with pytest.raises(InputError, match="base"):
        presets("huge")
    presets()["general"] = None  # a copy: the module's table is not changed
    assert presets()["general"] == PRESETS["general"]
