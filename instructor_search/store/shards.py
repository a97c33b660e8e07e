"""Shards: embeddings in and out of an index, as a folder of Parquet files and a manifest.

A shard folder holds ``manifest.json``::

    {"format": "instructor-search-shards", "version": 1, "model": str,
     "model_fingerprint": str, "dimension": int, "document_instruction": str,
     "query_instruction": str, "chunk_tokens": int, "chunk_overlap": int}

and one or more ``*.parquet`` files, one row per chunk, with the columns of :data:`COLUMNS`
(``embedding`` is ``fixed_size_list<float32>[dimension]``). All chunks of a document are in one
file, ordinals ``0..n-1``. :func:`read_shard` checks a file and yields its documents; a file
that cannot be read (truncated, a missing or mistyped column, another dimension) is one
:class:`ShardFailure`, a bad document (NaN or zero vectors, ordinals missing or repeated, rows
that disagree on the document's fields) is another, named by file, rows and field, and nothing
of it is stored. :func:`write_shard` and :func:`write_manifest` write one, and
:func:`export_shards` writes an index back out.

Shards carry chunk texts and spans, not the document's whole text: a document read from a shard
is its chunks laid at their ``start`` offsets, with anything between them (whitespace the
chunker left out) as spaces. Its ``content_hash`` is the shard's, so a document that did not
change is recognised as unchanged. ``token_count`` is not in the format: read chunks have 0, and
ingest counts them again on the model's tokenizer when it is given one (the Ray engine does).

pyarrow is imported only here, when shards are read or written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..documents import Chunk, Document, spelled_text
from ..errors import InputError, ReaderError
from .collection import CollectionSettings

if TYPE_CHECKING:
    import pyarrow as pa

    from .index import Index

FORMAT = "instructor-search-shards"
VERSION = 1
MANIFEST = "manifest.json"
#: Chunks per Parquet file written by :func:`export_shards` (a document is never split).
ROWS_PER_FILE = 100_000
#: column -> Arrow type name (``embedding`` is checked against the manifest's dimension).
COLUMNS = {
    "doc_id": "string",
    "content_hash": "string",
    "title": "string",
    "source": "string",
    "metadata": "string",
    "ordinal": "int32",
    "start": "int32",
    "end": "int32",
    "text": "string",
    "embedding": "fixed_size_list<float32>",
}
_DOCUMENT_COLUMNS = ("content_hash", "title", "source", "metadata")


@dataclass(frozen=True)
class ShardFailure:
    """A shard file, or one document in it, that was not stored (``line``: its first row)."""

    path: str
    line: int | None
    reason: str


def _arrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise InputError("Shards need pyarrow: pip install pyarrow") from exc
    return pyarrow


@dataclass(frozen=True)
class ShardManifest(CollectionSettings):
    """What ``manifest.json`` says: the collection settings the embeddings were made with."""

    @classmethod
    def of(cls, settings: CollectionSettings) -> ShardManifest:
        return cls(**asdict(settings))

    def settings(self) -> CollectionSettings:
        return CollectionSettings(**asdict(self))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}


@dataclass
class ShardDocument(Document):
    """A document read from a shard: its content hash is the shard's (its text is rebuilt)."""

    stored_hash: str = field(default="", repr=False)

    @property
    def content_hash(self) -> str:  # type: ignore[override]
        return self.stored_hash


