"""``search`` and ``eval``: asking an index, and scoring its answers on labelled queries."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import click

from .common import backend_option, errors_as_messages, precision_option, print_json

_WHERE = re.compile(r"^\s*([^=<>!]+?)\s*(>=|<=|!=|=|<|>)\s*(.*)$")


def _where_value(text: str) -> Any:
    """A number when ``text`` reads as one, ``true``/``false`` as booleans, quoted text
    (``title="1984"``) as the text inside the quotes, anything else as it is."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_where(conditions: tuple[str, ...]) -> dict[str, Any]:
    """``FIELD=VALUE`` (repeat a field for any of several values), ``FIELD>=N``, ``FIELD<N`` ..."""
    where: dict[str, Any] = {}
    for condition in conditions:
        match = _WHERE.match(condition)
        if not match:
            raise click.BadParameter(
                f"{condition!r} is not FIELD=VALUE (or FIELD>=VALUE, <=, !=, <, >)",
                param_hint="--where",
            )
        field, op, raw = match.groups()
        value = _where_value(raw)
        held = where.get(field)
        if op == "=" and held is not None and not isinstance(held, dict):
            where[field] = [*held, value] if isinstance(held, list) else [held, value]
        elif op == "=" and held is None:
            where[field] = value
        else:
            ops = held if isinstance(held, dict) else ({} if held is None else {"=": held})
            where[field] = {**ops, op: value}
    return where


@click.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.argument("query")
@click.option(
    "-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="How many hits."
)
@click.option(
    "--mode",
    type=click.Choice(["hybrid", "dense", "keyword"]),
    default=None,
    help="Ranking (default: hybrid, which measured best).",
)
@click.option(
    "--where",
    "conditions",
    multiple=True,
    help="Filter on a document field or metadata key: FIELD=VALUE, FIELD>=VALUE, ... (repeatable).",
)
@click.option(
    "--instruction", default=None, help="Query instruction for this search (default: the index's)."
)
@click.option(
    "--mmr",
    type=click.FloatRange(0, 1),
    default=None,
    help="Diversify by maximal marginal relevance (1 = relevance only).",
)
@click.option("--documents", is_flag=True, help="One hit per document (its best chunk).")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
@click.option(
    "--server",
    metavar="URL",
    default=None,
    help="Ask a running `instructor-index serve` at URL instead of loading the model here (the "
    "server's index answers; INDEX is not opened). A key is read from $INSTRUCTOR_SEARCH_API_KEY.",
)
@backend_option
@errors_as_messages
def search(
    index_path: Path,
    query: str,
    k: int,
    mode: str | None,
    conditions: tuple[str, ...],
    instruction: str | None,
    mmr: float | None,
    documents: bool,
    as_json: bool,
    server: str | None,
    backend: str,
) -> None:
    """Search an index: ranked chunks with their documents.

    \b
    Example:
        instructor-index search ./my-index "side effects of metformin" -k 5
        instructor-index search ./my-index "rent deposit" --where type=pdf --where folder=law
        instructor-index search ./my-index "rent deposit" --server http://127.0.0.1:8000
    """
    from instructor_search.search.highlight import excerpt, query_terms
    from instructor_search.search.retriever import DEFAULT_MODE, Retriever

    where = parse_where(conditions) or None
    started = time.perf_counter()
    options = {"k": k, "instruction": instruction, "where": where, "mmr": mmr}
    options["documents"] = documents
    if server:
        from instructor_search.server.client import search_server

        hits = search_server(server, query, mode=mode, **options)
    else:
        hits = Retriever(index_path, backend=backend).search(
            query, mode=mode or DEFAULT_MODE, **options
        )
    if as_json:
        print_json([hit.to_dict() for hit in hits])
        return
    if not hits:
        click.echo("No hits." + (" Try fewer filters." if where else ""))
        return
    terms = query_terms(query)
    for hit in hits:
        click.echo(
            f"{click.style(f'{hit.rank:>2}.', bold=True)} {hit.score:.4f}  {click.style(hit.title or hit.doc_id, bold=True)}"
        )
        click.echo(f"    {click.style(hit.source, dim=True)}")
        click.echo(f"    {_highlighted(excerpt(hit.text, terms, 300))}")
    click.echo(
        click.style(
            f"{len(hits)} hits in {1000 * (time.perf_counter() - started):.0f} ms "
            + ("(server)" if server else "(model load included)"),
            dim=True,
        )
    )


