"""``build``, ``info``, ``ls`` and ``delete``: making and looking after an index."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..chunking import ChunkSettings
from .common import (
    EXIT_SOME_FAILED,
    backend_option,
    errors_as_messages,
    precision_option,
    print_json,
)


@click.command()
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
    help="Instruction paired with every chunk (default: the one a model made by `tune` was "
    "tuned with, else the model profile's).",
)
@click.option(
    "--query-instruction",
    default=None,
    help="Instruction stored for queries (default: the one a model made by `tune` was tuned "
    "with, else the model profile's).",
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
    help="Chunks embedded together (longest first) before their documents are committed: "
    "larger pads less. What is embedded is journaled slice by slice, so a crash re-embeds "
    "at most one slice (128 chunks).",
)
@click.option(
    "--rebuild", is_flag=True, help="Start over: delete the index there and embed everything."
)
@click.option(
    "--rehash",
    is_flag=True,
    help="Read and hash every file. By default a file whose size and modification time are "
    "the ones the index holds is not read (as make and rsync decide), which misses a file "
    "rewritten with both unchanged.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where chunks are embedded: this process, or Ray Data "
    "(pip install 'instructor-search[distributed]').",
)
@click.option(
    "--ray-address", default=None, help="Ray cluster to join (default: start one on this machine)."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Ray actors, one model each (default: the cores here, or the cluster's CPUs - 1).",
)
@click.option(
    "--shards",
    "shards_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for the Ray workers' shards (default: INDEX/ray-shards).",
)
@click.option("--keep-shards", is_flag=True, help="Keep the Ray workers' shards once ingested.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bar, no summary (errors still print)."
)
@backend_option
@precision_option
@errors_as_messages
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
    rehash: bool,
    engine: str,
    ray_address: str | None,
    workers: int | None,
    shards_dir: Path | None,
    keep_shards: bool,
    as_json: bool,
    quiet: bool,
    backend: str,
    precision: str,
) -> None:
    """Index SOURCES (folders, files, JSONL/CSV record files) into an index folder.

    Reruns are incremental: only new or changed documents are embedded, and documents gone
    from a scanned source are removed. A file whose size and modification time are those
    stored is not even read (--rehash reads and hashes every file).

    \b
    Example:
        instructor-index build ./notes ./papers.jsonl --index ./my-index
        instructor-index build ./docs --index ./idx --model hkunlp/instructor-large \\
            --document-instruction "Represent the Medicine document for retrieval: "
        instructor-index build ./docs --index ./idx --engine ray --ray-address auto
    """
    from ..build import BuildSettings
    from ..build import build as run_build
    from ..readers import ReaderSettings

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
        rehash=rehash,
        backend=backend,
        precision=precision,
    )
    report = run_build(
        sources,
        index_path,
        settings,
        show_progress=not quiet,
        engine=_engine(engine, ray_address, workers, shards_dir, keep_shards),
    )
    for failure in report.failures:
        where = f"{failure.path}:{failure.line}" if failure.line else failure.path
        click.secho(f"failed: {where}: {failure.reason}", fg="yellow", err=True)
    if as_json:
        print_json(report.to_dict())
    elif not quiet:
        for name, value in report.tuned_instructions.items():
            side = name.split("_")[0]
            click.echo(f"{side} instruction: {value!r} (the one {model} was tuned with)")
        click.echo(
            f"{index_path}: {report.documents_added} added, {report.documents_updated} updated, "
            f"{report.documents_deleted} deleted, {report.documents_unchanged} unchanged, "
            f"{report.documents_failed} failed; {report.chunks_embedded} chunks embedded"
            f"{_resumed(report)} in {report.seconds:.1f}s{_encoder(report)}. "
            f"Now {report.documents_total} "
            f"documents, {report.chunks_total} chunks."
        )
        if report.skipped:
            click.echo(f"skipped {len(report.skipped)} files of unknown type (-v lists them)")
    if report.documents_failed:
        sys.exit(EXIT_SOME_FAILED)


def _engine(
    engine: str, address: str | None, workers: int | None, shards: Path | None, keep: bool
) -> Any:
    """``"local"``, or the Ray engine's settings (Ray's logs shown with ``-v`` only)."""
    if engine == "local":
        if address or workers or shards or keep:
            raise click.UsageError(
                "--ray-address, --workers, --shards and --keep-shards need --engine ray"
            )
        return engine
    from instructor_search.engines.ray_engine import RaySettings

    verbose = bool(click.get_current_context().find_root().params.get("verbose"))
    return RaySettings(address, workers, shards=shards, keep_shards=keep, verbose=verbose)


def _resumed(report: Any) -> str:
    """`` (+ 40 a killed build had embedded)``, when a build took vectors from its journal."""
    return (
        f" (+ {report.chunks_resumed} a killed build had embedded)" if report.chunks_resumed else ""
    )


def _encoder(report: Any) -> str:
    """`` (--backend onnx --precision bf16)``: how a build's chunks were embedded, if any were."""
    if not report.backend:
        return ""
    return f" (--backend {report.backend} --precision {report.precision})"


@click.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@errors_as_messages
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
        print_json(stats)
        return
    width = max(len(key) for key in stats)
    for key, value in stats.items():
        if isinstance(value, dict):  # fields: name (kind), ...
            value = ", ".join(f"{name} ({kind})" for name, kind in value.items())
        click.echo(f"{key.ljust(width)}  {'-' if value is None else value}")


@click.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.argument("doc_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@errors_as_messages
def delete(index_path: Path, doc_ids: tuple[str, ...], as_json: bool) -> None:
    """Remove documents and their chunks from an index.

    Each DOC_ID is a document id, as `ls` and search hits show it, or the path of an indexed
    file (all its records, for a record file). One that matches nothing is an error, and
    nothing is removed.

    \b
    Example:
        instructor-index ls ./my-index
        instructor-index delete ./my-index old.md 42
        instructor-index delete ./my-index notes/old.md
    """
    from ..build import delete_documents

    removed = delete_documents(index_path, doc_ids)
    if as_json:
        print_json({"documents_deleted": removed, "requested": len(doc_ids)})
    else:
        click.echo(f"deleted {removed} document{'' if removed == 1 else 's'}")


@click.command(name="ls")
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: id, title, source, chunks.")
@errors_as_messages
def ls(index_path: Path, as_json: bool) -> None:
    """List the documents of an index: id, chunks, title and source.

    The ids are those search hits show and `delete` takes.

    \b
    Example:
        instructor-index ls ./my-index
        instructor-index ls ./my-index --json
    """
    from dataclasses import asdict

    from instructor_search.store.index import Index

    with Index.open(index_path, readonly=True) as index:
        documents = index.documents()
    if as_json:
        print_json([asdict(doc) for doc in documents])
        return
    width = max((len(doc.id) for doc in documents), default=2)
    for doc in documents:
        click.echo(f"{doc.id.ljust(width)}  {doc.chunks:>5}  {doc.title}  ({doc.source})")
