"""Incremental builds that read only what may have changed: files kept by their size and
modification time, ``--rehash``, and the ``changed`` paths a watch batch passes. Real files,
the tiny checkpoint, real SQLite."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from instructor_search.indexer.build import BuildSettings, build
from instructor_search.indexer.cli import cli
from instructor_search.store.index import Index


@pytest.fixture()
def settings(tiny_path) -> BuildSettings:
    return BuildSettings(model=str(tiny_path))


def corpus(root: Path) -> Path:
    (root / "notes").mkdir(parents=True)
    (root / "a.md").write_text("# Apples\n\nApples grow in orchards.\n")
    (root / "notes" / "b.txt").write_text("Bananas\n\nBananas ripen in the kitchen.\n")
    records = [{"_id": "r1", "text": "Cherries are red."}, {"_id": "r2", "text": "Dates grow."}]
    (root / "fruit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def texts(index: Path) -> dict[str, str]:
    with Index.open(index, readonly=True) as opened:
        return {doc_id: opened.document(doc_id).text for doc_id in opened.document_hashes()}


def rewrite_keeping_stamp(path: Path, text: str) -> None:
    """New content of the same size, with the old modification time put back."""
    stat = path.stat()
    assert len(text.encode()) == stat.st_size
    path.write_text(text)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_noop_build_reads_no_file_whose_stamp_is_stored(tmp_path, settings, tiny):
    docs, index = corpus(tmp_path / "docs"), tmp_path / "index"
    first = build([docs], index, settings, model=tiny)
    assert (first.documents_added, first.files_not_read) == (4, 0)

    again = build([docs], index, settings, model=tiny)
    # a.md and b.txt kept unread; the record file is read (records carry no file stamp)
    assert (again.files_not_read, again.documents_unchanged, again.documents_deleted) == (2, 4, 0)

    (docs / "a.md").write_text("# Apples\n\nApples and a zebra in the orchard.\n")
    edited = build([docs], index, settings, model=tiny)
    assert (edited.documents_updated, edited.files_not_read) == (1, 1)
    assert "zebra" in texts(index)["a.md"]

    # The price of trusting the stamp (as make does): same size, same mtime, not seen...
    rewrite_keeping_stamp(docs / "a.md", "# Apples\n\nApples and a zebu! in the orchard.\n")
    missed = build([docs], index, settings, model=tiny)
    assert (missed.documents_updated, missed.files_not_read) == (0, 2)
    # ...until a build rehashes.
    rehashed = build([docs], index, dataclasses.replace(settings, rehash=True), model=tiny)
    assert (rehashed.documents_updated, rehashed.files_not_read) == (1, 0)
    assert "zebu!" in texts(index)["a.md"]

    (docs / "notes" / "b.txt").rename(docs / "notes" / "c.txt")
    (docs / "a.md").unlink()
    moved = build([docs], index, settings, model=tiny)
    assert (moved.documents_added, moved.documents_deleted) == (1, 2)
    assert set(texts(index)) == {"notes/c.txt", "r1", "r2"}


def test_changed_paths_read_only_those_and_keep_the_rest(tmp_path, settings, tiny):
    docs, index = corpus(tmp_path / "docs"), tmp_path / "index"
    build([docs], index, settings, model=tiny)
    records = docs / "fruit.jsonl"
    records.write_text('{"_id": "r1", "text": "Cherries are dark red."}\n')  # r2 removed
    (docs / "new.md").write_text("# Elderberries\n\nElderberries make a cordial.\n")

    # Only new.md named: the record file is kept as stored, none of its records deleted.
    batch = build([docs], index, settings, model=tiny, changed=[docs / "new.md"])
    assert (batch.documents_added, batch.documents_deleted, batch.files_not_read) == (1, 0, 3)
    assert texts(index)["r1"] == "Cherries are red." and "r2" in texts(index)

    # Named, it is read: r1 updated, r2 gone.
    batch = build([docs], index, settings, model=tiny, changed=[records])
    assert (batch.documents_updated, batch.documents_deleted) == (1, 1)
    assert texts(index)["r1"] == "Cherries are dark red." and "r2" not in texts(index)

    # A file edited without an event is still read when its stamp moved; deletions and a
    # folder's files named by the folder alone are found too.
    (docs / "a.md").write_text("# Apples\n\nApples and pears.\n")
    (docs / "new.md").unlink()
    (docs / "notes" / "d.md").write_text("# Dill\n\nDill seeds.\n")
    batch = build([docs], index, settings, model=tiny, changed=[docs / "notes"])
    assert (batch.documents_added, batch.documents_updated, batch.documents_deleted) == (1, 1, 1)
    assert set(texts(index)) == {"a.md", "notes/b.txt", "notes/d.md", "r1"}


def test_a_new_record_cannot_take_the_id_of_a_kept_document(tmp_path, settings, tiny):
    docs, index = corpus(tmp_path / "docs"), tmp_path / "index"
    build([docs], index, settings, model=tiny)
    clash = docs / "zz.jsonl"  # read after a.md, which is kept unread
    clash.write_text('{"_id": "a.md", "text": "A record claiming the id of a file."}\n')
    report = build([docs], index, settings, model=tiny)
    assert [(f.path, f.line) for f in report.failures] == [("zz.jsonl", 1)]
    assert "duplicate id 'a.md'" in report.failures[0].reason
    assert "Apples grow" in texts(index)["a.md"]


def test_cli_build_rehash(tmp_path, tiny_path):
    docs, index = corpus(tmp_path / "docs"), tmp_path / "index"
    runner = CliRunner()
    assert "--rehash" in runner.invoke(cli, ["build", "--help"]).output
    base = ["build", str(docs), "--index", str(index), "--model", str(tiny_path), "--json", "-q"]
    assert runner.invoke(cli, base).exit_code == 0
    plain = json.loads(runner.invoke(cli, base).output)
    rehashed = json.loads(runner.invoke(cli, [*base, "--rehash"]).output)
    assert (plain["files_not_read"], rehashed["files_not_read"]) == (2, 0)
    assert plain["documents_unchanged"] == rehashed["documents_unchanged"] == 4
