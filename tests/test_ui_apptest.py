"""The search page's logic under Streamlit's AppTest: a real index (14 documents of the sample
corpus, embedded with the tiny INSTRUCTOR checkpoint, which uses instructions), the real
Retriever, no browser. The index reaches the page through ``INSTRUCTOR_SEARCH_INDEX``.

The tiny checkpoint has random weights, so dense rankings mean nothing here; checks of what
comes first use keyword mode, and the comparison is checked for its shape and labels.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest

from instructor_search.search.highlight import excerpt, query_terms
from instructor_search.ui import render

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "ui" / "app.py"
DOCUMENTS = ROOT / "sample_corpus" / "documents"
SUBSET = [
    "medicine/asthma-inhalers.md",
    "medicine/hypertension-and-salt.pdf",
    "medicine/sepsis-early-signs.txt",
    "medicine/antibiotic-resistance.html",
    "cooking/maillard-reaction.md",
    "cooking/recipes-notes.jsonl",  # three records with year and tags
    "cooking/food-safety-temperatures.pdf",
    "cooking/brining-poultry.txt",
    "computing/sql-indexes.md",
    "computing/dns-resolution.pdf",
    "computing/cpu-caches.html",
]
MARKUP = "<script>alert('x')</script> A note on <b>markup</b> & escaping in search results."
TIMEOUT = 60  # the first run loads the model


@pytest.fixture(scope="session")
def ui_index(tmp_path_factory: pytest.TempPathFactory, tiny_path: Path) -> Path:
    from instructor_search.indexer.build import BuildSettings, build

    corpus = tmp_path_factory.mktemp("ui-corpus")
    for name in SUBSET:
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DOCUMENTS / name, corpus / name)
    (corpus / "computing" / "markup-notes.txt").write_text(MARKUP)
    index = tmp_path_factory.mktemp("ui-index") / "index"
    build([corpus], index, BuildSettings(model=str(tiny_path)))
    return index


@pytest.fixture
def page(ui_index: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("INSTRUCTOR_SEARCH_INDEX", str(ui_index))
    return AppTest.from_file(APP, default_timeout=TIMEOUT)


def cards(at: AppTest) -> list[dict[str, str]]:
    """The result cards' data attributes and titles, in page order."""
    found = []
    for element in at.html:
        html = element.value
        if html.startswith('<div class="result-card"'):
            head = html.split(">", 1)[0]
            attrs = {
                k.replace("-", "_"): v for k, v in re.findall(r'data-([\w-]+)="([^"]*)"', head)
            }
            attrs["title"] = re.search(r'<span class="rc-title">(.*?)</span>', html).group(1)
            attrs["html"] = html
            found.append(attrs)
    return found


def search(at: AppTest, query: str, **state: object) -> AppTest:
    for key, value in state.items():
        at.session_state[key] = value
    at.text_input(key="query").input(query)
    return at.run()