def _highlighted(piece: Any) -> str:
    parts, last = [], 0
    for start, end in piece.spans:
        parts += [
            piece.text[last:start],
            click.style(piece.text[start:end], bold=True, fg="yellow"),
        ]
        last = end
    parts.append(piece.text[last:])
    return ("… " if piece.cut_start else "") + "".join(parts) + (" …" if piece.cut_end else "")


@click.command(name="eval")
@click.argument("data_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--index",
    "index_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Index to search (built from DATA_DIR/corpus.jsonl when that exists; default DATA_DIR/instructor-search-index).",
)
@click.option(
    "--model", default=None, help="Model for building the index (default: the bundled one)."
)
@click.option(
    "--mode",
    type=click.Choice(["hybrid", "dense", "keyword"]),
    default=None,
    help="Ranking (default: hybrid).",
)
@click.option(
    "--split", default="test", show_default=True, help="Which qrels/<split>.tsv to score."
)
@click.option("--query-instruction", default=None, help="Query instruction (default: the index's).")
@click.option(
    "--document-instruction",
    default=None,
    help="Document instruction when building (default: the model profile's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@backend_option
@precision_option
@errors_as_messages
def evaluate(
    data_dir: Path,
    index_path: Path | None,
    model: str | None,
    mode: str | None,
    split: str,
    query_instruction: str | None,
    document_instruction: str | None,
    as_json: bool,
    backend: str,
    precision: str,
) -> None:
    """Score retrieval on a BEIR-layout folder: nDCG@10, Recall@10/100, MRR@10.

    DATA_DIR holds queries.jsonl and qrels/SPLIT.tsv, and corpus.jsonl unless --index
    names an index already built from the corpus (e.g. sample_corpus/eval).

    \b
    Example:
        instructor-index eval ./scifact --index ./scifact-index --mode hybrid
        instructor-index eval sample_corpus/eval --index sample-index
    """
    from instructor_search.evaluate import evaluate as run_evaluate
    from instructor_search.evaluate import load_qrels, load_queries
    from instructor_search.search.retriever import DEFAULT_MODE, Retriever

    from ..build import BuildSettings
    from ..build import build as run_build

    corpus = data_dir / "corpus.jsonl"
    if corpus.is_file():
        index_path = index_path or data_dir / "instructor-search-index"
        settings = BuildSettings(
            model=model,
            document_instruction=document_instruction,
            backend=backend,
            precision=precision,
        )
        report = run_build([corpus], index_path, settings, show_progress=not as_json)
        click.echo(
            f"index {index_path}: {report.documents_total} documents ({report.chunks_embedded} chunks embedded now)",
            err=True,
        )
    elif index_path is None:
        raise click.UsageError(
            f"{data_dir} has no corpus.jsonl: pass --index, an index built from its corpus"
        )
    queries = load_queries(data_dir / "queries.jsonl")
    qrels = load_qrels(data_dir / "qrels" / f"{split}.tsv")

    retriever = Retriever(index_path, backend=backend, precision=precision)
    scores = run_evaluate(
        retriever,
        queries,
        qrels,
        mode=mode or DEFAULT_MODE,
        instruction=query_instruction,
        show_progress=not as_json,
    )
    if as_json:
        print_json(scores)
        return
    click.echo(
        f"{data_dir}  ({scores['queries']} queries, mode {scores['mode']}, model {scores['model']})"
    )
    for key in ("ndcg_at_10", "recall_at_10", "recall_at_100", "mrr_at_10"):
        click.echo(f"  {key:<14} {scores[key]:.4f}")
    click.echo(f"  {'seconds':<14} {scores['seconds']:.1f}")
