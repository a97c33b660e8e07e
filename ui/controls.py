"""The page's controls: query box, mode and k, instruction presets with their text, filters.

Each function draws its widgets (with stable keys, which the tests and the browser driver use)
and returns what the user chose, ready for :class:`~instructor_search.search.retriever.Retriever`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st

from instructor_search.errors import InputError
from instructor_search.instructions import ALIASES, PRESETS, InstructionPair, presets
from instructor_search.search.retriever import DEFAULT_MODE, MODES, Retriever
from instructor_search.ui import facets as facet_lib
from instructor_search.ui import render

INDEX_PAIR = "index"  # the preset key of the index's own instruction pair
DEFAULT_K, MAX_K = 10, 100


def query_controls() -> tuple[str, dict[str, Any]]:
    """The query box, mode and k; returns the query and the search options."""
    query_column, mode_column, k_column = st.columns([5, 2.2, 0.9], vertical_alignment="bottom")
    query = query_column.text_input(
        "Query",
        key="query",
        placeholder="Ask a question or describe what you are looking for",
        bind="query-params",
    )
    mode = mode_column.segmented_control(
        "Mode",
        MODES,
        default=DEFAULT_MODE,
        required=True,
        key="mode",
        help="dense: embeddings · keyword: BM25 · hybrid: both, fused by rank",
    )
    k = k_column.number_input("Results", 1, MAX_K, DEFAULT_K, step=1, key="k")
    options = {"k": int(k), "mode": mode or DEFAULT_MODE}
    return (query or "").strip(), options


# -- instructions ----------------------------------------------------------------------------------


def instruction_pairs(retriever: Retriever) -> dict[str, InstructionPair]:
    """The index's own pair first, then INSTRUCTOR's general presets, then its task presets."""
    settings = retriever.index.settings
    own = InstructionPair(
        settings.query_instruction, settings.document_instruction, "this index", "index settings"
    )
    try:  # the table INSTRUCTOR's evaluation used for this model size, when it is one
        table = presets(settings.model)
    except InputError:
        table = PRESETS
    tasks = sorted((name for name in table if name not in ALIASES), key=str.lower)
    return {INDEX_PAIR: own} | {name: table[name] for name in [*ALIASES, *tasks]}


def _preset_label(name: str) -> str:
    if name == INDEX_PAIR:
        return "This index's pair"
    return f"{name} ({ALIASES[name]})" if name in ALIASES else name


def _apply_preset(preset_key: str, text_key: str, pairs: Mapping[str, InstructionPair]) -> None:
    st.session_state[text_key] = pairs[st.session_state[preset_key]].query


def instruction_picker(
    prefix: str,
    pairs: Mapping[str, InstructionPair],
    default: str,
    label: str,
    stacked: bool = False,
) -> str:
    """A preset list and the instruction text it fills in; returns the text (what is used)."""
    preset_key, text_key = f"{prefix}_preset", f"{prefix}_instruction"
    names = list(pairs)
    if text_key not in st.session_state:
        st.session_state[text_key] = pairs[default].query
    left, right = (st.container(), st.container()) if stacked else st.columns([1, 2])
    chosen = left.selectbox(
        f"{label} preset",
        names,
        index=names.index(default),
        format_func=_preset_label,
        key=preset_key,
        on_change=_apply_preset,
        args=(preset_key, text_key, pairs),
        persist_state="page",
        help="INSTRUCTOR's published retrieval instructions; choosing one fills in the text.",
    )
    text = right.text_input(
        label,
        key=text_key,
        placeholder="(no instruction)",
        persist_state="page",
        help="Prepended to the query when it is embedded. Edit it freely.",
    )
    pair = pairs[chosen or default]
    if text != pair.query:
        st.caption("Custom instruction (edited from the preset).")
    elif pair.document.strip() != pairs[INDEX_PAIR].document.strip():
        st.caption(
            f"This preset pairs with the document instruction "
            f"{render.instruction_text(pair.document)}; this index's documents were embedded "
            f"with {render.instruction_text(pairs[INDEX_PAIR].document)}."
        )
    return text or ""


def ignores_instructions_note(retriever: Retriever) -> None:
    st.info(
        f"The model of this index, `{retriever.model.model_name}`, ignores instructions (its "
        "profile drops them), so every instruction ranks the same. Build the index with an "
        "INSTRUCTOR model (`--model hkunlp/instructor-large`) to make them count.",
        icon=":material/info:",
    )


# -- filters ---------------------------------------------------------------------------------------


def _option_label(facet: facet_lib.Facet) -> Any:
    counts = facet.counts

    def label(value: Any) -> str:
        shown = "(top level)" if facet.field == "folder" and value == "" else str(value)
        return f"{shown} ({counts.get(value, 0)})"

    return label


def filter_widgets(facets: Sequence[facet_lib.Facet]) -> dict[str, Any]:
    """One widget per facet; returns field -> chosen values (or a range)."""
    chosen: dict[str, Any] = {}
    for facet in facets:
        key = f"filter_{facet.field}"
        if facet.kind == facet_lib.RANGE:
            values = facet.values
            low, high = min(values), max(values)
            integral = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
            chosen[facet.field] = st.slider(
                facet.label,
                min_value=low if integral else float(low),
                max_value=high if integral else float(high),
                value=(low, high) if integral else (float(low), float(high)),
                step=1 if integral else None,
                key=key,
                help="Narrowing the range keeps only documents that have this field.",
            )
        else:
            chosen[facet.field] = st.multiselect(
                facet.label,
                facet.values,
                format_func=_option_label(facet),
                key=key,
                placeholder="Any",
            )
    return chosen
