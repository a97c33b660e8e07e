"""The ``instructor-index`` command: a thin client of the ``instructor_search`` library.

Heavy imports (torch, transformers, faiss) happen inside the commands, so ``--help`` is fast.
Exit codes: 0 success, 1 an error the message explains, 2 bad usage, 3 the build completed
but some documents could not be read.
"""

from __future__ import annotations

import logging

import click

from instructor_search import __version__

from .index_commands import build, delete, info
from .index_commands import ls as ls_command
from .search_commands import evaluate, parse_where, search
from .serve_commands import serve, watch
from .shard_commands import export, ingest
from .tune_command import tune
from .ui_command import ui

__all__ = ["cli", "main", "parse_where"]


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


for command in (build, info, delete, search, evaluate, ui):
    cli.add_command(command)
cli.add_command(serve)
cli.add_command(watch)
cli.add_command(tune)
cli.add_command(ingest)
cli.add_command(export)
cli.add_command(ls_command)


def main() -> None:
    """Console-script entry point."""
    cli()
