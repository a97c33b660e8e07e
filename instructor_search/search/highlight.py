"""Where a query's words occur in a hit's text: match spans and the best excerpt around them.

Shared by every surface that shows hits (the CLI bolds the spans, the page wraps them in
``<mark>``), so they agree on what matched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: What FTS5's unicode61 tokenizer calls a token, so highlights agree with keyword search.
_TOKEN = re.compile(r"[^\W_]+")
#: Query words too common to be worth marking in the text.
STOPWORDS = frozenset(
    "a about after all also am an and any are as at be been but by can could did do does doing "  # noqa: SIM905
    "for from had has have how i if in into is it its just me more my no not of off on or our "
    "out over should so some such than that the their them then there these they this those to "
    "too under up us very was we were what when where which while who whom why will with would "
    "you your".split()
)
#: Terms at least this long also mark longer words they begin (inhaler -> inhalers).
PREFIX_MATCH_LENGTH = 4
#: How far before its first match an excerpt starts.
_LEAD = 60


def query_terms(query: str) -> list[str]:
    """The query's words worth marking: lower-cased tokens minus stopwords, in order."""
    words = (token.lower() for token in _TOKEN.findall(query or ""))
    return list(dict.fromkeys(word for word in words if word not in STOPWORDS))


def _pattern(terms: Sequence[str]) -> re.Pattern[str] | None:
    if not terms:
        return None
    alternatives = []
    for term in sorted(set(terms), key=len, reverse=True):
        tail = r"[^\W_]*" if len(term) >= PREFIX_MATCH_LENGTH else r"(?![^\W_])"
        alternatives.append(re.escape(term) + tail)
    return re.compile(r"(?<![^\W_])(?:" + "|".join(alternatives) + ")", re.IGNORECASE)


def match_spans(text: str, terms: Sequence[str]) -> list[tuple[int, int]]:
    """``(start, end)`` of every word of ``text`` that matches a query term, in order."""
    pattern = _pattern(terms)
    return [match.span() for match in pattern.finditer(text)] if pattern else []


@dataclass(frozen=True)
class Excerpt:
    """A window of a text (whitespace folded), its match spans, and whether it was cut."""

    text: str
    spans: list[tuple[int, int]]
    cut_start: bool
    cut_end: bool


def excerpt(text: str, terms: Sequence[str], length: int = 420) -> Excerpt:
    """The ``length`` characters of ``text`` holding the most query-term matches, cut at words."""
    text = " ".join(text.split())
    if len(text) <= length:
        return Excerpt(text, match_spans(text, terms), False, False)
    starts = [start for start, _ in match_spans(text, terms)]
    best, most = 0, 0
    for i, first in enumerate(starts):  # windows that open (a little before) a match
        count = sum(1 for later in starts[i:] if later < first + length - _LEAD)
        if count > most:
            best, most = max(0, first - _LEAD), count
    best = min(best, len(text) - length)
    if best > 0:
        space = text.find(" ", best)
        best = space + 1 if 0 <= space < best + 30 else best
    end = min(len(text), best + length)
    if end < len(text):
        space = text.rfind(" ", best, end)
        end = space if space > end - 30 else end
    window = text[best:end]
    return Excerpt(window, match_spans(window, terms), best > 0, end < len(text))
