"""``serve`` (the HTTP API, optionally watching its sources) and ``watch`` (folders kept in sync).

Both need the ``[server]`` extra (FastAPI, uvicorn, watchdog), imported only when they run.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from .common import backend_option, errors_as_messages, precision_option

_EXTRA = "pip install 'instructor-search[server]'"


def _require(*modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(f"This command needs {', '.join(missing)}: {_EXTRA}")


def _echo_batch(report: Any) -> None:
    from instructor_search.indexer.watch import summary

    click.echo(f"{time.strftime('%H:%M:%S')} {summary(report)}")
    for failure in report.failures:
        where = f"{failure.path}:{failure.line}" if failure.line else failure.path
        click.secho(f"    could not read {where}: {failure.reason}", fg="yellow", err=True)


def _echo_error(error: Exception) -> None:
    click.secho(f"{time.strftime('%H:%M:%S')} Error: {error}", fg="red", err=True)


def _watcher(sources: tuple[Path, ...], index_path: Path, backend: str, precision: str) -> Any:
    from instructor_search.indexer.build import BuildSettings
    from instructor_search.indexer.watch import Watcher

    settings = BuildSettings(backend=backend, precision=precision)
    return Watcher(sources, index_path, settings, on_batch=_echo_batch, on_error=_echo_error)


@click.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, help="Port to serve on.")
@click.option(
    "--api-key-env",
    metavar="NAME",
    default=None,
    help="Require 'Authorization: Bearer KEY' on every request, KEY being the value of the "
    "environment variable NAME (the key itself never goes on the command line).",
)
@click.option(
    "--watch",
    "sources",
    multiple=True,
    type=click.Path(path_type=Path, exists=True),
    help="Keep the index in line with this folder or file while serving (repeatable).",
)
@backend_option
@errors_as_messages
def serve(
    index_path: Path,
    host: str,
    port: int,
    api_key_env: str | None,
    sources: tuple[Path, ...],
    backend: str,
) -> None:
    """Serve an index over HTTP (JSON): the model stays loaded between requests.

    POST /search, /search/batch, /compare; GET /info, /documents/{id}, /health; the API's
    documentation at /docs. A new build of the index is picked up without a restart.

    \b
    Example:
        instructor-index serve ./my-index --port 8000
        MY_KEY=s3cret instructor-index serve ./my-index --api-key-env MY_KEY
        instructor-index serve ./my-index --watch ./notes
        curl -s localhost:8000/search -H 'content-type: application/json' \\
            -d '{"query": "rotate the logs", "k": 3}'
    """
    _require("fastapi", "uvicorn", *(["watchdog"] if sources else []))
    import uvicorn

    from instructor_search.server.app import ServerSettings, create_app
    from instructor_search.store.index import Index

    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise click.ClickException(f"--api-key-env {api_key_env}: that variable is not set")
    elif host not in ("127.0.0.1", "localhost", "::1"):
        click.secho(f"Warning: serving on {host} without --api-key-env", fg="yellow", err=True)
    watcher, thread = None, None
    if sources:
        watcher = _watcher(sources, index_path, backend, "auto")
        thread = threading.Thread(target=watcher.run, name="watch", daemon=True)
        thread.start()
        watcher.ready.wait()  # the first build: the index exists and is current
    else:
        with Index.open(index_path, readonly=True):  # a clear error now, not a 503 later
            pass
    watching = tuple(str(source) for source in sources)
    app = create_app(index_path, ServerSettings(api_key=key, backend=backend, watching=watching))
    click.echo(f"Serving {index_path} at http://{host}:{port} (API docs at /docs; Ctrl+C stops)")
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        if watcher is not None and thread is not None:
            watcher.stop()
            thread.join()


@click.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--index", "index_path", required=True, type=click.Path(path_type=Path), help="Index folder."
)
@backend_option
@precision_option
@errors_as_messages
def watch(sources: tuple[Path, ...], index_path: Path, backend: str, precision: str) -> None:
    """Keep an index in line with folders: added, edited, deleted and renamed files.

    Builds once, then after every burst of changes (once the files stop changing), with the
    model, instructions and chunking the index was built with. Ctrl+C stops after the batch
    in progress (twice: at once; the index is left at its last committed batch either way).

    \b
    Example:
        instructor-index watch ./notes ./papers.jsonl --index ./my-index
    """
    _require("watchdog")
    watcher = _watcher(sources, index_path, backend, precision)
    stopping = False

    def interrupted(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:
            raise KeyboardInterrupt
        stopping = True
        click.echo("Stopping after the batch in progress (Ctrl+C again: at once)", err=True)
        watcher.stop()

    previous = signal.signal(signal.SIGINT, interrupted)
    names = ", ".join(str(source) for source in sources)
    click.echo(f"Watching {names} for {index_path} (Ctrl+C stops)")
    try:
        watcher.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    click.echo("Stopped.")
