"""Document ids across sources: the reader's id, prefixed by the source's name on a collision.

A reader names a file by its path relative to its source (``README.md``) and a record by its
own id. ``build ./a ./b`` where both folders hold a ``README.md`` gives ``README.md`` to the
first one found and ``b/README.md`` to the other. The rule is stable by construction: a
document that is already in the index keeps the id it has there, so adding, removing or
reordering sources later never renames a stored document (nor re-embeds it); only a new
document whose plain id is held by another source's document takes the prefixed one
(``b~2/README.md`` in the rare case that is taken too).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from instructor_search.documents import Document

#: What follows a root in a source under it: a path separator, or a record's ``:line`` / ``#n``.
_AFTER_ROOT = (os.sep, ":", "#")


def under(source: str, root: str) -> bool:
    """Whether a stored ``source`` (a file, or a record ``file:line`` / ``file#n``) is in
    ``root`` (a folder or a file)."""
    return source == root or source.startswith(tuple(root + tail for tail in _AFTER_ROOT))


def under_any(roots: Iterable[str]) -> Callable[[str], bool]:
    """Whether a stored ``source`` is :func:`under` any of ``roots`` (one test per source,
    however many roots)."""
    names = set(roots)
    starts = tuple(root + tail for root in names for tail in _AFTER_ROOT)
    return lambda source: source in names or source.startswith(starts)


class DocumentIds:
    """Gives each document of a build its id, in the order the build reads them."""

    def __init__(self, stored_sources: dict[str, str]) -> None:
        self._stored = stored_sources  # id -> source, of every document in the index
        self._taken: set[str] = set()  # ids given in this build

    def keep(self, doc_id: str) -> None:
        """Hold ``doc_id`` for a stored document this build keeps without reading it."""
        self._taken.add(doc_id)

    def assign(self, doc: Document, root: Path) -> Document | None:
        """``doc`` under the id it gets (a copy when it changes); ``None`` if it has none."""
        mine = str(root)
        candidates = [doc.id] + [
            f"{_prefix(root)}{'' if n == 1 else f'~{n}'}/{doc.id}" for n in range(1, 10)
        ]
        free = [c for c in candidates if c not in self._taken]
        chosen = next((c for c in free if c in self._stored and under(self._stored[c], mine)), None)
        if chosen is None:  # a new document: the first id no other source's document holds
            chosen = next((c for c in free if c not in self._stored), None)
        if chosen is None:
            return None
        self._taken.add(chosen)
        return doc if chosen == doc.id else dataclasses.replace(doc, id=chosen)


def _prefix(root: Path) -> str:
    """The source's name (``notes`` for ``./notes``, ``papers.jsonl`` for a record file)."""
    return root.name or str(root).strip(os.sep) or "root"
