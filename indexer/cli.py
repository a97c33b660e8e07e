"""The ``instructor-index`` command: a thin client of the ``instructor_search`` library.

Heavy imports (torch, transformers, faiss) happen inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import click

from instructor_search import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="instructor-index")
def cli() -> None:
    """Build and search local, instruction-aware semantic search indexes.

    \b
    Example:
        instructor-index build ./docs --index ./my-index
        instructor-index search ./my-index "how do I rotate the logs?"
    """


def main() -> None:
    """Console-script entry point."""
    cli()
