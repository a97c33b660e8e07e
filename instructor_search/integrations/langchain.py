"""A LangChain retriever over an instructor-search index (extra ``[langchain]``).

    from instructor_search.integrations.langchain import InstructorSearchRetriever

    retriever = InstructorSearchRetriever(index="my-index", k=4)
    docs = retriever.invoke("How do I rotate the API key?")
    context = "\\n\\n".join(d.page_content for d in docs)

Each hit becomes a ``langchain_core.documents.Document`` whose ``page_content`` is the chunk's
text and whose ``metadata`` holds the document's metadata overlaid with the hit's fields
(``rank``, ``score``, ``chunk_id``, ``doc_id``, ``title``, ``source``, ``span``); a document
metadata key of the same name as a hit field is shadowed by it. Only this module imports
``langchain_core``; ``import instructor_search`` never does.
"""

from __future__ import annotations

from typing import Any

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import model_validator
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "The LangChain adapter needs langchain-core: pip install 'instructor-search[langchain]'"
    ) from exc

from ..search.retriever import DEFAULT_MODE, Hit, Retriever


class InstructorSearchRetriever(BaseRetriever):
    """LangChain ``BaseRetriever`` over :class:`instructor_search.Retriever`.

    Give ``index`` (a folder path; ``model`` optionally names the model, else the one the index
    records) or a ready ``retriever``. ``k``, ``mode``, ``where``, ``instruction``, ``mmr`` and
    ``documents`` are passed to :meth:`Retriever.search` on every call.
    """

    index: str | None = None
    model: str | None = None
    retriever: Any = None
    k: int = 4
    mode: str = DEFAULT_MODE
    where: dict[str, Any] | None = None
    instruction: str | None = None
    mmr: float | None = None
    documents: bool = False

    @model_validator(mode="after")
    def _open(self) -> InstructorSearchRetriever:
        if self.retriever is None:
            if self.index is None:
                raise ValueError(
                    "InstructorSearchRetriever needs index=PATH or retriever=Retriever"
                )
            self.retriever = Retriever(self.index, self.model)
        elif not isinstance(self.retriever, Retriever):
            raise ValueError(
                f"retriever must be an instructor_search.Retriever, got {self.retriever!r}"
            )
        return self

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        hits = self.retriever.search(
            query,
            k=self.k,
            instruction=self.instruction,
            where=self.where,
            mode=self.mode,
            mmr=self.mmr,
            documents=self.documents,
        )
        return [to_document(hit) for hit in hits]


def to_document(hit: Hit) -> Document:
    """One hit as a LangChain ``Document`` (see the module docstring for its metadata)."""
    fields = hit.to_dict()
    del fields["text"], fields["metadata"]
    return Document(page_content=hit.text, metadata={**hit.metadata, **fields})
