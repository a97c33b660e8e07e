"""Retriever: real models (the tiny INSTRUCTOR checkpoint, the bundled MiniLM), real SQLite/FAISS."""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from instructor_search import Instructor
from instructor_search.documents import Chunk, Document
from instructor_search.errors import FilterError, IndexMismatchError, InputError
from instructor_search.search.retriever import (
    DEFAULT_MODE,
    MODES,
    Hit,
    Retriever,
    fuse,
    mmr_order,
)
from instructor_search.store.index import CollectionSettings, Index

QUERY_INSTRUCTION = "Represent the question for retrieving supporting documents: "
DOCUMENT_INSTRUCTION = "Represent the document for retrieval: "
NASTY = ['"', "OR", "*", "NEAR(", "'; DROP TABLE chunks;--", "a AND", "title:x", '")', "%_"]

TOPICS = {
    "astronomy": [
        "Neutron stars are the collapsed cores of massive stars.",
        "A light year is the distance light travels in one year.",
        "Jupiter is the largest planet in the solar system.",
        "Black holes bend light with their gravity.",
    ],
    "cooking": [
        "Sourdough bread rises with a starter of wild yeast.",
        "Searing meat browns it through the Maillard reaction.",
        "Pasta should be cooked in well salted boiling water.",
        "A roux of butter and flour thickens a sauce.",
    ],
    "finance": [
        "Compound interest grows savings exponentially over time.",
        "An index fund tracks the performance of a market index.",
        "Inflation erodes the purchasing power of cash.",
        "Bonds pay a fixed coupon until they mature.",
    ],
}


def corpus() -> list[Document]:
    docs = []
    for topic, texts in TOPICS.items():
        for number, text in enumerate(texts):
            docs.append(
                Document(
                    f"{topic}/{number}.txt",
                    f"{text} Second sentence of {topic} note {number}.",
                    title=f"{topic.title()} note {number}",
                    source=f"/corpus/{topic}/{number}.txt",
                    metadata={"topic": topic, "number": number},
                )
            )
    return docs


def chunked(doc: Document, sentences: bool = False) -> list[Chunk]:
    """One chunk per document, or one per sentence (split on '. ')."""
    if not sentences:
        return [Chunk(0, doc.text, 0, len(doc.text), len(doc.text.split()))]
    chunks, start = [], 0
    for ordinal, part in enumerate(doc.text.split(". ")):
        end = start + len(part)
        chunks.append(Chunk(ordinal, part, start, end, len(part.split())))
        start = end + 2
    return chunks


def make_index(
    path: Path,
    model: Instructor,
    docs: list[Document],
    *,
    sentences: bool = False,
    query_instruction: str = QUERY_INSTRUCTION,
) -> Path:
    """Build an index as the build pipeline does: ``title + " " + chunk`` with the document
    instruction, one chunk per document (or per sentence)."""
    settings = CollectionSettings(
        model=model.model_name,
        model_fingerprint=model.fingerprint,
        dimension=model.dimension,
        document_instruction=DOCUMENT_INSTRUCTION,
        query_instruction=query_instruction,
        chunk_tokens=128,
        chunk_overlap=16,
    )
    rows = [(doc, chunked(doc, sentences)) for doc in docs]
    texts = [f"{doc.title} {c.text}" for doc, chunks in rows for c in chunks]
    vectors = model.embed(texts, DOCUMENT_INSTRUCTION)
    batch, offset = [], 0
    for doc, chunks in rows:
        batch.append((doc, chunks, vectors[offset : offset + len(chunks)]))
        offset += len(chunks)
    with Index.create(path, settings) as index:
        index.upsert(batch)
        index.sync_derived()
    return path


@pytest.fixture(scope="module")
def bundled_index(tmp_path_factory, bundled) -> Path:
    return make_index(tmp_path_factory.mktemp("ix") / "bundled", bundled, corpus(), sentences=True)


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory, tiny) -> Path:
    return make_index(tmp_path_factory.mktemp("ix") / "tiny", tiny, corpus())


@pytest.fixture(scope="module")
def retriever(bundled_index, bundled) -> Retriever:
    with Retriever(bundled_index, bundled) as r:
        yield r


