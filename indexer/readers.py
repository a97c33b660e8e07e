"""Corpus readers: files and records become :class:`Document`s.

:func:`scan` walks a folder (or reads one file) and yields a ``Document`` per file or record, a
:class:`ReadFailure` for input it cannot read (the file, the line, what to do) and a
:class:`Skipped` for files of an unknown type. Bad input never raises out of a scan; only a
missing source does. One small reader per format, registered by extension in ``_READERS``.
The record formats (JSONL, JSON, CSV) are read in :mod:`.records`; the types every reader
shares live in :mod:`.reader_base`.
"""

from __future__ import annotations

import errno
import io
import itertools
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

from instructor_search.documents import Document
from instructor_search.errors import ReaderError

from .reader_base import (
    FoundFile,
    Kept,
    ReaderSettings,
    ReadFailure,
    Skipped,
    Unreadable,
    decode_text,
    escaped,
    file_kind,
    is_utf8,
)
from .records import read_csv, read_json, read_jsonl

logger = logging.getLogger(__name__)

_TITLE_CHARS = 200


ScanItem = Document | ReadFailure | Skipped | Kept


Reader = Callable[[FoundFile], Iterator[Document | ReadFailure]]


def scan(
    source: Path | str,
    settings: ReaderSettings = ReaderSettings(),  # noqa: B008 (it is frozen)
    keep: Callable[[Path], bool] | None = None,
) -> Iterator[ScanItem]:
    """Read a folder (recursively), a single file, or a JSONL/JSON/CSV file of records.

    A file for which ``keep(path)`` is true is yielded as a :class:`Kept` without
    being opened (an incremental build keeps what it holds from it). Raises
    :class:`ReaderError` at once if ``source`` does not exist; any other problem is yielded as
    a :class:`ReadFailure` and the scan goes on.
    """
    return _scan(checked_source(source), settings, keep)


def checked_source(source: Path | str) -> Path:
    """The absolute path of a corpus source (symlinks kept); :class:`ReaderError` when it does
    not exist or its path is not UTF-8 text."""
    source = Path(source)
    if not source.exists():
        raise ReaderError(
            f"corpus source {escaped(str(source))} does not exist; pass a folder, a file or a "
            "JSONL/CSV file"
        )
    if not is_utf8(str(source)):
        raise ReaderError(f"corpus source {escaped(str(source))}: its path is not UTF-8; rename it")
    return Path(os.path.abspath(source))


def _scan(
    source: Path, settings: ReaderSettings, keep: Callable[[Path], bool] | None
) -> Iterator[ScanItem]:
    seen: dict[str, str] = {}  # document id -> where it was first seen
    found: Iterable[tuple[Path, str] | ReadFailure | Skipped]
    if source.is_dir():
        found = _walk(source, "", settings, frozenset())
    elif source.is_file():
        found = [(source, source.name)]
    else:
        found = [Skipped(source.name, f"{file_kind(source.stat().st_mode)}, not a regular file")]
    for item in found:
        if not isinstance(item, tuple):
            yield item
        elif not _selected(item[1], settings):
            continue
        elif keep is not None and keep(item[0]):
            yield Kept(item[1], item[0])
        else:
            yield from _read(*item, settings, seen)


def _walk(
    folder: Path, rel: str, settings: ReaderSettings, ancestors: frozenset[str]
) -> Iterator[tuple[Path, str] | ReadFailure | Skipped]:
    """Files under ``folder`` in name order, following symlinks, hidden names left out."""
    real = os.path.realpath(folder)
    if real in ancestors:
        yield ReadFailure(rel, None, f"symlink loop back to {real}; remove the link or exclude it")
        return
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as exc:
        why = f"cannot list the folder ({exc.strerror or exc})"
        yield ReadFailure(rel or ".", None, f"{why}; make it readable or exclude it")
        return
    for entry in entries:
        child, path = f"{rel}/{entry.name}" if rel else entry.name, folder / entry.name
        if entry.name.startswith("."):
            continue
        if not is_utf8(entry.name):  # it could be neither stored nor printed as text
            why = "its name is not valid UTF-8; rename it (e.g. convmv -f latin1 -t utf-8)"
            yield ReadFailure(escaped(child), None, f"{why}, or exclude it")
            continue
        try:
            is_dir, is_file = entry.is_dir(), entry.is_file()
        except OSError:  # e.g. a link to itself
            is_dir = is_file = False
        if is_dir:
            if not any(_matches(child, pattern) for pattern in settings.exclude):
                yield from _walk(path, child, settings, ancestors | {real})
        elif is_file:
            yield path, child
        elif entry.is_symlink():
            yield _link_item(path, child)
        else:
            kind = file_kind(entry.stat(follow_symlinks=False).st_mode)
            yield Skipped(child, f"{kind}, not a regular file")


