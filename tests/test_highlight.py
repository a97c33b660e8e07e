"""Snippets as text: Markdown markup dropped before spans are found (so the CLI's bold and the
page's ``<mark>`` land on the query's words), and stop words never marked."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from instructor_search.search.highlight import excerpt, match_spans, plain_text, query_terms
from instructor_search.ui import render

ASTHMA = Path(__file__).resolve().parents[1] / "sample_corpus/documents/medicine/asthma-inhalers.md"


@pytest.mark.parametrize(
    ("markdown", "text"),
    [
        ("## Types of device", "Types of device"),
        ("# Title #", "Title"),
        (
            "a **bold** and *light* and _em_ and __two words__",
            "a bold and light and em and two words",
        ),
        ("- **Spacers.** A plastic tube", "Spacers. A plastic tube"),
        ("* item\n+ other", "item\nother"),
        ("> quoted *words*", "quoted words"),
        (
            "see [the guide](https://example.org/a_b) or ![a chart](c.png)",
            "see the guide or a chart",
        ),
        ("[text][ref] and <https://example.org>", "text and https://example.org"),
        ("| model | score |\n| --- | :---: |\n| a | 0.7 |", "model · score\n\na · 0.7"),
        ("para\n\n---\n\nnext", "para\n\n\n\nnext"),
        ("```python\nx = a**2  # *kept*\n```", "x = a**2  # *kept*"),
        ("use `**kwargs` and `SELECT * FROM t`", "use **kwargs and SELECT * FROM t"),
        (r"a \*literal\* star", "a *literal* star"),
        ("~~old~~ new", "old new"),
        ("1. First step", "1. First step"),  # the number is content
    ],
)
def test_plain_text_drops_markup_and_keeps_what_it_marks(markdown, text):
    assert plain_text(markdown) == text


@pytest.mark.parametrize(
    "text",
    [
        "2 * 3 * 4 = 24, snake_case_name, __init__ and C:\\Users\\me",
        "#1 priority; -5 degrees; a_b_c; 5*x*y",
        "Plain prose with no markup at all.\nTwo lines.",
    ],
)
def test_text_without_markup_is_unchanged(text):
    assert plain_text(text) == text


def test_excerpt_of_markdown_shows_text_with_spans_on_the_terms():
    source = ASTHMA.read_text()
    assert "## Types of device" in source and "**Pressurised" in source
    terms = query_terms("the types of inhaler device")
    assert terms == ["types", "inhaler", "device"]
    piece = excerpt(source, terms, 300)
    assert "##" not in piece.text and "**" not in piece.text
    assert "Types of device" in piece.text
    marked = [piece.text[start:end].lower() for start, end in piece.spans]
    assert marked and all(word.startswith(("types", "inhaler", "device")) for word in marked)
    assert "types" in marked and "device" in marked


def test_stop_words_are_never_marked():
    terms = query_terms("What is the dose of salt for an adult?")
    assert terms == ["dose", "salt", "adult"]
    text = "The dose of salt is the same for an adult."
    assert [text[s:e] for s, e in match_spans(text, terms)] == ["dose", "salt", "adult"]
    assert render.highlight(text, terms).count("<mark>") == 3
    assert query_terms("the of is and") == []
    assert match_spans(text, query_terms("the of is and")) == []


def test_page_card_and_context_show_text():
    from instructor_search.search.retriever import Hit

    text = "## Types of device\n\n- **Spacers.** A plastic tube attached to an inhaler."
    hit = Hit(1, 0.5, 1, "a.md", "A", "a.md", text, {"type": "md"}, (0, len(text)))
    card = render.result_card(hit, query_terms("spacers for an inhaler"), "dense")
    assert "##" not in card and "**" not in card
    assert "<mark>Spacers</mark>. A plastic tube attached to an <mark>inhaler</mark>." in card
    context = render.surrounding_text(text, (20, len(text)), ["spacers"])
    assert "**" not in context and "##" not in context
    assert "Types of device\n\n" in context and "<mark>Spacers</mark>." in context


@pytest.mark.slow
def test_cli_snippets_show_text(tmp_path, tiny_path):
    from instructor_search.indexer.cli import cli

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "inhalers.md").write_text(ASTHMA.read_text())
    index = tmp_path / "index"
    runner = CliRunner()
    built = runner.invoke(
        cli, ["build", str(corpus), "--index", str(index), "--model", str(tiny_path), "-q"]
    )
    assert built.exit_code == 0, built.output
    found = runner.invoke(
        cli, ["search", str(index), "types of device spacers", "--mode", "keyword", "-k", "3"]
    )
    assert found.exit_code == 0, found.output
    snippets = [line for line in found.output.splitlines() if line.startswith("    ")][1::2]
    assert snippets and not any("##" in s or "**" in s for s in snippets), found.output
