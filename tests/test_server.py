"""The HTTP API (``instructor-index serve``): a real uvicorn server on a free port, queried over
HTTP with httpx. The fast tests serve a small index of the tiny checkpoint; the slow ones the
sample index (the README's examples), a writer in another process, and the CLI itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from click.testing import CliRunner  # noqa: E402
from conftest import TINY  # noqa: E402

from instructor_search.indexer.build import BuildSettings, build  # noqa: E402
from instructor_search.indexer.cli import cli  # noqa: E402
from instructor_search.search.retriever import Hit  # noqa: E402
from instructor_search.server.app import ServerSettings, create_app  # noqa: E402
from instructor_search.store.index import IndexStats  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
KEY = "test-key-8f3a"
DOCS = {
    "alpha.md": "# Alpha\n\nApples grow on trees in the orchard; pick them in autumn.\n",
    "beta.md": "# Beta\n\nBananas ripen quickly in a warm kitchen.\n",
    "notes/gamma.md": "# Gamma\n\nGarlic keeps vampires and colds away, people say.\n",
    "notes/delta.txt": "Dates are sweet fruit of the date palm.\n",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(index: Path, settings: ServerSettings | None = None) -> Iterator[httpx.Client]:
    """A real uvicorn server for ``index`` on a free port, in a thread; an httpx client to it."""
    port = free_port()
    config = uvicorn.Config(
        create_app(index, settings), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)


def write_docs(folder: Path, docs: dict[str, str]) -> Path:
    for name, text in docs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory, tiny) -> Path:
    root = tmp_path_factory.mktemp("served")
    index = root / "index"
    build([write_docs(root / "docs", DOCS)], index, BuildSettings(model=str(TINY)), model=tiny)
    return index


@pytest.fixture(scope="module")
def client(tiny_index) -> Iterator[httpx.Client]:
    with serving(tiny_index) as client:
        yield client


@pytest.fixture
def own_index(tmp_path, tiny_index) -> Path:
    """A copy of the tiny index that a test may remove, break and restore."""
    index = tmp_path / "index"
    shutil.copytree(tiny_index, index)
    return index


# -- endpoints ------------------------------------------------------------------------------------


def test_search_hit_is_the_cli_json_hit(client, tiny_index):
    response = client.post("/search", json={"query": "apples in autumn", "k": 3, "mode": "dense"})
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["doc_id"] == "alpha.md"
    assert set(hits[0]) == set(Hit.__dataclass_fields__)
    printed = CliRunner().invoke(
        cli, ["search", str(tiny_index), "apples in autumn", "-k", "3", "--mode", "dense", "--json"]
    )
    assert printed.exit_code == 0, printed.output
    printed_hits = json.loads(printed.output)
    # the same fields and values; scores to float noise (the CLI's process may embed the query
    # with the saved QueryEncoder, the server's with the Instructor that saved it)
    assert [h | {"score": 0} for h in hits] == [h | {"score": 0} for h in printed_hits]
    assert [h["score"] for h in hits] == pytest.approx([h["score"] for h in printed_hits], abs=1e-5)


def test_search_options_filter_and_documents(client):
    body = {"query": "fruit", "k": 10, "where": {"folder": "notes"}, "documents": True}
    hits = client.post("/search", json=body).json()["hits"]
    assert {h["doc_id"] for h in hits} == {"notes/gamma.md", "notes/delta.txt"}
    mmr = client.post("/search", json={"query": "fruit", "k": 2, "mmr": 0.5}).json()["hits"]
    assert len(mmr) == 2
    keyword = client.post("/search", json={"query": "bananas", "mode": "keyword"}).json()["hits"]
    assert keyword[0]["doc_id"] == "beta.md"


def test_batch_is_one_search_per_query(client):
    body = {"queries": ["bananas kitchen", "garlic vampires"], "k": 2, "mode": "keyword"}
    response = client.post("/search/batch", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    single = [client.post("/search", json={"query": q, "k": 2, "mode": "keyword"}).json()["hits"]
              for q in body["queries"]]  # fmt: skip
    assert results == single
    assert results[1][0]["doc_id"] == "notes/gamma.md"


def test_compare_reports_movements(client):
    body = {"query": "sweet fruit", "instruction_a": "", "instruction_b": "Represent the fruit:"}
    response = client.post("/compare", json=body | {"k": 4, "mode": "dense"})
    assert response.status_code == 200, response.text
    found = response.json()
    assert found["instruction_b"] == "Represent the fruit:"
    assert len(found["movements"]) == len(found["hits_b"]) == 4
    for movement, hit in zip(found["movements"], found["hits_b"]):
        assert (movement["rank"], movement["chunk_id"]) == (hit["rank"], hit["chunk_id"])
        assert movement["change"] in {"new", "up", "down", "same"}


def test_info_health_documents_and_docs(client, tiny_index):
    info = client.get("/info").json()
    assert set(info["index"]) == set(IndexStats.__dataclass_fields__)
    assert info["index"]["documents"] == len(DOCS) and info["index"]["path"] == str(tiny_index)
    assert info["max_k"] == ServerSettings().max_k and info["watching"] == []
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["generation"] == info["index"]["generation"]
    document = client.get("/documents/notes/gamma.md")  # an id with a slash in it
    assert document.status_code == 200 and document.json()["id"] == "notes/gamma.md"
    assert "Garlic keeps vampires" in document.json()["text"]
    missing = client.get("/documents/notes/nothing.md")
    assert missing.status_code == 404 and "notes/nothing.md" in missing.json()["message"]
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/search/batch", "/compare", "/info", "/health"} <= set(paths)


def test_concurrent_requests_each_get_their_own_answer(client):
    """Requests that wait together are searched as one batch: each still gets its own hits,
    and a bad one among them its own error."""
    bodies = [{"query": q, "k": 3, "mode": "dense"} for q in
              ("apples", "bananas", "garlic", "dates", "orchard", "kitchen", "palm", "colds")]  # fmt: skip
    bodies.append({"query": "", "k": 3, "mode": "dense"})
    alone = [client.post("/search", json=body) for body in bodies]
    together: list = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def ask(n: int) -> None:
        with httpx.Client(base_url=client.base_url, timeout=60) as mine:
            barrier.wait()
            together[n] = mine.post("/search", json=bodies[n])

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in together] == [200] * (len(bodies) - 1) + [400]
    assert "empty" in together[-1].json()["message"]
    for first, second in zip(alone[:-1], together[:-1]):
        hits_a, hits_b = first.json()["hits"], second.json()["hits"]
        assert [h["chunk_id"] for h in hits_a] == [h["chunk_id"] for h in hits_b]
        assert [h["score"] for h in hits_a] == pytest.approx([h["score"] for h in hits_b], abs=1e-5)


def test_search_server_client_gives_hits_and_library_errors(client, tiny_index):
    from instructor_search.errors import FilterError, InputError, InstructorSearchError
    from instructor_search.server.client import search_server

    url = str(client.base_url)
    hits = search_server(url, "garlic", k=2, mode="dense")
    assert all(isinstance(hit, Hit) for hit in hits) and isinstance(hits[0].span, tuple)
    served = client.post("/search", json={"query": "garlic", "k": 2, "mode": "dense"}).json()
    assert [hit.to_dict() for hit in hits] == served["hits"]
    with pytest.raises(FilterError, match="Unknown filter field"):
        search_server(url, "garlic", where={"colour": "red"})
    with pytest.raises(InputError, match="empty"):
        search_server(url, " ")
    with pytest.raises(InstructorSearchError, match="Could not reach"):
        search_server(f"http://127.0.0.1:{free_port()}", "garlic")


def test_cli_search_asks_the_server(client, tmp_path):
    url = str(client.base_url)
    served = client.post("/search", json={"query": "garlic", "k": 2, "mode": "dense"}).json()
    # INDEX is not opened with --server: a folder that holds no index still answers
    printed = CliRunner().invoke(
        cli,
        [
            "search",
            str(tmp_path),
            "garlic",
            "-k",
            "2",
            "--mode",
            "dense",
            "--json",
            "--server",
            url,
        ],
    )
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == served["hits"]
    refused = CliRunner().invoke(
        cli, ["search", str(tmp_path), "garlic", "--where", "colour=red", "--server", url]
    )
    assert refused.exit_code == 1 and "colour" in refused.output


def test_bodies_match_their_documented_models(client):
    """The routes return ready-made JSON; it must be what /docs says it is."""
    from instructor_search.server import models

    search = {"query": "fruit", "k": 2}
    compare = {"query": "fruit", "instruction_a": "", "instruction_b": "Represent the fruit:"}
    checks = [
        (models.SearchResponse, client.post("/search", json=search)),
        (models.BatchResponse, client.post("/search/batch", json={"queries": ["a", "b"]})),
        (models.CompareResponse, client.post("/compare", json=compare)),
        (models.InfoResponse, client.get("/info")),
        (models.HealthResponse, client.get("/health")),
        (models.ErrorResponse, client.post("/search", json={"query": ""})),
    ]
    for model, response in checks:
        body = response.json()
        assert model.model_validate(body).model_dump(mode="json") == body, model.__name__
    document = client.get("/documents/alpha.md").json()
    assert set(document) == {"id", "text", "title", "source", "metadata"}


# -- bad requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "error", "words"),
    [
        ({"query": "  "}, 400, "InputError", "empty"),
        ({"query": "x", "k": 0}, 400, "InputError", "k must be a positive int"),
        ({"query": "x", "k": -3}, 400, "InputError", "k must be a positive int"),
        ({"query": "x", "k": 1001}, 400, "InputError", "at most 1000"),
        ({"query": "x", "mode": "fuzzy"}, 400, "InputError", "must be one of"),
        ({"query": "x", "mmr": 2}, 400, "InputError", "mmr must be"),
        ({"query": "x", "where": {"colour": "red"}}, 400, "FilterError", "Unknown filter field"),
        ({"query": "x", "where": {"type": {"~": 1}}}, 400, "FilterError", "operator"),
        ({"query": "x", "k": "many"}, 422, "InvalidRequest", "k: Input should be a valid integer"),
        ({"qery": "x"}, 422, "InvalidRequest", "query: Field required"),
        ([1, 2], 422, "InvalidRequest", "body"),
    ],
)
def test_bad_search_is_a_4xx_with_the_message(client, body, status, error, words):
    response = client.post("/search", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert words.lower() in response.json()["message"].lower()


def test_bad_batch_and_compare(client):
    too_many = client.post("/search/batch", json={"queries": ["q"] * 257})
    assert too_many.status_code == 400 and "at most 256" in too_many.json()["message"]
    one_empty = client.post("/search/batch", json={"queries": ["fine", ""]})
    assert one_empty.status_code == 400 and "query 1 is empty" in one_empty.json()["message"]
    not_list = client.post("/search/batch", json={"queries": "one string"})
    assert not_list.status_code == 422
    no_b = client.post("/compare", json={"query": "x", "instruction_a": ""})
    assert no_b.status_code == 422 and "instruction_b" in no_b.json()["message"]


def test_malformed_json_and_big_bodies(client):
    headers = {"content-type": "application/json"}
    broken = client.post("/search", content=b'{"query": "x",', headers=headers)
    assert broken.status_code == 400 and broken.json()["error"] == "MalformedJSON"
    big = json.dumps({"query": "x " * 600_000}).encode()
    assert len(big) > 1_000_000
    declared = client.post("/search", content=big, headers=headers)
    assert declared.status_code == 413 and declared.json()["error"] == "PayloadTooLarge"

    def chunks() -> Iterator[bytes]:  # no content-length: the limit counts what arrives
        for start in range(0, len(big), 64_000):
            yield big[start : start + 64_000]

    streamed = client.post("/search", content=chunks(), headers=headers)
    assert streamed.status_code == 413
    under = client.post("/search", json={"query": "apples " * 50_000, "k": 1})
    assert under.status_code == 200  # 350 kB: under the limit, searched


def test_unknown_routes_and_methods_are_json(client):
    assert client.get("/nowhere").json()["error"] == "Not Found"
    wrong = client.get("/search")
    assert wrong.status_code == 405 and wrong.json()["error"] == "Method Not Allowed"


# -- auth -----------------------------------------------------------------------------------------


def test_api_key_is_required_on_every_request(tiny_index):
    with serving(tiny_index, ServerSettings(api_key=KEY)) as client:
        good = {"Authorization": f"Bearer {KEY}"}
        for method, path in (("POST", "/search"), ("GET", "/info"), ("GET", "/health"),
                             ("GET", "/docs"), ("GET", "/documents/alpha.md")):  # fmt: skip
            body = {"json": {"query": "apples"}} if method == "POST" else {}
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                refused = client.request(method, path, headers=headers, **body)
                assert refused.status_code == 401, (path, headers)
                assert refused.json()["error"] == "Unauthorized"
                assert refused.headers["www-authenticate"] == "Bearer"
            assert client.request(method, path, headers=good, **body).status_code == 200
        # a refused request is refused before its body is read
        big = client.post("/search", content=b"x" * 2_000_000, headers={"content-type": "a/b"})
        assert big.status_code == 401


# -- an index that goes away ----------------------------------------------------------------------


def test_removed_index_is_503_then_recovers(own_index, tmp_path):
    with serving(own_index) as client:
        assert client.post("/search", json={"query": "apples"}).status_code == 200
        away = tmp_path / "moved-away"
        own_index.rename(away)
        for path in ("/search", "/health"):
            gone = client.request("POST" if path == "/search" else "GET", path,
                                  json={"query": "apples"} if path == "/search" else None)  # fmt: skip
            assert gone.status_code == 503, gone.text
            assert gone.json()["error"] == "IndexNotFoundError"
            assert str(own_index) in gone.json()["message"]
            assert gone.headers["retry-after"] == "1"
        away.rename(own_index)
        back = client.post("/search", json={"query": "apples", "k": 1})
        assert back.status_code == 200 and back.json()["hits"][0]["doc_id"] == "alpha.md"


def test_corrupt_index_is_503_then_recovers(own_index, tmp_path):
    file = own_index / "index.sqlite"
    saved = tmp_path / "saved.sqlite"
    shutil.copyfile(file, saved)
    with serving(own_index) as client:
        assert client.get("/health").status_code == 200
        broken = tmp_path / "broken.sqlite"
        broken.write_bytes(b"this is not an sqlite database " * 200)
        os.replace(broken, file)  # a bad restore: another file under the same name
        response = client.post("/search", json={"query": "apples"})
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "IndexCorruptError"
        assert client.get("/info").status_code == 503
        restored = tmp_path / "restored.sqlite"
        shutil.copyfile(saved, restored)
        os.replace(restored, file)
        assert client.post("/search", json={"query": "apples"}).status_code == 200
        assert client.get("/info").json()["index"]["documents"] == len(DOCS)


def test_missing_index_at_start_serves_503_until_built(tmp_path, tiny):
    index = tmp_path / "later"
    with serving(index) as client:
        assert client.get("/health").status_code == 503
        build(
            [write_docs(tmp_path / "docs", DOCS)], index, BuildSettings(model=str(TINY)), model=tiny
        )
        assert client.get("/health").status_code == 200
        assert client.post("/search", json={"query": "garlic", "k": 1}).status_code == 200


# -- concurrency with a writer in another process -------------------------------------------------

WRITER = """
import sys
from pathlib import Path
from instructor_search import Instructor
from instructor_search.indexer.build import BuildSettings, build
docs, index, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
model = Instructor(sys.argv[4], precision="fp32")
for n in range(rounds):
    (docs / f"new{n}.md").write_text(f"# New {n}\\n\\nZebra{n} crossings are striped.\\n")
    build([docs], index, BuildSettings(model=sys.argv[4]), model=model)
