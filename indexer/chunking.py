"""Token-aware chunking: overlapping windows of a text, on the model's own tokenizer.

The text is tokenized once (with character offsets) to plan the windows; each window ends at the
best boundary in its last ~30% (paragraph > sentence > line > word > any token) and the next one
starts ~``chunk_overlap`` tokens earlier, at a word start. Every chunk is then re-tokenized on its
own, and shrunk where that count is over the budget, so a chunk always fits the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from instructor_search.documents import Chunk
from instructor_search.errors import InputError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

MIN_WINDOW = 8
"""The smallest window (in text tokens) a chunk may have."""

_SEARCH_BACK = 0.3  # look for a good boundary within the last 30% of a window
_SEGMENT_CHARS = 16_384  # long texts are tokenized in segments of about this size, in parallel
_PLAN_BATCH = 128  # windows planned, then verified in one parallel batch
_SENTENCE_END = frozenset(".!?。！？")
_NO_SPACE_SENTENCE_END = frozenset("。！？")  # scripts written without spaces
_CLOSERS = frozenset("\"')]}»”’")
_PARAGRAPH, _SENTENCE, _LINE, _WORD, _TOKEN = 4, 3, 2, 1, 0

Offsets = list[tuple[int, int]]


@dataclass(frozen=True)
class ChunkSettings:
    """How documents are cut: window size and overlap, in the model's tokens."""

    chunk_tokens: int = 200
    """The most tokens of text in one chunk (special tokens and the instruction not counted)."""
    chunk_overlap: int = 32
    """About how many tokens consecutive chunks share."""

    def __post_init__(self) -> None:
        if not isinstance(self.chunk_tokens, int) or self.chunk_tokens < MIN_WINDOW:
            raise InputError(
                f"chunk_tokens of {self.chunk_tokens!r} is too small a chunk window: it must be "
                f"at least {MIN_WINDOW} tokens"
            )
        if not isinstance(self.chunk_overlap, int):
            raise InputError(f"chunk_overlap must be a whole number, got {self.chunk_overlap!r}")
        if self.chunk_overlap < 0:
            raise InputError(f"chunk_overlap must be 0 or more, got {self.chunk_overlap}")
        if self.chunk_overlap >= self.chunk_tokens:
            raise InputError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens "
                f"({self.chunk_tokens}); lower the overlap or raise chunk_tokens"
            )


class Chunker:
    """Cuts texts into :class:`Chunk` windows that fit the model, on its own tokenizer.

    ``tokenizer`` is a Hugging Face fast tokenizer (``PreTrainedTokenizerFast``) or a
    ``tokenizers.Tokenizer``. ``max_text_tokens`` is the most text tokens the model takes once
    its special tokens and the instruction are counted; the window is
    ``min(settings.chunk_tokens, max_text_tokens)``.
    """

    def __init__(
        self,
        tokenizer: Any,
        settings: ChunkSettings = ChunkSettings(),
        max_text_tokens: int | None = None,
    ) -> None:
        window = settings.chunk_tokens
        if max_text_tokens is not None:
            window = min(window, max_text_tokens)
        if window < MIN_WINDOW:
            raise InputError(
                f"a chunk window of {window} tokens is too small (at least {MIN_WINDOW}): raise "
                "chunk_tokens, or use a shorter instruction or a model with a longer "
                "max_seq_length"
            )
        if settings.chunk_overlap >= window:
            raise InputError(
                f"chunk_overlap ({settings.chunk_overlap}) must be smaller than the chunk window "
                f"({window} tokens, limited by the model); lower chunk_overlap"
            )
        self.settings = settings
        self.window = window
        self.overlap = settings.chunk_overlap
        self._tokenizer = _plain_tokenizer(tokenizer)

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is on its own, without special tokens."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def chunk(self, text: str, prefix: str = "") -> list[Chunk]:
        """Cut ``text`` into chunks; ``prefix`` (e.g. the title) will precede the first one.

        Each chunk's ``text`` is ``text[start:end]``; together the chunks cover all of the
        text's non-whitespace content. The first chunk leaves room for ``prefix``.
        """
        if not text or text.isspace():
            return []
        prefix_tokens = self.count_tokens(prefix) if prefix else 0
        if self.window - prefix_tokens < MIN_WINDOW:
            raise InputError(
                f"the prefix takes {prefix_tokens} of the {self.window}-token window, leaving "
                f"less than {MIN_WINDOW}; shorten it (e.g. the document title) or raise "
                "chunk_tokens"
            )
        offsets = self._offsets(text)
        if not offsets:  # nothing the tokenizer keeps (e.g. only control characters)
            start, end = _strip(text, 0, len(text))
            return [Chunk(0, text[start:end], start, end, 0)]
        return _Plan(self, text, offsets, prefix, prefix_tokens).run()

    def _offsets(self, text: str) -> Offsets:
        """Character offsets of every token of ``text``; long texts in parallel segments.

        Segments are cut after a run of whitespace, where tokenizers split words anyway; any
        difference at a cut only moves a planned boundary, as every chunk is verified later.
        """
        if len(text) <= 2 * _SEGMENT_CHARS:
            return self._tokenizer.encode(text, add_special_tokens=False).offsets
        starts, at = [0], _SEGMENT_CHARS
        while at < len(text) - _SEGMENT_CHARS:
            cut = _segment_cut(text, at)
            if cut is not None:
                starts.append(cut)
            at = (cut or at) + _SEGMENT_CHARS
        ends = [*starts[1:], len(text)]
        pieces = [text[a:b] for a, b in zip(starts, ends, strict=True)]
        encodings = self._tokenizer.encode_batch(pieces, add_special_tokens=False)
        offsets: Offsets = []
        for shift, encoding in zip(starts, encodings, strict=True):
            offsets.extend([(s + shift, e + shift) for s, e in encoding.offsets])
        return offsets


