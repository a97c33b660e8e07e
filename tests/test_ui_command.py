"""``instructor-index ui`` refuses a port it cannot bind before it says that it serves (a real
listening socket holds the port; the command never gets as far as starting Streamlit)."""

from __future__ import annotations

import socket
from pathlib import Path

import browser
import pytest
from click.testing import CliRunner

from instructor_search.store.index import CollectionSettings, Index

pytest.importorskip("streamlit")

SETTINGS = CollectionSettings(
    model="test-model",
    model_fingerprint="sha256:test",
    dimension=4,
    document_instruction="",
    query_instruction="",
    chunk_tokens=64,
    chunk_overlap=0,
)


@pytest.fixture
def index(tmp_path):
    with Index.create(tmp_path / "index", SETTINGS):
        pass
    return tmp_path / "index"


def test_busy_port_fails_before_serving(index):
    from instructor_search.indexer.cli import cli

    with socket.socket() as holder:  # what another server on the port looks like
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = CliRunner().invoke(cli, ["ui", str(index), "--port", str(port)])
    assert result.exit_code == 1, result.output
    assert f"Port {port} on 127.0.0.1 is already in use" in result.output
    assert f"--port {port + 1}" in result.output
    assert "Serving" not in result.output


def test_an_address_of_no_interface_is_named(index):
    from instructor_search.indexer.cli import cli

    # 192.0.2.1 (TEST-NET-1) belongs to no interface of this machine
    result = CliRunner().invoke(cli, ["ui", str(index), "--host", "192.0.2.1", "--port", "8501"])
    assert result.exit_code == 1, result.output
    assert "Cannot serve on 192.0.2.1:8501" in result.output
    assert "Serving" not in result.output


def test_a_missing_index_is_refused_first(tmp_path):
    from instructor_search.indexer.cli import cli

    result = CliRunner().invoke(cli, ["ui", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "Serving" not in result.output


def test_plain_streamlit_run_gathers_no_usage_stats(monkeypatch):
    """``streamlit run ui/app.py`` reads ``ui/.streamlit/config.toml`` (as its CLI does, by
    the script's path): no usage statistics sent to Streamlit from the page."""
    from streamlit import config

    app = Path(__file__).resolve().parents[1] / "ui" / "app.py"
    monkeypatch.setattr(config, "_main_script_path", str(app))
    try:
        config.get_config_options(force_reparse=True)
        assert config.get_option("browser.gatherUsageStats") is False
    finally:
        monkeypatch.undo()
        config.get_config_options(force_reparse=True)


@pytest.mark.slow
def test_a_page_on_every_interface_asks_no_other_machine(index, tmp_path):
    """Served on 0.0.0.0, the server makes no request of its own: every HTTP(S) proxy variable
    of its process points at a listener here, which would see Streamlit's lookup of the public
    address (the health check, from this process, goes straight to the server)."""
    with (
        browser.outbound_proxy() as (proxies, asked),
        browser.serve(index, host="0.0.0.0", log=tmp_path / "server.log", env=proxies),
    ):
        pass  # answering its health check: past the start-up banner
    assert asked == []
