"""Files written whole, and the stamped header the derived files start with.

A crash while writing leaves the old file or the new one, never half of either: the bytes go to
a temporary file in the same folder, are flushed to disk, and the file is renamed over the old.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_atomically(path: str | os.PathLike[str], parts: Iterable[Any]) -> None:
    """Write the bytes-like ``parts`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_header(path: str | os.PathLike[str], header: struct.Struct, magic: bytes) -> tuple | None:
    """The unpacked ``header`` at the start of ``path``; ``None`` when the file is missing,
    shorter than the header, or does not start with ``magic`` (reads only the header)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(header.size)
    except OSError:
        return None
    if len(head) < header.size or not head.startswith(magic):
        return None
    return header.unpack(head)
