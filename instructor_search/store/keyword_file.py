"""The ``keywords.bm25`` file: a :class:`~.keywords.KeywordMatrix` (without its delta) written
whole and read back memory-mapped, so reader processes share its pages.

Little-endian: ``magic b"ISKW" | version u16 | reserved u16 | generation i64 | rows i64 |
terms i64 | postings i64 | crc32 u32 | payload length u64`` then the chunk ids (i8), row lengths
(i4), term offsets (i8), posting rows (i4), weighted frequencies (f4) and the tokenizer option
and vocabulary (UTF-8, NUL-separated).
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..files import read_header, write_atomically
from .keywords import KeywordMatrix, KeywordMatrixError

MAGIC = b"ISKW"
VERSION = 2
_HEADER = struct.Struct("<4sHHqqqqIQ")
_BLOCK = 1 << 24  # bytes checked at a time (a multiple of the page size)


def save(matrix: KeywordMatrix, path: str | os.PathLike) -> None:
    """Write ``matrix`` (without a delta) to ``path`` atomically (temporary file, rename)."""
    path = Path(path)
    text = "\0".join([matrix.tokenize, *matrix.vocabulary]).encode("utf-8")
    arrays = (
        matrix.chunk_ids.astype("<i8"),
        matrix.lengths.astype("<i4"),
        matrix.offsets.astype("<i8"),
        matrix.rows.astype("<i4"),
        matrix.freq.astype("<f4"),
    )
    crc, length = 0, len(text)
    for a in arrays:
        crc, length = zlib.crc32(a, crc), length + a.nbytes
    crc = zlib.crc32(text, crc)
    header = _HEADER.pack(
        MAGIC, VERSION, 0, matrix.generation, len(matrix.chunk_ids), len(matrix.vocabulary),
        len(matrix.rows), crc, length,
    )  # fmt: skip
    write_atomically(path, [header, *(a.data for a in arrays), text])


def read_generation(path: str | os.PathLike) -> int | None:
    """The generation in ``path``'s header, or ``None`` when missing or not ours (cheap)."""
    header = read_header(path, _HEADER, MAGIC)
    return None if header is None else int(header[3])


def load(path: str | os.PathLike) -> KeywordMatrix:
    """Read ``path`` written by :func:`save`, memory-mapped (readers share its pages).

    Raises ``OSError`` (e.g. ``FileNotFoundError``) or :class:`KeywordMatrixError` when unreadable.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    if len(data) < _HEADER.size:
        raise KeywordMatrixError(f"{path}: truncated ({len(data)} bytes)")
    magic, version, _, generation, nrows, nterms, npostings, crc, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise KeywordMatrixError(f"{path}: not an instructor-search keyword file")
    if version != VERSION:
        raise KeywordMatrixError(f"{path}: unknown keyword file version {version}")
    payload = memoryview(data)[_HEADER.size :]
    if len(payload) != length:
        raise KeywordMatrixError(f"{path}: truncated ({len(payload)} of {length} payload bytes)")
    arrays, at = [], 0
    for dtype, count in (
        ("<i8", nrows),
        ("<i4", nrows),
        ("<i8", nterms + 1),
        ("<i4", npostings),
        ("<f4", npostings),
    ):
        size = np.dtype(dtype).itemsize * count
        if count < 0 or at + size > length:
            raise KeywordMatrixError(f"{path}: header counts exceed the payload")
        arrays.append(np.frombuffer(payload, dtype=dtype, count=count, offset=at))
        at += size
    rows_at = 8 * nrows + 4 * nrows + 8 * (nterms + 1)
    checksum, low, high = _checked(data, length, (rows_at, rows_at + 4 * npostings))
    if checksum != crc:
        raise KeywordMatrixError(f"{path}: checksum mismatch")
    tokenize, *vocabulary = bytes(payload[at:]).decode("utf-8").split("\0")
    chunk_ids, lengths, offsets, rows, freq = arrays
    if (
        len(vocabulary) != nterms
        or offsets[0] != 0
        or offsets[-1] != npostings
        or np.any(np.diff(offsets) < 0)
        or low < 0
        or high >= nrows
    ):
        raise KeywordMatrixError(f"{path}: inconsistent postings")
    return KeywordMatrix(generation, tokenize, chunk_ids, lengths, vocabulary, offsets, rows, freq)


def _checked(data: mmap.mmap | bytes, length: int, rows: tuple[int, int]) -> tuple[int, int, int]:
    """``(crc32, least, largest)``: the checksum of the ``length`` payload bytes and the range of
    the posting rows at payload bytes ``rows`` (start, end; multiples of 4), block by block;
    each block's pages are then released from this process (they stay in the page cache), so
    the map is resident only where queries touch it, not whole (its RSS)."""
    crc, low, high = 0, 0, -1
    view = memoryview(data)
    release = getattr(data, "madvise", None) if hasattr(mmap, "MADV_DONTNEED") else None
    end = _HEADER.size + length
    for block in range(0, end, _BLOCK):  # file offsets, page-aligned
        a, b = max(block, _HEADER.size), min(block + _BLOCK, end)
        crc = zlib.crc32(view[a:b], crc)
        first, last = max(rows[0], a - _HEADER.size), min(rows[1], b - _HEADER.size)
        if first < last:
            values = np.frombuffer(data, "<i4", (last - first) // 4, _HEADER.size + first)
            low, high = min(low, int(values.min())), max(high, int(values.max()))
        if release is not None:
            release(mmap.MADV_DONTNEED, block, min(_BLOCK, len(data) - block))
    view.release()
    return crc, low, high
