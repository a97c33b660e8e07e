"""What an incremental build must do: its sources scanned and diffed against the index.

A file is opened only when the index cannot vouch for it. By default a file whose one stored
document has the file's present size and modification time is kept without being read, as
make and rsync decide (a file rewritten with neither changed is then missed:
``BuildSettings.rehash`` reads and hashes every file). A caller that knows which paths changed
(a watch batch, from its events) passes them as ``changed``: those are always read, and every
other file the index holds documents from is kept, record files included (their documents
carry no file stamp, so a full scan always reads them). The folders are listed either way, so
deleted and renamed files are found; the documents of a kept file are never taken as deleted.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from instructor_search.documents import Document
from instructor_search.gc_pause import gc_paused
from instructor_search.store.index import Index

from .doc_ids import DocumentIds, under_any
from .progress import READING, BuildProgress, ProgressCallback
from .readers import Kept, ReaderSettings, ReadFailure, Skipped, scan

if TYPE_CHECKING:
    from .build import BuildReport

logger = logging.getLogger(__name__)

#: A record's source: its file, then ``:line`` (JSONL, CSV) or ``#number`` (JSON).
_RECORD_SOURCE = re.compile(r"(.*)[:#]\d+")


@dataclass
class Scan:
    """The corpus as scanned: documents to embed, ids seen or kept, and files that failed."""

    pending: list[tuple[Document, bool]] = field(default_factory=list)  # (doc, is_update)
    seen: set[str] = field(default_factory=set)
    roots: list[Path] = field(default_factory=list)
    failed_files: set[str] = field(default_factory=set)
    sources: dict[str, str] = field(default_factory=dict)  # id -> source, of stored documents


class _Stored:
    """What the index holds, by the file each document was read from."""

    def __init__(self, index: Index) -> None:
        self.documents = index.document_catalog()
        self.sources = {doc_id: held.source for doc_id, held in self.documents.items()}
        self.by_file: dict[str, list[str]] = {}
        with gc_paused():
            for doc_id, source in self.sources.items():
                record = (
                    _RECORD_SOURCE.fullmatch(source) if ":" in source or "#" in source else None
                )
                self.by_file.setdefault(record.group(1) if record else source, []).append(doc_id)

    def is_file_document(self, name: str) -> bool:
        """Whether the file ``name`` gave the index one whole-file document (not records)."""
        ids = self.by_file.get(name, [])
        return len(ids) == 1 and self.sources[ids[0]] == name

    def stamped_alike(self, path: Path) -> bool:
        """Whether the file's stored document has the file's size and modification time now
        (both as the reader recorded them: ``st_size`` and ``st_mtime``, compared exactly)."""
        held = self.documents[self.by_file[str(path)][0]]
        mtime, size = held.mtime, held.size
        try:
            stat = path.stat()
        except OSError:
            return False
        return mtime is not None and size == stat.st_size and mtime == stat.st_mtime


def _keeper(stored: _Stored, changed: Iterable[str] | None) -> Callable[[Path], bool]:
    """Whether the scan may keep a file's stored documents without reading it."""
    named = None if changed is None else under_any(changed)

    def keep(path: Path) -> bool:
        name = str(path)
        if name not in stored.by_file:
            return False
        if named is not None and named(name):
            return False
        if stored.is_file_document(name):
            return stored.stamped_alike(path)
        return named is not None  # records carry no file stamp: kept when events vouch

    return keep


def changed_paths(paths: Iterable[str | os.PathLike[str]]) -> set[str]:
    """Paths as a scan names files: absolute, and with their symlinks resolved (the sources'
    roots are), both forms kept."""
    return {form for p in paths for form in (os.path.abspath(p), os.path.realpath(p))}


def scan_sources(
    roots: list[Path],
    reader: ReaderSettings,
    index: Index,
    report: BuildReport,
    progress: ProgressCallback,
    *,
    rehash: bool = False,
    changed: Iterable[str] | None = None,
) -> Scan:
    """Read the sources (all of each file with ``rehash``, else what :func:`_keeper` cannot
    keep); failures go in the report (and the log at INFO: the caller prints the report's
    failures, once)."""
    found = Scan(roots=roots)
    stored = _Stored(index)
    found.sources = stored.sources
    hashes = {doc_id: held.content_hash for doc_id, held in stored.documents.items()}
    ids = DocumentIds(stored.sources)
    keep = None if rehash else _keeper(stored, changed)
    read = 0
    for root in roots:
        kept: dict[str, str] = {}  # id -> file, of the documents kept under this root
        for item in scan(root, reader, keep):
            read += 1
            progress(BuildProgress(READING, read, None))
            if isinstance(item, Kept):
                for doc_id in stored.by_file[str(item.file)]:
                    kept[doc_id] = item.path
                    ids.keep(doc_id)
                    found.seen.add(doc_id)
                    report.documents_unchanged += 1
                report.files_not_read += 1
                continue
            if isinstance(item, Document) and item.id in kept:
                why = f"duplicate id {item.id!r}, held by {kept[item.id]}; ids must be unique"
                item = ReadFailure(item.metadata.get("path", item.id), _line(item), why)
            if isinstance(item, Skipped):
                report.skipped.append(item)
                logger.info("skipped %s: %s", item.path, item.reason)
            elif isinstance(item, ReadFailure):
                report.failures.append(item)
                report.documents_failed += 1
                found.failed_files.add(str(root / item.path if root.is_dir() else root))
                where = f"{item.path}:{item.line}" if item.line else item.path
                logger.info("could not read %s: %s", where, item.reason)
            elif (doc := ids.assign(item, root)) is None:
                why = f"id {item.id!r} is held by other sources' documents; give it another id"
                report.failures.append(ReadFailure(item.metadata.get("path", item.id), None, why))
                report.documents_failed += 1
            else:
                found.seen.add(doc.id)
                found.pending += changed_documents([doc], hashes, report)
    progress(BuildProgress(READING, read, read))
    return found


def _line(doc: Document) -> int | None:
    line = doc.metadata.get("line")
    return line if isinstance(line, int) else None


def gone(found: Scan) -> list[str]:
    """Stored documents that came from a scanned source and are not there any more.

    A document whose file failed to read this time is kept: a broken file loses nothing.
    """
    scanned = under_any(str(root) for root in found.roots)
    failed = under_any(found.failed_files)
    return [
        doc_id
        for doc_id, source in found.sources.items()
        if doc_id not in found.seen and scanned(source) and not failed(source)
    ]


def changed_documents(
    documents: Iterable[Document], stored: dict[str, str], report: BuildReport
) -> list[tuple[Document, bool]]:
    """The documents whose content differs from the stored one: ``(document, is_update)``."""
    pending = []
    for doc in documents:
        held = stored.get(doc.id)
        if held == doc.content_hash:
            report.documents_unchanged += 1
        else:
            pending.append((doc, held is not None))
    return pending