def _link_item(path: Path, child: str) -> ReadFailure | Skipped:
    """A symlink to neither a file nor a folder: broken, a loop, or a link to a device."""
    target = escaped(os.readlink(path))
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        why = "symlink loop" if exc.errno == errno.ELOOP else f"broken symlink to {target}"
        return ReadFailure(child, None, f"{why}; fix or remove the link, or exclude it")
    return Skipped(child, f"symlink to {target}, {file_kind(mode)}, not a regular file")


def _matches(rel: str, pattern: str) -> bool:
    """fnmatch on the relative path, where ``**/`` may also stand for no folder at all."""
    if fnmatchcase(rel, pattern):
        return True
    return "**/" in pattern and _matches(rel, pattern.replace("**/", "", 1))


def _selected(rel: str, settings: ReaderSettings) -> bool:
    """Whether ``rel`` is included, and neither it nor a folder above it excluded."""
    if settings.include and not any(_matches(rel, p) for p in settings.include):
        return False
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return not any(_matches(prefix, p) for p in settings.exclude for prefix in prefixes)


def _read(
    path: Path, rel: str, settings: ReaderSettings, seen: dict[str, str]
) -> Iterator[ScanItem]:
    """Read one file with the reader for its extension; failures become items."""
    ext = PurePosixPath(rel).suffix.lower()
    reader = _READERS.get(ext)
    if reader is None:
        what = f"unknown extension {ext}" if ext else "no file extension"
        yield Skipped(rel, f"{what}; readable types: {', '.join(sorted(_READERS))}")
        return
    try:
        stat = path.stat()
        folder = rel.rpartition("/")[0]
        file = FoundFile(path, rel, ext, folder, stat.st_size, stat.st_mtime, settings)
        for item in reader(file):
            yield _check_unique(item, rel, seen) if isinstance(item, Document) else item
    except Unreadable as bad:
        yield ReadFailure(rel, bad.args[1], bad.args[0])
    except PermissionError:
        yield ReadFailure(rel, None, "permission denied; make the file readable or exclude it")
    except OSError as exc:
        yield ReadFailure(rel, None, f"cannot read the file ({exc.strerror or exc})")


def _check_unique(doc: Document, rel: str, seen: dict[str, str]) -> Document | ReadFailure:
    line, record = doc.metadata.get("line"), doc.metadata.get("record")
    if doc.id in seen:
        why = f"duplicate id {doc.id!r}, first seen at {seen[doc.id]}; ids must be unique"
        return ReadFailure(rel, line, why)
    seen[doc.id] = f"{rel}:{line}" if line else f"{rel}#{record}" if record else rel
    return doc


# -- documents: one file, one Document ------------------------------------------------------


def _file_document(file: FoundFile, title: str, text: str) -> Document:
    title = " ".join(title.split())
    if len(title) > _TITLE_CHARS:  # a heuristic title can be a whole paragraph
        title = title[:_TITLE_CHARS].rsplit(" ", 1)[0]
    title = title or PurePosixPath(file.rel).stem
    metadata = {"path": file.rel, "type": file.ext[1:], "folder": file.folder}
    metadata.update(size=file.size, mtime=file.mtime, title=title)
    return Document(id=file.rel, text=text, title=title, source=str(file.path), metadata=metadata)


def _first_line(text: str | Iterable[str]) -> str:
    lines = text.splitlines() if isinstance(text, str) else text
    return next((line.strip() for line in lines if line.strip()), "")


_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FRONT_TITLE = re.compile(r"^title:\s*(.+?)\s*$")


def _markdown_title(text: str) -> str:
    """YAML front matter ``title:``, else the first ``# `` heading, else the first line."""
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":
        end = next((n for n, line in enumerate(lines[1:], 1) if line.strip() in ("---", "...")), 0)
        for line in lines[1:end]:
            if match := _FRONT_TITLE.match(line):
                return match.group(1).strip("'\"")
        lines = lines[end + 1 :] if end else lines
    fenced, first = False, ""
    for line in lines:
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (match := _ATX_H1.match(line)):
            return match.group(1)
        elif not fenced and not first and line.strip():
            first = line.strip().lstrip("#").strip()
    return first


_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+:._!$%&,/;<>?@\\|])\1{2,}\s*$")


def _rst_title(text: str) -> str:
    """The first line underlined with an adornment (=== / --- ...), else the first line."""
    lines = [line for line in text.splitlines() if not line.startswith("..")]
    for line, under in itertools.pairwise(lines):
        if line.strip() and not _RST_ADORNMENT.match(line) and _RST_ADORNMENT.match(under):
            return line.strip()
    return _first_line(line for line in lines if not _RST_ADORNMENT.match(line))


def _plain(title_of: Callable[[str], str]) -> Reader:
    """A reader of a plain-text format (the text as is), with its way of finding the title."""

    def read(file: FoundFile) -> Iterator[Document]:
        text = decode_text(file.path.read_bytes())
        yield _file_document(file, title_of(text), text)

    return read


