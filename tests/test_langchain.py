"""The LangChain adapter, against the real langchain-core (skipped when it is not installed)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_retriever import corpus, make_index

from instructor_search.search.retriever import Retriever

langchain_core = pytest.importorskip(
    "langchain_core", reason="langchain-core is not installed (extra [langchain])"
)


@pytest.fixture(scope="module")
def index_path(tmp_path_factory, bundled):
    return make_index(tmp_path_factory.mktemp("lc") / "ix", bundled, corpus(), sentences=True)


def test_invoke_returns_documents_with_hit_metadata(index_path, bundled):
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from instructor_search.integrations.langchain import InstructorSearchRetriever

    lc = InstructorSearchRetriever(retriever=Retriever(index_path, bundled), k=3, mode="dense")
    assert isinstance(lc, BaseRetriever)
    docs = lc.invoke("How does sourdough bread rise?")
    assert len(docs) == 3 and all(isinstance(d, Document) for d in docs)
    top = docs[0]
    hit = lc.retriever.search("How does sourdough bread rise?", k=1, mode="dense")[0]
    assert top.page_content == hit.text
    assert top.metadata == {
        "topic": "cooking",
        "number": 0,
        "rank": 1,
        "score": pytest.approx(hit.score),
        "chunk_id": hit.chunk_id,
        "doc_id": "cooking/0.txt",
        "title": "Cooking note 0",
        "source": "/corpus/cooking/0.txt",
        "span": list(hit.span),
    }
    batch = lc.batch(["neutron stars", "index fund"])
    assert [b[0].metadata["doc_id"] for b in batch] == ["astronomy/0.txt", "finance/1.txt"]


def test_index_path_filters_and_options(index_path):
    from instructor_search.integrations.langchain import InstructorSearchRetriever

    lc = InstructorSearchRetriever(index=str(index_path), k=5, where={"topic": "finance"})
    docs = lc.invoke("bread")
    assert len(docs) == 5 and {d.metadata["topic"] for d in docs} == {"finance"}
    per_doc = InstructorSearchRetriever(index=str(index_path), k=6, documents=True).invoke("note")
    assert len({d.metadata["doc_id"] for d in per_doc}) == 6
    with pytest.raises(ValueError, match="index"):
        InstructorSearchRetriever()


def test_importing_the_package_does_not_import_langchain():
    code = "import sys, instructor_search; print('langchain_core' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