def test_hit_fields_and_to_dict(retriever):
    assert [f.name for f in fields(Hit)] == [
        "rank", "score", "chunk_id", "doc_id", "title", "source", "text", "metadata", "span",
    ]  # fmt: skip
    hits = retriever.search("How does sourdough bread rise?", k=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    top = hits[0]
    assert top.doc_id == "cooking/0.txt"
    assert top.title == "Cooking note 0" and top.source == "/corpus/cooking/0.txt"
    assert top.metadata == {"topic": "cooking", "number": 0}
    doc = retriever.index.document(top.doc_id)
    assert doc.text[top.span[0] : top.span[1]] == top.text
    data = top.to_dict()
    assert list(data) == [f.name for f in fields(Hit)] and data["span"] == list(top.span)
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_finds_the_topic(retriever, mode):
    hits = retriever.search("largest planet Jupiter", k=2, mode=mode)
    assert hits[0].doc_id == "astronomy/2.txt"


def test_default_mode_and_unknown_mode(retriever):
    assert DEFAULT_MODE in MODES
    with pytest.raises(InputError, match=r"\['dense', 'keyword', 'hybrid'\]"):
        retriever.search("bread", mode="semantic")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="k must be"):
            retriever.search("bread", k=bad)
    with pytest.raises(InputError, match="mmr"):
        retriever.search("bread", mmr=1.5)
    with pytest.raises(InputError, match="empty"):
        retriever.search("   ")


def test_documents_option_keeps_the_best_chunk_per_document(retriever):
    chunks = retriever.search("Sourdough bread note", k=24, mode="dense")
    assert len({h.doc_id for h in chunks}) == 12 < len(chunks)  # two chunks per document
    docs = retriever.search("Sourdough bread note", k=12, mode="dense", documents=True)
    assert len(docs) == 12 and len({h.doc_id for h in docs}) == 12
    best = {}
    for hit in chunks:
        best.setdefault(hit.doc_id, hit.chunk_id)
    assert [h.chunk_id for h in docs] == [best[h.doc_id] for h in docs]


@pytest.mark.parametrize("mode", MODES)
def test_filters_return_k_hits(retriever, mode):
    where = {"topic": "finance"}
    hits = retriever.search("bread and stars", k=5, mode=mode, where=where)
    if mode == "keyword":  # only chunks containing a term can match; none of finance does
        assert hits == []
        hits = retriever.search("interest fund note", k=5, mode=mode, where=where)
    assert len(hits) == 5
    assert {h.metadata["topic"] for h in hits} == {"finance"}
    ranged = retriever.search("note", k=3, mode=mode, where={"number": {">=": 3}})
    assert len(ranged) == 3 and all(h.metadata["number"] == 3 for h in ranged)
    listed = retriever.search("note", k=4, mode=mode, where={"topic": ["cooking", "finance"]})
    assert {h.metadata["topic"] for h in listed} <= {"cooking", "finance"}


def test_unknown_filter_field_lists_the_known_ones(retriever):
    with pytest.raises(FilterError, match="topic"):
        retriever.search("bread", where={"colour": "red"})


@pytest.mark.parametrize("mode", MODES)
def test_sql_and_fts_syntax_is_searched_as_text(retriever, mode):
    chunks_before = retriever.index.stats().chunks
    for text in NASTY:
        hits = retriever.search(text, k=3, mode=mode)
        assert isinstance(hits, list)
        assert retriever.search("bread", k=3, mode=mode, where={"title": text}) == []
    assert retriever.search("NEAR(sourdough bread)", k=1, mode=mode)[0].doc_id == "cooking/0.txt"
    assert retriever.index.stats().chunks == chunks_before


def test_search_batch_equals_search(retriever):
    queries = ["neutron stars", "index funds and bonds", "how to thicken a sauce"]
    for mode in MODES:
        batch = retriever.search_batch(queries, k=4, mode=mode)
        single = [retriever.search(q, k=4, mode=mode) for q in queries]
        assert [[h.chunk_id for h in hits] for hits in batch] == [
            [h.chunk_id for h in hits] for hits in single
        ]
        for hits_batch, hits_single in zip(batch, single):
            np.testing.assert_allclose(
                [h.score for h in hits_batch], [h.score for h in hits_single], rtol=1e-5
            )
    assert retriever.search_batch([], k=3) == []
    with pytest.raises(InputError):
        retriever.search_batch("one string")


