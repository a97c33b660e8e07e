"""The ``instructor-index`` command: a thin client of the ``instructor_search`` library.

Heavy imports (torch, transformers, faiss) happen inside the commands, so ``--help`` is fast.
Exit codes: 0 success, 1 an error the message explains, 2 bad usage, 3 the build completed
but some documents could not be read.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from instructor_search import __version__
from instructor_search.errors import InstructorSearchError

from .chunking import ChunkSettings

EXIT_ERROR = 1
EXIT_SOME_FAILED = 3


def _errors_as_messages(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print our errors as one clear message (no traceback) and exit 1."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InstructorSearchError as error:
            click.secho(f"Error: {error}", fg="red", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _backend_option(function: Any) -> Any:
    """``--backend`` for the commands that embed: the same choices as ``Instructor(backend=)``."""
    return click.option(
        "--backend",
        type=click.Choice(["auto", "torch", "onnx"]),
        default="auto",
        show_default=True,
        help="Encoder backend: auto = ONNX Runtime when installed and it passes its fidelity "
        "check against torch (exported once per model, cached under "
        "$INSTRUCTOR_SEARCH_CACHE or ~/.cache/instructor-search), else torch.",
    )(function)


def _precision_option(function: Any) -> Any:
    """``--precision`` for the commands that embed a corpus: as ``Instructor(precision=)``."""
    return click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "bf16"]),
        default="auto",
        show_default=True,
        help="auto = large batches in bf16 on CPUs that compute it natively, once it passes its "
        "fidelity check against fp32 (about 1.7x faster); fp32 = exactly the reference's "
        "arithmetic.",
    )(function)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="instructor-index")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (to stderr).")
def cli(verbose: bool) -> None:
    """Build and search local, instruction-aware semantic search indexes.

    \b
    Example:
        instructor-index build ./docs --index ./my-index
        instructor-index search ./my-index "how do I rotate the logs?"
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@cli.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--index",
    "index_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Index folder (created if new).",
)
@click.option(
    "--model",
    default=None,
    help="Hub id (hkunlp/instructor-large), a local folder, or omit for the bundled default.",
)
@click.option(
    "--document-instruction",
    default=None,
    help="Instruction paired with every chunk (default: the model profile's).",
)
@click.option(
    "--query-instruction",
    default=None,
    help="Instruction stored for queries (default: the model profile's).",
)
@click.option(
    "--chunk-tokens",
    default=ChunkSettings.chunk_tokens,
    show_default=True,
    help="Most tokens of text per chunk (capped by the model).",
)
@click.option(
    "--chunk-overlap",
    default=ChunkSettings.chunk_overlap,
    show_default=True,
    help="Tokens shared by consecutive chunks.",
)
@click.option(
    "--include", multiple=True, help="Only files matching this glob (repeatable), e.g. '**/*.md'."
)
@click.option("--exclude", multiple=True, help="Skip files matching this glob (repeatable).")
@click.option(
    "--text-column", default="text", show_default=True, help="CSV column holding the text."
)
@click.option("--batch-size", default=32, show_default=True, help="Chunks per forward pass.")
@click.option(
    "--commit-every",
    default=64,
    show_default=True,
    help="Documents per committed transaction.",
)
@click.option(
    "--pool-chunks",
    default=1024,
    show_default=True,
    help="Chunks embedded together before their documents are committed: larger pads less, "
    "a crash re-embeds at most this many.",
)
@click.option(
    "--rebuild", is_flag=True, help="Start over: delete the index there and embed everything."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bar, no summary (errors still print)."
)
@_backend_option
@_precision_option
@_errors_as_messages
def build(
    sources: tuple[Path, ...],
    index_path: Path,
    model: str | None,
    document_instruction: str | None,
    query_instruction: str | None,
    chunk_tokens: int,
    chunk_overlap: int,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    text_column: str,
    batch_size: int,
    commit_every: int,
    pool_chunks: int,
    rebuild: bool,
    as_json: bool,
    quiet: bool,
    backend: str,
    precision: str,
) -> None:
    """Index SOURCES (folders, files, JSONL/CSV record files) into an index folder.

    Reruns are incremental: only new or changed documents are embedded, and documents gone
    from a scanned source are removed.

    \b
    Example:
        instructor-index build ./notes ./papers.jsonl --index ./my-index
        instructor-index build ./docs --index ./idx --model hkunlp/instructor-large \\
            --document-instruction "Represent the Medicine document for retrieval: "
    """
    from .build import BuildSettings
    from .build import build as run_build
    from .readers import ReaderSettings

    settings = BuildSettings(
        model=model,
        document_instruction=document_instruction,
        query_instruction=query_instruction,
        chunk=ChunkSettings(chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap),
        reader=ReaderSettings(include=include, exclude=exclude, csv_text_column=text_column),
        batch_size=batch_size,
        commit_documents=commit_every,
        pool_chunks=pool_chunks,
        rebuild=rebuild,
        backend=backend,
        precision=precision,
    )
    report = run_build(sources, index_path, settings, show_progress=not quiet)
    for failure in report.failures:
        where = f"{failure.path}:{failure.line}" if failure.line else failure.path
        click.secho(f"failed: {where}: {failure.reason}", fg="yellow", err=True)
    if as_json:
        _print_json(report.to_dict())
    elif not quiet:
        click.echo(
            f"{index_path}: {report.documents_added} added, {report.documents_updated} updated, "
            f"{report.documents_deleted} deleted, {report.documents_unchanged} unchanged, "
            f"{report.documents_failed} failed; {report.chunks_embedded} chunks embedded "
            f"in {report.seconds:.1f}s{_encoder(report)}. Now {report.documents_total} "
            f"documents, {report.chunks_total} chunks."
        )
        if report.skipped:
            click.echo(f"skipped {len(report.skipped)} files of unknown type (-v lists them)")
    if report.documents_failed:
        sys.exit(EXIT_SOME_FAILED)


