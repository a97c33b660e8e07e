"""``ingest`` and ``export``: embeddings in and out of an index as shard folders."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import EXIT_SOME_FAILED, errors_as_messages, print_json


@click.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--index",
    "index_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Index folder (created from the first manifest if new).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (build's keys).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (errors still print).")
@errors_as_messages
def ingest(shards: tuple[Path, ...], index_path: Path, as_json: bool, quiet: bool) -> None:
    """Upsert documents with their embeddings from shard folders (manifest.json + *.parquet).

    Unchanged documents are skipped and changed ones replaced, as a build does; nothing is
    embedded.

    \b
    Example:
        instructor-index ingest ./shards-a ./shards-b --index ./my-index
    """
    from ..ingest import ingest as run_ingest

    report = run_ingest(shards, index_path, show_progress=not quiet)
    for failure in report.failures:
        where = f"{failure.path}:{failure.line}" if failure.line else failure.path
        click.secho(f"failed: {where}: {failure.reason}", fg="yellow", err=True)
    if as_json:
        print_json(report.to_dict())
    else:
        click.echo(
            f"{index_path}: {report.documents_added} added, {report.documents_updated} updated, "
            f"{report.documents_unchanged} unchanged, {report.documents_failed} failed; "
            f"{report.chunks_embedded} chunks stored in {report.seconds:.1f}s. Now "
            f"{report.documents_total} documents, {report.chunks_total} chunks."
        )
    if report.documents_failed:
        sys.exit(EXIT_SOME_FAILED)


@click.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.option(
    "--shards",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="A new or empty folder to write manifest.json and *.parquet into.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@errors_as_messages
def export(index_path: Path, out: Path, as_json: bool) -> None:
    """Write an index's documents, chunks and embeddings out as a shard folder.

    \b
    Example:
        instructor-index export ./my-index --shards ./backup
    """
    from instructor_search.store.index import Index

    with Index.open(index_path, readonly=True) as index:
        report = index.export_shards(out)
    if as_json:
        print_json(report.to_dict())
    else:
        click.echo(
            f"{out}: {report.documents} documents, {report.chunks} chunks in "
            f"{len(report.files)} files"
        )
