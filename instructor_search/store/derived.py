"""The files derived from ``index.sqlite``, each stamped with the generation it was built from,
and the delta that brings them up to the current generation.

``vectors.faiss`` (:mod:`.vectors`) is the ANN index over the embeddings in SQLite;
``keywords.bm25`` (:mod:`.keywords`) the keyword matrix from FTS5. Both are memory-mapped when
loaded. Every write transaction logs the chunk ids it adds and deletes in ``chunk_changes``
(with a deleted chunk's indexed text), so a reader that finds a file older than SQLite loads it
and applies the difference: the added chunks' embeddings are searched exactly beside the base,
deleted ids are masked (:class:`~.vector_search.Vectors`), and the keyword matrix takes the
added and deleted rows' postings (:meth:`~.keywords.KeywordMatrix.with_delta`). That costs what
changed since the file, never a rebuild.

A writer's :meth:`sync_vectors` / :meth:`build_keywords` fold a delta into a new file when it
grows past :func:`merge_threshold` (vectors: ``remove_ids`` + ``add_with_ids`` on a copy of the
base; keywords: rebuilt from FTS5), then the log is pruned up to the older file's generation
(``collection.changes_since``). Only a missing or unreadable ``vectors.faiss`` (or one older
than the log) is rebuilt from all embeddings, in memory, logged once; a missing or unreadable
``keywords.bm25`` leaves keyword searches to FTS5 until a writer rewrites it. Files are only
ever replaced whole (temporary file, fsync, rename), so a crash at any moment leaves each file
old or new, and SQLite's log covers the difference either way.

:class:`DerivedFiles` is owned by an :class:`~instructor_search.store.index.Index` and used
under its lock: it reads SQLite inside the caller's read snapshot, and writes files only
outside one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path

import faiss
import numpy as np

from . import keyword_file, keywords
from . import vectors as vector_files
from .sqlite_lib import sqlite_utils
from .vector_search import Vectors, merged
from .vectors import VectorFileError, VectorIndexInfo, build_vector_index

#: Builds the ANN structure for ``(ids, vectors)``: :func:`~.vectors.build_vector_index` or a
#: caller's (e.g. one that fills an IVF index's lists in parallel).
VectorBuilder = Callable[[np.ndarray, np.ndarray], tuple[faiss.Index, VectorIndexInfo]]

log = logging.getLogger(__name__)

#: The index folder: the truth (owned by :class:`~instructor_search.store.index.Index`), then the
#: files derived from it.
INDEX_FILE = "index.sqlite"
VECTORS_FILE = "vectors.faiss"
KEYWORDS_FILE = "keywords.bm25"
#: The FTS5 table the keyword matrix is read from.
FTS_TABLE = "chunks_fts"
#: A delta is folded into its file when it holds more than this many chunks, or this share of
#: the index: searched exactly, 2% of 1M chunks costs ~3 ms a query.
MERGE_MIN = 2_048
MERGE_FRACTION = 0.02


def merge_threshold(chunks: int) -> int:
    """Changed chunks above which a writer folds the delta into the derived files."""
    return max(MERGE_MIN, int(MERGE_FRACTION * chunks))


#: A file's identity by stat: (inode, mtime in ns, size).
Stamp = tuple[int, int, int]


def _stamp(file: Path) -> Stamp | None:
    try:
        stat = file.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _ids(rows: list[tuple[int]]) -> np.ndarray:
    return np.array(sorted(r[0] for r in rows), dtype=np.int64)


class DerivedFiles:
    """``vectors.faiss`` and ``keywords.bm25`` of one index folder, with their deltas."""

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
        self._keyword_base: keywords.KeywordMatrix | None = None  # as loaded from the file
        self._keywords: keywords.KeywordMatrix | None = None  # the base with its delta
        self._unreadable: dict[str, Stamp] = {}  # file -> stamp warned about
        self._checked: dict[str, tuple[int, Stamp]] = {}  # file -> generation, stamp: whole
        self.build_vectors: VectorBuilder = build_vector_index

    # -- the change log (inside the caller's snapshot) ----------------------------------------

    def changes_since(self) -> int:
        """The generation after which ``chunk_changes`` holds every change."""
        return int(self._db.execute("SELECT changes_since FROM collection").fetchone()[0])

    def _changes(self, since: int, upto: int) -> tuple[np.ndarray, np.ndarray]:
        """(added, deleted) chunk ids, sorted, between generations ``since`` and ``upto``:
        added = stored after ``since`` and alive at ``upto``; deleted = alive at ``since``,
        gone at ``upto``."""
        rows = self._db.execute(
            "SELECT chunk_id, deleted FROM chunk_changes WHERE generation > ? AND generation <= ?",
            [since, upto],
        ).fetchall()
        added = {c for c, d in rows if not d}
        deleted = {c for c, d in rows if d}
        return _ids([(c,) for c in added - deleted]), _ids([(c,) for c in deleted - added])

    def _embeddings(self, ids: np.ndarray) -> np.ndarray:
        rows = self._db.execute(
            "SELECT embedding FROM chunks WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
            [json.dumps(ids.tolist())],
        ).fetchall()
        if len(rows) != len(ids):
            raise VectorFileError(f"{len(ids) - len(rows)} changed chunks are not in {INDEX_FILE}")
        blob = b"".join(r[0] for r in rows)
        return np.frombuffer(blob, dtype=np.float32).reshape(len(ids), self._dimension)

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    # -- files a writer wrote or checked whole (``derived_files``) ----------------------------

    def _unchanged_and_small(self, name: str, file_generation: int | None, generation: int) -> bool:
        """Whether file ``name`` is, by its stat, the one a writer recorded in
        ``derived_files`` (written, or loaded and checksummed, at ``file_generation``), and
        its delta up to ``generation`` is below the merge threshold: then a writer leaves it
        as it is without loading it, at a cost of the delta's log rows."""
        if file_generation is None or not self.changes_since() <= file_generation <= generation:
            return False
        row = self._db.execute(
            "SELECT generation, inode, mtime_ns, size FROM derived_files WHERE name = ?", [name]
        ).fetchone()
        if row is None or (row[0], tuple(row[1:])) != (file_generation, _stamp(self.path / name)):
            return False
        added, deleted = self._changes(file_generation, generation)
        return len(added) + len(deleted) <= merge_threshold(self._count())

    def _check(self, name: str, generation: int, stamp: Stamp | None) -> None:
        if stamp is not None:
            self._checked[name] = (generation, stamp)

    def checked_files(self) -> list[tuple[str, int, int, int, int]]:
        """``derived_files`` rows for the files this process wrote or checked whole and that
        are still those files (a writer records them)."""
        return [
            (name, generation, *stamp)
            for name, (generation, stamp) in self._checked.items()
            if _stamp(self.path / name) == stamp
        ]

    # -- vectors.faiss -----------------------------------------------------------------------

    def vectors(self, generation: int) -> Vectors:
        """The ANN index for ``generation`` (inside a snapshot): cached, the cached one or the
        file brought forward by the change log, or rebuilt from the embeddings in SQLite."""
        if self._vectors is not None and self._vectors[0] == generation:
            return self._vectors[1]
        floor = self.changes_since()
        vectors = None
        if self._vectors is not None and floor <= self._vectors[0] < generation:
            vectors = self._advance(self._vectors[1], self._vectors[0], generation)
        if vectors is None:
            vectors = self._from_file(generation, floor)
        if vectors is None:
            vectors = self._rebuild()
        self._vectors = (generation, vectors)
        return vectors

    def _advance(self, vectors: Vectors, since: int, generation: int) -> Vectors:
        added, deleted = self._changes(since, generation)
        if len(added) == 0 and len(deleted) == 0:
            return vectors
        return vectors.advanced(added, self._embeddings(added), deleted)

    def _from_file(self, generation: int, floor: int) -> Vectors | None:
        file = self.path / VECTORS_FILE
        file_generation = vector_files.read_generation(file)
        if file_generation is None or not floor <= file_generation <= generation:
            log.info("%s is missing or older than the change log (generation %s, log from %s); "
                     "rebuilding it from %s", file, file_generation, floor, INDEX_FILE)  # fmt: skip
            return None
        stamp = _stamp(file)
        try:
            index, loaded_generation = vector_files.load(file)
            if index.d != self._dimension:
                raise VectorFileError(f"{index.d} dimensions, the index has {self._dimension}")
            vectors = self._advance(Vectors(index), file_generation, generation)
            if vectors.ntotal != self._count():
                raise VectorFileError(f"{vectors.ntotal} vectors, {INDEX_FILE} other chunks")
        except (OSError, VectorFileError) as exc:
            log.warning("%s is unreadable (%s); rebuilding it from %s", file, exc, INDEX_FILE)
            self._checked.pop(VECTORS_FILE, None)
            return None
        if loaded_generation == file_generation:
            self._check(VECTORS_FILE, file_generation, stamp)
        self._unsaved = None
        return vectors

    def _rebuild(self) -> Vectors:
        rows = self._db.execute("SELECT id, embedding FROM chunks ORDER BY id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        del rows
        index, self._unsaved = self.build_vectors(ids, matrix.reshape(len(ids), self._dimension))
        return Vectors(index)

    def adopt_vectors(self, generation: int, index: faiss.Index, info: VectorIndexInfo) -> None:
        """Take ``index``, built elsewhere from exactly the embeddings stored at
        ``generation``, as if rebuilt here: :meth:`sync_vectors` writes it."""
        self._vectors, self._unsaved = (generation, Vectors(index)), info

    def prepare_vectors(self, generation: int) -> None:
        """Writer side, inside a snapshot: the vectors of ``generation``, rebuilt from SQLite
        when their delta is due for a merge that the index type no longer suits (flat grown
        past :data:`~.vectors.FLAT_MAX`, IVF lists far from ``4 sqrt(n)``). Nothing is loaded
        when the file is the one recorded and its delta small."""
        if self._vectors is None and self._unchanged_and_small(
            VECTORS_FILE, self.vectors_generation(), generation
        ):
            return
        vectors = self.vectors(generation)
        due = self._unsaved is None and self._merge_due(vectors)
        if due and not self._suits(vectors.index, vectors.ntotal):
            self._vectors = (generation, self._rebuild())

    @staticmethod
    def _merge_due(vectors: Vectors) -> bool:
        return vectors.delta > merge_threshold(vectors.ntotal)

    def sync_vectors(self, record: Callable[[VectorIndexInfo], None], merge: bool) -> None:
        """Writer side, outside a snapshot: write ``vectors.faiss`` when it was rebuilt, or
        when its delta has grown past :func:`merge_threshold` (merged into a copy of the
        file's index); ``record`` a rebuild's index type and recall."""
        if self._vectors is None:
            return
        generation, vectors = self._vectors
        file = self.path / VECTORS_FILE
        if self._unsaved is None:
            if not merge or not self._merge_due(vectors):
                return
            base, _ = vector_files.load(file, mmap=False)
            log.info("merging %d changed vectors into %s", vectors.delta, file)
            vectors = Vectors(merged(vectors, base))
        vector_files.save(vectors.index, file, generation)
        self._check(VECTORS_FILE, generation, _stamp(file))
        self._vectors = (generation, vectors)
        if self._unsaved is not None:
            record(self._unsaved)
            self._unsaved = None

    @staticmethod
    def _suits(index: faiss.Index, count: int) -> bool:
        """Whether an index of this type still fits ``count`` vectors (else: rebuild)."""
        inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
        if isinstance(faiss.downcast_index(inner), faiss.IndexIVF):
            lists = faiss.downcast_index(inner).nlist
            return (
                count > vector_files.FLAT_MAX
                and lists / 2 <= vector_files.ivf_lists(count) <= lists * 2
            )
        return count <= vector_files.FLAT_MAX

    def vectors_generation(self) -> int | None:
        """The generation ``vectors.faiss`` holds (``None`` when missing or not ours)."""
        return vector_files.read_generation(self.path / VECTORS_FILE)

    # -- keywords.bm25 -----------------------------------------------------------------------

    def keywords(self, generation: int) -> keywords.KeywordMatrix | None:
        """The keyword matrix of ``generation`` (inside a snapshot): cached, or the file
        brought forward by the change log; ``None`` when that file is missing, unreadable or
        older than the log (FTS5 answers)."""
        if self._keywords is not None and self._keywords.generation == generation:
            return self._keywords
        floor = self.changes_since()
        base = self._keyword_file(generation, floor)
        if base is None:
            return None
        file = self.path / KEYWORDS_FILE
        try:
            matrix = base
            if base.generation != generation:
                matrix = self._keyword_delta(base, generation)
            if matrix.count != self._count():
                raise keywords.KeywordMatrixError(f"{matrix.count} rows, {self._count()} chunks")
        except keywords.KeywordMatrixError as exc:
            self._warn_unreadable(file, exc)
            return None
        self._keywords = matrix
        return matrix

    def _keyword_file(self, generation: int, floor: int) -> keywords.KeywordMatrix | None:
        """The saved matrix (loaded once per file) when it can be brought to ``generation``."""
        file = self.path / KEYWORDS_FILE
        file_generation = keyword_file.read_generation(file)
        if file_generation is None or not floor <= file_generation <= generation:
            return None
        if self._keyword_base is not None and self._keyword_base.generation == file_generation:
            return self._keyword_base
        stamp = _stamp(file)
        if stamp is None:
            return None
        if self._unreadable.get(KEYWORDS_FILE) == stamp:  # warned about this very file already
            return None
        try:
            matrix = keyword_file.load(file)
        except (OSError, keywords.KeywordMatrixError) as exc:
            self._warn_unreadable(file, exc, stamp)
            return None
        if matrix.generation != file_generation:  # replaced by a writer since its header was read
            return None
        self._check(KEYWORDS_FILE, file_generation, stamp)
        self._keyword_base = matrix
        return matrix

    def _warn_unreadable(self, file: Path, exc: Exception, stamp: Stamp | None = None) -> None:
        stamp = stamp or _stamp(file)
        log.warning("%s is unreadable (%s); FTS5 answers keyword searches until a build "
                    "rewrites it", file, exc)  # fmt: skip
        if stamp is not None:
            self._unreadable[KEYWORDS_FILE] = stamp
        self._checked.pop(KEYWORDS_FILE, None)
        self._keyword_base = None

    def _keyword_delta(
        self, base: keywords.KeywordMatrix, generation: int
    ) -> keywords.KeywordMatrix:
        added, deleted = self._changes(base.generation, generation)
        new = self._db.execute(
            "SELECT c.id, c.text, d.title FROM chunks c JOIN documents d ON d.id = c.doc_id "
            "WHERE c.id IN (SELECT value FROM json_each(?)) ORDER BY c.id",
            [json.dumps(added.tolist())],
        ).fetchall()
        old = self._db.execute(
            "SELECT chunk_id, text, title FROM chunk_changes WHERE deleted = 1 "
            "AND generation > ? AND chunk_id IN (SELECT value FROM json_each(?)) ORDER BY chunk_id",
            [base.generation, json.dumps(deleted.tolist())],
        ).fetchall()
        if len(new) != len(added) or len(old) != len(deleted):
            raise keywords.KeywordMatrixError("the change log and the chunks disagree")
        tokenize = base.tokenize
        plus = keywords.build_rows(tokenize, self._weights, new, generation) if new else None
        minus = keywords.build_rows(tokenize, self._weights, old, generation) if old else None
        return base.with_delta(generation, plus, minus)

    def build_keywords(self, generation: int) -> keywords.KeywordMatrix | None:
        """Writer side, inside a snapshot: a new keyword matrix of ``generation`` built from
        FTS5; ``None`` when ``keywords.bm25`` with its delta holds it and the delta is small,
        or when FTS5 could not be read (logged)."""
        if self._keywords is None and self._unchanged_and_small(
            KEYWORDS_FILE, self.keywords_generation(), generation
        ):
            return None
        current = self.keywords(generation)
        if current is not None and current.delta_rows <= merge_threshold(current.count):
            return None
        try:
            return keywords.build(self._db.conn, FTS_TABLE, self._weights, generation)
        except (keywords.KeywordMatrixError, sqlite3.Error) as exc:
            log.warning("keyword matrix not built (%s); FTS5 answers keyword searches", exc)
            return None

    def save_keywords(self, matrix: keywords.KeywordMatrix) -> None:
        """Writer side, outside a snapshot: write ``keywords.bm25`` and keep ``matrix``."""
        file = self.path / KEYWORDS_FILE
        keyword_file.save(matrix, file)
        self._check(KEYWORDS_FILE, matrix.generation, _stamp(file))
        self._keywords = self._keyword_base = matrix
        log.info("wrote %s (%.1f MB)", file, file.stat().st_size / 1e6)

    def keywords_generation(self) -> int | None:
        """The generation ``keywords.bm25`` holds (``None`` when missing or not ours)."""
        return keyword_file.read_generation(self.path / KEYWORDS_FILE)

    def close(self) -> None:
        """Drop the loaded structures."""
        self._vectors = self._keywords = self._keyword_base = None