def read_manifest(folder: str | Path) -> ShardManifest:
    """The manifest of a shard folder; :class:`ReaderError` naming the file and field."""
    file = Path(folder) / MANIFEST
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ReaderError(
            f"{file}: missing; a shard folder holds {MANIFEST} and *.parquet"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReaderError(f"{file}: not a JSON manifest ({exc})") from exc
    if not isinstance(data, dict):
        raise ReaderError(f"{file}: the manifest must be a JSON object")
    if data.get("format") != FORMAT:
        raise ReaderError(f"{file}: field 'format' must be {FORMAT!r}, got {data.get('format')!r}")
    if data.get("version") != VERSION:
        raise ReaderError(
            f"{file}: field 'version': this software reads version {VERSION}, "
            f"got {data.get('version')!r}"
        )
    values = {}
    for spec in fields(ShardManifest):
        value = data.get(spec.name)
        kind = int if spec.type in ("int", int) else str
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ReaderError(
                f"{file}: field {spec.name!r} must be {'an int' if kind is int else 'a string'}, "
                f"got {value!r}"
            )
        values[spec.name] = value
    if values["dimension"] < 1:
        raise ReaderError(f"{file}: field 'dimension' must be positive, got {values['dimension']}")
    return ShardManifest(**values)


def shard_files(folder: str | Path) -> list[Path]:
    """The ``*.parquet`` files of a shard folder, sorted by name."""
    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        raise ReaderError(f"{folder}: no *.parquet files in this shard folder")
    return files


def shard_rows(file: Path) -> int:
    """The rows a Parquet shard's footer counts (0 when it cannot be read: :func:`read_shard`
    names the problem); what an ingest's progress counts to."""
    pa = _arrow()
    try:
        return int(pa.parquet.ParquetFile(file).metadata.num_rows)
    except (OSError, pa.ArrowException):
        return 0


def _type_error(pa: Any, name: str, column: pa.ChunkedArray, dimension: int) -> str | None:
    kind = column.type
    if name == "embedding":
        ok = (
            pa.types.is_fixed_size_list(kind)
            and kind.value_type == pa.float32()
            and kind.list_size == dimension
        )
        want = f"fixed_size_list<float32>[{dimension}]"
    elif COLUMNS[name] == "string":
        ok, want = pa.types.is_string(kind) or pa.types.is_large_string(kind), "string"
    else:
        ok, want = kind == pa.int32(), "int32"
    if not ok:
        return f"column {name!r} is {kind}, expected {want}"
    if column.null_count:
        return f"column {name!r} has {column.null_count} null values"
    return None


def read_shard(
    file: Path, manifest: ShardManifest
) -> Iterator[tuple[ShardDocument, list[Chunk], np.ndarray] | ShardFailure]:
    """The documents of one Parquet shard in file order, each with its chunks and float32
    embeddings, or a :class:`ShardFailure` for the whole file or for one document."""
    pa = _arrow()
    try:
        table = pa.parquet.read_table(file)
    except (OSError, pa.ArrowException) as exc:
        yield ShardFailure(str(file), None, f"unreadable Parquet file ({exc})")
        return
    dimension = manifest.dimension
    for name in COLUMNS:
        if name not in table.column_names:
            yield ShardFailure(str(file), None, f"column {name!r} is missing")
            return
        problem = _type_error(pa, name, table.column(name), dimension)
        if problem:
            yield ShardFailure(str(file), None, problem)
            return
    n = table.num_rows
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.ascontiguousarray(flat, dtype=np.float32).reshape(n, dimension)
    bad_rows = ~np.isfinite(vectors).all(axis=1)
    zero_rows = ~bad_rows & ~np.any(vectors != 0, axis=1)
    columns = {name: table.column(name).to_pylist() for name in COLUMNS if name != "embedding"}
    groups: dict[str, list[int]] = {}
    for row, doc_id in enumerate(columns["doc_id"]):
        groups.setdefault(doc_id, []).append(row)
    for doc_id, rows in groups.items():
        problem = _document_problem(columns, rows, bad_rows, zero_rows)
        if problem:
            yield ShardFailure(
                str(file), rows[0] + 1, f"document {doc_id!r} (rows {_rows(rows)}): {problem}"
            )
            continue
        rows.sort(key=lambda r: columns["ordinal"][r])
        first = rows[0]
        chunks = [
            Chunk(columns["ordinal"][r], columns["text"][r], columns["start"][r],
                  columns["end"][r], 0)
            for r in rows
        ]  # fmt: skip
        doc = ShardDocument(
            id=doc_id,
            text=spelled_text(chunks),
            title=columns["title"][first],
            source=columns["source"][first],
            metadata=json.loads(columns["metadata"][first]),
            stored_hash=columns["content_hash"][first],
        )
        yield doc, chunks, vectors[rows]


def _rows(rows: list[int]) -> str:
    """1-based row numbers, as a short list."""
    shown = ", ".join(str(r + 1) for r in rows[:5])
    return shown + (f", ... ({len(rows)} rows)" if len(rows) > 5 else "")


def _document_problem(
    columns: dict[str, list[Any]], rows: list[int], bad: np.ndarray, zero: np.ndarray
) -> str | None:
    """Why the rows of one document cannot be stored, naming the field; ``None`` when fine."""
    for name in _DOCUMENT_COLUMNS:
        values = {columns[name][r] for r in rows}
        if len(values) > 1:
            return f"field {name!r} differs between the rows of one document"
    try:
        metadata = json.loads(columns["metadata"][rows[0]])
    except json.JSONDecodeError as exc:
        return f"field 'metadata' is not JSON ({exc})"
    if not isinstance(metadata, dict):
        return "field 'metadata' must be a JSON object"
    ordinals = sorted(columns["ordinal"][r] for r in rows)
    if ordinals != list(range(len(rows))):
        repeated = sorted({o for o in ordinals if ordinals.count(o) > 1})
        missing = sorted(set(range(len(rows))) - set(ordinals))
        return f"field 'ordinal' must be 0..{len(rows) - 1}: " + (
            f"repeated {repeated[:5]}" if repeated else f"missing {missing[:5]}"
        )
    for flags, what in ((bad, "NaN or infinity"), (zero, "a zero vector")):
        hit = [r for r in rows if flags[r]]
        if hit:
            return f"field 'embedding' holds {what} at row {hit[0] + 1}"
    for r in rows:
        start, end, text = columns["start"][r], columns["end"][r], columns["text"][r]
        if start < 0 or end - start != len(text):
            return f"fields 'start'/'end' ({start}, {end}) do not span the text at row {r + 1}"
    return None


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_shards` wrote."""

    documents: int
    chunks: int
    files: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _schema(pa: Any, dimension: int) -> pa.Schema:
    columns = [(name, pa.string()) for name in ("doc_id", *_DOCUMENT_COLUMNS)]
    columns += [(name, pa.int32()) for name in ("ordinal", "start", "end")]
    columns += [("text", pa.string()), ("embedding", pa.list_(pa.float32(), dimension))]
    return pa.schema(columns)


def write_shard(file: str | Path, columns: Sequence[Sequence[Any]], embeddings: np.ndarray) -> None:
    """Write one Parquet shard file: ``columns`` holds the values of :data:`COLUMNS` up to
    ``text``, in that order, one per chunk, and ``embeddings`` their float32 vectors (one row
    each; the manifest's dimension). All chunks of a document go in the same file."""
    pa = _arrow()
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if len(columns) != len(COLUMNS) - 1 or embeddings.ndim != 2:
        raise InputError(
            f"a shard file takes {len(COLUMNS) - 1} columns and an (n, dimension) matrix, got "
            f"{len(columns)} columns and shape {embeddings.shape}"
        )
    dimension = embeddings.shape[1]
    schema = _schema(pa, dimension)
    arrays = [pa.array(column, type=schema.field(i).type) for i, column in enumerate(columns)]
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), dimension)
    pa.parquet.write_table(pa.Table.from_arrays([*arrays, embedding], schema=schema), file)


def write_manifest(folder: str | Path, manifest: ShardManifest) -> None:
    """Write ``manifest.json`` into the shard folder ``folder``."""
    text = json.dumps(manifest.to_json(), indent=2) + "\n"
    (Path(folder) / MANIFEST).write_text(text, encoding="utf-8")


def export_shards(
    index: Index, out: str | Path, rows_per_file: int = ROWS_PER_FILE
) -> ExportReport:
    """Write every document of ``index`` with its chunks and embeddings to the shard folder
    ``out`` (created; it must not hold shards already). Documents without chunks have no
    rows and are not written."""
    out = Path(out)
    if (out / MANIFEST).exists() or any(out.glob("*.parquet")):
        raise InputError(f"{out} already holds shards; export into a new or empty folder")
    if rows_per_file < 1:
        raise InputError(f"rows_per_file must be at least 1, got {rows_per_file}")
    out.mkdir(parents=True, exist_ok=True)
    manifest = ShardManifest.of(index.settings)
    files: list[str] = []
    documents = chunks = 0
    with index.snapshot():
        for rows in index.chunk_rows(rows_per_file):
            file = out / f"part-{len(files):05d}.parquet"
            flat = np.frombuffer(b"".join(r[-1] for r in rows), dtype=np.float32)
            columns = [[r[i] for r in rows] for i in range(len(COLUMNS) - 1)]
            write_shard(file, columns, flat.reshape(len(rows), manifest.dimension))
            files.append(str(file))
            documents += len({r[0] for r in rows})
            chunks += len(rows)
    write_manifest(out, manifest)
    return ExportReport(documents, chunks, files)
