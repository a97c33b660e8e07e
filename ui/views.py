"""The page's views: search results and the instruction comparison, and the states of a page
with nothing to show (empty query, no results, an index that cannot be searched)."""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st

from instructor_search.errors import (
    IndexCorruptError,
    IndexMismatchError,
    InstructorSearchError,
    ModelError,
)
from instructor_search.instructions import InstructionPair
from instructor_search.search.highlight import query_terms
from instructor_search.search.retriever import Comparison, Retriever
from instructor_search.ui import render
from instructor_search.ui.controls import INDEX_PAIR, ignores_instructions_note, instruction_picker

ENV_VAR = "INSTRUCTOR_SEARCH_INDEX"


# -- an index that cannot be searched --------------------------------------------------------------


def _build_command(path: str, *extra: str) -> str:
    return " ".join(["instructor-index", "build", "SOURCE", "--index", shlex.quote(path), *extra])


def no_index_given() -> None:
    st.error("No index given to the page.", icon=":material/folder_off:")
    st.markdown("Start the page for an index folder:")
    st.code("instructor-index ui INDEX_DIR", language="bash")
    st.markdown(f"or set `{ENV_VAR}` to the folder before `streamlit run`.")


def missing_index(path: str) -> None:
    st.error(f"No index at `{path}`.", icon=":material/folder_off:")
    st.markdown(
        "Build it first — `SOURCE` is a folder of documents (Markdown, text, HTML, PDF) or a "
        "JSONL/CSV file of records — then reload this page:"
    )
    st.code(_build_command(path), language="bash")


def broken_index(path: str, error: InstructorSearchError) -> None:
    if isinstance(error, IndexCorruptError):
        st.error(f"The index at `{path}` is unreadable.", icon=":material/report:")
        st.text(str(error))
        st.markdown("Rebuild it from its sources (re-embeds everything):")
        st.code(_build_command(path, "--rebuild"), language="bash")
    elif isinstance(error, (IndexMismatchError, ModelError)):
        st.error(
            f"The index at `{path}` cannot be searched with this installation.",
            icon=":material/report:",
        )
        st.text(str(error))
    else:
        st.error(f"The index at `{path}` cannot be opened.", icon=":material/report:")
        st.text(str(error))


# -- results ---------------------------------------------------------------------------------------


def _set_query(text: str) -> None:
    st.session_state["query"] = text


def empty_state(examples: Sequence[str]) -> None:
    st.info("Type a question or a description of what you are looking for, then press Enter.")
    if examples:
        st.caption("Or try one of these:")
        columns = st.columns(len(examples))
        for number, (column, example) in enumerate(zip(columns, examples)):
            column.button(
                example,
                key=f"example_{number}",
                on_click=_set_query,
                args=(example,),
                width="stretch",
            )


def search_view(
    retriever: Retriever,
    query: str,
    options: dict[str, Any],
    pairs: Mapping[str, InstructionPair],
    examples: Sequence[str],
    latency: Any,
) -> None:
    instruction = instruction_picker("search", pairs, INDEX_PAIR, "Query instruction")
    if not retriever.model.uses_instructions:
        st.caption(
            f"`{retriever.model.model_name}` ignores instructions: every instruction ranks the "
            "same with it (see *Compare instructions*)."
        )
    if not query:
        empty_state(examples)
        return
    started = time.perf_counter()
    hits = retriever.search(query, instruction=instruction, **options)
    milliseconds = (time.perf_counter() - started) * 1000
    latency.metric("Query latency", f"{milliseconds:.0f} ms", help="Embedding, search and fetch.")
    if not hits:
        filtered = " with these filters" if options.get("where") else ""
        st.warning(
            f"No results for “{query}”{filtered}. Try other words, another mode, or fewer filters.",
            icon=":material/search_off:",
        )
        return
    unit = "documents" if options["documents"] else "chunks"
    st.caption(
        f"{len(hits)} {unit} · {milliseconds:.0f} ms · {options['mode']} · "
        f"instruction {render.instruction_text(instruction)}"
    )
    terms = query_terms(query)
    for hit in hits:
        with st.container(border=True):
            st.html(render.result_card(hit, terms, options["mode"]))
            context = st.expander(
                "Whole chunk in its document", key=f"context_{hit.chunk_id}", on_change="rerun"
            )
            if context.open:
                with context:
                    document = retriever.index.document(hit.doc_id)
                    if document is None:
                        st.caption("This document is no longer in the index.")
                    else:
                        st.html(render.surrounding_text(document.text, hit.span, terms))


def _second_default(pairs: Mapping[str, InstructionPair]) -> str:
    own = pairs[INDEX_PAIR].query
    return next((name for name, pair in pairs.items() if pair.query != own), INDEX_PAIR)


def compare_view(
    retriever: Retriever,
    query: str,
    options: dict[str, Any],
    pairs: Mapping[str, InstructionPair],
    latency: Any,
) -> None:
    st.caption(
        "One query under two instructions, side by side: how each result of B moved against A."
    )
    left, right = st.columns(2)
    with left:
        instruction_a = instruction_picker("compare_a", pairs, INDEX_PAIR, "Instruction A", True)
    with right:
        instruction_b = instruction_picker(
            "compare_b", pairs, _second_default(pairs), "Instruction B", True
        )
    if not retriever.model.uses_instructions:
        ignores_instructions_note(retriever)
    if options["mode"] == "keyword":
        st.info("Keyword mode ranks by BM25 and ignores instructions: choose dense or hybrid.")
    if not query:
        st.info("Type a query above to compare how two instructions rank it.")
        return
    started = time.perf_counter()
    comparison = retriever.compare(query, instruction_a, instruction_b, **options)
    milliseconds = (time.perf_counter() - started) * 1000
    latency.metric("Query latency", f"{milliseconds:.0f} ms", help="Both rankings together.")
    comparison_columns(comparison, options)


def comparison_columns(comparison: Comparison, options: dict[str, Any]) -> None:
    if not comparison.hits_a and not comparison.hits_b:
        st.warning(f"No results for “{comparison.query}”.", icon=":material/search_off:")
        return
    by_document = bool(options.get("documents"))
    moves = [m.change for m in comparison.movements]
    counts = {change: moves.count(change) for change in ("new", "up", "down", "same")}
    counts["dropped"] = len(comparison.dropped)
    st.html(render.movement_summary(counts))
    dropped = {(h.doc_id if by_document else h.chunk_id) for h in comparison.dropped}
    mode = options["mode"]
    left, right = st.columns(2)
    with left:
        st.html(render.compare_header("A", comparison.instruction_a))
        rows = [
            render.compare_row(
                hit,
                "a",
                mode,
                render.movement_badge("dropped")
                if (hit.doc_id if by_document else hit.chunk_id) in dropped
                else None,
            )
            for hit in comparison.hits_a
        ]
        st.html(render.compare_column(rows))
    with right:
        st.html(render.compare_header("B", comparison.instruction_b))
        rows = [
            render.compare_row(m.hit, "b", mode, render.movement_badge(m.change, m.delta))
            for m in comparison.movements
        ]
        st.html(render.compare_column(rows))