def no_failure(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


# -- the page -------------------------------------------------------------------------------------


def test_search_shows_ranked_results_with_highlights(page: AppTest) -> None:
    at = page.run()
    no_failure(at)
    at = search(at, "how much salt raises blood pressure", mode="keyword")
    no_failure(at)
    found = cards(at)
    assert found[0]["title"] == "High Blood Pressure and Dietary Salt"
    assert [c["rank"] for c in found] == [str(i) for i in range(1, len(found) + 1)]
    assert "<mark>" in found[0]["html"].lower() and "<mark>salt" in found[0]["html"].lower()
    assert "RRF" not in found[0]["html"] and "BM25" in found[0]["html"]
    summary = [c.value for c in at.caption if " ms · keyword" in c.value]
    assert summary and summary[0].startswith(f"{len(found)} documents")
    latency = [m for m in at.sidebar.get("metric") if m.label == "Query latency"]
    assert latency and latency[0].value.endswith(" ms")


def test_default_mode_and_k(page: AppTest) -> None:
    at = page.run()
    assert at.segmented_control(key="mode").value == "hybrid"  # the Retriever's default
    at = search(at, "temperature", k=3)
    no_failure(at)
    assert len(cards(at)) == 3


def test_empty_query_shows_a_hint_and_example_queries(page: AppTest) -> None:
    at = page.run()
    no_failure(at)
    assert not cards(at)
    assert any("Type a question" in info.value for info in at.info)
    examples = [b for b in at.button if b.key and b.key.startswith("example_")]
    assert len(examples) >= 2
    examples[0].click()
    at.run()
    no_failure(at)
    assert at.text_input(key="query").value == examples[0].label
    assert cards(at)


def test_no_results_has_its_own_state(page: AppTest) -> None:
    at = search(page.run(), "zzyzx qwxv", mode="keyword")
    no_failure(at)
    assert not cards(at)
    assert any("No results" in w.value for w in at.warning)


def test_filters_restrict_results(page: AppTest) -> None:
    at = page.run()
    labels = {w.label for w in at.sidebar.get("multiselect")}
    assert {"File type", "Folder", "Tags"} <= labels

    at.multiselect(key="filter_type").set_value(["pdf"])
    at = search(at, "temperature safety pressure")
    no_failure(at)
    found = cards(at)
    assert found and {c["type"] for c in found} == {"pdf"}

    at.multiselect(key="filter_type").set_value([])
    at.multiselect(key="filter_folder").set_value(["cooking"])
    at.run()
    found = cards(at)
    assert found and {c["folder"] for c in found} == {"cooking"}

    at.multiselect(key="filter_folder").set_value([])
    at.multiselect(key="filter_tags").set_value(["baking"])
    at.run()
    no_failure(at)
    found = cards(at)
    assert found and {c["type"] for c in found} == {"jsonl"}


def test_year_range_filter(page: AppTest) -> None:
    at = page.run()
    slider = at.slider(key="filter_year")
    low, high = slider.value
    assert low < high
    slider.set_value((high, high))
    at = search(at, "cooking technique")
    no_failure(at)
    found = cards(at)
    assert found and {c["type"] for c in found} == {"jsonl"}


def test_document_html_is_shown_as_text(page: AppTest) -> None:
    at = search(page.run(), "markup escaping script", mode="keyword")
    no_failure(at)
    card = cards(at)[0]
    assert card["doc_id"] == "computing/markup-notes.txt"
    assert "<script" not in card["html"] and "<b>" not in card["html"]
    assert "&lt;<mark>script</mark>&gt;" in card["html"]


def test_markdown_is_shown_as_text(page: AppTest) -> None:
    # every chunk of the inhaler document (its headings and **bold** list items among them)
    at = search(page.run(), "the inhaler", mode="keyword", k=50, per_document=False)
    no_failure(at)
    found = [c for c in cards(at) if c["doc_id"] == "medicine/asthma-inhalers.md"]
    assert len(found) > 3
    for card in found:
        assert "**" not in card["html"] and "## " not in card["html"]
        assert "<mark>the</mark>" not in card["html"].lower()  # stop words are not marked
    assert sum("<mark>inhaler" in card["html"].lower() for card in found) > 3


def test_surrounding_text_on_demand(page: AppTest) -> None:
    at = search(page.run(), "asthma inhaler preventer", mode="keyword")
    expanders = [e for e in at.expander if e.label == "Whole chunk in its document"]
    assert expanders
    context = [h for h in at.html if "rc-context" in h.value and "<div" in h.value[:30]]
    assert not context  # nothing fetched until opened
    at.session_state[expanders[0].key] = True
    at.run()
    no_failure(at)
    context = [h.value for h in at.html if h.value.startswith('<div class="rc-context">')]
    assert context and '<span class="rc-chunk">' in context[0]
    assert "**" not in context[0] and "## " not in context[0]  # the document as text


def test_instruction_presets_list_the_index_pair_first(page: AppTest) -> None:
    at = page.run()
    preset = at.selectbox(key="search_preset")
    assert preset.options[0] == "This index's pair"
    assert "general (MSMARCO)" in preset.options
    own = at.text_input(key="search_instruction").value
    assert own.startswith("Represent")  # the tiny INSTRUCTOR index's query instruction
    preset.select("science")
    at.run()
    assert at.text_input(key="search_instruction").value != own
    at = search(at, "blood pressure")
    no_failure(at)
    assert cards(at)
    assert not any("ignores instructions" in c.value for c in at.caption)


def test_compare_view_shows_both_rankings_and_movements(page: AppTest) -> None:
    at = page.run()
    at.session_state["view"] = "Compare instructions"
    at = search(at, "how do databases find rows quickly", k=5)
    no_failure(at)
    rows = [h.value for h in at.html if h.value.startswith('<div class="compare-column">')]
    assert len(rows) == 2
    side_a = re.findall(r'data-side="a" data-doc-id="([^"]+)" data-rank="(\d+)"', rows[0])
    side_b = re.findall(r'data-move="([^"]*)"', rows[1])
    assert len(side_a) == 5 and len(side_b) == 5
    assert all(m in ("new", "=") or re.fullmatch(r"[↑↓]\d+", m) for m in side_b)
    summary = [h.value for h in at.html if "move-summary" in h.value[:40]]
    assert summary and "B against A" in summary[0]
    headers = [h.value for h in at.html if h.value.startswith('<div class="compare-header"')]
    assert len(headers) == 2 and "Represent" in headers[1]


# -- states for an index that cannot be searched ----------------------------------------------


def test_missing_index_shows_the_build_command(tmp_path: Path, monkeypatch) -> None:
    missing = tmp_path / "no-index-here"
    monkeypatch.setenv("INSTRUCTOR_SEARCH_INDEX", str(missing))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("No index at" in e.value for e in at.error)
    assert any(f"instructor-index build SOURCE --index {missing}" in c.value for c in at.code)
    assert not at.text_input  # no search box for nothing


def test_no_index_given(monkeypatch) -> None:
    monkeypatch.delenv("INSTRUCTOR_SEARCH_INDEX", raising=False)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("No index given" in e.value for e in at.error)
    assert any("instructor-index ui" in c.value for c in at.code)


def test_corrupt_index_is_explained(tmp_path: Path, monkeypatch) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.sqlite").write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("INSTRUCTOR_SEARCH_INDEX", str(broken))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("unreadable" in e.value for e in at.error)
    assert any("--rebuild" in c.value for c in at.code)


# -- pieces of the page --------------------------------------------------------------------------


def test_index_path_comes_from_argv_then_environment() -> None:
    from instructor_search.ui.app import index_path_from

    assert index_path_from(["--index", "/a"], {"INSTRUCTOR_SEARCH_INDEX": "/b"}) == "/a"
    assert index_path_from(["-x", "--other"], {"INSTRUCTOR_SEARCH_INDEX": "/b"}) == "/b"
    assert index_path_from([], {}) is None


def test_highlight_escapes_before_marking() -> None:
    text = "Tom & Jerry <b>amp</b> amplifiers; inhalers"
    out = render.highlight(text, query_terms("amp the inhaler"))
    # a short term marks whole words only; a longer one also the words it begins
    assert out == (
        "Tom &amp; Jerry &lt;b&gt;<mark>amp</mark>&lt;/b&gt; amplifiers; <mark>inhalers</mark>"
    )
    assert query_terms("What is the BEST inhaler?") == ["best", "inhaler"]
    assert render.highlight("a <i>", []) == "a &lt;i&gt;"


def test_snippet_centres_on_the_matches() -> None:
    text = "filler words " * 60 + "the inhaler is a preventer inhaler " + "more filler " * 60
    piece = excerpt(text, ["inhaler", "preventer"], length=200)
    assert "preventer" in piece.text and piece.cut_start and piece.cut_end
    assert len(piece.text) <= 200
    assert all(piece.text[s:e].lower() in ("inhaler", "preventer") for s, e in piece.spans)


def test_movement_badges() -> None:
    assert render.movement_badge("up", 3) == ("↑3", "move-up")
    assert render.movement_badge("down", -2) == ("↓2", "move-down")
    assert render.movement_badge("same")[0] == "="
    assert render.movement_badge("new")[0] == "new"
    assert render.movement_badge("dropped")[0] == "dropped"
