"""What every ``instructor-index`` command shares: error printing, JSON output, exit codes and
the encoder options."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from instructor_search.errors import InstructorSearchError

EXIT_ERROR = 1
EXIT_SOME_FAILED = 3


def errors_as_messages(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print our errors as one clear message (no traceback) and exit 1."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InstructorSearchError as error:
            click.secho(f"Error: {error}", fg="red", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def backend_option(function: Any) -> Any:
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


def precision_option(function: Any) -> Any:
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
