"""``where`` values checked against their field's kind: a value that cannot match is an error
naming the field, its kind and the value, on every path (the pure check, the store's lookups,
the CLI), never a silent 0 or all hits. Real SQLite in tmp_path, random normalised vectors."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from instructor_search.documents import Chunk, Document
from instructor_search.errors import FilterError
from instructor_search.store.filters import validate_where
from instructor_search.store.index import CollectionSettings, Index

DIM = 8
SETTINGS = CollectionSettings(
    model="test-model",
    model_fingerprint="sha256:test",
    dimension=DIM,
    document_instruction="",
    query_instruction="",
    chunk_tokens=64,
    chunk_overlap=0,
)
#: Metadata of the three documents: a number, a bool, a list and a field of mixed types.
METADATA = {
    "a.md": {"year": 2020, "draft": True, "tags": ["x", "y"], "code": 7},
    "b.md": {"year": 2023, "draft": False, "tags": ["y"], "code": "B7"},
    "c.md": {"year": None, "draft": False, "tags": [], "code": 9},
}


def _item(doc_id: str, rng: np.random.Generator):
    text = f"notes about {doc_id}"
    vector = rng.standard_normal((1, DIM)).astype(np.float32)
    document = Document(
        doc_id, text, title=doc_id.upper(), source=doc_id, metadata=METADATA[doc_id]
    )
    return document, [Chunk(0, text, 0, len(text), 3)], vector / np.linalg.norm(vector)


@pytest.fixture
def index(tmp_path):
    rng = np.random.default_rng(0)
    with Index.create(tmp_path / "idx", SETTINGS) as ix:
        ix.upsert([_item(doc_id, rng) for doc_id in METADATA])
        yield ix


def docs(index: Index, where) -> list[str]:
    return sorted({c.doc_id for c in index.chunks(index.matching_chunk_ids(where))})


def test_the_index_knows_the_kinds(index):
    fields = index.fields()
    assert (fields["year"], fields["draft"], fields["tags"], fields["code"]) == (
        "number",
        "bool",
        "json",
        "mixed",
    )
    assert (fields["size"], fields["title"]) == ("number", "text")


@pytest.mark.parametrize(
    ("where", "field", "kind", "shown"),
    [
        ({"size": {"<": "abc"}}, "size", "number", "'abc'"),
        ({"size": "abc"}, "size", "number", "'abc'"),
        ({"size": {">=": "abc"}}, "size", "number", "'abc'"),
        ({"year": "2021"}, "year", "number", "'2021'"),  # a digit string is text, not 2021
        ({"year": ["2020", 2023]}, "year", "number", "'2020'"),
        ({"year": {">=": True}}, "year", "number", "True"),
        ({"title": {">=": 5}}, "title", "text", "5"),
        ({"title": 5}, "title", "text", "5"),
        ({"doc_id": [1.5]}, "doc_id", "text", "1.5"),
        ({"draft": "yes"}, "draft", "bool", "'yes'"),
        ({"draft": 2}, "draft", "bool", "2"),
    ],
)
def test_a_value_of_the_wrong_kind_is_an_error_naming_it(index, where, field, kind, shown):
    for check in (
        lambda: validate_where(where, index.fields()),
        lambda: index.matching_chunk_ids(where),
        lambda: index.keyword_search("notes", 5, where=where),
        lambda: index.search_vectors(np.ones((1, DIM), np.float32), 3, where),
    ):
        with pytest.raises(FilterError) as raised:
            check()
        message = str(raised.value)
        assert repr(field) in message and f"{kind} field" in message and shown in message


def test_operators_that_cannot_mean_anything(index):
    with pytest.raises(FilterError, match=r"'draft'.*bool field.*= or !="):
        index.matching_chunk_ids({"draft": {">": 0}})
    with pytest.raises(FilterError, match=r"'tags'.*holds lists"):
        index.matching_chunk_ids({"tags": {">=": "x"}})
    with pytest.raises(FilterError, match="NaN"):
        index.matching_chunk_ids({"year": float("nan")})
    with pytest.raises(FilterError, match="only = and !="):
        index.matching_chunk_ids({"year": {"<": None}})


def test_values_of_the_right_kind_still_match(index):
    assert docs(index, {"year": {">=": 2021}}) == ["b.md"]
    assert docs(index, {"year": 2020.0}) == ["a.md"]
    assert docs(index, {"year": np.int64(2023)}) == ["b.md"]
    assert docs(index, {"year": None}) == ["c.md"]
    assert docs(index, {"year": {"!=": None}}) == ["a.md", "b.md"]
    assert docs(index, {"draft": True}) == docs(index, {"draft": 1}) == ["a.md"]
    assert docs(index, {"draft": {"!=": True}}) == ["b.md", "c.md"]
    assert docs(index, {"tags": "y"}) == ["a.md", "b.md"]
    assert docs(index, {"tags": ["x", "z"]}) == ["a.md"]
    assert docs(index, {"code": 7}) == ["a.md"]  # a field of mixed kinds takes either
    assert docs(index, {"code": "B7"}) == ["b.md"]
    assert docs(index, {"title": {">=": "B"}}) == ["b.md", "c.md"]
    assert docs(index, {"size": {">=": 0}}) == ["a.md", "b.md", "c.md"]


def test_validate_where_needs_only_the_field_kinds():
    fields = {"size": "number", "title": "text"}
    assert [c.op for c in validate_where({"size": {">": 1, "<": 9}, "title": "x"}, fields)] == [
        ">",
        "<",
        "=",
    ]
    with pytest.raises(FilterError, match="Unknown filter field 'colour'"):
        validate_where({"colour": "red"}, fields)
    with pytest.raises(FilterError, match=r"'size'.*number field.*'abc'"):
        validate_where({"size": "abc"}, fields)
    with pytest.raises(FilterError, match="where must be a dict"):
        validate_where([("size", 1)], fields)  # type: ignore[arg-type]


@pytest.mark.slow
def test_cli_where_of_the_wrong_kind_fails(tmp_path, tiny_path):
    from instructor_search.indexer.cli import cli

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "note.md").write_text("# Note\n\nA short note about sourdough bread.")
    index = tmp_path / "index"
    runner = CliRunner()
    built = runner.invoke(
        cli, ["build", str(corpus), "--index", str(index), "--model", str(tiny_path), "-q"]
    )
    assert built.exit_code == 0, built.output
    for condition, field, kind in (
        ("size<abc", "size", "number"),
        ("size=abc", "size", "number"),
        ("title>=5", "title", "text"),
    ):
        result = runner.invoke(
            cli, ["search", str(index), "bread", "--mode", "keyword", "--where", condition]
        )
        assert result.exit_code == 1, result.output
        assert f"'{field}'" in result.output and f"{kind} field" in result.output
    fine = runner.invoke(
        cli, ["search", str(index), "bread", "--mode", "keyword", "--where", "size>=1", "--json"]
    )
    assert fine.exit_code == 0 and '"note.md"' in fine.output


def test_chunk_runs_follow_every_write_and_an_old_index_gets_them(tmp_path):
    rng = np.random.default_rng(1)

    def item(doc_id: str, chunks: int, year: int):
        texts = [f"{doc_id} part {n}" for n in range(chunks)]
        vectors = rng.standard_normal((chunks, DIM)).astype(np.float32)
        return (
            Document(doc_id, " ".join(texts), metadata={"year": year}),
            [Chunk(n, t, 0, len(t), 2) for n, t in enumerate(texts)],
            vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        )

    def by_scan(ix: Index, year: int) -> list[int]:  # the chunks of matching documents
        sql = (
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id "
            "WHERE json_extract(d.metadata, '$.year') = ? ORDER BY c.id"
        )
        return [r[0] for r in ix._db.execute(sql, [year])]

    path = tmp_path / "idx"
    with Index.create(path, SETTINGS) as ix:
        ix.upsert([item(f"d{n}", 1 + n % 3, 2000 + n % 2) for n in range(8)])
        ix.upsert([item("d1", 4, 2000), item("d8", 2, 2001)])  # replaced, added
        ix.delete(["d2", "d5"])
        ix.upsert([item("d0", 0, 2000)])  # a document left without chunks
        for year in (2000, 2001):
            assert ix.matching_chunk_ids({"year": year}).tolist() == by_scan(ix, year)
        expected = {year: by_scan(ix, year) for year in (2000, 2001)}
        ix._db.execute("DROP TABLE document_runs")  # as an index from before m005
        ix._db.execute("DELETE FROM _migrations WHERE name = 'm005_document_runs'")
    with Index.open(path) as ix:
        for year in (2000, 2001):
            assert ix.matching_chunk_ids({"year": year}).tolist() == expected[year]


@pytest.mark.parametrize(
    "where",
    [
        {"year": 2020},
        {"year": None},  # missing or null: the NOT IN form
        {"year": {">=": 2021}},
        {"tags": "y"},  # a list member
        {"tags": ["x", "z"], "draft": True},
        {"code": [7, "B7"]},
        {"year": {"!=": None}, "title": "B.MD"},  # with a built-in field: documents first
    ],
)
def test_metadata_filters_read_the_fields_index_alone_and_match_as_the_documents_do(index, where):
    """A filter on metadata alone finds its documents' runs from ``document_fields`` without
    the ``documents`` table; the ids are those a scan of every document's JSON gives."""
    condition, params = index._filter_sql(where)
    rows = index._db.execute(
        f"SELECT c.id FROM documents d JOIN chunks c ON c.doc_id = d.id WHERE {condition} "
        "ORDER BY c.id",
        params,
    )
    assert index.matching_chunk_ids(where).tolist() == [r[0] for r in rows]
    scanned = sorted(
        doc_id
        for doc_id, meta in METADATA.items()
        if all(_matches(meta, doc_id, field, test) for field, test in where.items())
    )
    assert docs(index, where) == scanned


