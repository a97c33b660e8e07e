"""The keyword matrix (``keywords.bm25``) against FTS5's own bm25(), on real SQLite/FTS5 indexes."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from instructor_search.documents import Chunk, Document
from instructor_search.indexer.build import BuildSettings, build, delete_documents
from instructor_search.store import derived, keyword_file, keyword_topk, keywords
from instructor_search.store.index import KEYWORDS_FILE, CollectionSettings, Index

DIM = 8
SETTINGS = CollectionSettings(
    model="test",
    model_fingerprint="sha256:test",
    dimension=DIM,
    document_instruction="",
    query_instruction="",
    chunk_tokens=64,
    chunk_overlap=8,
)
# fmt: off
WORDS = [
    "run", "running", "runs", "runner", "ran", "the", "of", "and", "a", "fox", "foxes", "quick",
    "brown", "café", "cafe", "naïve", "résumé", "x-ray", "it's", "don't", "2023", "3.14",
    "covid-19", "OR", "NEAR", "AND", "NOT", "data", "database", "indexes", "indexing", "indexed",
    "search", "searching", "42", "über", "Straße", "ÉCOLE", "école", "cats", "cat's", "dogs",
    "dog", "the", "the", "of",
]
# fmt: on
QUERIES = [
    "running",
    "runs",
    "run running runs runner ran",
    "Run run RUN",
    "fox fox foxes",
    "the",
    "the of and a",
    "café",
    "cafe naïve",
    "ÉCOLE über straße",
    "2023 3 14 42",
    "covid-19 x-ray",
    "it's don't",
    "cat's",
    'fox" OR NEAR(dogs*',
    "OR",
    "NEAR",
    "a OR b AND",
    "*",
    '"',
    '"; DROP TABLE chunks;--',
    "%_ '",
    "quick brown fox jumps over the lazy dog",
    "database indexing search",
    "title7",
    "nothing-matches-this zzz",
]
FILTERS = [None, {"lang": "en"}, {"year": {">=": 2021}}, {"doc_id": "d007"}, {"lang": "xx"}]
DECLINED = ["aᦰb", "ᦰ fox", "fox aᦰb"]  # words FTS5 splits into 2 tokens or none


def corpus(count: int, seed: int = 0) -> list[tuple[Document, list[Chunk], np.ndarray]]:
    """Documents of random words (1-3 chunks of varying length, some titles empty)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        parts = [
            " ".join(rng.choice(WORDS, size=int(rng.integers(1, 40))))
            for _ in range(int(rng.integers(1, 4)))
        ]
        text = " ".join(parts)
        chunks, start = [], 0
        for ordinal, part in enumerate(parts):
            chunks.append(Chunk(ordinal, part, start, start + len(part), len(part.split())))
            start += len(part) + 1
        title = "" if i % 5 == 0 else f"title{i} " + " ".join(rng.choice(WORDS, size=3))
        meta = {"lang": "en" if i % 3 else "fr", "year": 2019 + i % 5}
        vectors = rng.standard_normal((len(chunks), DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items.append((Document(f"d{i:03d}", text, title=title, metadata=meta), chunks, vectors))
    return items


@pytest.fixture
def index(tmp_path):
    with Index.create(tmp_path / "idx", SETTINGS) as ix:
        ix.upsert(corpus(120))
        ix.sync_derived()
        yield ix


def fts5_truth(path: Path, query: str, k: int, where_ids: np.ndarray | None = None) -> list:
    """FTS5's answer on a separate read-only connection, ties by rowid."""
    words = keywords.query_words(query)
    if not words:
        return []
    conn = sqlite3.connect(f"file:{path / 'index.sqlite'}?mode=ro", uri=True)
    bm25 = "bm25(chunks_fts, 1.0, 0.5)"
    rows = conn.execute(
        f"SELECT rowid, -{bm25} FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY {bm25}, rowid",
        [keywords.match_expression(words)],
    ).fetchall()
    conn.close()
    if where_ids is not None:
        allowed = set(where_ids.tolist())
        rows = [r for r in rows if r[0] in allowed]
    return rows[:k]


@pytest.fixture
def fts5_calls(monkeypatch):
    """How often FTS5 answered a keyword search (the matrix declined or was unavailable)."""
    calls = []
    original = Index._fts5_search

    def spy(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Index, "_fts5_search", spy)
    return calls


def assert_same(found: list, truth: list) -> None:
    assert [c for c, _ in found] == [c for c, _ in truth]
    assert [s for _, s in found] == pytest.approx([s for _, s in truth], rel=1e-6)


# -- parity ------------------------------------------------------------------------------------


def test_same_ids_and_scores_as_fts5(index, fts5_calls):
    assert keyword_file.read_generation(index.path / KEYWORDS_FILE) == index.generation
    nonempty = 0
    for where in FILTERS:
        allowed = index.matching_chunk_ids(where) if where else None
        for query in QUERIES:
            for k in (1, 3, 10, 1000):
                truth = fts5_truth(index.path, query, k, allowed)
                found = index.keyword_search(query, k, where)
                assert_same(found, truth)
                nonempty += bool(truth)
    assert fts5_calls == []  # every answer came from the matrix
    assert nonempty > 200  # the queries do hit: the comparison is not of empty lists


def test_scores_are_fts5s_doubles(index):
    """Same operations in the same order: equal to the bit, so ranks and ties agree too."""
    for query in ("the of and a", "run running runs runner ran", "title7 fox"):
        truth = fts5_truth(index.path, query, 1000)
        found = index.keyword_search(query, 1000)
        assert found == [(int(c), float(s)) for c, s in truth]


def test_float32_contributions_are_within_the_error_the_pruning_allows(index):
    """Candidates are found with float32 contributions: top_rows' margins hold only if each is
    within APPROXIMATE_ERROR of the exact double, for every posting of every term."""
    matrix = index._derived.keywords(index.generation)
    checked = 0
    for term in matrix.vocabulary:
        postings = matrix._postings(term)
        exact = postings.scores()
        approximate = postings.approximations()
        assert approximate.dtype == np.float32
        error = np.abs(approximate.astype(np.float64) - exact)
        assert np.all(error <= keyword_topk.APPROXIMATE_ERROR * exact), term
        checked += len(exact)
    assert checked > 1000


def test_stems_count_once_per_word(index):
    """Two words stemming to one term are two FTS5 phrases (scores add); a repeated word is one."""
    run = dict(index.keyword_search("run", 1000))
    both = dict(index.keyword_search("run running", 1000))
    assert keywords.word_tokens("porter unicode61", "running") == ("run",)
    assert both.keys() == run.keys()
    assert all(both[c] == pytest.approx(2 * run[c]) for c in run)
    assert index.keyword_search("run RUN Run", 1000) == index.keyword_search("run", 1000)


def test_a_querys_postings_are_its_words_document_frequencies(index):
    """What a hybrid query's embedding thread count is chosen by: FTS5's own counts."""

    def rows_holding(word: str) -> int:
        match = keywords.match_expression([word])
        sql = "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?"
        return index._db.execute(sql, [match]).fetchone()[0]

    query = "Running foxes, the fox! title7"
    expected = sum(rows_holding(w) for w in keywords.query_words(query))
    assert index.keyword_postings(query) == expected > 0
    assert index.keyword_postings("zzzunseen") == 0


def test_filter_returns_k_when_k_matching_chunks_hit(index):
    where = {"doc_id": ["d001", "d002", "d003", "d004"]}
    allowed = index.matching_chunk_ids(where)
    hits = fts5_truth(index.path, "the of and a run fox", 1000, allowed)
    assert 3 < len(hits) < 12
    found = index.keyword_search("the of and a run fox", len(hits), where)
    assert len(found) == len(hits) and {c for c, _ in found} <= set(allowed.tolist())
    assert len(index.keyword_search("the", 1000, {"lang": "fr"})) == len(
        fts5_truth(index.path, "the", 1000, index.matching_chunk_ids({"lang": "fr"}))
    )


def test_words_that_are_not_one_token_go_to_fts5(index, fts5_calls):
    for query in DECLINED:
        assert keywords.word_tokens("porter unicode61", "aᦰb") == ("a", "b")
        assert_same(index.keyword_search(query, 10), fts5_truth(index.path, query, 10))
    assert len(fts5_calls) == len(DECLINED)


def test_top_k_selection_against_a_full_sort():
    """The sampled k-th-score bound never drops a row: same as sorting everything."""
    rng = np.random.default_rng(3)
    for trial in range(300):
        n = int(rng.integers(1, 5000))
        totals = rng.choice([0.0, 0.5, 1.0, 2.0], size=n) if trial % 3 == 0 else rng.random(n)
        totals[rng.random(n) < rng.random()] = 0.0  # rows without a hit
        k = int(rng.choice([1, 2, 10, 100, 1000, n + 5]))
        order = sorted(np.flatnonzero(totals).tolist(), key=lambda i: (-totals[i], i))[:k]
        assert keyword_topk.best_positions(totals, k).tolist() == order


def test_maxscore_gives_the_full_sums_rows_and_doubles():
    """Terms left out where they cannot matter: the same rows, ties and scores (bit for bit) as
    summing every posting, with and without an allow-list, rare and common terms mixed."""
    rng = np.random.default_rng(11)
    pruned = 0  # queries where rows were left out unscored
    for trial in range(150):
        size = int(rng.integers(50, 20_000))
        terms = []
        for _ in range(int(rng.integers(1, 9))):
            df = max(1, int(size * rng.choice([0.0005, 0.003, 0.02, 0.2, 0.7, 1.0])))
            rows = np.sort(rng.choice(size, size=df, replace=False))
            scores = rng.random(df) * rng.choice([0.01, 1.0, 6.0])
            if trial % 4 == 0:
                scores = np.round(scores, 1) + 0.1  # many ties
            bound = float(scores.max()) * rng.choice([1.0, 1.5])  # exact or loose
            terms.append(
                keyword_topk.TermPostings(
                    rows, bound, lambda at, _, s=scores: s if at is None else s[at]
                )
            )
        if trial % 5 == 1:
            terms.append(terms[0])  # a word twice: two phrases, counted twice
        allowed = None
        if trial % 3 == 2:
            allowed = np.sort(rng.choice(size, size=int(rng.integers(1, size)), replace=False))
        for k in (1, 10, 101, size + 3):
            got = keyword_topk.top_rows(terms, k, size, allowed)
            want = every_posting(terms, k, size, allowed)
            np.testing.assert_array_equal(got[0], want[0])
            assert got[1].tobytes() == want[1].tobytes()
            tied = keyword_topk.top_rows(terms, k, size, allowed, ties=True)
            every = every_posting(terms, size, size, allowed)
            kth = every[1][k - 1] if len(every[1]) >= k else None
            keep = np.arange(len(every[1])) < k
            if kth is not None:
                keep |= every[1] == kth
            np.testing.assert_array_equal(tied[0], every[0][keep])
            assert tied[1].tobytes() == every[1][keep].tobytes()
            pruned += len(terms) > 1 and len(got[0]) == k < size
    assert pruned > 100


def test_term_cache_counts_its_own_memory_and_drops_the_least_recently_used():
    def term(n: int) -> keyword_topk.TermPostings:
        return keyword_topk.TermPostings(np.arange(n), 1.0, lambda at, _: np.ones(n))

    cache = keyword_topk.TermCache(max_bytes=100, max_terms=3)
    a, b, c = term(5), term(5), term(5)
    cache.put(1, a)
    cache.put(2, b)
    assert cache.nbytes == 0  # views of the file hold nothing of their own
    a.scores()
    assert cache.nbytes == 40  # its contributions, once computed
    assert cache.get(1) is a  # now the most recently used
    cache.put(3, c)
    cache.put(4, term(1))  # a fourth term: the least recently used (2) goes
    assert cache.get(2) is None and cache.get(1) is a and cache.get(3) is c
    c.scores()
    big = term(8)
    cache.put(5, big)
    big.scores()  # 40 + 40 + 64 bytes > 100: the oldest go until it fits
    assert cache.nbytes <= 100 and cache.get(5) is big
    assert cache.nbytes == sum(p.nbytes for p in cache._terms.values())


def every_posting(terms, k, size, allowed):
    """The reference: every posting of every term summed, in query order."""
    rows = np.concatenate([t.rows for t in terms])
    totals = np.bincount(rows, weights=np.concatenate([t.scores() for t in terms]), minlength=size)
    if allowed is not None:
        totals = totals[allowed]
    best = keyword_topk.best_positions(totals, k)
    return (best if allowed is None else allowed[best]), totals[best]


def test_empty_and_whitespace_queries(index, fts5_calls):
    for query in ("", "   ", "\n\t", "--- ;", "_"):
        assert index.keyword_search(query, 5) == []
    assert fts5_calls == []
    with pytest.raises(Exception, match="k must be a positive int"):
        index.keyword_search("fox", 0)


# -- the file and its generation ---------------------------------------------------------------


def stamp(file: Path) -> tuple[int, int]:
    stat = file.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_file_round_trip(index, tmp_path):
    matrix = keyword_file.load(index.path / KEYWORDS_FILE)
    assert matrix.generation == index.generation and matrix.tokenize == "porter unicode61"
    assert matrix.vocabulary == sorted(matrix.vocabulary) and "run" in matrix.vocabulary
    assert len(matrix.chunk_ids) == index.stats().chunks
    assert matrix.rows.dtype == np.int32 and matrix.freq.dtype == np.float32
    keyword_file.save(matrix, tmp_path / "copy.bm25")
    again = keyword_file.load(tmp_path / "copy.bm25")
    for name in ("chunk_ids", "lengths", "offsets", "rows", "freq"):
        np.testing.assert_array_equal(getattr(again, name), getattr(matrix, name))
    assert again.vocabulary == matrix.vocabulary
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keywords.")] == []


@pytest.mark.parametrize(
    "damage", ["missing", "stale", "garbage", "truncated", "flipped", "another index's"]
)
def test_damaged_file_falls_back_to_fts5(index, damage, fts5_calls, caplog, tmp_path):
    file = index.path / KEYWORDS_FILE
    data = file.read_bytes()
    if damage == "missing":
        file.unlink()
    elif damage == "another index's":  # same generation, other chunks
        with Index.create(tmp_path / "other", SETTINGS) as other:
            other.upsert(corpus(3))
            other.sync_derived()
            assert other.generation == index.generation
        file.write_bytes((tmp_path / "other" / KEYWORDS_FILE).read_bytes())
    elif damage == "stale":
        file.write_bytes(data[:8] + (0).to_bytes(8, "little") + data[16:])
    elif damage == "garbage":
        file.write_bytes(b"\x00garbage" * 64)
    elif damage == "truncated":
        file.write_bytes(data[: len(data) // 2])
    else:
        file.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    with Index.open(index.path, readonly=True) as reader, caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert_same(reader.keyword_search("the fox", 50), fts5_truth(index.path, "the fox", 50))
    assert len(fts5_calls) == 2
    warnings = [r for r in caplog.records if "FTS5 answers" in r.getMessage()]
    assert len(warnings) == (damage in ("truncated", "flipped", "another index's"))  # once
    assert file.exists() == (damage != "missing")  # a reader never writes it
    with Index.open(index.path) as writer:
        writer.sync_derived()  # what a build does at its end: rewrite it
        assert keyword_file.read_generation(file) == writer.generation
    fts5_calls.clear()
    with Index.open(index.path, readonly=True) as reader:
        assert_same(reader.keyword_search("the fox", 50), fts5_truth(index.path, "the fox", 50))
    assert fts5_calls == []


def test_changes_are_applied_from_the_log_then_merged(index, fts5_calls, monkeypatch):
    reader = Index.open(index.path, readonly=True)
    assert reader.keyword_search("run", 3) and fts5_calls == []
    index.upsert([(Document("new", "zebra run zebra"), [Chunk(0, "zebra run zebra", 0, 15, 3)],
                   np.eye(1, DIM, dtype=np.float32))])  # fmt: skip
    index.delete(["d004", "d017"])
    before = stamp(index.path / KEYWORDS_FILE)
    for query in ("zebra", "zebra run", "the of and a", "title17 fox"):  # file + delta
        for ix in (reader, index):
            assert ix.keyword_search(query, 1000) == fts5_truth(index.path, query, 1000)
    assert fts5_calls == []  # the file, two generations behind, with the change log's delta
    index.sync_derived()
    assert stamp(index.path / KEYWORDS_FILE) == before  # a small delta stays in the log
    monkeypatch.setattr(derived, "MERGE_MIN", 0)
    monkeypatch.setattr(derived, "MERGE_FRACTION", 0.0)
    index.sync_derived()  # now due: rebuilt from FTS5, the log pruned
    assert stamp(index.path / KEYWORDS_FILE) != before
    assert keyword_file.read_generation(index.path / KEYWORDS_FILE) == index.generation
    assert index._db.execute("SELECT count(*) FROM chunk_changes").fetchone()[0] == 0
    for query in ("zebra run", "the of and a"):
        assert reader.keyword_search(query, 1000) == fts5_truth(index.path, query, 1000)
    assert fts5_calls == []
    reader.close()


def test_delete_is_reflected(index, fts5_calls):
    doomed = {c for c, _ in index.keyword_search("title7", 10)}
    assert doomed
    index.delete(["d007"])
    index.sync_derived()
    assert index.keyword_search("title7", 10) == []
    found = index.keyword_search("the of and a", 1000)
    assert not doomed & {c for c, _ in found}
    assert_same(found, fts5_truth(index.path, "the of and a", 1000))
    assert fts5_calls == []


def test_noop_sync_keeps_the_file_and_an_empty_index_works(index, tmp_path):
    file = index.path / KEYWORDS_FILE
    before = stamp(file)
    index.sync_derived()
    assert stamp(file) == before
    with Index.create(tmp_path / "empty", SETTINGS) as empty:
        empty.sync_derived()
        assert keyword_file.load(empty.path / KEYWORDS_FILE).chunk_ids.size == 0
        assert empty.keyword_search("fox", 5) == []


def test_create_overwrite_removes_an_old_file(index):
    index.close()
    with Index.create(index.path, SETTINGS, overwrite=True) as fresh:
        assert not (fresh.path / KEYWORDS_FILE).exists()


def test_build_writes_it_and_a_noop_build_does_not(tmp_path, tiny_path, tiny, monkeypatch):
    monkeypatch.setattr(derived, "MERGE_MIN", 0)  # every change is a merge
    monkeypatch.setattr(derived, "MERGE_FRACTION", 0.0)
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    for n in range(4):
        (corpus_dir / f"doc{n}.md").write_text(f"# Comets {n}\n\nComets are running by {n}.\n")
    path, settings = tmp_path / "index", BuildSettings(model=str(tiny_path))
    build([corpus_dir], path, settings, model=tiny)
    file = path / KEYWORDS_FILE
    first = stamp(file)
    build([corpus_dir], path, settings, model=tiny)
    assert stamp(file) == first
    (corpus_dir / "doc1.md").write_text("# Changed\n\nTelescopes instead.\n")
    build([corpus_dir], path, settings, model=tiny)
    assert stamp(file) != first
    with Index.open(path, readonly=True) as reader:
        assert keyword_file.read_generation(file) == reader.generation
        assert_same(reader.keyword_search("telescope comets", 10),
                    fts5_truth(path, "telescope comets", 10))  # fmt: skip
    after_build = stamp(file)
    assert delete_documents(path, ["doc1.md"]) == 1
    assert stamp(file) != after_build
    with Index.open(path, readonly=True) as reader:
        assert reader.keyword_search("telescopes", 10) == []
    assert os.path.getsize(file) > 0


def test_ties_through_the_kth_from_the_matrix_and_from_fts5(tmp_path, fts5_calls):
    """``ties=True``: the first k, then every other chunk scored as the k-th, both paths."""
    twins = [
        (Document(f"t{i:02d}", "zebra crossing", title=""), [Chunk(0, "zebra crossing", 0, 14, 2)],
         np.eye(1, DIM, dtype=np.float32))
        for i in range(30)
    ]  # fmt: skip
    with Index.create(tmp_path / "ties", SETTINGS) as ix:
        ix.upsert(corpus(40) + twins)
        ix.sync_derived()
        for query in ("zebra", "zebra the", "the of"):
            truth = fts5_truth(ix.path, query, 10_000)
            for k in (1, 5, 29, 31):
                kth = truth[min(k, len(truth)) - 1][1]
                want = truth[:k] + [hit for hit in truth[k:] if hit[1] == kth]
                assert ix.keyword_search(query, k, ties=True) == want
                assert fts5_calls == []
                (ix.path / KEYWORDS_FILE).rename(tmp_path / "aside")
                try:
                    with Index.open(ix.path, readonly=True) as reader:  # FTS5, deepening
                        assert_same(reader.keyword_search(query, k, ties=True), want)
                finally:
                    (tmp_path / "aside").rename(ix.path / KEYWORDS_FILE)
                assert fts5_calls
                fts5_calls.clear()
