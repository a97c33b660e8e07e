"""Several sources in one index: unique, stable ids; ls and delete by the ids hits show; bad
file names and failures reported once. Real files, the tiny real model, real SQLite."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from instructor_search.errors import InputError
from instructor_search.indexer.build import BuildSettings, build, delete_documents
from instructor_search.indexer.cli import cli
from instructor_search.store.index import Index

README = Path(__file__).resolve().parents[1] / "README.md"


def note(path: Path, title: str, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {title}\n\n{body}\n")
    return path


@pytest.fixture()
def settings(tiny_path) -> BuildSettings:
    return BuildSettings(model=str(tiny_path))


@pytest.fixture()
def sources(tmp_path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    note(a / "README.md", "Comets", "Comets have icy nuclei and long tails.")
    note(a / "guide.md", "Sourdough", "A sourdough starter needs flour and water.")
    note(b / "README.md", "Mortgages", "A mortgage is a loan secured on a house.")
    return a, b


def ids_of(index: Path) -> dict[str, str]:
    with Index.open(index, readonly=True) as opened:
        return {
            doc_id: Path(source).parent.name for doc_id, source in opened.document_sources().items()
        }


def test_the_same_file_name_in_two_sources_indexes_both(tmp_path, settings, tiny, sources):
    a, b = sources
    index = tmp_path / "index"
    report = build([a, b], index, settings, model=tiny)
    assert (report.documents_added, report.documents_failed) == (3, 0)
    assert ids_of(index) == {"README.md": "a", "guide.md": "a", "b/README.md": "b"}

    again = build([b, a], index, settings, model=tiny)  # other order: nobody is renamed
    assert (again.chunks_embedded, again.documents_unchanged, again.documents_deleted) == (0, 3, 0)
    assert set(ids_of(index)) == {"README.md", "guide.md", "b/README.md"}

    c = tmp_path / "c"
    note(c / "README.md", "Vaccines", "Vaccines train the immune system.")
    note(c / "b" / "README.md", "Trees", "B-trees keep keys sorted.")  # c's own b/README.md
    added = build([a, b, c], index, settings, model=tiny)  # a source added later
    assert (added.documents_added, added.documents_unchanged) == (2, 3)
    assert ids_of(index) == {
        "README.md": "a",
        "guide.md": "a",
        "b/README.md": "b",
        "c/README.md": "c",
        "c/b/README.md": "b",  # the parent folder of c/b/README.md is "b"
    }
    with Index.open(index, readonly=True) as opened:
        assert opened.document("c/b/README.md").metadata["path"] == "b/README.md"


def test_an_index_of_one_source_keeps_its_ids_when_sources_are_added(
    tmp_path, settings, tiny, sources
):
    """What the previous code built (one source, ids = relative paths) is never renamed."""
    a, b = sources
    index = tmp_path / "index"
    first = build([a], index, settings, model=tiny)
    with Index.open(index, readonly=True) as opened:
        before = {d: opened.document(d) for d in opened.document_hashes()}
    grown = build([b, a], index, settings, model=tiny)  # b first, and b has a README.md too
    assert grown.documents_unchanged == 2 and grown.documents_added == 1
    assert grown.chunks_embedded == grown.chunks_total - first.chunks_total  # only b's
    with Index.open(index, readonly=True) as opened:
        for doc_id, doc in before.items():
            assert opened.document(doc_id) == doc
    assert ids_of(index)["b/README.md"] == "b"


def test_ls_shows_the_ids_that_search_and_delete_take(tmp_path, tiny_path, sources):
    a, b = sources
    index = tmp_path / "index"
    runner = CliRunner()
    built = runner.invoke(
        cli, ["build", str(a), str(b), "--index", str(index), "--model", str(tiny_path), "-q"]
    )
    assert built.exit_code == 0, built.output

    listed = runner.invoke(cli, ["ls", str(index), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [row["id"] for row in rows] == ["README.md", "b/README.md", "guide.md"]
    assert rows[1]["title"] == "Mortgages" and rows[1]["source"] == str((b / "README.md").resolve())
    assert all(row["chunks"] >= 1 for row in rows)
    human = runner.invoke(cli, ["ls", str(index)])
    assert human.exit_code == 0 and "b/README.md" in human.output and "Mortgages" in human.output

    hits = runner.invoke(
        cli, ["search", str(index), "mortgage loan house", "--mode", "keyword", "--json"]
    )
    assert hits.exit_code == 0, hits.output
    hit_id = json.loads(hits.stdout)[0]["doc_id"]
    assert hit_id == "b/README.md"
    deleted = runner.invoke(cli, ["delete", str(index), hit_id])
    assert deleted.exit_code == 0, deleted.output
    assert set(ids_of(index)) == {"README.md", "guide.md"}

    unknown = runner.invoke(cli, ["delete", str(index), "guide.md", "no/such.md"])
    assert unknown.exit_code == 1 and "'no/such.md'" in unknown.output
    assert "guide.md" in ids_of(index)  # nothing is removed when one id is unknown
    with pytest.raises(InputError, match="instructor-index ls"):
        delete_documents(index, ["nope"])


def _readme_command(name: str) -> list[str]:
    block = re.search(r"## Command line\n\n```bash\n(.*?)```", README.read_text(), re.DOTALL)
    assert block, "the README's Command line block"
    lines = block.group(1).splitlines()
    line = next(x for x in lines if x.startswith(f"instructor-index {name} "))
    return shlex.split(line, comments=True)[1:]


def test_the_readme_delete_example_works_as_written(tmp_path, tiny_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    note(Path("notes/old.md"), "Old", "An old note about passports.")
    note(Path("notes/new.md"), "New", "A new note about deposits.")
    Path("papers.jsonl").write_text('{"_id": "42", "title": "A paper", "text": "On comets."}\n')
    runner = CliRunner()
    build_args = _readme_command("build")
    built = runner.invoke(cli, [*build_args, "--model", str(tiny_path), "-q"])
    assert built.exit_code == 0, built.output
    deleted = runner.invoke(cli, _readme_command("delete"))  # as written
    assert deleted.exit_code == 0, deleted.output
    assert "deleted 1 document" in deleted.output
    index = Path(build_args[build_args.index("--index") + 1])
    assert set(ids_of(index)) == {"new.md", "42"}


def test_info_prints_plain_values(tmp_path, settings, tiny, sources):
    index = tmp_path / "index"
    build([sources[0]], index, settings, model=tiny)
    shown = CliRunner().invoke(cli, ["info", str(index)])
    assert shown.exit_code == 0, shown.output
    lines = dict(line.split(None, 1) for line in shown.output.splitlines() if len(line.split()) > 1)
    assert lines["model"].strip() == str(Path(settings.model).resolve())
    assert lines["documents"].strip() == "2"
    assert "'" not in shown.output and "None" not in shown.output


@pytest.mark.slow
def test_a_bad_file_name_never_stops_a_build_and_each_failure_prints_once(tmp_path, tiny_path):
    corpus = tmp_path / "corpus"
    note(corpus / "good.md", "Good", "Comets and their tails.")
    with open(os.fsencode(corpus) + b"/caf\xe9.md", "wb") as handle:  # not UTF-8
        handle.write(b"# Cafe\n\nCoffee.\n")
    (corpus / "empty.txt").write_text("  \n")
    if os.path.exists("/dev/zero"):
        os.symlink("/dev/zero", corpus / "zero.txt")
    index = tmp_path / "index"
    command = [sys.executable, "-m", "instructor_search.indexer.cli", "build", str(corpus)]
    command += ["--index", str(index), "--model", str(tiny_path), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr  # completed, some files failed
    assert "Traceback" not in done.stderr and "surrogates" not in done.stderr
    assert done.stderr.count("caf\\xe9.md") == 1 and done.stderr.count("empty.txt") == 1
    report = json.loads(done.stdout)
    assert report["documents_added"] == 1 and report["documents_failed"] == 2
    reasons = {f["path"]: f["reason"] for f in report["failures"]}
    assert "not valid UTF-8" in reasons["caf\\xe9.md"]
    if os.path.exists("/dev/zero"):
        skipped = {s["path"]: s["reason"] for s in report["skipped"]}
        assert "character device" in skipped["zero.txt"] and "broken" not in skipped["zero.txt"]
