"""What a build has embedded and not yet committed to the index, kept so a crash loses little.

A build embeds a pool of chunks (about a thousand, sorted by length so batches pad little)
in slices, then commits the pool's documents to ``index.sqlite``. Each slice's vectors are
written here as soon as they are embedded, in their own transaction, keyed by what decides
them (model fingerprint, instruction, text embedded); a build killed before its pool is
committed finds them on the rerun and embeds only the rest. Entries go once their documents
are committed, and the file goes at the end of every build that completes.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

JOURNAL_FILE = "build-journal.sqlite"
_FILES = (JOURNAL_FILE, f"{JOURNAL_FILE}-wal", f"{JOURNAL_FILE}-shm")


class Journal:
    """Embedded vectors of one index folder that its ``index.sqlite`` does not hold yet."""

    def __init__(self, folder: Path, fingerprint: str, instruction: str, dimension: int) -> None:
        self._salt = f"{fingerprint}\x00{instruction}\x00".encode()
        self._dimension = dimension
        self._folder = folder
        self._db = sqlite3.connect(str(folder / JOURNAL_FILE), timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")  # a commit survives kill -9
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS embedded (key BLOB PRIMARY KEY, vector BLOB NOT NULL)"
        )

    def key(self, text: str) -> bytes:
        """What identifies a vector: model, instruction and text (16 bytes of SHA-256)."""
        return hashlib.sha256(self._salt + text.encode("utf-8")).digest()[:16]

    def get(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The vectors held for any of ``keys``."""
        found: dict[bytes, np.ndarray] = {}
        size = self._dimension * 4
        for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            part = keys[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self._db.execute(
                f"SELECT key, vector FROM embedded WHERE key IN ({marks})", list(part)
            )
            found.update(
                (key, np.frombuffer(vector, dtype=np.float32))
                for key, vector in rows
                if len(vector) == size
            )
        return found

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Hold these vectors, in one committed transaction."""
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO embedded (key, vector) VALUES (?, ?)",
                zip(keys, (row.tobytes() for row in matrix), strict=True),
            )

    def forget(self, keys: Sequence[bytes]) -> None:
        """Drop vectors whose documents are committed to the index."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM embedded WHERE key = ?", ((k,) for k in keys))

    def close(self) -> None:
        self._db.close()


def discard(folder: Path) -> None:
    """Remove a folder's journal (a build completed, or ``--rebuild`` starts over)."""
    for name in _FILES:
        (folder / name).unlink(missing_ok=True)
