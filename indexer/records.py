"""Record files: one :class:`Document` per record, errors named by file and line.

JSONL (one object per line), JSON (a list of records) and CSV (a header, then one record per row)
in BEIR's corpus layout: ``_id`` (or ``id``), ``title``, ``text``, ``metadata``. A broken record
is a :class:`ReadFailure` of its own (the line, or the record number in JSON) and the file reads
on; a file that cannot be read at all raises :class:`Unreadable`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from instructor_search.documents import Document

from .reader_base import SNIFF_BYTES, FoundFile, ReadFailure, Unreadable, decode_text, refuse_binary


def _record(
    file: FoundFile,
    row: dict[str, Any],
    where: tuple[str, int],  # ("line" | "record", number)
    text_key: str = "text",
    id_key: str | None = None,
    fallback_id: str | None = None,
) -> Document:
    """One record as a Document; raises :class:`Unreadable` without an id or a text."""
    if id_key is None:
        id_key = "_id" if "_id" in row else "id" if "id" in row else None
    raw_id = row.get(id_key) if id_key else None
    if raw_id is None or raw_id == "":
        if fallback_id is None:
            raise Unreadable("record has no id; give each record an '_id' or 'id' field")
        raw_id = fallback_id
    if not isinstance(raw_id, (str, int, float)) or isinstance(raw_id, bool):
        raise Unreadable(f"record id must be a string or a number, not {type(raw_id).__name__}")
    doc_id, text, title = str(raw_id), row.get(text_key), row.get("title")
    if not isinstance(text, str) or not text.strip():
        raise Unreadable(f"record {doc_id!r} has no text; put it in the {text_key!r} field")
    title = "" if title is None else " ".join(str(title).split())
    metadata = {k: v for k, v in row.items() if k not in (id_key, text_key, "title", "metadata")}
    extra = row.get("metadata")
    metadata.update(
        extra if isinstance(extra, dict) else {} if extra is None else {"metadata": extra}
    )
    kind, number = where
    metadata.update({"type": file.ext[1:], "path": file.rel, "folder": file.folder, kind: number})
    metadata["title"] = title
    source = f"{file.path}:{number}" if kind == "line" else f"{file.path}#{number}"
    return Document(id=doc_id, text=text, title=title, source=source, metadata=metadata)


def read_jsonl(file: FoundFile) -> Iterator[Document | ReadFailure]:
    """One JSON object per line, read line by line; a broken line is a failure of its own."""
    empty = True
    with file.path.open("rb") as handle:
        refuse_binary(handle.read(SNIFF_BYTES))
        handle.seek(0)
        for number, raw in enumerate(handle, 1):
            try:
                if not (line := raw.decode("utf-8").removeprefix("\ufeff")).strip():
                    continue
                empty = False
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise Unreadable(f"expected a JSON object, got {type(row).__name__}")
                yield _record(file, row, ("line", number))
            except UnicodeDecodeError as exc:
                why = f"not valid UTF-8 at byte {exc.start} of the line; convert it to UTF-8"
                yield ReadFailure(file.rel, number, why)
            except json.JSONDecodeError as exc:
                why = f"invalid JSON ({exc.msg} at column {exc.colno}); fix or remove the line"
                yield ReadFailure(file.rel, number, why)
            except Unreadable as bad:
                yield ReadFailure(file.rel, number, bad.args[0])
    if empty:
        raise Unreadable("empty file")


def read_json(file: FoundFile) -> Iterator[Document | ReadFailure]:
    """A list of records, or an object holding one under documents / records / corpus."""
    try:
        data = json.loads(decode_text(file.path.read_bytes()))
    except json.JSONDecodeError as exc:
        raise Unreadable(f"invalid JSON ({exc.msg} at column {exc.colno})", exc.lineno) from None
    if isinstance(data, dict):
        data = next((data[k] for k in ("documents", "records", "corpus") if k in data), None)
    if not isinstance(data, list):
        keys = "'documents', 'records' or 'corpus'"
        raise Unreadable(f"expected a list of records, or an object with a {keys} list")
    for number, row in enumerate(data, 1):
        try:
            if not isinstance(row, dict):
                raise Unreadable(f"expected a JSON object, got {type(row).__name__}")
            yield _record(file, row, ("record", number))
        except Unreadable as bad:
            yield ReadFailure(file.rel, None, f"record {number}: {bad.args[0]}")


def read_csv(file: FoundFile) -> Iterator[Document | ReadFailure]:
    """A header row, then one record per row (csv.DictReader)."""
    settings = file.settings
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # long texts in one cell
    reader = csv.DictReader(io.StringIO(decode_text(file.path.read_bytes()), newline=""))
    columns = reader.fieldnames or []
    text_key = settings.csv_text_column
    id_key = settings.csv_id_column or next((c for c in ("_id", "id") if c in columns), None)
    for key, option in ((text_key, "csv_text_column"), (id_key, "csv_id_column")):
        if key is not None and key not in columns:
            raise Unreadable(f"no {key!r} column (columns: {', '.join(columns)}); set {option}", 1)
    line = reader.line_num + 1
    try:
        for number, row in enumerate(reader, 1):
            try:
                if None in row:
                    raise Unreadable(f"the row has more fields than the header's {len(columns)}")
                fallback = f"{file.rel}:{number}" if id_key is None else None
                yield _record(file, row, ("line", line), text_key, id_key, fallback)
            except Unreadable as bad:
                yield ReadFailure(file.rel, line, bad.args[0])
            line = reader.line_num + 1
    except csv.Error as exc:
        raise Unreadable(f"broken CSV ({exc}); fix the quoting", reader.line_num) from None