def test_threads_sharing_a_retriever_get_the_serial_hits(retriever):
    """Hybrid embeds the query on a worker thread while the keyword side runs: threads that
    share one Retriever get what one thread gets, with and without a filter."""
    queries = ["neutron stars", "index funds and bonds", "how to thicken a sauce", "light"]
    cases = [(q, where) for q in queries for where in (None, {"topic": "finance"})]

    def hits(case: tuple[str, dict | None]) -> list[tuple[int, float]]:
        found = retriever.search(case[0], k=4, where=case[1], mode="hybrid")
        return [(h.chunk_id, h.score) for h in found]

    serial = [hits(case) for case in cases]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(hits, cases * 3)) == serial * 3


def test_mmr_gives_diverse_hits(tmp_path, bundled):
    same = "Solar panels convert sunlight into electricity."
    docs = [Document(f"dup{i}", same, title="") for i in range(5)]
    docs += [
        Document("wind", "Wind turbines turn moving air into electric power."),
        Document("hydro", "Hydroelectric dams generate electricity from falling water."),
        Document("bread", "Sourdough bread rises with wild yeast."),
    ]
    with Retriever(make_index(tmp_path / "ix", bundled, docs), bundled) as r:
        plain = r.search("solar electricity", k=3, mode="dense")
        assert {h.doc_id for h in plain} <= {f"dup{i}" for i in range(5)}
        diverse = r.search("solar electricity", k=3, mode="dense", mmr=0.5)
        assert diverse[0].text == same  # the most relevant first (one of the tied copies)
        assert len({h.text for h in diverse}) == 3
        assert {h.doc_id for h in diverse} & {"wind", "hydro"}
        relevance_only = r.search("solar electricity", k=3, mode="dense", mmr=1.0)
        assert [h.text for h in relevance_only] == [same] * 3


def test_mmr_order_and_fuse_functions():
    vectors = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    assert mmr_order(np.array([0.9, 0.8, 0.1]), vectors, 3, 1.0) == [0, 1, 2]
    assert mmr_order(np.array([0.9, 0.8, 0.1]), vectors, 3, 0.3) == [0, 2, 1]
    fused = fuse([(1, 0.9), (2, 0.8)], [(3, 5.0), (2, 4.0)], c=60)
    assert [cid for cid, _ in fused] == [2, 1, 3]
    assert fused[0][1] == pytest.approx(2 / 62)
    assert fused[1][1] == fused[2][1] == pytest.approx(1 / 61)  # tie: the dense side first
    weighted = fuse([(1, 0.9)], [(3, 5.0)], c=10, dense_weight=1.0, keyword_weight=2.0)
    assert weighted == [(3, pytest.approx(2 / 11)), (1, pytest.approx(1 / 11))]


def test_query_instruction_defaults_to_the_index_and_can_be_overridden(tiny_index, tiny):
    with Retriever(tiny_index, tiny) as r:
        assert r.query_instruction == QUERY_INSTRUCTION
        query = "How does sourdough bread rise?"
        stored = r.index.embeddings(list(range(1, r.index.stats().chunks + 1)))
        for instruction in (QUERY_INSTRUCTION, "Represent the Cooking question for baking: "):
            vector = tiny.embed([query], instruction)[0]
            expected = np.argsort(-(stored @ vector), kind="stable")[:5] + 1
            given = None if instruction == QUERY_INSTRUCTION else instruction
            hits = r.search(query, k=5, mode="dense", instruction=given)
            assert [h.chunk_id for h in hits] == expected.tolist()
            np.testing.assert_allclose(
                [h.score for h in hits], np.sort(stored @ vector)[::-1][:5], rtol=1e-5
            )
        default = r.search(query, k=12, mode="dense")
        other = r.search(query, k=12, mode="dense", instruction="Represent the Cooking title: ")
        assert [h.score for h in default] != [h.score for h in other]


