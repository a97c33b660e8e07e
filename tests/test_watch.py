"""Watched folders (``instructor-index watch``): real file operations in a temporary folder, a
real watchdog observer, real builds with the tiny checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("watchdog")

from conftest import TINY

from instructor_search.indexer.build import BuildReport, BuildSettings, build
from instructor_search.indexer.watch import Watcher, WatchSettings, settings_for_index
from instructor_search.search.retriever import Retriever
from instructor_search.store.index import Index

FAST = WatchSettings(debounce=0.3, stable=0.2)


@contextmanager
def watching(
    sources: list[Path], index: Path, model: Any, watch: WatchSettings = FAST, **callbacks: Any
) -> Iterator[list[BuildReport]]:
    """A Watcher running in a thread until the block ends; the reports of its batches."""
    reports: list[BuildReport] = []
    on_batch = callbacks.pop("on_batch", None)

    def record(report: BuildReport) -> None:
        reports.append(report)
        if on_batch is not None:
            on_batch(report)

    settings = BuildSettings(model=str(TINY), precision="fp32")
    watcher = Watcher(sources, index, settings, watch, model=model, on_batch=record, **callbacks)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    assert watcher.ready.wait(120)
    try:
        yield reports
    finally:
        watcher.stop()
        thread.join(60)
        assert not thread.is_alive(), "the watcher did not stop"


def eventually(check: Callable[[], Any], seconds: float = 30) -> Any:
    """Poll ``check`` until it returns something true (a condition, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never true: {check}")


def stored(index: Path) -> dict[str, str]:
    """``{doc_id: text}`` of what the index holds now."""
    with Index.open(index, readonly=True) as opened:
        return {doc_id: opened.document(doc_id).text for doc_id in opened.document_hashes()}


def test_added_edited_renamed_and_deleted_files_are_applied(tmp_path, tiny):
    docs, index = tmp_path / "docs", tmp_path / "index"
    docs.mkdir()
    (docs / "a.md").write_text("# Apples\n\nApples grow in orchards.\n")
    with watching([docs], index, tiny) as reports:
        assert reports[0].documents_added == 1  # the first build catches up
        (docs / "b.md").write_text("# Bananas\n\nBananas ripen in the kitchen.\n")
        eventually(lambda: "b.md" in stored(index))
        (docs / "a.md").write_text("# Apples\n\nApples and a zebra in the orchard.\n")
        eventually(lambda: "zebra" in stored(index)["a.md"])
        with Retriever(index, tiny) as retriever:  # searchable, not only stored
            assert retriever.search("zebra", k=1, mode="keyword")[0].doc_id == "a.md"
        (docs / "b.md").rename(docs / "c.md")
        eventually(lambda: set(stored(index)) == {"a.md", "c.md"})
        (docs / "c.md").unlink()
        eventually(lambda: set(stored(index)) == {"a.md"})
        outside = tmp_path / "elsewhere"
        (outside / "deep").mkdir(parents=True)
        (outside / "deep" / "d.md").write_text("# Dates\n\nDates grow on palms.\n")
        outside.rename(docs / "moved-in")  # a folder moved in: one event for the folder
        eventually(lambda: "moved-in/deep/d.md" in stored(index))
        (docs / "moved-in" / "deep" / "d.md").unlink()
        (docs / "moved-in" / "deep").rmdir()
        eventually(lambda: set(stored(index)) == {"a.md"})
    kinds = [(r.documents_added, r.documents_updated, r.documents_deleted) for r in reports]
    assert (0, 1, 0) in kinds  # the edit was an update, not a delete and an add
    assert sum(r.documents_deleted for r in reports) == 3


def test_a_batch_reads_only_the_files_its_events_name(tmp_path, tiny):
    docs, index = tmp_path / "docs", tmp_path / "index"
    docs.mkdir()
    (docs / "a.md").write_text("# Apples\n\nApples grow in orchards.\n")
    (docs / "b.md").write_text("# Bananas\n\nBananas ripen in the kitchen.\n")
    records = docs / "fruit.jsonl"
    records.write_text(
        '{"_id": "r1", "text": "Cherries are red."}\n{"_id": "r2", "text": "Figs."}\n'
    )
    with watching([docs], index, tiny) as reports:
        assert reports[0].documents_added == 4
        records.write_text('{"_id": "r1", "text": "Cherries and a quokka."}\n')
        eventually(lambda: "quokka" in stored(index)["r1"])
        assert "r2" not in stored(index)
        (docs / "a.md").write_text("# Apples\n\nApples and a zebra.\n")
        eventually(lambda: "zebra" in stored(index)["a.md"])
    batches = reports[1:]
    assert sum(r.documents_updated for r in batches) == 2
    assert sum(r.documents_deleted for r in batches) == 1
    # b.md was never read again, nor the record file once a batch no longer named it
    assert all(r.files_not_read >= 1 for r in batches), [r.files_not_read for r in batches]
    assert batches[-1].files_not_read == 2


def test_a_file_written_slowly_is_not_read_half(tmp_path, tiny):
    docs, index = tmp_path / "docs", tmp_path / "index"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nA first note.\n")
    pieces = [f"Line {n} of a slow note about kiwis.\n" for n in range(12)]
    full = "".join(pieces)
    seen: list[str | None] = []
    with watching(
        [docs],
        index,
        tiny,
        WatchSettings(debounce=0.5, stable=0.3),
        on_batch=lambda report: seen.append(stored(index).get("slow.md")),
    ):
        with (docs / "slow.md").open("w") as handle:
            for piece in pieces:  # a writer that pauses between writes (a download, a copy)
                handle.write(piece)
                handle.flush()
                time.sleep(0.1)
        eventually(lambda: stored(index).get("slow.md") == full)
    assert all(text in (None, full) for text in seen), seen


def test_the_index_and_hidden_files_inside_a_watched_folder_cause_no_batches(tmp_path, tiny):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nAnise tastes of liquorice.\n")
    index = docs / "the-index"  # inside the watched folder: its own writes must not loop
    with watching([docs], index, tiny) as reports:
        (docs / ".a.md.swp").write_text("an editor's swap file")
        (docs / ".hidden").mkdir()
        (docs / ".hidden" / "b.md").write_text("# B\n\nnot read: hidden\n")
        time.sleep(1.5)  # several debounce periods: a batch would have run by now
        assert len(reports) == 1
        (docs / "c.md").write_text("# C\n\nCardamom pods.\n")
        eventually(lambda: "c.md" in stored(index))
        time.sleep(1.5)
        assert len(reports) == 2, [(r.documents_added, r.documents_updated) for r in reports]
    assert set(stored(index)) == {"a.md", "c.md"}


def test_a_watcher_extends_an_index_with_the_settings_it_was_built_with(tmp_path, tiny):
    docs, index = tmp_path / "docs", tmp_path / "index"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nAlmonds.\n")
    custom = BuildSettings(
        model=str(TINY),
        document_instruction="Represent the cooking note for retrieval: ",
        query_instruction="Represent the cooking question: ",
    )
    build([docs], index, custom, model=tiny)
    extended = settings_for_index(index, BuildSettings())
    assert extended.document_instruction == custom.document_instruction
    assert extended.query_instruction == custom.query_instruction
    assert Path(extended.model or "").resolve() == TINY.resolve()
    errors: list[Exception] = []
    with watching([docs], index, tiny, on_error=errors.append):
        (docs / "b.md").write_text("# B\n\nBasil.\n")
        eventually(lambda: "b.md" in stored(index))
    assert errors == []
    with Index.open(index, readonly=True) as opened:
        assert opened.settings.document_instruction == custom.document_instruction


@pytest.mark.slow
def test_cli_watch_stops_cleanly_on_ctrl_c(tmp_path, tiny):
    docs, index = tmp_path / "docs", tmp_path / "index"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nApricots.\n")
    build([docs], index, BuildSettings(model=str(TINY)), model=tiny)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "instructor_search.indexer.cli",
            "watch",
            str(docs),
            "--index",
            str(index),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    try:
        for line in process.stdout:  # the first batch's line: the model is loaded, it watches
            lines.append(line)
            if "added" in line:
                break
        (docs / "b.md").write_text("# B\n\nBlueberries.\n")
        eventually(lambda: "b.md" in stored(index), 60)
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=60)[0]
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    assert "Stopped." in output and "Traceback" not in output
    assert set(stored(index)) == {"a.md", "b.md"}