def _encoder(report: Any) -> str:
    """`` (--backend onnx --precision bf16)``: how a build's chunks were embedded, if any were."""
    if not report.backend:
        return ""
    return f" (--backend {report.backend} --precision {report.precision})"


@cli.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@_errors_as_messages
def info(index_path: Path, as_json: bool) -> None:
    """Show what an index holds and how it was built.

    \b
    Example:
        instructor-index info ./my-index --json
    """
    from instructor_search.store.index import Index

    with Index.open(index_path, readonly=True) as index:
        stats = index.stats().to_dict()
    if as_json:
        _print_json(stats)
        return
    width = max(len(key) for key in stats)
    for key, value in stats.items():
        click.echo(
            f"{key.ljust(width)}  {value!r}"
            if isinstance(value, str)
            else f"{key.ljust(width)}  {value}"
        )


@cli.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.argument("doc_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@_errors_as_messages
def delete(index_path: Path, doc_ids: tuple[str, ...], as_json: bool) -> None:
    """Remove documents (by id) and their chunks from an index.

    \b
    Example:
        instructor-index delete ./my-index notes/old.md papers.jsonl-42
    """
    from .build import delete_documents

    removed = delete_documents(index_path, doc_ids)
    if as_json:
        _print_json({"documents_deleted": removed, "requested": len(doc_ids)})
    else:
        click.echo(f"deleted {removed} of {len(doc_ids)} documents")
    if removed < len(doc_ids):
        sys.exit(EXIT_ERROR)


_WHERE = re.compile(r"^\s*([^=<>!]+?)\s*(>=|<=|!=|=|<|>)\s*(.*)$")


def _where_value(text: str) -> Any:
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


@cli.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.argument("query")
@click.option("-k", "k", default=10, show_default=True, help="How many hits.")
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
@_backend_option
@_errors_as_messages
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
    backend: str,
) -> None:
    """Search an index: ranked chunks with their documents.

    \b
    Example:
        instructor-index search ./my-index "side effects of metformin" -k 5
        instructor-index search ./my-index "rent deposit" --where type=pdf --where folder=law
    """
    from instructor_search.search.highlight import excerpt, query_terms
    from instructor_search.search.retriever import DEFAULT_MODE, Retriever

    where = parse_where(conditions) or None
    started = time.perf_counter()
    retriever = Retriever(index_path, backend=backend)
    hits = retriever.search(
        query,
        k=k,
        instruction=instruction,
        where=where,
        mode=mode or DEFAULT_MODE,
        mmr=mmr,
        documents=documents,
    )
    if as_json:
        _print_json([hit.to_dict() for hit in hits])
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
            f"{len(hits)} hits in {1000 * (time.perf_counter() - started):.0f} ms (model load included)",
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


@cli.command(name="eval")
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
@_backend_option
@_precision_option
@_errors_as_messages
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

    from .build import BuildSettings
    from .build import build as run_build

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

    retriever = Retriever(index_path, backend=backend)
    scores = run_evaluate(
        retriever,
        queries,
        qrels,
        mode=mode or DEFAULT_MODE,
        instruction=query_instruction,
        show_progress=not as_json,
    )
    if as_json:
        _print_json(scores)
        return
    click.echo(
        f"{data_dir}  ({scores['queries']} queries, mode {scores['mode']}, model {scores['model']})"
    )
    for key in ("ndcg_at_10", "recall_at_10", "recall_at_100", "mrr_at_10"):
        click.echo(f"  {key:<14} {scores[key]:.4f}")
    click.echo(f"  {'seconds':<14} {scores['seconds']:.1f}")


@cli.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.option("--port", default=8501, show_default=True, help="Port to serve on.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (0.0.0.0 exposes it to your network).",
)
@_errors_as_messages
def ui(index_path: Path, port: int, host: str) -> None:
    """Serve the search page for an index in your browser (needs the [ui] extra).

    \b
    Example:
        instructor-index ui ./my-index --port 8502
    """
    import importlib.util
    import os
    import subprocess

    from instructor_search.store.index import Index

    if importlib.util.find_spec("streamlit") is None:
        raise click.ClickException("The page needs Streamlit: pip install 'instructor-search[ui]'")
    with Index.open(index_path, readonly=True):  # a clear error now rather than on the page
        pass
    from instructor_search import ui as ui_package

    app = Path(ui_package.__file__).parent / "app.py"
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--",
        "--index",
        str(index_path.resolve()),
    ]
    click.echo(f"Serving the search page for {index_path} at http://{host}:{port}  (Ctrl+C stops)")
    env = {**os.environ, "INSTRUCTOR_SEARCH_INDEX": str(index_path.resolve())}
    if os.name == "posix":  # become Streamlit: stopping this process stops the server
        os.execve(sys.executable, command, env)
    try:
        sys.exit(subprocess.call(command, env=env))
    except KeyboardInterrupt:
        sys.exit(0)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