def test_compare_reports_movements(tiny_index, tiny):
    with Retriever(tiny_index, tiny) as r:
        a, b = QUERY_INSTRUCTION, "Represent the Finance sentence for retrieving bonds: "
        comparison = r.compare("bonds and coupons", a, b, k=5, mode="dense")
        assert len(comparison.movements) == len(comparison.hits_b) == 5
        ranks_a = {h.chunk_id: h.rank for h in comparison.hits_a}
        for move in comparison.movements:
            before = ranks_a.get(move.hit.chunk_id)
            assert move.previous_rank == before
            if before is None:
                assert move.label == "new"
            elif before == move.hit.rank:
                assert move.label == "same"
            else:
                assert (
                    move.label
                    == f"{'up' if before > move.hit.rank else 'down'} {abs(before - move.hit.rank)}"
                )
        in_b = {h.chunk_id for h in comparison.hits_b}
        assert [h.chunk_id for h in comparison.dropped] == [
            h.chunk_id for h in comparison.hits_a if h.chunk_id not in in_b
        ]
        assert sum(m.label == "new" for m in comparison.movements) == len(comparison.dropped)
        same = r.compare("bonds", a, a, k=4)
        assert all(m.label == "same" for m in same.movements) and same.dropped == []


def test_model_is_loaded_from_the_index_and_checked(tiny_index, tiny, bundled, bundled_index):
    with Retriever(tiny_index) as r:  # the model recorded in the index (the tiny folder)
        assert r.model.fingerprint == tiny.fingerprint
    with Retriever(bundled_index) as r:  # the bundled default, by its hub id
        assert r.model.model_name == bundled.model_name
    with pytest.raises(IndexMismatchError, match="instructor-tiny"):
        Retriever(tiny_index, bundled)


# -- concurrency: real processes -----------------------------------------------------------------

BATCHES, PER_BATCH, SEARCHES = 8, 6, 50


def _text(doc_id: str, version: int) -> str:
    return f"{doc_id} version {version} about solar wind and stars"


def _writer(path: str, vectors: np.ndarray, start, searched, done) -> None:
    start.wait(120)  # the readers have loaded their model and begin searching
    with Index.open(path) as index:
        row = 0
        for batch in range(1, BATCHES + 1):
            deadline = time.monotonic() + 60
            while searched.value < 3 * batch and time.monotonic() < deadline:
                time.sleep(0.005)  # let the readers search between commits, however slow
            items = []
            for n in range(PER_BATCH):
                doc_id = f"b{batch}-{n}"
                text = _text(doc_id, batch)
                doc = Document(doc_id, text, title=f"title {doc_id}", metadata={"batch": batch})
                items.append((doc, [Chunk(0, text, 0, len(text), 8)], vectors[row : row + 1]))
                row += 1
            if batch > 1:  # replace an older document: a new chunk id, new text
                doc_id, text = "b1-0", _text("b1-0", batch)
                doc = Document(doc_id, text, title="title b1-0", metadata={"batch": 1})
                items.append((doc, [Chunk(0, text, 0, len(text), 8)], vectors[row : row + 1]))
                row += 1
            index.upsert(items)
            if batch % 3 == 0:
                index.sync_derived()  # a new vectors.faiss generation for the readers
    done.set()


def _reader(path: str, model: str, start, searched, done, results) -> None:
    try:
        with Retriever(path, model) as retriever:
            retriever.search("warm up", k=1)
            start.wait(120)
            checked, searches, generations = 0, 0, set()
            # search all through the writes: at least SEARCHES times, and until they end
            while searches < SEARCHES or not done.is_set():
                for hit in retriever.search("solar wind stars", k=5, mode=MODES[searches % 3]):
                    assert hit.text.startswith(hit.doc_id + " version "), hit
                    assert hit.title == f"title {hit.doc_id}", hit
                    checked += 1
                generations.add(retriever.index.generation)
                searches += 1
                with searched.get_lock():
                    searched.value += 1
            final = retriever.search(
                "solar", k=PER_BATCH * 2, mode="dense", where={"batch": BATCHES}
            )
            latest = retriever.search("solar", k=1, mode="keyword", where={"doc_id": "b1-0"})
            found = sorted(h.doc_id for h in final)
            results.put(("ok", checked, len(generations), found, latest[0].text))
    except Exception as exc:  # reported to the test, which fails with it
        results.put(("error", repr(exc), 0, None, None))


