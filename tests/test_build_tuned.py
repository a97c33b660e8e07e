"""``build --model TUNED_DIR``: a model folder written by ``tune`` brings the instruction pair it
was trained with, unless the build is given its own. The tiny checkpoint with a tuning record,
real SQLite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from instructor_search.indexer.build import BuildSettings, build
from instructor_search.indexer.cli import cli
from instructor_search.store.index import Index
from instructor_search.training import RECORD_FILE

DOCUMENT = "Represent the cooking note for retrieval: "
QUERY = "Represent the cooking question for retrieving notes: "


@pytest.fixture(scope="module")
def tuned(tiny_path, tmp_path_factory) -> Path:
    """The tiny checkpoint with the record ``tune`` writes beside the weights (its pair)."""
    folder = tmp_path_factory.mktemp("models") / "tuned-tiny"
    shutil.copytree(tiny_path, folder)
    record = {
        "profile": "instructor",
        "instruction_mode": "exclude",
        "query_instruction": QUERY,
        "document_instruction": DOCUMENT,
        "base_model": str(tiny_path),
    }
    (folder / RECORD_FILE).write_text(json.dumps(record))
    return folder


def notes(root: Path) -> Path:
    root.mkdir()
    (root / "a.md").write_text("# Bread\n\nKnead the dough for ten minutes.\n")
    return root


def held(index: Path) -> tuple[str, str]:
    with Index.open(index, readonly=True) as opened:
        return opened.settings.document_instruction, opened.settings.query_instruction


def test_a_tuned_model_brings_its_instruction_pair(tmp_path, tuned):
    settings = BuildSettings(model=str(tuned), backend="torch", precision="fp32")
    report = build([notes(tmp_path / "docs")], tmp_path / "index", settings)
    assert held(tmp_path / "index") == (DOCUMENT, QUERY)
    assert report.tuned_instructions == {
        "document_instruction": DOCUMENT,
        "query_instruction": QUERY,
    }
    # The rerun, given nothing either, matches the index it made.
    again = build([tmp_path / "docs"], tmp_path / "index", settings)
    assert again.documents_unchanged == 1


def test_an_instruction_given_wins_and_the_cli_says_which_came_from_the_record(tmp_path, tuned):
    docs, index = notes(tmp_path / "docs"), tmp_path / "index"
    mine = "Represent the baking note: "
    base = ["build", str(docs), "--index", str(index), "--model", str(tuned), "--backend", "torch"]
    base += ["--document-instruction", mine]
    result = CliRunner().invoke(
        cli,
        [*base, "-q", "--precision", "fp32"],
    )
    assert result.exit_code == 0, result.output
    assert held(index) == (mine, QUERY)
    shown = CliRunner().invoke(
        cli,
        base,
    )
    assert shown.exit_code == 0, shown.output
    assert f"query instruction: {QUERY!r} (the one {tuned} was tuned with)" in shown.output
    assert "document instruction" not in shown.output


def test_a_model_without_a_record_keeps_its_profiles_pair(tmp_path, tiny_path, tiny):
    report = build([notes(tmp_path / "docs")], tmp_path / "index", model=tiny)
    assert report.tuned_instructions == {}
    assert held(tmp_path / "index") == (
        tiny.profile.document_instruction,
        tiny.profile.query_instruction,
    )