def _matches(meta: dict, doc_id: str, field: str, test) -> bool:
    """The reference: ``where``'s meaning on one document's metadata (what the tests use)."""
    if field == "title":
        return doc_id.upper() == test
    value = meta.get(field)
    if isinstance(test, dict):
        ((op, bound),) = test.items()
        if bound is None:
            return value is not None
        return value is not None and {">=": value >= bound, "!=": value != bound}[op]
    if isinstance(value, list):
        return bool(set(value) & set(test if isinstance(test, list) else [test]))
    if isinstance(test, list):
        return value in test and not isinstance(value, bool)
    return value == test and type(value) is type(test)


def test_an_old_index_gets_the_fields_lookup_index(tmp_path):
    path = tmp_path / "idx"
    rng = np.random.default_rng(2)
    with Index.create(path, SETTINGS) as ix:
        ix.upsert([_item(doc_id, rng) for doc_id in METADATA])
        expected = ix.matching_chunk_ids({"year": 2023}).tolist()
        ix._db.execute("DROP INDEX idx_document_fields_lookup")  # as an index before m006
        ix._db.execute(
            "CREATE INDEX idx_document_fields_value ON document_fields(key, member, value)"
        )
        ix._db.execute("DELETE FROM _migrations WHERE name = 'm006_document_fields_lookup'")
    with Index.open(path) as ix:
        names = {
            r[0] for r in ix._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert "idx_document_fields_lookup" in names and "idx_document_fields_value" not in names
        assert ix.matching_chunk_ids({"year": 2023}).tolist() == expected
        plan = " ".join(
            str(r)
            for r in ix._db.execute(
                "EXPLAIN QUERY PLAN SELECT doc_id FROM document_fields "
                "WHERE key = 'year' AND member = 0 AND value = 2023"
            )
        )
        assert "COVERING INDEX idx_document_fields_lookup" in plan


def test_recent_keys_by_identity_and_keeps_the_newest():
    from instructor_search.store.recent import Recent

    recent: Recent[int] = Recent(2)
    a, b, c = np.arange(3), np.arange(3), np.arange(3)  # equal, not the same
    assert recent.get(a, lambda: 1) == 1 and recent.get(a, lambda: 9) == 1
    assert recent.get(b, lambda: 2) == 2  # an equal array is another key
    assert recent.get(c, lambda: 3) == 3  # a third: the oldest (a) goes
    assert recent.get(a, lambda: 4) == 4 and recent.get(c, lambda: 9) == 3