print("written", rounds)
"""


@pytest.mark.slow
def test_concurrent_clients_while_another_process_builds(tmp_path, tiny):
    docs, own_index = write_docs(tmp_path / "docs", DOCS), tmp_path / "index"
    build([docs], own_index, BuildSettings(model=str(TINY)), model=tiny)
    rounds = 6
    with serving(own_index) as client:
        before = client.get("/health").json()["generation"]
        statuses: list[int] = []
        errors: list[str] = []
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(docs), str(own_index), str(rounds), str(TINY)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def ask(n: int) -> None:
            with httpx.Client(base_url=client.base_url, timeout=60) as mine:
                while writer.poll() is None:
                    body = {
                        "query": f"zebra crossings {n}",
                        "k": 5,
                        "mode": ["hybrid", "dense"][n % 2],
                    }
                    response = mine.post("/search", json=body)
                    statuses.append(response.status_code)
                    if response.status_code != 200:
                        errors.append(response.text)

        threads = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _, err = writer.communicate()
        assert writer.returncode == 0, err[-2000:]
        assert errors == [] and len(statuses) > 4
        assert client.get("/health").json()["generation"] >= before + rounds
        last = client.post("/search", json={"query": f"zebra{rounds - 1}", "mode": "keyword"})
        assert last.json()["hits"][0]["doc_id"] == f"new{rounds - 1}.md"
        assert client.get("/info").json()["index"]["documents"] == len(DOCS) + rounds


# -- the CLI --------------------------------------------------------------------------------------


def test_without_the_extra_serve_and_watch_name_it(monkeypatch, tiny_index, tmp_path):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.setitem(sys.modules, "watchdog", None)
    for args in (["serve", str(tiny_index)], ["watch", str(tmp_path), "--index", str(tiny_index)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1
        assert "pip install 'instructor-search[server]'" in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_serve_refuses_a_missing_key_variable_and_a_missing_index(tiny_index, tmp_path):
    unset = CliRunner().invoke(cli, ["serve", str(tiny_index), "--api-key-env", "NO_SUCH_VAR_X"])
    assert unset.exit_code == 1 and "NO_SUCH_VAR_X" in unset.output
    missing = CliRunner().invoke(cli, ["serve", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "No index" in missing.output


@pytest.mark.slow
def test_cli_serve_with_key_and_watch(tmp_path, tiny):
    docs = write_docs(tmp_path / "docs", DOCS)
    index, port = tmp_path / "index", free_port()
    build([docs], index, BuildSettings(model=str(TINY)), model=tiny)
    env = {**os.environ, "MY_SERVER_KEY": KEY}
    command = [sys.executable, "-m", "instructor_search.indexer.cli", "serve", str(index),
               "--port", str(port), "--api-key-env", "MY_SERVER_KEY", "--watch", str(docs)]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as c:
            _wait_until_up(c, process)
            assert c.get("/info").json()["watching"] == [str(docs)]
            assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 401
            (docs / "notes" / "epsilon.md").write_text("# Epsilon\n\nElderberry cordial recipe.\n")
            hits = _wait_for_hit(c, "elderberry")
            assert hits[0]["doc_id"] == "notes/epsilon.md"
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output[-3000:]
    assert f"127.0.0.1:{port}" in output


def _wait_until_up(client: httpx.Client, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not come up")


def _wait_for_hit(client: httpx.Client, word: str, seconds: float = 60) -> list[dict]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        hits = client.post("/search", json={"query": word, "mode": "keyword"}).json()["hits"]
        if hits:
            return hits
        time.sleep(0.1)
    raise AssertionError(f"{word!r} never became searchable")


# -- the README's client examples -----------------------------------------------------------------


def readme_section() -> str:
    text = README.read_text()
    start = text.index("## HTTP API and watched folders")
    return text[start : text.index("\n## ", start + 3)]


@pytest.mark.slow
def test_readme_client_examples_run_against_a_live_server(sample_index, tmp_path):
    section = readme_section()
    curls = [line for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
             for line in block.replace("\\\n", " ").splitlines() if line.startswith("curl ")]  # fmt: skip
    programs = re.findall(r"```py\n(.*?)```", section, flags=re.DOTALL)
    assert len(curls) >= 2 and len(programs) >= 2
    with serving(sample_index) as client:  # (a key sent to a server without one is ignored)
        port = str(client.base_url.port)
        env = {**os.environ, "MY_KEY": KEY}
        for line in curls:
            line = line.replace("8000", port)
            result = subprocess.run(line, shell=True, capture_output=True, text=True, env=env)
            assert result.returncode == 0, (line, result.stderr)
            assert json.loads(result.stdout), line
        for code in programs:
            if "langchain" in code:
                pytest.importorskip("langchain_core")
            code = code.replace("8000", port)
            result = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
            )
            assert result.returncode == 0, result.stderr[-3000:]
            assert result.stdout.strip()
