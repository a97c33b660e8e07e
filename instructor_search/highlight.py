"""Where a query's words occur in a hit's text: match spans and a short snippet around them.

Shared by every surface that shows hits (the CLI bolds the spans, the page wraps them in
``<mark>``), so they agree on what matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"[^\W_]+")
#: Words too common to be worth highlighting.
_STOPWORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "how", "i", "in", "is", "it", "of", "on", "or", "that", "the", "this", "to", "was", "what", "when", "where", "which", "who", "why", "with", "can", "my", "me", "you", "your", "we", "our"]
)


def query_terms(query: str) -> list[str]:
    """The query's distinct words (lower-case, stopwords and 1-letter words left out)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        if len(word) > 1 and word not in _STOPWORDS:
            seen.setdefault(word)
    return list(seen)


def match_spans(text: str, terms: list[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of every word of ``text`` that starts with a query term (so
    "vaccine" also marks "vaccines"), in order, not overlapping."""
    if not terms:
        return []
    pattern = re.compile(
        r"\b(?:" + "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)) + r")\w*",
        re.IGNORECASE,
    )
    return [match.span() for match in pattern.finditer(text)]


@dataclass(frozen=True)
class Snippet:
    """A window of a text and the match spans inside it (offsets relative to ``text``)."""

    text: str
    spans: list[tuple[int, int]]
    clipped_start: bool
    clipped_end: bool


def snippet(text: str, terms: list[str], width: int = 320) -> Snippet:
    """The ``width`` characters of ``text`` around its first match (or its start)."""
    text = " ".join(text.split())
    spans = match_spans(text, terms)
    if len(text) <= width:
        return Snippet(text, spans, False, False)
    first = spans[0][0] if spans else 0
    start = max(0, min(first - width // 4, len(text) - width))
    if start:  # begin on a word boundary
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < first else start
    end = min(len(text), start + width)
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start else end
    window = [(s - start, e - start) for s, e in spans if s >= start and e <= end]
    return Snippet(text[start:end], window, start > 0, end < len(text))
