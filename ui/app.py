"""The search page: ``instructor-index ui INDEX`` serves it with Streamlit.

The index folder comes from ``--index DIR`` after Streamlit's own arguments
(``streamlit run ui/app.py -- --index DIR``, which is what ``instructor-index ui`` runs) or from
the ``INSTRUCTOR_SEARCH_INDEX`` environment variable. The Retriever (index and model) loads once
per server process (``st.cache_resource``); each search then costs the query's latency plus
rendering. Every failure the library names (missing, corrupt or incompatible index, a bad
filter) is shown as its own message on the page, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from instructor_search.errors import (
    IndexNotFoundError,
    InstructorSearchError,
)
from instructor_search.search.retriever import Retriever
from instructor_search.store.index import INDEX_FILE
from instructor_search.ui import controls, render, views
from instructor_search.ui import facets as facet_lib

log = logging.getLogger("instructor_search.ui")

ENV_VAR = views.ENV_VAR
TITLE = "instructor-search"
ICON = ":material/manage_search:"  # drawn from the Material Symbols font Streamlit ships
EXAMPLE_COUNT = 4
VIEWS = ("Search", "Compare instructions")
PER_DOCUMENT = "per_document"


# -- where the index comes from, and loading it once ------------------------------------------


def index_path_from(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """``--index DIR`` from the script's arguments, else ``$INSTRUCTOR_SEARCH_INDEX``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--index")
    known, _ = parser.parse_known_args(list(argv))
    return known.index or environ.get(ENV_VAR) or None


def _file_identity(path: str) -> tuple[int, int] | None:
    """Which ``index.sqlite`` is there: a rebuilt index is a new file, so a new Retriever."""
    try:
        info = os.stat(Path(path) / INDEX_FILE)
    except OSError:
        return None
    return info.st_dev, info.st_ino


@st.cache_resource(show_spinner="Loading the index and its model (once per server)…", max_entries=4)
def load_retriever(path: str, identity: tuple[int, int] | None) -> Retriever:
    """One Retriever per index file and process, shared by every browser session."""
    return Retriever(path)


@st.cache_data(show_spinner=False, max_entries=16)
def load_facets(path: str, identity: Any, generation: int) -> list[facet_lib.Facet]:
    return facet_lib.facets(load_retriever(path, identity).index)


@st.cache_data(show_spinner=False, max_entries=16)
def load_examples(path: str, identity: Any, generation: int) -> list[str]:
    """A few document titles, one per folder, as example queries for the empty page."""
    index = load_retriever(path, identity).index
    first_per_folder: dict[str, str] = {}
    for doc_id in sorted(index.document_sources()):
        first_per_folder.setdefault(str(Path(doc_id).parent), doc_id)
    titles = []
    for doc_id in list(first_per_folder.values())[:EXAMPLE_COUNT]:
        document = index.document(doc_id)
        if document is not None and document.title:
            titles.append(document.title)
    return titles


# -- the page --------------------------------------------------------------------------------------


def sidebar(retriever: Retriever, facets: Sequence[facet_lib.Facet]) -> tuple[dict[str, Any], Any]:
    """Filters, index statistics and a slot for the query latency."""
    with st.sidebar:
        st.header("Filters")
        chosen = controls.filter_widgets(facets) if facets else {}
        if not facets:
            st.caption("This index has no fields worth filtering on.")
        chosen[PER_DOCUMENT] = st.toggle(
            "One result per document",
            value=True,
            key=PER_DOCUMENT,
            help="Keep each document's best chunk; off: every matching chunk.",
        )
        latency = st.empty()
        st.header("Index")
        st.html(render.stats_table(retriever.index.stats(), retriever.model.uses_instructions))
    return chosen, latency


def page(path: str, retriever: Retriever, identity: Any) -> None:
    stats_generation = retriever.index.generation
    facets = load_facets(path, identity, stats_generation)
    chosen, latency = sidebar(retriever, facets)
    query, options = controls.query_controls()
    options["documents"] = bool(chosen.pop(PER_DOCUMENT))
    options["where"] = facet_lib.where_clause(retriever.index, chosen, facets) or None
    pairs = controls.instruction_pairs(retriever)
    search_tab, compare_tab = st.tabs(VIEWS, key="view", on_change="rerun")
    if search_tab.open is not False:
        with search_tab:
            examples = load_examples(path, identity, stats_generation)
            views.search_view(retriever, query, options, pairs, examples, latency)
    if compare_tab.open:
        with compare_tab:
            views.compare_view(retriever, query, options, pairs, latency)


def header(path: str | None) -> None:
    st.title(f"{ICON} {TITLE}", anchor=False)
    where = f" Index: `{path}`" if path else ""
    st.caption(
        "Instruction-aware semantic search on INSTRUCTOR embeddings: the instruction tells the "
        f"model what a query is for.{where}"
    )


def main() -> None:
    # A Material icon as favicon would be fetched from fonts.gstatic.com: an inline SVG instead.
    st.set_page_config(page_title=TITLE, page_icon=render.FAVICON, layout="wide")
    st.set_option("client.toolbarMode", "viewer")  # no deploy button on a local tool
    st.html(render.STYLE)
    given = index_path_from(sys.argv[1:], os.environ)
    path = str(Path(given).expanduser().resolve()) if given else None
    header(path)
    if path is None:
        views.no_index_given()
        return
    identity = _file_identity(path)
    try:
        retriever = load_retriever(path, identity)
    except IndexNotFoundError:
        views.missing_index(path)
        return
    except InstructorSearchError as error:
        views.broken_index(path, error)
        return
    except Exception as error:  # e.g. a model file torch cannot read
        log.exception("could not load the index at %s", path)
        views.broken_index(path, InstructorSearchError(f"{type(error).__name__}: {error}"))
        return
    try:
        page(path, retriever, identity)
    except InstructorSearchError as error:  # a bad filter or query the library refused
        st.error(str(error), icon=":material/error:")
    except Exception as error:  # never a traceback on the page; the log has it
        log.exception("the search page failed")
        st.error(f"Something went wrong: {type(error).__name__}: {error}", icon=":material/error:")


if __name__ == "__main__":  # Streamlit runs the page as __main__; importing it runs nothing
    main()
