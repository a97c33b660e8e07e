"""The files derived from ``index.sqlite``, each stamped with the generation it was built from.

``vectors.faiss`` (:mod:`instructor_search.store.vectors`) is the ANN index over the embeddings in
SQLite. Any reader that finds it missing, stale (another generation) or unreadable rebuilds it
in memory; a writer then saves the rebuild. ``keywords.bm25`` (:mod:`instructor_search.store.keywords`)
is the keyword matrix precomputed from FTS5. A reader never rebuilds it: while it is missing,
stale or unreadable, FTS5 answers keyword searches, until a writer's
:meth:`~instructor_search.store.index.Index.sync_derived` rewrites it.

:class:`DerivedFiles` holds the loaded structure of each file for one generation. It is owned
by an :class:`~instructor_search.store.index.Index` and used under that index's lock: it reads
``chunks`` and ``chunks_fts`` inside the caller's read snapshot, and writes files only outside
one.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import sqlite_utils

from . import keywords
from . import vectors as vector_files
from .vectors import VectorFileError, VectorIndexInfo, Vectors, build_vector_index

log = logging.getLogger(__name__)

#: The index folder: the truth (owned by :class:`~instructor_search.store.index.Index`), then the
#: files derived from it.
INDEX_FILE = "index.sqlite"
VECTORS_FILE = "vectors.faiss"
KEYWORDS_FILE = "keywords.bm25"


class DerivedFiles:
    """``vectors.faiss`` and ``keywords.bm25`` of one index folder, loaded once per generation."""

    def __init__(
        self,
        path: Path,
        db: sqlite_utils.Database,
        dimension: int,
        keyword_weights: Mapping[str, float],
    ) -> None:
        self.path = path
        self._db = db
        self._dimension = dimension
        self._weights = dict(keyword_weights)  # FTS5 column -> bm25() weight
        self._vectors: tuple[int, Vectors] | None = None
        self._unsaved: VectorIndexInfo | None = None  # rebuilt, not yet written
        self._keywords: keywords.KeywordMatrix | None = None
        self._unreadable: tuple[int, int, int] | None = None  # a keywords file that failed

    # -- vectors.faiss -----------------------------------------------------------------------

    def vectors(self, generation: int) -> Vectors:
        """The ANN index for ``generation`` (inside a snapshot): cached, from the file, or
        rebuilt from the embeddings in SQLite."""
        if self._vectors is not None and self._vectors[0] == generation:
            return self._vectors[1]
        file = self.path / VECTORS_FILE
        file_generation = vector_files.read_generation(file)
        vectors: Vectors | None = None
        if file_generation == generation:
            try:
                index, _ = vector_files.load(file)
                count = self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]
                if index.d == self._dimension and index.ntotal == count:
                    vectors = Vectors(index)
                else:
                    log.warning("%s does not match %s; rebuilding it", file, INDEX_FILE)
            except (OSError, VectorFileError) as exc:
                log.warning("%s is unreadable (%s); rebuilding it from %s", file, exc, INDEX_FILE)
        else:
            log.info("%s is missing or stale (generation %s, index at %s); rebuilding it from %s",
                     file, file_generation, generation, INDEX_FILE)  # fmt: skip
        self._unsaved = None
        if vectors is None:
            rows = self._db.execute("SELECT id, embedding FROM chunks ORDER BY id").fetchall()
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
            index, self._unsaved = build_vector_index(
                ids, matrix.reshape(len(rows), self._dimension)
            )
            vectors = Vectors(index)
        self._vectors = (generation, vectors)
        return vectors

    def vectors_file_is_stale(self, generation: int) -> bool:
        """Whether ``vectors.faiss`` is missing or stamped with another generation."""
        return vector_files.read_generation(self.path / VECTORS_FILE) != generation

    def save_vectors(self, record: Callable[[VectorIndexInfo], None], force: bool = False) -> None:
        """Writer side, outside a snapshot: write the loaded index to ``vectors.faiss`` when it
        was rebuilt (or with ``force``), then ``record`` a rebuild's index type and recall."""
        if self._vectors is None or (self._unsaved is None and not force):
            return
        vector_files.save(self._vectors[1].index, self.path / VECTORS_FILE, self._vectors[0])
        if self._unsaved is not None:
            record(self._unsaved)
            self._unsaved = None

    # -- keywords.bm25 -----------------------------------------------------------------------

    def keywords(self, generation: int) -> keywords.KeywordMatrix | None:
        """The keyword matrix of ``generation`` (inside a snapshot): cached, or loaded from
        ``keywords.bm25``; ``None`` when that file is missing, stale or unreadable."""
        if self._keywords is not None and self._keywords.generation == generation:
            return self._keywords
        file = self.path / KEYWORDS_FILE
        if keywords.read_generation(file) != generation:
            return None
        try:
            stat = file.stat()
        except OSError:
            return None
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._unreadable:  # warned about this very file already
            return None
        try:
            matrix = keywords.load(file)
            (count,) = self._db.execute("SELECT count(*) FROM chunks").fetchone()
            if matrix.generation == generation and len(matrix.chunk_ids) != count:
                raise keywords.KeywordMatrixError(f"{len(matrix.chunk_ids)} rows, {count} chunks")
        except (OSError, keywords.KeywordMatrixError) as exc:
            log.warning("%s is unreadable (%s); FTS5 answers keyword searches until a build "
                        "rewrites it", file, exc)  # fmt: skip
            self._unreadable = stamp
            return None
        if matrix.generation != generation:  # replaced by a writer since its header was read
            return None
        self._keywords = matrix
        return matrix

    def build_keywords(self, generation: int) -> keywords.KeywordMatrix | None:
        """Writer side, inside a snapshot: a new keyword matrix of ``generation`` built from
        FTS5; ``None`` when ``keywords.bm25`` already holds it and is readable, or when FTS5
        could not be read (logged)."""
        if self.keywords(generation) is not None:
            return None
        try:
            return keywords.build(self._db.conn, "chunks_fts", self._weights, generation)
        except (keywords.KeywordMatrixError, sqlite3.Error) as exc:
            log.warning("keyword matrix not built (%s); FTS5 answers keyword searches", exc)
            return None

    def save_keywords(self, matrix: keywords.KeywordMatrix) -> None:
        """Writer side, outside a snapshot: write ``keywords.bm25`` and keep ``matrix``."""
        file = self.path / KEYWORDS_FILE
        keywords.save(matrix, file)
        self._keywords = matrix
        log.info("wrote %s (%.1f MB)", file, file.stat().st_size / 1e6)

    def close(self) -> None:
        """Drop the loaded structures."""
        self._vectors = self._keywords = None
