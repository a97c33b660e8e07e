"""``ui``: the Streamlit search page for an index."""

from __future__ import annotations

import errno
import socket
import sys
from pathlib import Path

import click

from .common import errors_as_messages

#: Addresses that mean every interface of this machine.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def check_port(host: str, port: int) -> None:
    """Bind ``host:port`` as the server will (``SO_REUSEADDR``, every address ``host`` names),
    so a busy port is a clear error before anything says that it serves."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise click.ClickException(
            f"Cannot serve on {host!r}: {error.strerror}; check --host"
        ) from None
    addresses = {info[4]: info[0] for info in found}
    for address, family in addresses.items():
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as error:
                raise click.ClickException(_bind_failure(host, port, error)) from None


def _bind_failure(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return (
            f"Port {port} on {host} is already in use (another search page or server?): stop "
            f"it, or serve on another port with --port {port + 1}"
        )
    if error.errno == errno.EACCES:
        return f"Port {port} on {host} needs privileges to bind: choose --port 1024 or above"
    return f"Cannot serve on {host}:{port}: {error.strerror}; check --host and --port"


@click.command()
@click.argument("index_path", metavar="INDEX", type=click.Path(path_type=Path))
@click.option("--port", default=8501, show_default=True, help="Port to serve on.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (0.0.0.0 exposes it to your network).",
)
@errors_as_messages
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

    check_port(host, port)
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
        # Streamlit's banner for an address of every interface asks checkip.amazonaws.com for
        # this machine's public address; our own line says where the page is.
        *(["--logger.hideWelcomeMessage", "true"] if host in WILDCARD_HOSTS else []),
        "--",
        "--index",
        str(index_path.resolve()),
    ]
    click.echo(f"Serving the search page for {index_path} at http://{host}:{port}  (Ctrl+C stops)")
    # os.environ holds ORT_DISABLE_TELEMETRY=1 since instructor_search was imported
    env = {**os.environ, "INSTRUCTOR_SEARCH_INDEX": str(index_path.resolve())}
    if os.name == "posix":  # become Streamlit: stopping this process stops the server
        os.execve(sys.executable, command, env)
    try:
        sys.exit(subprocess.call(command, env=env))
    except KeyboardInterrupt:
        sys.exit(0)
