"""The served search page in a real headless Chromium, on the sample corpus index.

``instructor-index ui`` serves the page; selenium types a judged query, checks the top result's
title against the judged document, switches mode, applies a filter and opens the comparison.
Chromium's network log says every request of all that went to this machine, and a listener
posing as the server's HTTP(S) proxy says the server sent none elsewhere.
Skipped only when Chromium or chromedriver is not installed (Debian: ``chromium``,
``chromium-driver``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import browser
import pytest

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        browser.chromium_paths() is None,
        reason="Chromium and chromedriver are not installed (apt-get install chromium "
        "chromium-driver); the browser test needs them",
    ),
]

EVAL = browser.ROOT / "sample_corpus" / "eval"
QUERY_ID = "a07"  # sodium and blood pressure -> medicine/hypertension-and-salt.pdf
MOVES = {"new", "=", "dropped", ""}


def judged(query_id: str) -> tuple[str, str]:
    """The text of a judged query and the id of its relevant document."""
    queries = {}
    for line in (EVAL / "queries.jsonl").read_text().splitlines():
        record = json.loads(line)
        queries[record["_id"]] = record["text"]
    with (EVAL / "qrels" / "test.tsv").open() as handle:
        relevant = [
            r["corpus-id"]
            for r in csv.DictReader(handle, delimiter="\t")
            if r["query-id"] == query_id
        ]
    return queries[query_id], relevant[0]


def test_search_page_in_chromium(sample_index: Path, tmp_path: Path) -> None:
    from instructor_search.store.index import Index

    query, expected_id = judged(QUERY_ID)
    with Index.open(sample_index, readonly=True) as index:
        expected_title = index.document(expected_id).title

    with (
        browser.outbound_proxy() as (proxies, server_asked),
        browser.serve(sample_index, log=tmp_path / "server.log", env=proxies) as url,
        browser.chromium() as driver,
    ):
        browser.open_page(driver, url)
        assert "No index" not in driver.page_source
        requested = browser.requested_urls(driver)

        # The first search loads the model; the judged document comes first.
        browser.search(driver, query)
        found = browser.wait_for_results(
            driver, lambda hits, summary: "hybrid" in summary, "results"
        )
        assert found[0]["title"] == expected_title
        assert found[0]["doc_id"] == expected_id
        assert driver.find_elements("css selector", ".result-card mark"), (
            "query terms are highlighted"
        )

        # The whole chunk in its document, fetched when the expander opens.
        browser.click(driver, browser.css(driver, '[data-testid="stExpander"] summary')[0])
        context = browser.wait(
            driver, lambda d: browser.css(d, ".rc-context .rc-chunk"), what="the surrounding text"
        )
        assert "<mark>" in context[0].get_attribute("innerHTML")

        # Dense, then back to hybrid (the default): the judged document stays on top.
        browser.choose_mode(driver, "dense")
        found = browser.wait_for_results(
            driver, lambda hits, summary: "· dense ·" in summary, "dense"
        )
        assert found[0]["doc_id"] == expected_id
        browser.choose_mode(driver, "hybrid")
        found = browser.wait_for_results(
            driver, lambda hits, summary: "· hybrid ·" in summary, "hybrid"
        )
        assert found[0]["doc_id"] == expected_id

        # A filter on file type: every result is a PDF (the judged one is too).
        browser.choose_in_multiselect(driver, "File type", "pdf")
        found = browser.wait_for_results(
            driver, lambda hits, summary: all(h["type"] == "pdf" for h in hits), "only PDF results"
        )
        assert len(found) > 1
        assert {h["type"] for h in found} == {"pdf"}
        assert found[0]["doc_id"] == expected_id

        # The comparison view: both columns, B's rows labelled with how they moved.
        browser.open_tab(driver, "Compare instructions")
        rows = browser.wait(
            driver,
            lambda d: browser.idle(d) and (r := browser.comparison(d))["a"] and r["b"] and r,
            what="both comparison columns",
        )
        assert len(rows["a"]) == len(found) and len(rows["b"]) == len(found)
        moves = {row["move"] for row in rows["b"]}
        assert moves <= MOVES | {m for m in moves if m[:1] in "↑↓"}
        # The bundled model ignores instructions, so nothing moves and the page says why.
        assert moves == {"="}
        assert "ignores instructions" in driver.page_source

        # Nothing the page asked for left this machine (fonts, icons, scripts, the websocket).
        requested += browser.requested_urls(driver)
        assert any(u.startswith(f"ws://127.0.0.1:{url.rsplit(':', 1)[1]}/") for u in requested)
        assert any("/static/" in u and u.startswith(url) for u in requested)
        assert browser.remote_hosts(requested) == set(), sorted(
            u for u in requested if browser.remote_hosts([u])
        )
    # Nor did the server: its process's proxy variables point at a listener that saw nothing
    # (no model download, no usage statistics, no telemetry from ONNX Runtime).
    assert server_asked == []
