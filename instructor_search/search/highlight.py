"""Where a query's words occur in a hit's text: match spans and the best excerpt around them.

Shared by every surface that shows hits (the CLI bolds the spans, the page wraps them in
``<mark>``), so they agree on what matched. Texts are shown as text: :func:`plain_text` drops
Markdown's markup (``## `` headings, ``**bold**``, links, list bullets, table pipes) and keeps
what it marks up, and spans are found on that plain text.
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
#: Lines that are markup only: rules, setext underlines, table separators, link definitions.
_MARKUP_LINE = re.compile(
    r"^ {0,3}(?:([-*_])(?: *\1){2,}|=+|\|? *:?-+:? *(?:\| *:?-+:? *)+\|?|\[[^\]]+\]: +\S+.*) *$"
)
_FENCE = re.compile(r"^ {0,3}(?:```|~~~)")
#: What opens a line: a heading's hashes, quote marks, a list bullet.
_LINE_START = re.compile(r"^ {0,3}#{1,6}(?: +|$)|^ *(?:> ?)+|^ *[-*+] +")
_CLOSING_HASHES = re.compile(r" +#+ *$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_INLINE = (
    (re.compile(r"!?\[([^\]]*)\]\([^()\s]*(?: +\"[^\"]*\")?\)"), r"\1"),  # [text](url), images
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),  # [text][ref]
    (re.compile(r"<((?:https?|mailto):[^>\s]+)>"), r"\1"),  # <https://...>
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"), r"\1"),
    (re.compile(r"(?<!\w)__(?!\w+__(?!\w))(?=\S)(.+?)(?<=\S)__(?!\w)"), r"\1"),  # not __init__
    (re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])"), r"\1"),
    (re.compile(r"(?<!\w)_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)"), r"\1"),
    (re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"), r"\1"),
)
#: A backslash-escaped punctuation mark is that mark, never markup: hidden while rules apply.
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")
_HIDDEN = re.compile("[\ue000-\ue07f]")
#: Terms at least this long also mark longer words they begin (inhaler -> inhalers).
PREFIX_MATCH_LENGTH = 4
#: How far before its first match an excerpt starts.
_LEAD = 60


def _plain_inline(line: str) -> str:
    pieces, position = [], 0
    for code in _CODE_SPAN.finditer(line):  # code is kept as written
        pieces += [_plain_prose(line[position : code.start()]), code.group(2)]
        position = code.end()
    return "".join([*pieces, _plain_prose(line[position:])])


def _plain_prose(text: str) -> str:
    hide = not _HIDDEN.search(text)  # (a text using those private-use characters keeps them)
    if hide:
        text = _ESCAPED.sub(lambda m: chr(0xE000 + ord(m.group(1))), text)
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return _HIDDEN.sub(lambda m: chr(ord(m.group()) - 0xE000), text) if hide else text


def plain_text(text: str) -> str:
    """``text`` without Markdown markup, line by line: headings, quotes and bullets lose their
    marks, tables their pipes, emphasis, links and code spans keep only their text; rules and
    fences go. Text without markup comes back unchanged."""
    lines, fenced = [], False
    for line in text.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            lines.append(line)
            continue
        if _MARKUP_LINE.match(line):
            lines.append("")
            continue
        opening = _LINE_START.match(line)
        if opening and "#" in opening.group():
            line = _CLOSING_HASHES.sub("", line)
        line = line[opening.end() :] if opening else line
        if line.lstrip().startswith("|"):  # a table row: its cells
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            line = " · ".join(cell for cell in cells if cell)
        lines.append(_plain_inline(line))
    return "\n".join(lines)


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
    """The ``length`` characters of ``text`` (as :func:`plain_text`, whitespace folded) holding
    the most query-term matches, cut at words."""
    text = " ".join(plain_text(text).split())
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