_BLOCK_TAGS = (
    "address article aside blockquote body caption details dialog div dl fieldset figcaption "
    "figure footer form h1 h2 h3 h4 h5 h6 header hr main nav ol p pre section summary table ul"
)


class _HTMLText(HTMLParser):
    """Visible text of a page, block elements apart; the <title> and the first h1 and h2."""

    SKIP = frozenset({"script", "style", "template", "noscript", "head"})
    BREAK = frozenset({"br", "li", "tr", "dt", "dd", "option"})
    BLOCK = frozenset(_BLOCK_TAGS.split())

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping: list[str] = []  # open elements whose text is not shown
        self.pre = 0
        self.capture: tuple[str, list[str]] | None = None  # ("title" | "h1" | "h2", text)
        self.found: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.skipping.clear()  # a <head> that was never closed
        if tag in self.SKIP:
            self.skipping.append(tag)
        elif tag in ("title", "h1", "h2") and tag not in self.found and not self.capture:
            self.capture = (tag, []) if tag == "title" or not self.skipping else None
        self.pre += tag == "pre"
        if not self.skipping:
            self.parts.append("\n\n" if tag in self.BLOCK else "\n" if tag in self.BREAK else "")
            self.parts.append(" " if tag in ("td", "th") else "")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.skipping:
            del self.skipping[len(self.skipping) - 1 - self.skipping[::-1].index(tag)]
        if self.capture and self.capture[0] == tag:
            self.found[tag] = " ".join("".join(self.capture[1]).split())
            self.capture = None
        self.pre = max(0, self.pre - (tag == "pre"))
        if not self.skipping and tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.capture:
            self.capture[1].append(data)
        if not self.skipping:
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = "".join(self.parts).split("\n")
        text = "\n".join(re.sub(r"[ \t]{2,}", " ", line).strip() for line in lines)
        return re.sub(r"\n{3,}", "\n\n", text).strip()


def _read_html(file: FoundFile) -> Iterator[Document]:
    parser = _HTMLText()
    parser.feed(decode_text(file.path.read_bytes()))
    parser.close()
    if not (text := parser.text()):
        raise Unreadable("no visible text in the page")
    found = parser.found
    yield _file_document(file, found.get("title") or found.get("h1") or found.get("h2", ""), text)


def _read_pdf(file: FoundFile) -> Iterator[Document]:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise Unreadable("reading PDF needs pypdf: pip install 'instructor-search[pdf]'") from None
    if not (data := file.path.read_bytes()).strip():
        raise Unreadable("empty file")
    try:
        with _pypdf_logged_as_ours(file.rel):
            pdf = PdfReader(io.BytesIO(data))
            if pdf.is_encrypted and not pdf.decrypt(""):
                raise Unreadable("encrypted PDF; save a copy without a password")
            pages = [(page.extract_text() or "").strip() for page in pdf.pages]
            info_title = pdf.metadata.title if pdf.metadata else None
    except Unreadable:
        raise
    except Exception as exc:  # pypdf raises many kinds of errors on damaged files
        why = f"{type(exc).__name__}: {exc}"
        raise Unreadable(f"cannot parse the PDF ({why}); check that it opens in a viewer") from None
    if not (text := "\n\n".join(page for page in pages if page)):
        raise Unreadable("no extractable text (a scanned PDF?); run OCR on it first")
    title = info_title.strip() if isinstance(info_title, str) else ""
    yield _file_document(file, title or _first_line(text), text)


class _ToOurLog(logging.Handler):
    """Re-logs pypdf's records on our logger at INFO, named by the file (``-v`` shows them)."""

    def __init__(self, rel: str) -> None:
        super().__init__()
        self.rel = rel

    def emit(self, record: logging.LogRecord) -> None:
        logger.info("%s: pypdf: %s", self.rel, record.getMessage())


@contextmanager
def _pypdf_logged_as_ours(rel: str) -> Iterator[None]:
    """pypdf's own warnings (log records and ``warnings.warn``) about a damaged PDF go to our
    log at INFO instead of beside the build's one line per failure."""
    pypdf_log = logging.getLogger("pypdf")
    handler, propagate = _ToOurLog(rel), pypdf_log.propagate
    pypdf_log.addHandler(handler)
    pypdf_log.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for warning in caught:
            logger.info("%s: pypdf: %s", rel, warning.message)
    finally:
        pypdf_log.removeHandler(handler)
        pypdf_log.propagate = propagate


_READERS: dict[str, Reader] = {
    ".txt": _plain(_first_line),
    ".md": _plain(_markdown_title),
    ".markdown": _plain(_markdown_title),
    ".rst": _plain(_rst_title),
    ".html": _read_html,
    ".htm": _read_html,
    ".pdf": _read_pdf,
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".csv": read_csv,
}

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_READERS)
"""Extensions (lowercase, with the dot) that :func:`scan` reads."""
