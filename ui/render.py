"""HTML for the search page: result cards, query-term highlights, movement badges, statistics.

Every string that comes from an index (titles, sources, chunk and document text, metadata) is
escaped here before it reaches the page; the only tags are the ones these functions write, so a
document's own HTML is shown as text and never rendered. Pure functions of their arguments:
no Streamlit import, so they are tested and reused without a running page.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from instructor_search.search.highlight import excerpt, match_spans, plain_text
from instructor_search.search.retriever import Hit
from instructor_search.store.index import IndexStats

#: Characters of the document shown on each side of the matching chunk.
CONTEXT_CHARS = 1200
#: Length of the excerpt of the matching chunk shown on a card (the whole chunk is one click away).
SNIPPET_CHARS = 420
#: Metadata keys shown as chips on a card (when the document has them).
CHIP_FIELDS = ("type", "folder", "year", "tags")

SCORE_NAMES = {"dense": "cosine", "keyword": "BM25", "hybrid": "RRF"}
SCORE_HELP = {
    "dense": "cosine similarity of the query and chunk embeddings",
    "keyword": "BM25 keyword score (higher is better)",
    "hybrid": "reciprocal rank fusion of the dense and keyword rankings",
}

#: The tab's icon (a magnifier over lines, like the title's ``manage_search``), inline so the
#: page needs nothing from outside this machine.
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#ff4b4b" '
    'stroke-width="2.4" stroke-linecap="round"><path d="M3 6h7M3 12h4M3 18h7"/>'
    '<circle cx="15.5" cy="11.5" r="4.5"/><path d="M18.8 14.8 22 18"/></svg>'
)

STYLE = """
<style>
[data-testid="stMainBlockContainer"] { padding-top: 2.5rem; }
.result-card .rc-head { display: flex; align-items: baseline; gap: .6rem; }
.result-card .rc-rank {
  flex: none; min-width: 1.7rem; height: 1.7rem; line-height: 1.7rem; border-radius: .85rem;
  text-align: center; font-weight: 600; font-size: .85rem;
  background: rgba(255, 75, 75, .12); color: #d33;
}
.result-card .rc-title { font-weight: 600; font-size: 1.05rem; flex: 1 1 auto; }
.result-card .rc-score {
  flex: none; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .8rem;
  opacity: .75;
}
.result-card .rc-meta {
  margin: .25rem 0 .45rem 2.3rem; font-size: .8rem; opacity: .8;
  display: flex; flex-wrap: wrap; gap: .35rem; align-items: center;
}
.rc-source { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; word-break: break-all; }
.rc-chip {
  padding: 0 .45rem; border-radius: .6rem; border: 1px solid rgba(128, 128, 128, .35);
  white-space: nowrap;
}
.result-card .rc-text { margin-left: 2.3rem; line-height: 1.55; font-size: .92rem; }
.rc-context {
  white-space: pre-wrap; line-height: 1.5; max-height: 22rem; overflow-y: auto; font-size: .88rem;
}
[data-testid="stAppDeployButton"] { display: none; }
.rc-context .rc-chunk { background: rgba(255, 200, 0, .10); border-radius: .2rem; }
mark { background: #ffe58a; color: #1a1a1a; padding: 0 .1rem; border-radius: .15rem; }
.compare-row {
  display: flex; gap: .5rem; align-items: baseline; padding: .35rem .2rem;
  border-bottom: 1px solid rgba(128, 128, 128, .18);
}
.compare-row .cr-rank { flex: none; width: 1.6rem; text-align: right; opacity: .7; }
.compare-row .cr-body { flex: 1 1 auto; min-width: 0; }
.compare-row .cr-title { font-weight: 600; }
.compare-row .cr-source { font-size: .75rem; opacity: .7; word-break: break-all; }
.compare-row .cr-score {
  flex: none; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .75rem;
  opacity: .7;
}
.move {
  flex: none; min-width: 3.6rem; text-align: center; font-size: .78rem; font-weight: 600;
  border-radius: .6rem; padding: 0 .4rem;
}
.move-new { background: rgba(33, 150, 243, .15); color: #1565c0; }
.move-up { background: rgba(46, 160, 67, .15); color: #1b7f37; }
.move-down { background: rgba(230, 120, 0, .15); color: #b35900; }
.move-same { background: rgba(128, 128, 128, .15); }
.move-dropped { background: rgba(220, 50, 50, .13); color: #c62828; }
.move-summary { font-size: .85rem; margin: .2rem 0 .6rem 0; }
.move-summary .move { display: inline-block; margin-left: .25rem; }
.compare-header { font-size: .9rem; margin-bottom: .3rem; opacity: .9; }
.compare-header .side {
  display: inline-block; width: 1.5rem; height: 1.5rem; line-height: 1.5rem; text-align: center;
  border-radius: .75rem; font-weight: 700; background: rgba(128, 128, 128, .18); margin-right: .3rem;
}
.stats { width: 100%; font-size: .82rem; border-collapse: collapse; }
.stats th { text-align: left; font-weight: 500; opacity: .7; padding: .15rem .5rem .15rem 0;
  vertical-align: top; white-space: nowrap; }
.stats td { padding: .15rem 0; word-break: break-word; }
.stats code { font-size: .74rem; word-break: break-all; }
</style>
"""


def escape(value: Any) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def highlight(text: str, terms: Sequence[str]) -> str:
    """``text`` escaped, with every word that matches a query term wrapped in ``<mark>``.

    Matches are found on the raw text and each piece is escaped on its own, so a term can never
    match inside an entity that escaping produced (``amp`` in ``&amp;``).
    """
    out, position = [], 0
    for start, end in match_spans(text, terms):
        out.append(escape(text[position:start]))
        out.append(f"<mark>{escape(text[start:end])}</mark>")
        position = end
    out.append(escape(text[position:]))
    return "".join(out)


def format_score(score: float, mode: str) -> str:
    """The score with the name of what it is (cosine, BM25 or RRF)."""
    name = SCORE_NAMES.get(mode, "score")
    return f"{name} {score:.4f}" if mode == "hybrid" else f"{name} {score:.3f}"


def _chips(metadata: dict[str, Any]) -> str:
    chips = []
    for name in CHIP_FIELDS:
        value = metadata.get(name)
        if value in (None, "", []):
            continue
        values = value if isinstance(value, list) else [value]
        chips += [f'<span class="rc-chip" title="{name}">{escape(v)}</span>' for v in values]
    return "".join(chips)


def _excerpt(text: str, terms: Sequence[str]) -> str:
    piece = excerpt(text, terms, SNIPPET_CHARS)
    marked = highlight(piece.text, terms)
    return ("… " if piece.cut_start else "") + marked + (" …" if piece.cut_end else "")


def result_card(hit: Hit, terms: Sequence[str], mode: str) -> str:
    """One result: rank, title, score, source, chips and the chunk with the terms marked.

    The outer ``div.result-card`` carries ``data-*`` attributes (doc id, rank, type, folder)
    that the browser test reads.
    """
    meta = hit.metadata
    attributes = {
        "data-doc-id": hit.doc_id,
        "data-rank": hit.rank,
        "data-type": meta.get("type", ""),
        "data-folder": meta.get("folder", ""),
    }
    attrs = " ".join(f'{name}="{escape(value)}"' for name, value in attributes.items())
    return (
        f'<div class="result-card" {attrs}>'
        f'<div class="rc-head"><span class="rc-rank">{hit.rank}</span>'
        f'<span class="rc-title">{escape(hit.title or hit.doc_id)}</span>'
        f'<span class="rc-score" title="{escape(SCORE_HELP.get(mode, ""))}">'
        f"{escape(format_score(hit.score, mode))}</span></div>"
        f'<div class="rc-meta"><span class="rc-source">{escape(hit.source)}</span>'
        f"{_chips(meta)}</div>"
        f'<div class="rc-text">{_excerpt(hit.text, terms)}</div>'
        "</div>"
    )


def _cut_before(text: str, limit: int) -> tuple[str, bool]:
    """The last ``limit`` characters of ``text``, starting at a word; whether it was cut."""
    if len(text) <= limit:
        return text, False
    piece = text[-limit:]
    space = piece.find(" ")
    return (piece[space + 1 :] if 0 <= space < 40 else piece), True


def _cut_after(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    piece = text[:limit]
    space = piece.rfind(" ")
    return (piece[:space] if space > limit - 40 else piece), True


def surrounding_text(
    document_text: str, span: tuple[int, int], terms: Sequence[str], context: int = CONTEXT_CHARS
) -> str:
    """The chunk in its place in the document, ``context`` characters around it, as plain text
    (lines kept, Markdown markup dropped), terms marked."""
    start, end = span
    before, cut_start = _cut_before(document_text[:start], context)
    after, cut_end = _cut_after(document_text[end:], context)
    chunk = plain_text(document_text[start:end])
    return (
        '<div class="rc-context">'
        + ("… " if cut_start else "")
        + highlight(plain_text(before), terms)
        + f'<span class="rc-chunk">{highlight(chunk, terms)}</span>'
        + highlight(plain_text(after), terms)
        + (" …" if cut_end else "")
        + "</div>"
    )


# -- comparison -----------------------------------------------------------------------------


def movement_badge(change: str, delta: int = 0) -> tuple[str, str]:
    """``(text, css class)`` for a movement: ``new``, ``↑n``, ``↓n``, ``=`` or ``dropped``."""
    if change == "up":
        return f"↑{abs(delta)}", "move-up"
    if change == "down":
        return f"↓{abs(delta)}", "move-down"
    if change == "same":
        return "=", "move-same"
    if change == "new":
        return "new", "move-new"
    return "dropped", "move-dropped"


def compare_row(hit: Hit, side: str, mode: str, badge: tuple[str, str] | None = None) -> str:
    """One line of a comparison column; ``badge`` is a :func:`movement_badge` or ``None``."""
    badge_html = ""
    move = ""
    if badge is not None:
        move = badge[0]
        badge_html = f'<span class="move {badge[1]}">{escape(badge[0])}</span>'
    return (
        f'<div class="compare-row" data-side="{escape(side)}" data-doc-id="{escape(hit.doc_id)}" '
        f'data-rank="{hit.rank}" data-move="{escape(move)}">'
        f'<span class="cr-rank">{hit.rank}</span>{badge_html}'
        f'<div class="cr-body"><div class="cr-title">{escape(hit.title or hit.doc_id)}</div>'
        f'<div class="cr-source">{escape(hit.doc_id)}</div></div>'
        f'<span class="cr-score">{escape(format_score(hit.score, mode))}</span>'
        "</div>"
    )


def compare_column(rows: Iterable[str]) -> str:
    return '<div class="compare-column">' + "".join(rows) + "</div>"


# -- index statistics -------------------------------------------------------------------------


def _when(iso: str | None) -> str:
    if not iso:
        return "—"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        return iso


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # pragma: no cover


def instruction_text(instruction: str) -> str:
    """An instruction for display: quoted, or a note that there is none."""
    return f"“{instruction.strip()}”" if instruction.strip() else "(none)"


def stats_table(stats: IndexStats, uses_instructions: bool = True) -> str:
    """The sidebar's table of index statistics."""
    recall = "" if stats.recall_at_10 is None else f" (recall@10 {stats.recall_at_10:.3f})"
    rows = [
        ("Model", f"<code>{escape(stats.model)}</code>"),
        ("Documents", f"{stats.documents:,}"),
        (
            "Chunks",
            f"{stats.chunks:,} · {stats.chunk_tokens} tokens, {stats.chunk_overlap} overlap",
        ),
        ("Query instr.", escape(instruction_text(stats.query_instruction))),
        ("Document instr.", escape(instruction_text(stats.document_instruction))),
        ("Instructions", "used by the model" if uses_instructions else "ignored by this model"),
        ("Index type", escape(f"{stats.index_type}{recall}") + f" · {stats.dimension} dims"),
        ("Built at", escape(_when(stats.built_at))),
        ("Size", _size(stats.size_bytes)),
        ("Path", f"<code>{escape(stats.path)}</code>"),
    ]
    body = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return f'<table class="stats">{body}</table>'


def movement_summary(counts: dict[str, int]) -> str:
    """The line above the comparison: how many results of B are new, up, down, same, dropped."""
    parts = []
    for change in ("new", "up", "down", "same", "dropped"):
        css = movement_badge(change)[1]
        parts.append(f'<span class="move {css}">{counts.get(change, 0)} {change}</span>')
    return '<div class="move-summary">B against A: ' + " ".join(parts) + "</div>"


def compare_header(side: str, instruction: str) -> str:
    """A column's heading: the side's letter and its instruction."""
    return (
        f'<div class="compare-header" data-side="{escape(side.lower())}">'
        f'<span class="side">{escape(side)}</span> {escape(instruction_text(instruction))}</div>'
    )