class _Plan:
    """One text being chunked: plans token windows, verifies them, shrinks the ones over budget."""

    def __init__(
        self, chunker: Chunker, text: str, offsets: Offsets, prefix: str, prefix_tokens: int
    ) -> None:
        self.chunker = chunker
        self.text = text
        self.offsets = offsets
        self.n = len(offsets)
        while self.n > 1 and not text[offsets[self.n - 1][0] : offsets[self.n - 1][1]].strip():
            self.n -= 1  # trailing whitespace tokens belong to the last chunk
        self.prefix = prefix
        self.first_budget = chunker.window - prefix_tokens

    def run(self) -> list[Chunk]:
        spans: list[tuple[int, int]] = []  # token windows [i, k), verified
        counts: list[int] = []  # their own token counts
        start_token = 0
        while True:
            pending = self._plan_from(start_token, spans[-1][1] if spans else 0)
            over_at = self._verify(pending, first=not spans, counts=counts)
            spans.extend(pending if over_at is None else pending[:over_at])
            if over_at is not None:
                i, k = pending[over_at]
                floor = spans[-1][1] if spans else 0
                k, own, fits = self._shrink(i, k, floor, first=not spans)
                if not fits and i < floor:  # it only fits past the previous end: no overlap
                    start_token = floor
                    continue
                if not fits:
                    start, end = self._span(i, k)
                    logger.warning(
                        "chunk at characters %d-%d is over the %d-token window and has no "
                        "clean place to cut",
                        start,
                        end,
                        self.chunker.window,
                    )
                spans.append((i, k))
                counts.append(own)
            i, k = spans[-1]
            if k >= self.n:
                break
            start_token = self._next_start(i, k)
        kept: list[tuple[int, int, int]] = []  # (start, end, count)
        for (i, k), count in zip(spans, counts, strict=True):
            start, end = self._span(i, k)
            if start >= end or (kept and kept[-1][0] <= start and end <= kept[-1][1]):
                continue  # nothing new (possible where a normalizer skews the offsets)
            if kept and start <= kept[-1][0] and kept[-1][1] <= end:
                kept.pop()
            kept.append((start, end, count))
        return [Chunk(n, self.text[s:e], s, e, c) for n, (s, e, c) in enumerate(kept)]

    # -- planning on the whole-text tokenization ----------------------------------------

    def _plan_from(self, i: int, floor: int) -> list[tuple[int, int]]:
        """Up to ``_PLAN_BATCH`` windows from token ``i``, each ending past the last (and floor)."""
        spans: list[tuple[int, int]] = []
        budget = self.chunker.window if floor else self.first_budget
        while len(spans) < _PLAN_BATCH:
            j = i + budget
            if j >= self.n:
                spans.append((i, self.n))
                return spans
            k = self._break_before(i, j, max(i, spans[-1][1] if spans else floor))
            spans.append((i, k))
            if k >= self.n:
                return spans
            i = self._next_start(i, k)
            budget = self.chunker.window
        return spans

    def _clean(self, k: int) -> bool:
        """Whether the text may be cut before token ``k`` (no token straddles the cut)."""
        return self.offsets[k - 1][1] <= self.offsets[k][0]

    def _can_end(self, k: int) -> bool:
        """Whether a chunk may end before token ``k``: a clean cut after a token with content."""
        start, end = self.offsets[k - 1]
        return self._clean(k) and not self.text[start:end].isspace() and start < end

    def _break_before(self, i: int, j: int, floor: int) -> int:
        """The best place ``k`` in (floor, j] to end the window that starts at token ``i``.

        ``floor`` (>= i) is where the previous window ended: a window must reach past it.
        """
        lo = max(floor + 1, j - int(_SEARCH_BACK * (j - i)), min(i + self.chunker.overlap + 1, j))
        best, best_tier = -1, -1
        for k in range(j, lo - 1, -1):
            if not self._can_end(k):
                continue
            tier = self._tier(k)
            if tier > best_tier:
                best, best_tier = k, tier
                if tier == _PARAGRAPH:
                    break
        if best > 0:
            return best
        for k in range(lo - 1, floor, -1):  # no clean cut in the search range: take any
            if self._can_end(k):
                return k
        for k in range(j + 1, self.n):  # none at all: the next one (verification will warn)
            if self._can_end(k):
                return k
        return self.n

    def _tier(self, k: int) -> int:
        """How good a boundary the cut before token ``k`` is."""
        text = self.text
        a, b = self.offsets[k - 1][1], self.offsets[k][0]
        while b < len(text) and text[b].isspace():  # tokens whose offsets include the space
            b += 1
        gap = text[a:b]
        newlines = gap.count("\n")
        if newlines >= 2:
            return _PARAGRAPH
        spaced = gap[:1].isspace() or gap[-1:].isspace()
        last = text[a - 1] if a > 0 else ""
        if last in _CLOSERS and a > 1:
            last = text[a - 2]
        if last in _SENTENCE_END and (spaced or last in _NO_SPACE_SENTENCE_END):
            return _SENTENCE
        if newlines:
            return _LINE
        return _WORD if spaced else _TOKEN

    def _next_start(self, i: int, k: int) -> int:
        """Where the window after [i, k) starts: ~overlap tokens back, at a word start."""
        for b in range(max(k - self.chunker.overlap, i + 1), k):
            if self._clean(b) and self._word_start(b):
                return b
        return k

    def _word_start(self, b: int) -> bool:
        """Whether token ``b`` begins a word (and is not itself only whitespace)."""
        text = self.text
        a, (s, e) = self.offsets[b - 1][1], self.offsets[b]
        if not text[s:e].strip():
            return False
        if text[a:s].strip() != text[a:s] or text[s].isspace():
            return True  # whitespace before (or at the start of) the token
        cur, prev = text[s], text[a - 1] if a > 0 else " "
        if _is_cjk(cur):
            return True
        return _is_wordy(cur) and not _is_wordy(prev) and prev not in "'’"

    def _span(self, i: int, k: int) -> tuple[int, int]:
        """Character span of tokens [i, k), stretched over dropped characters, stripped."""
        start = 0 if i == 0 else self.offsets[i][0]
        end = len(self.text) if k >= self.n else self.offsets[k][0]
        return _strip(self.text, start, max(end, self.offsets[k - 1][1]))

    # -- verification on each chunk's own tokenization ----------------------------------

    def _verify(self, spans: list[tuple[int, int]], first: bool, counts: list[int]) -> int | None:
        """Append the spans' own token counts to ``counts`` up to the first one over budget."""
        texts = []
        for i, k in spans:
            start, end = self._span(i, k)
            texts.append(self.text[start:end])
        if first and self.prefix:
            texts.append(self.prefix + texts[0])
        tokenizer = self.chunker._tokenizer
        own = [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
        if first and self.prefix:
            joint = own.pop()
            if joint > self.chunker.window:
                return 0
        for index, count in enumerate(own):
            if count > self.chunker.window:
                return index
            counts.append(count)
        return None

    def _shrink(self, i: int, k: int, floor: int, first: bool) -> tuple[int, int, bool]:
        """End the window [i, k) earlier, but past ``floor``, until it fits on its own.

        Returns the new end, the chunk's own token count, and whether it fits (with the
        prefix, for the first chunk).
        """
        chunker = self.chunker
        floor = max(floor, i)
        while True:
            start, end = self._span(i, k)
            piece = self.text[start:end]
            own = chunker.count_tokens(piece)
            fitted = chunker.count_tokens(self.prefix + piece) if first and self.prefix else own
            over = fitted - chunker.window
            if over <= 0:
                return k, own, True
            smaller = self._break_before(i, k - over, floor) if k - over > floor else k
            if smaller >= k:
                return k, own, False
            k = smaller


def _plain_tokenizer(tokenizer: Any) -> Tokenizer:
    """A private copy of the fast tokenizer's backend, without truncation or padding."""
    import tokenizers

    backend = tokenizer
    if not isinstance(backend, tokenizers.Tokenizer):
        backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, tokenizers.Tokenizer):
        raise InputError(
            f"chunking needs a fast tokenizer (transformers.PreTrainedTokenizerFast or "
            f"tokenizers.Tokenizer), got {type(tokenizer).__name__}; load it with "
            "AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    plain = tokenizers.Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def _segment_cut(text: str, at: int) -> int | None:
    """The first position after a run of whitespace (or before a CJK letter) from ``at`` on."""
    limit = at + _SEGMENT_CHARS // 2
    cut = text.find("\n", at, limit)
    if cut < 0:
        cut = text.find(" ", at, limit)
    if cut < 0:
        return next((n for n in range(at, min(limit, len(text))) if _is_cjk(text[n])), None)
    while cut < len(text) and text[cut].isspace():
        cut += 1
    return cut if cut < len(text) else None


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    """Narrow ``[start, end)`` to exclude leading and trailing whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _is_cjk(char: str) -> bool:
    """Letters of scripts written without spaces, where every character starts a word."""
    return ord(char) >= 0x2E80 and char.isalnum()


def _is_wordy(char: str) -> bool:
    return char.isalnum() and not _is_cjk(char)
