"""Shared fixtures: the tiny real INSTRUCTOR checkpoint and the bundled default model."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# ONNX exports made by the tests (the default backend is "auto") go to a throwaway folder, never
# to the user's ~/.cache; subprocesses that tests start inherit it and reuse the exports.
if "INSTRUCTOR_SEARCH_CACHE" not in os.environ:
    os.environ["INSTRUCTOR_SEARCH_CACHE"] = tempfile.mkdtemp(prefix="instructor-search-test-cache-")
    atexit.register(shutil.rmtree, os.environ["INSTRUCTOR_SEARCH_CACHE"], ignore_errors=True)

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "instructor-tiny"
EXPECTED = FIXTURES / "instructor-tiny-expected.json"
SAMPLE_DOCUMENTS = Path(__file__).resolve().parents[1] / "sample_corpus" / "documents"


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    return TINY


@pytest.fixture(scope="session")
def expected() -> dict:
    return json.loads(EXPECTED.read_text())


@pytest.fixture(scope="session")
def tiny():
    from instructor_search import Instructor

    return Instructor(str(TINY), device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def tiny_without_normalize(tmp_path_factory) -> Path:
    """The tiny checkpoint with the Normalize entry removed from modules.json."""
    folder = tmp_path_factory.mktemp("models") / "instructor-tiny-without-normalize"
    shutil.copytree(TINY, folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules = [m for m in modules if not m["type"].endswith("Normalize")]
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


@pytest.fixture(scope="session")
def bundled():
    from instructor_search import Instructor

    return Instructor(device="cpu")


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory) -> Path:
    """The whole sample corpus indexed with the bundled model, as the README's demo does."""
    from instructor_search.indexer.build import build

    index = tmp_path_factory.mktemp("sample") / "sample-index"
    build([SAMPLE_DOCUMENTS], index)
    return index
