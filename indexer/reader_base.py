"""What every reader shares: the file it is handed and what it hands back.

A reader gets a :class:`FoundFile` (found by the scan, with its :class:`ReaderSettings`) and
yields ``Document``s and :class:`ReadFailure`s; a file it cannot read at all raises
:class:`Unreadable`, which the scan turns into a ``ReadFailure``. :func:`decode_text` is the UTF-8
text of a file, for readers of whole files; :func:`escaped`, :func:`is_utf8` and
:func:`file_kind` say what a file name or a special file is. The public types are importable
from :mod:`.readers`.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

SNIFF_BYTES = 8192


@dataclass(frozen=True)
class ReaderSettings:
    """Which files a scan reads, and how CSV records are laid out.

    ``include``/``exclude`` are glob patterns (fnmatch, where ``**/`` may also match no folder)
    on the path relative to the source root; an empty ``include`` reads every file. The CSV id
    column defaults to ``_id`` or ``id`` when the header has one, else ``<path>:<row number>``.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    csv_text_column: str = "text"
    csv_id_column: str | None = None


@dataclass(frozen=True)
class ReadFailure:
    """A file (or one record of it) that could not be read.

    ``path`` is relative to the source root (POSIX slashes); ``line`` is the line of a broken
    JSONL/CSV record or of a JSON syntax error; ``reason`` says what is wrong and what to do.
    """

    path: str
    line: int | None
    reason: str


@dataclass(frozen=True)
class Skipped:
    """A file the scan passed over (e.g. of an unknown type)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Kept:
    """A file the scan did not open because its caller keeps what the index holds from it
    (``scan(keep=...)``): ``path`` as in :class:`Skipped`, ``file`` its absolute path."""

    path: str
    file: Path


class Unreadable(Exception):
    """A file (or one record) that cannot be read: ``args`` are (reason, line)."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason, line)


@dataclass(frozen=True)
class FoundFile:
    """A file found by the scan."""

    path: Path  # absolute, symlinks kept
    rel: str  # relative to the source root, POSIX slashes
    ext: str  # lowercase, with the dot
    folder: str  # the relative parent folder, "" at the root
    size: int
    mtime: float
    settings: ReaderSettings


def refuse_binary(head: bytes) -> None:
    """Raise :class:`Unreadable` when the first bytes of a file hold a NUL (binary data)."""
    if b"\x00" in head[:SNIFF_BYTES]:
        raise Unreadable("binary file (NUL bytes); if it is UTF-16 text, convert it to UTF-8")


def decode_text(data: bytes) -> str:
    """UTF-8 text of a file (a BOM dropped); binary, non-UTF-8 and empty files are refused."""
    refuse_binary(data)
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not valid UTF-8 at byte {exc.start}; convert it to UTF-8") from None
    if not text.strip():
        raise Unreadable("empty file")
    return text


def escaped(path: str) -> str:
    """A path as printable text: bytes that are not UTF-8 (held as surrogates) as ``\\xNN``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    """Whether a file name is text (``os`` holds bytes that are not UTF-8 as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def file_kind(mode: int) -> str:
    """What a file that is not a regular file or a folder is, in words."""
    kinds = (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((what for test, what in kinds if test(mode)), "a special file")
