"""IR metrics on hand-computed cases, the BEIR loader, and evaluate() on a real index."""

from __future__ import annotations

import json
import math

import pytest
from test_retriever import corpus, make_index

from instructor_search.errors import InputError, ReaderError
from instructor_search.evaluate import (
    METRIC_KEYS,
    evaluate,
    load_beir,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    score_run,
)
from instructor_search.search.retriever import DEFAULT_MODE, Retriever


def test_ndcg_hand_computed():
    assert ndcg_at_k(["a", "b"], {"b": 1}) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(["b", "a"], {"b": 1}) == 1.0
    assert ndcg_at_k(["x", "y"], {"b": 1}) == 0.0
    assert ndcg_at_k([], {"b": 1}) == 0.0
    # graded: gains are the grades (linear), the ideal orders the judged grades
    judged = {"a": 2, "b": 1, "c": 0}
    dcg = 1 / math.log2(2) + 2 / math.log2(3)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(["b", "a", "c"], judged) == pytest.approx(dcg / ideal)
    # the ideal counts judged documents even when the run misses them
    assert ndcg_at_k(["a"], {"a": 1, "z": 1}) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    # cut at k
    assert ndcg_at_k(["x"] * 10 + ["a"], {"a": 1}, k=10) == 0.0
    assert ndcg_at_k(["x", "a"], {"a": 1}, k=1) == 0.0
    # a query whose judged documents are all grade 0
    assert ndcg_at_k(["a"], {"a": 0}) == 0.0


def test_recall_and_mrr_hand_computed():
    judged = {"a": 1, "b": 2, "c": 0}
    assert recall_at_k(["a", "x", "b"], judged, 2) == 0.5
    assert recall_at_k(["a", "x", "b"], judged, 3) == 1.0
    assert recall_at_k(["c"], judged, 10) == 0.0  # grade 0 is not relevant
    assert mrr_at_k(["x", "c", "b"], judged) == pytest.approx(1 / 3)
    assert mrr_at_k(["x"] * 10 + ["a"], judged, 10) == 0.0
    assert mrr_at_k([], judged) == 0.0


def test_score_run_averages_over_judged_queries_missing_ones_count_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    run = {"q1": ["a"], "q2": ["x", "b"], "q4": ["c"]}  # q3 has no hit; q4 is not judged
    scores = score_run(run, qrels)
    assert list(scores) == list(METRIC_KEYS)
    assert scores["ndcg_at_10"] == pytest.approx((1 + 1 / math.log2(3) + 0) / 3)
    assert scores["mrr_at_10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert scores["recall_at_10"] == pytest.approx(2 / 3)
    # a document listed twice counts once, at its best rank
    assert score_run({"q1": ["x", "x", "a"]}, {"q1": {"a": 1}})["mrr_at_10"] == 0.5
    with pytest.raises(InputError):
        score_run({}, {})


def write_beir(folder, docs, queries, qrels):
    folder.mkdir()
    (folder / "qrels").mkdir()
    (folder / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata})
            + "\n"
            for d in docs
        )
    )
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items())
    )
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{q}\t{d}\t{g}" for q, docs in qrels.items() for d, g in docs.items()]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")


def test_load_beir_keeps_only_judged_queries(tmp_path):
    docs = corpus()[:3]
    write_beir(
        tmp_path / "beir",
        docs,
        {"q1": "stars", "q2": "bread", "unjudged": "x"},
        {"q1": {docs[0].id: 1}, "q2": {docs[1].id: 2, docs[2].id: 0}},
    )
    data = load_beir(tmp_path / "beir")
    assert [d.id for d in data.corpus] == [d.id for d in docs]
    assert data.corpus[0].title == docs[0].title and data.corpus[0].text == docs[0].text
    assert data.queries == {"q1": "stars", "q2": "bread"}
    assert data.qrels == {"q1": {docs[0].id: 1}, "q2": {docs[1].id: 2, docs[2].id: 0}}
    with pytest.raises(ReaderError, match="qrels"):
        load_beir(tmp_path / "beir", split="dev")


def test_evaluate_on_a_real_index(tmp_path, bundled):
    docs = corpus()
    path = make_index(tmp_path / "ix", bundled, docs, sentences=True)
    queries = {
        "q1": "Which planet is the largest?",
        "q2": "How does sourdough rise?",
        "q3": "What erodes the value of cash?",
        "q4": "zzzz qqqq",  # no keyword hit at all
    }
    qrels = {
        "q1": {"astronomy/2.txt": 1},
        "q2": {"cooking/0.txt": 2, "cooking/3.txt": 1},
        "q3": {"finance/2.txt": 1},
        "q4": {"finance/0.txt": 1},
    }
    seen = []
    with Retriever(path, bundled) as retriever:
        result = evaluate(
            retriever, queries, qrels, mode="dense", progress=lambda d, t: seen.append((d, t))
        )
        assert set(result) == {*METRIC_KEYS, "queries", "mode", "model", "seconds"}
        assert result["queries"] == 4 and result["mode"] == "dense"
        assert result["model"] == bundled.model_name and result["seconds"] >= 0
        assert seen[-1] == (4, 4)
        assert result["recall_at_100"] == 1.0  # 12 documents: all are retrieved
        assert 0.5 < result["ndcg_at_10"] <= 1.0
        keyword = evaluate(retriever, queries, qrels, mode="keyword")
        assert keyword["recall_at_100"] < 1.0  # q4 finds nothing and counts as zero
        hybrid = evaluate(retriever, queries, qrels)
        assert hybrid["mode"] == DEFAULT_MODE
        with pytest.raises(InputError, match="100"):
            evaluate(retriever, queries, qrels, k=10)
        with pytest.raises(InputError, match="no text"):
            evaluate(retriever, {}, qrels)