@pytest.mark.slow
def test_concurrent_readers_during_writes(tmp_path, tiny, tiny_path):
    rows = 1 + BATCHES * (PER_BATCH + 1)
    texts = [f"document {i} about solar wind" for i in range(rows)]
    vectors = tiny.embed(texts, DOCUMENT_INSTRUCTION)
    path = make_index(
        tmp_path / "ix", tiny, [Document("seed", _text("seed", 0), title="title seed")]
    )
    context = multiprocessing.get_context("spawn")
    start, done, results = context.Barrier(4), context.Event(), context.Queue()
    searched = context.Value("i", 0)
    readers = [
        context.Process(
            target=_reader, args=(str(path), str(tiny_path), start, searched, done, results)
        )
        for _ in range(3)
    ]
    writer = context.Process(target=_writer, args=(str(path), vectors, start, searched, done))
    for process in [*readers, writer]:
        process.start()
    outcomes = []
    try:
        for _ in readers:
            outcomes.append(results.get(timeout=240))
    except queue.Empty:
        pytest.fail(f"readers did not finish: {outcomes}")
    finally:
        for process in [writer, *readers]:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert writer.exitcode == 0
    expected = sorted(f"b{BATCHES}-{n}" for n in range(PER_BATCH))
    for status, checked, generations, final, latest in outcomes:
        assert status == "ok", checked
        assert checked > 0
        assert generations > 1  # it searched while the writer committed
        assert final == expected  # the final generation's documents are seen
        assert latest == _text("b1-0", BATCHES)


# -- stable order of ties ------------------------------------------------------------------------


def test_ties_are_ordered_by_document_id_whatever_the_insertion_order(tmp_path, bundled):
    """Duplicate documents tie in every mode; two builds that stored them in opposite orders
    (so with other row ids) give the same top-k, by document id then chunk ordinal."""
    same = "Solar panels convert sunlight into electricity on the roof."
    docs = [Document(f"dup-{name}", same, title="Solar") for name in "dcab"]
    docs += [
        Document("wind", "Wind turbines turn moving air into electric power.", title="Wind"),
        Document("bread", "Sourdough bread rises with wild yeast.", title="Bread"),
    ]
    forward = make_index(tmp_path / "forward", bundled, docs)
    backward = make_index(tmp_path / "backward", bundled, docs[::-1])
    with Retriever(forward, bundled) as a, Retriever(backward, bundled) as b:
        ids_a = [h.chunk_id for h in a.search("solar electricity", k=6, mode="dense")]
        ids_b = [h.chunk_id for h in b.search("solar electricity", k=6, mode="dense")]
        assert ids_a != ids_b  # the row ids really differ between the builds
        for mode in MODES:
            for k in (1, 2, 3):
                top_a = [h.doc_id for h in a.search("solar electricity", k=k, mode=mode)]
                top_b = [h.doc_id for h in b.search("solar electricity", k=k, mode=mode)]
                assert top_a == top_b == ["dup-a", "dup-b", "dup-c"][:k], (mode, k)
            documents = a.search("solar electricity", k=2, mode=mode, documents=True)
            assert [h.doc_id for h in documents] == ["dup-a", "dup-b"]


def test_through_ties_fetches_one_tie_group_not_every_tie():
    from instructor_search.search.ranking import through_ties

    # groups of 50 equal scores: 1.0 x 50, 0.9 x 50, ...
    ranking = [(i, 1.0 - (i // 50) / 10) for i in range(300)]
    assert through_ties(ranking[:101], 100, 101) == ranking[:100]  # the cut falls between groups
    assert through_ties(ranking[:76], 75, 76) is None  # the list ends inside the cut's group
    closed = through_ties(ranking[:304], 75, 304)
    assert closed == ranking[:100]  # the whole group at the cut, nothing of the next groups
    assert through_ties(ranking[:10], 75, 76) == ranking[:10]  # shorter than asked: all of it
