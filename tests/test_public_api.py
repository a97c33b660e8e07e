"""The public surface is exactly the documented names, and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys

import instructor_search

DOCUMENTED = {
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
}


def test_exported_names_are_the_documented_ones():
    assert set(instructor_search.__all__) == DOCUMENTED
    for name in DOCUMENTED:
        assert getattr(instructor_search, name) is not None


def test_errors_share_one_root():
    for name in DOCUMENTED:
        value = getattr(instructor_search, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, instructor_search.InstructorSearchError)


def test_import_and_cli_help_do_not_load_torch_faiss_or_sqlite_utils():
    code = (
        "import sys, instructor_search, instructor_search.indexer.cli as cli\n"
        "heavy = {'torch', 'transformers', 'faiss', 'sqlite_utils'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    help_run = subprocess.run(
        [sys.executable, "-m", "instructor_search.indexer.cli", "--help"],
        capture_output=True,
        text=True,
    )
    assert help_run.returncode == 0 and "build" in help_run.stdout and "search" in help_run.stdout
