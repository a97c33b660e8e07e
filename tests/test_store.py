"""The index folder: real SQLite files in tmp_path, real FAISS, random normalised vectors."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace

import numpy as np
import pytest

from instructor_search.documents import Chunk, Document
from instructor_search.errors import (
    FilterError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexStoreError,
)
from instructor_search.store import vectors
from instructor_search.store.fields import MATCHING_CACHE
from instructor_search.store.index import PAGE_SIZE, CollectionSettings, Index, IndexStats
from instructor_search.store.migrations import MIGRATIONS, SCHEMA_VERSION

DIM = 16
SETTINGS = CollectionSettings(
    model="hkunlp/instructor-base",
    model_fingerprint="sha256:abc",
    dimension=DIM,
    document_instruction="Represent the document for retrieval:",
    query_instruction="Represent the question for retrieving supporting documents:",
    chunk_tokens=256,
    chunk_overlap=32,
)
NASTY = ['"; DROP TABLE chunks;--', "OR", "NEAR(", "*", '"', '")', "a OR b AND", "'", "%_", ""]


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def item(doc_id: str, texts: list[str], rng: np.random.Generator, title: str = "", **metadata):
    text = " ".join(texts)
    chunks, start = [], 0
    for ordinal, part in enumerate(texts):
        chunks.append(Chunk(ordinal, part, start, start + len(part), len(part.split())))
        start += len(part) + 1
    doc = Document(doc_id, text, title=title, source=f"/corpus/{doc_id}", metadata=metadata)
    return doc, chunks, unit(rng, len(texts))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def index(tmp_path, rng):
    with Index.create(tmp_path / "idx", SETTINGS) as ix:
        ix.upsert(
            [
                item("a/one.md", ["the quick brown fox", "jumps over"], rng, "Foxes", lang="en"),
                item(
                    "a/two.pdf", ["le renard brun", "saute"], rng, "Renards", lang="fr", year=2021
                ),
                item("b/three.txt", ["lazy dogs sleep"], rng, "Dogs", lang="en", year=2023),
            ]
        )
        yield ix


def brute_force(ix: Index, ids: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    sims = ix.embeddings(ids) @ query
    return [int(i) for i in ids[np.argsort(-sims, kind="stable")[:k]]]


# -- create / open -------------------------------------------------------------------------


def test_create_open_reopen(tmp_path, index):
    path = tmp_path / "idx"
    assert {p.name for p in path.iterdir()} >= {"index.sqlite"}
    index.close()
    with Index.open(path) as again:
        assert again.settings == SETTINGS
        assert again.generation == 1
        stats = again.stats()
        assert isinstance(stats, IndexStats)
        assert (stats.documents, stats.chunks, stats.schema_version) == (3, 5, SCHEMA_VERSION)
        assert stats.to_dict()["model"] == SETTINGS.model and stats.size_bytes > 0
        assert stats.index_type == "flat" and stats.built_at
    with pytest.raises(IndexStoreError, match="already exists"):
        Index.create(path, SETTINGS)
    with Index.create(path, SETTINGS, overwrite=True) as fresh:
        assert fresh.stats().documents == 0 and fresh.generation == 0


def test_open_missing_never_creates(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(IndexNotFoundError, match="instructor-index build SOURCE --index"):
        Index.open(missing)
    assert not missing.exists()
    other = tmp_path / "docs"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    with pytest.raises(IndexNotFoundError, match=r"no index\.sqlite"):
        Index.open(other, readonly=True)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_corrupt_or_foreign_database(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "index.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IndexCorruptError, match=r"index\.sqlite"):
        Index.open(folder)
    (folder / "index.sqlite").unlink()
    sqlite3.connect(folder / "index.sqlite").execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(IndexCorruptError, match="not an instructor-search index"):
        Index.open(folder)
    conn = sqlite3.connect(folder / "index.sqlite")
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["t"]


def test_migrations_recorded_once_and_newer_refused(tmp_path, index):
    path = tmp_path / "idx"
    index.close()
    for _ in range(2):
        Index.open(path).close()
    conn = sqlite3.connect(path / "index.sqlite")
    names = [r[0] for r in conn.execute("SELECT name FROM _migrations")]
    assert names == [fn.__name__ for fn in MIGRATIONS] and len(names) == SCHEMA_VERSION
    conn.execute("INSERT INTO _migrations VALUES ('m999_from_the_future', '2030-01-01')")
    conn.commit()
    conn.close()
    with pytest.raises(IndexCorruptError, match=r"newer instructor-search.*upgrade"):
        Index.open(path, readonly=True)


def test_check_compatible(index):
    index.check_compatible(SETTINGS)
    index.check_compatible(replace(SETTINGS, model="/local/copy/of/it"))  # same weights
    other = replace(SETTINGS, model="hkunlp/instructor-large", model_fingerprint="x", dimension=768)
    with pytest.raises(IndexMismatchError) as err:
        index.check_compatible(other)
    message = str(err.value)
    assert "hkunlp/instructor-base" in message and "--rebuild" in message
    assert "768" in message and "dimension" in message
    for change in ({"query_instruction": "Represent:"}, {"chunk_tokens": 128}):
        with pytest.raises(IndexMismatchError, match="--rebuild"):
            index.check_compatible(replace(SETTINGS, **change))


# -- writes --------------------------------------------------------------------------------


def test_upsert_replace_delete_keep_fts_in_sync(index, rng):
    assert index.document_hashes()["a/one.md"] == index.document("a/one.md").content_hash
    assert index.document_sources()["a/two.pdf"] == "/corpus/a/two.pdf"
    old_ids = [hit for hit, _ in index.keyword_search("fox", 10)]
    assert old_ids and index.keyword_search("foxes", 10)  # porter stemming, title column
    index.upsert([item("a/one.md", ["a brand new wolf"], rng, "Wolves", lang="en")])
    assert index.generation == 2
    assert index.keyword_search("fox", 10) == []
    new = index.keyword_search("wolf", 10)
    assert len(new) == 1 and new[0][0] > max(old_ids)  # AUTOINCREMENT: ids never reused
    assert index.document("a/one.md").text == "a brand new wolf"
    assert index.chunks([new[0][0]])[0].title == "Wolves"
    assert index.delete(["b/three.txt", "not/there"]) == 1
    assert index.generation == 3
    assert index.delete(["not/there"]) == 0 and index.generation == 3
    assert index.keyword_search("dogs", 10) == [] and index.document("b/three.txt") is None
    assert index.stats().chunks == 3
    index.upsert([])
    assert index.generation == 3


def test_a_text_its_chunks_spell_is_stored_once(index, rng):
    def stored(doc_id):
        return index._db.execute(
            "SELECT text, text_in_chunks FROM documents WHERE id = ?", [doc_id]
        ).fetchone()

    assert stored("a/one.md") == ("", 1)  # "the quick brown fox jumps over": its two chunks
    assert index.document("a/one.md").text == "the quick brown fox jumps over"
    doc, chunks, vectors = item("c/more.md", ["first part", "second"], rng)
    doc.text += " and a tail no chunk holds"  # the chunks do not spell it: stored whole
    unspelled = (
        Document("c/gap.md", "ab  cd", source="x"),
        [Chunk(0, "ab", 0, 2, 1), Chunk(1, "cd", 4, 6, 1)],
    )
    index.upsert([(doc, chunks, vectors), (*unspelled, unit(rng, 2))])
    assert stored("c/more.md") == (doc.text, 0) and index.document("c/more.md").text == doc.text
    assert stored("c/gap.md") == ("", 1) and index.document("c/gap.md").text == "ab  cd"
    index.upsert([item("a/one.md", ["only this"], rng)])  # replaced: spelled by its new chunks
    assert stored("a/one.md") == ("", 1) and index.document("a/one.md").text == "only this"


def test_wrong_dimension_writes_nothing(index, rng):
    doc, chunks, _ = item("c/new.md", ["text"], rng)
    with pytest.raises(IndexMismatchError, match="16-dimensional"):
        index.upsert([item("c/ok.md", ["fine"], rng), (doc, chunks, unit(rng, 1, dim=8))])
    assert index.generation == 1 and index.document("c/ok.md") is None


def test_reads(index):
    records = index.chunks([5, 1, -1, 999, 3])
    assert [r.chunk_id for r in records] == [5, 1, 3]
    first = records[1]
    assert (first.doc_id, first.ordinal, first.text, first.title) == (
        "a/one.md",
        0,
        "the quick brown fox",
        "Foxes",
    )
    doc = index.document("a/one.md")
    assert doc.text[first.start : first.end] == first.text and first.metadata == {"lang": "en"}
    emb = index.embeddings([3, 1])
    assert emb.shape == (2, DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


# -- filters -------------------------------------------------------------------------------


def test_fields_and_filters(index):
    fields = index.fields()
    assert fields["lang"] == "text" and fields["year"] == "number" and fields["mtime"] == "number"
    assert {"doc_id", "title", "source", "type", "folder", "size", "indexed_at"} <= set(fields)

    def docs(where):
        return sorted({r.doc_id for r in index.chunks(index.matching_chunk_ids(where))})

    assert docs({"type": "pdf"}) == ["a/two.pdf"]
    assert docs({"type": ["md", "txt"]}) == ["a/one.md", "b/three.txt"]
    assert docs({"folder": "a", "lang": "en"}) == ["a/one.md"]
    assert docs({"year": {">=": 2022}}) == ["b/three.txt"]
    assert docs({"year": {">": 2020, "<": 2024}}) == ["a/two.pdf", "b/three.txt"]
    assert docs({"year": None}) == ["a/one.md"]
    assert docs({"lang": {"!=": "en"}}) == ["a/two.pdf"]
    assert docs({"doc_id": "b/three.txt"}) == docs({"id": "b/three.txt"}) == ["b/three.txt"]
    assert docs({"type": []}) == []
    with pytest.raises(FilterError, match=r"known fields: .*lang"):
        index.matching_chunk_ids({"colour": "red"})
    with pytest.raises(FilterError, match="valid operators: =, !=, <"):
        index.matching_chunk_ids({"year": {"~": 3}})
    with pytest.raises(FilterError):
        index.matching_chunk_ids({"year": {"=": [1, 2]}})
    assert docs({"year": np.int64(2021)}) == ["a/two.pdf"]  # numpy scalars are fine


def test_filter_results_are_remembered_per_generation(index, rng):
    first = index.matching_chunk_ids({"lang": "en"})
    assert index.matching_chunk_ids({"lang": "en"}) is first  # the same filter: no new lookup
    assert not first.flags.writeable
    assert index.matching_chunk_ids({"year": 2021}).size == 2
    with pytest.raises(FilterError):  # a string cannot match a number field (filters.py)
        index.matching_chunk_ids({"year": "2021"})
    index.upsert([item("c/four.md", ["new english text"], rng, "Four", lang="en")])
    after = index.matching_chunk_ids({"lang": "en"})  # a write: a new generation, a new lookup
    assert after.size == first.size + 1
    for n in range(MATCHING_CACHE + 1):
        index.matching_chunk_ids({"year": n})
    assert index.matching_chunk_ids({"lang": "en"}) is not after  # the oldest was forgotten


def test_odd_metadata_keys(index, rng):
    index.upsert([item("c/odd.md", ["odd"], rng, **{"a.b": 1, 'say "hi"': "yes", "draft": True})])
    assert index.fields()["draft"] == "bool"
    for where in ({"a.b": 1}, {'say "hi"': "yes"}, {"draft": True}):
        found = index.matching_chunk_ids(where)
        assert [r.doc_id for r in index.chunks(found)] == ["c/odd.md"]


def test_hostile_strings_are_text(index):
    for text in NASTY:
        assert index.keyword_search(text, 5) == [] or text in ("OR", "a OR b AND")
        assert index.matching_chunk_ids({"lang": text}).size == 0
        assert index.keyword_search("fox", 5, where={"title": text}) == []
        with pytest.raises(FilterError):
            index.matching_chunk_ids({text: "x"})
    assert index.stats().chunks == 5
    # operators in a query are words, not syntax
    hits = index.keyword_search('fox" OR NEAR(dogs*', 10)
    assert {index.chunks([c])[0].doc_id for c, _ in hits} == {"a/one.md", "b/three.txt"}
    assert all(score > 0 for _, score in hits)
    assert index.keyword_search("fox", 10, where={"lang": "fr"}) == []


# -- vectors -------------------------------------------------------------------------------


@pytest.fixture
def big(tmp_path, rng):
    """2,500 documents x 2 chunks; 6 documents (12 chunks) carry the tag "rare"."""
    ix = Index.create(tmp_path / "big", SETTINGS)
    batch = []
    for i in range(2500):
        tag = "rare" if i % 420 == 7 else "common"
        batch.append(item(f"d{i}.md", [f"doc {i} part one", f"doc {i} part two"], rng, tag=tag))
    ix.upsert(batch)
    ix.sync_derived()
    yield ix
    ix.close()


def test_filtered_search_returns_k_when_k_match(big, rng, monkeypatch):
    rare = big.matching_chunk_ids({"tag": "rare"})
    assert len(rare) == 12 and big.stats().chunks == 5000
    queries = unit(rng, 5)
    scores, ids = big.search_vectors(queries, 10, where={"tag": "rare"})
    for q, row, row_scores in zip(queries, ids, scores, strict=True):
        assert row.tolist() == brute_force(big, rare, q, 10)
        assert np.all(np.diff(row_scores) <= 1e-6)
    _, ids = big.search_vectors(queries, 20, where={"tag": "rare"})
    assert (ids[:, :12] >= 0).all() and (ids[:, 12:] == -1).all()
    monkeypatch.setattr(vectors, "EXACT_FILTER_MAX", 1000)
    common = big.matching_chunk_ids({"tag": "common"})  # > EXACT_FILTER_MAX: FAISS selector
    assert len(common) > vectors.EXACT_FILTER_MAX
    _, ids = big.search_vectors(queries, 10, where={"tag": "common"})
    for q, row in zip(queries, ids, strict=True):
        assert row.tolist() == brute_force(big, common, q, 10)
    _, ids = big.search_vectors(queries[0], 10)
    assert ids[0].tolist() == brute_force(big, np.arange(1, 5001), queries[0], 10)
    with pytest.raises(IndexMismatchError):
        big.search_vectors(unit(rng, 1, dim=8), 10)


def test_ivf_index_through_the_store(big, rng, monkeypatch):
    monkeypatch.setattr(vectors, "FLAT_MAX", 1000)
    (big.path / "vectors.faiss").unlink()  # missing: rebuilt, as IVF at this size
    big.upsert([item("extra.md", ["one more"], rng, tag="rare")])
    with Index.open(big.path) as writer:
        writer.sync_derived()
    stats = big.stats()
    assert stats.index_type.startswith("ivf283,fp16,nprobe=") and stats.recall_at_10 >= 0.95
    assert vectors.read_generation(big.path / "vectors.faiss") == stats.generation
    rare = big.matching_chunk_ids({"tag": "rare"})
    queries = unit(rng, 3)
    _, ids = big.search_vectors(queries, 10, where={"tag": ["rare"]})
    for q, row in zip(queries, ids, strict=True):
        assert row.tolist() == brute_force(big, rare, q, 10)
    monkeypatch.setattr(vectors, "EXACT_FILTER_MAX", 500)  # a 20% filter: IVF + a selector
    fifth = {"doc_id": [f"d{i}.md" for i in range(0, 2500, 5)]}
    allowed = set(big.matching_chunk_ids(fifth).tolist())
    assert len(allowed) == 1000
    _, ids = big.search_vectors(queries, 10, where=fifth)
    assert (ids >= 0).all() and set(ids.ravel().tolist()) <= allowed
    # A filter far from the query (as a folder of another topic is): the lists probed first
    # hold none of its chunks; probing wider still returns k hits, the best of them.
    all_ids = np.arange(1, big.stats().chunks + 1)
    far = all_ids[np.argsort(big.embeddings(all_ids) @ queries[0])[:1200]]
    docs = sorted({r.doc_id for r in big.chunks(far)})
    where = {"doc_id": docs}
    allowed = big.matching_chunk_ids(where)
    assert len(allowed) > vectors.EXACT_FILTER_MAX
    _, ids = big.search_vectors(queries[:1], 10, where=where)
    assert (ids >= 0).all() and set(ids.ravel().tolist()) <= set(allowed.tolist())
    assert ids[0].tolist() == brute_force(big, allowed, queries[0], 10)
    with Index.open(big.path, readonly=True) as reader:  # loads the IVF file as written
        assert reader.search_vectors(queries, 10)[1].shape == (3, 10)


def test_vectors_file_rebuilt_when_missing_stale_or_garbage(big, rng):
    file = big.path / "vectors.faiss"
    query = unit(rng, 1)
    expected = big.search_vectors(query, 10)[1]
    assert vectors.read_generation(file) == big.generation
    for damage in ("missing", "garbage", "stale"):
        if damage == "missing":
            file.unlink()
        elif damage == "garbage":
            file.write_bytes(b"\x00garbage" * 64)
        else:
            vectors.save(vectors.build_vector_index(np.arange(3), unit(rng, 3))[0], file, 0)
        with Index.open(big.path, readonly=True) as reader:
            np.testing.assert_array_equal(reader.search_vectors(query, 10)[1], expected)
        assert (damage == "missing" and not file.exists()) or vectors.read_generation(file) != 1
        with Index.open(big.path) as writer:
            np.testing.assert_array_equal(writer.search_vectors(query, 10)[1], expected)
        assert vectors.read_generation(file) == big.generation  # the writer wrote it back


def test_reader_sees_writer_generation(tmp_path, index, rng):
    reader = Index.open(tmp_path / "idx", readonly=True)
    new_doc = item("c/new.md", ["brand new text"], rng)
    query = new_doc[2][0]
    assert reader.search_vectors(query, 1)[1][0, 0] != 6
    index.upsert([new_doc])
    assert reader.search_vectors(query, 1)[1][0, 0] == 6  # next search reloads
    assert reader.keyword_search("brand", 3)[0][0] == 6
    with pytest.raises(IndexStoreError, match="read-only"):
        reader.delete(["c/new.md"])
    reader.close()


def test_snapshot_spans_calls(index, rng):
    with index.snapshot():  # a writable index may rebuild vectors.faiss inside: deferred
        _, ids = index.search_vectors(unit(rng, 1), 3)
        assert len(index.chunks(ids[0])) == 3
    assert vectors.read_generation(index.path / "vectors.faiss") == index.generation


def test_readers_while_a_writer_commits(tmp_path, index):
    """Separate connections: no 'database is locked', and every search is self-consistent."""
    errors: list[BaseException] = []

    def write() -> None:
        local = np.random.default_rng(1)
        try:
            with Index.open(tmp_path / "idx") as writer:
                for i in range(30):
                    writer.upsert([item(f"w/{i}.md", [f"written {i}"] * 3, local, n=i)])
                    if i % 3 == 2:
                        writer.delete([f"w/{i - 1}.md"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=write)
    with Index.open(tmp_path / "idx", readonly=True) as reader:
        thread.start()
        queries = unit(np.random.default_rng(2), 4)
        while thread.is_alive():
            with reader.snapshot():
                _, ids = reader.search_vectors(queries, 50, where={"type": "md"})
                found = ids[ids >= 0]
                assert len(reader.chunks(found)) == len(found)  # no torn reads
            reader.keyword_search("written", 5)
        thread.join()
        assert not errors
        assert reader.stats().documents == 23


# -- creating atomically, recognising a half-created index, listing documents -----------------


def test_documents_lists_ids_titles_sources_and_chunk_counts(index):
    from instructor_search.store.index import DocumentInfo

    assert index.documents() == [
        DocumentInfo("a/one.md", "Foxes", "/corpus/a/one.md", 2),
        DocumentInfo("a/two.pdf", "Renards", "/corpus/a/two.pdf", 2),
        DocumentInfo("b/three.txt", "Dogs", "/corpus/b/three.txt", 1),
    ]


def test_create_leaves_only_a_whole_index_and_clears_leftovers(tmp_path, rng):
    from instructor_search.store.index import INDEX_FILE

    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / f"{INDEX_FILE}.creating-12345").write_bytes(b"half a database")  # a killed create
    (folder / INDEX_FILE).write_bytes(b"")  # what an older version's killed create left
    assert not Index.exists(folder)
    with pytest.raises(IndexNotFoundError, match="never finished"):
        Index.open(folder)
    with Index.create(folder, SETTINGS) as created:  # no overwrite needed: it held nothing
        created.upsert([item("x.md", ["some text"], rng)])
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(f"{INDEX_FILE}-")) == [
        INDEX_FILE
    ]
    assert Index.exists(folder)
    with pytest.raises(IndexStoreError, match="already exists"):
        Index.create(folder, SETTINGS)
    with Index.open(folder, readonly=True) as opened:
        assert opened.stats().documents == 1


def test_a_foreign_database_exists_and_is_refused_not_replaced(tmp_path):
    from instructor_search.store.index import INDEX_FILE

    folder = tmp_path / "idx"
    folder.mkdir()
    with sqlite3.connect(folder / INDEX_FILE) as db:
        db.execute("CREATE TABLE photos (id INTEGER)")
    assert Index.exists(folder)
    with pytest.raises(IndexCorruptError, match="not an instructor-search index"):
        Index.open(folder)
    with pytest.raises(IndexStoreError, match="already exists"):
        Index.create(folder, SETTINGS)


def test_small_update_does_not_load_the_derived_files(tmp_path, index, rng, monkeypatch):
    from instructor_search.store import derived, keyword_file

    index.sync_derived()  # writes both files and records their stat
    loads: list[str] = []
    for module, name in ((derived.vector_files, "vectors"), (keyword_file, "keywords")):
        real = module.load

        def counted(*args, _load=real, _name=name, **kwargs):
            loads.append(_name)
            return _load(*args, **kwargs)

        monkeypatch.setattr(module, "load", counted)
    with Index.open(index.path) as writer:  # a new writer process: nothing cached
        writer.upsert([item("c/new.md", ["brand new zebra text"], rng)])
        writer.sync_derived()
    assert loads == []  # the delta stays in the change log, the files untouched
    query = rng.standard_normal(DIM).astype(np.float32)
    with Index.open(index.path, readonly=True) as reader:  # readers apply the delta
        ids = np.array([r[0] for r in reader._db.execute("SELECT id FROM chunks")])
        assert reader.search_vectors(query, 3)[1][0].tolist() == brute_force(reader, ids, query, 3)
        assert reader.keyword_search("zebra", 3)[0]
    assert sorted(loads) == ["keywords", "vectors"]
    loads.clear()
    file = index.path / derived.VECTORS_FILE
    data = file.read_bytes()  # damaged in place: same inode and size, another mtime
    file.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    with Index.open(index.path) as writer:
        writer.upsert([item("c/other.md", ["other text"], rng)])
        writer.sync_derived()  # not the recorded file: loaded, found damaged, written anew
        assert vectors.read_generation(file) == writer.generation
    assert "vectors" in loads


def test_matching_chunk_ids_reads_runs_and_copes_without_them(index):
    en = index.matching_chunk_ids({"lang": "en"})
    expected = [r[0] for r in index._db.execute(
        "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id "
        "WHERE json_extract(d.metadata, '$.lang') = 'en' ORDER BY c.id")]  # fmt: skip
    assert en.tolist() == expected and len(expected) == 3
    with index._write():  # a document whose chunk ids are not one run (as m005 records it)
        index._db.execute("UPDATE chunks SET id = 1000 WHERE id = ?", [expected[0]])
        index._db.execute(
            "UPDATE document_runs SET first_chunk = (SELECT min(id) FROM chunks c WHERE "
            "c.doc_id = document_runs.doc_id), last_chunk = (SELECT max(id) FROM chunks c "
            "WHERE c.doc_id = document_runs.doc_id)"
        )
        index._bump()
    assert index.matching_chunk_ids({"lang": "en"}).tolist() == sorted([*expected[1:], 1000])


def test_a_new_index_has_large_pages(tmp_path):
    """A ~3 KB chunk row fits once in a 4 KB page: new indexes use PAGE_SIZE pages."""
    with Index.create(tmp_path / "idx", SETTINGS) as ix:
        assert ix._db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 16384


def test_an_index_under_a_path_with_uri_characters(tmp_path):
    """``?``, ``#`` and ``%`` in a folder name are a path, not parts of an SQLite URI."""
    path = tmp_path / "notes?v=1#draft 100%" / "idx"
    with Index.create(path, SETTINGS) as ix:
        vector = np.ones((1, DIM), np.float32) / np.sqrt(DIM)
        ix.upsert([(Document("a", "alpha text"), [Chunk(0, "alpha text", 0, 10, 2)], vector)])
        ix.sync_derived()
    with Index.open(path, readonly=True) as ix:
        assert ix.stats().chunks == 1 and ix.keyword_search("alpha", 5)
    assert Index.exists(path)


def test_folder_and_type_fields_are_those_of_pure_posix_paths():
    import itertools
    from pathlib import PurePosixPath

    from instructor_search.store.writes import document_fields

    parts = ["", "a", "b.txt", ".", "..", ".x", "x.", "a.b.C", "//", "é.MD", "x.tar.gz", "a..b"]
    for combo in itertools.chain.from_iterable(
        itertools.product(parts, repeat=k) for k in (1, 2, 3)
    ):
        for doc_id in ("/".join(combo), "/" + "/".join(combo)):
            doc = Document(id=doc_id, text="ü" if len(combo) % 2 else "u", source="")
            path = PurePosixPath(doc_id)
            folder = str(path.parent)
            assert document_fields(doc) == (
                None,
                len(doc.text.encode()),
                path.suffix.lstrip(".").lower() or None,
                "" if folder == "." else folder,
            ), doc_id
