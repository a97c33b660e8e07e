"""Drive the served search page in headless Chromium: shared by ``tests/test_ui_browser.py``
and ``bench/screenshot.py`` (which makes ``docs/search-page.png``), so the screenshot shows
exactly what the test checks.

Uses the Debian ``chromium`` and ``chromium-driver`` packages through selenium; nothing is
downloaded (``SE_AVOID_STATS``, the driver path given explicitly, no selenium-manager lookup).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DOCUMENTS = ROOT / "sample_corpus" / "documents"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
#: Where the page may send requests: this machine only.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
IN_BROWSER_SCHEMES = frozenset({"data", "blob", "about", "chrome", "chrome-untrusted"})
SERVER_START_S = 60
STOP_GRACE_S = 10
#: Long enough for the first page, which loads the model (and exports it on a fresh cache:
#: 90 s measured on the shared 2-core machine under a load of 12).
RESULTS_S = 300


def chromium_paths() -> tuple[str, str] | None:
    """``(browser, chromedriver)`` found on PATH, or ``None`` when either is missing."""
    browser = next((p for name in BROWSERS if (p := shutil.which(name))), None)
    driver = next((p for name in DRIVERS if (p := shutil.which(name))), None)
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("instructor-index")
    if script.exists():
        return [str(script)]
    found = shutil.which("instructor-index")
    return [found] if found else [sys.executable, "-m", "instructor_search.indexer.cli"]


def build_index(index: Path, documents: Path = SAMPLE_DOCUMENTS) -> Path:
    """``instructor-index build DOCUMENTS --index INDEX`` (a no-op when nothing changed)."""
    subprocess.run(
        [*_cli(), "build", str(documents), "--index", str(index)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=600,
    )
    return index


@contextlib.contextmanager
def serve(
    index: Path,
    port: int | None = None,
    log: Path | None = None,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """``instructor-index ui INDEX --port PORT --host HOST`` in a subprocess (with ``env`` added
    to its environment); yields the page's URL (on 127.0.0.1) once Streamlit answers its health
    check, and always stops the server.

    The command runs Streamlit as its own child, so it starts in a new session and the whole
    process group is stopped: SIGTERM, then SIGKILL for whatever is left after a grace period.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log = log or Path(tempfile.mkdtemp(prefix="instructor-ui-")) / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*_cli(), "ui", str(index), "--port", str(port), "--host", host],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
        try:
            _wait_healthy(url, process, log)
            yield url
        finally:
            _stop_group(process)


@contextlib.contextmanager
def outbound_proxy() -> Iterator[tuple[dict[str, str], list[bytes]]]:
    """A listener posing as the HTTP(S) proxy: yields the environment variables that send a
    process's outbound requests to it (``requests``, ``urllib``, ONNX Runtime's telemetry and
    most HTTP clients honour them) and the list of what reached it (each connection's first
    bytes, e.g. ``CONNECT host:443``), filled until the block ends."""
    asked: list[bytes] = []
    done = threading.Event()
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        proxy.settimeout(0.2)

        def listen() -> None:
            while not done.is_set():
                try:
                    connection, _ = proxy.accept()
                except TimeoutError:
                    continue
                with connection, contextlib.suppress(OSError):
                    connection.settimeout(5)
                    asked.append(connection.recv(200) or b"(connected, sent nothing)")

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        address = f"http://127.0.0.1:{proxy.getsockname()[1]}"
        names = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
        env = dict.fromkeys(names, address) | dict.fromkeys(("no_proxy", "NO_PROXY"), "")
        try:
            yield env, asked
        finally:
            done.set()
            listener.join()


def _stop_group(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    group = process.pid  # the leader of its own session and process group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(group, 0)  # is anyone of the group still alive?
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    process.wait(timeout=grace)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The server exited with {process.returncode}:\n{log.read_text()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"The server did not answer within {SERVER_START_S}s:\n{log.read_text()}")


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium driven by selenium, with a fresh profile; always quit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError(
            "Chromium and chromedriver are needed: apt-get install chromium chromium-driver"
        )
    os.environ["SE_AVOID_STATS"] = "true"
    profile = tempfile.mkdtemp(prefix="instructor-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # for requested_urls
    driver = webdriver.Chrome(options=options, service=Service(paths[1]))
    try:
        driver.set_window_size(width, height)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for since the last call, from Chromium's performance log
    (DevTools ``Network.requestWillBeSent``: documents, scripts, fonts, images, XHR, websockets);
    the log is drained by each call, so collect the calls' results."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(params["request"]["url"])
        elif message.get("method") == "Network.webSocketCreated":
            urls.append(params["url"])
    return urls


def remote_hosts(urls: Iterable[str]) -> set[str]:
    """The hosts among ``urls`` other than this machine's; URLs that go nowhere (``data:`` and
    ``blob:`` made in the page, Chromium's own ``chrome:`` pages) are left out."""
    hosts = set()
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in IN_BROWSER_SCHEMES:
            continue
        if parts.hostname not in LOCAL_HOSTS:
            hosts.add(parts.hostname or url)
    return hosts


# -- the page ------------------------------------------------------------------------------------


def wait(
    driver: Any, condition: Callable[[Any], Any], timeout: float = RESULTS_S, what: str = ""
) -> Any:
    """``WebDriverWait`` that says what it waited for when it times out."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(
        driver, timeout, ignored_exceptions=(StaleElementReferenceException,)
    ).until(condition, message=f"timed out after {timeout}s waiting for {what or condition}")


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def idle(driver: Any) -> bool:
    """Streamlit has finished its run (no "running" status widget)."""
    return not css(
        driver, '[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]'
    ) and not css(driver, '[data-testid="stSpinner"]')


def click(driver: Any, element: Any) -> None:
    """Scroll ``element`` to the middle of the window (clear of the sticky header), click it."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    wait(driver, lambda d: css(d, 'input[aria-label="Query"]'), what="the query box")


def search(driver: Any, query: str) -> None:
    """Type ``query`` in the query box and press Enter."""
    from selenium.webdriver.common.keys import Keys

    box = css(driver, 'input[aria-label="Query"]')[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    box.send_keys(query, Keys.ENTER)


def results(driver: Any) -> list[dict[str, str]]:
    """The result cards on the page: doc id, rank, type, folder and title of each."""
    found = []
    for card in css(driver, ".result-card"):
        title = card.find_elements("css selector", ".rc-title")
        found.append(
            {
                "doc_id": card.get_attribute("data-doc-id"),
                "rank": card.get_attribute("data-rank"),
                "type": card.get_attribute("data-type"),
                "folder": card.get_attribute("data-folder"),
                "title": title[0].text if title else "",
            }
        )
    return found


def summary(driver: Any) -> str:
    """The caption above the results (count, latency, mode, instruction), or ''."""
    for caption in css(driver, '[data-testid="stCaptionContainer"]'):
        text = caption.text
        if " · " in text and ("documents ·" in text or "chunks ·" in text):
            return text
    return ""


def wait_for_results(
    driver: Any, check: Callable[[list[dict[str, str]], str], bool], what: str
) -> list[dict[str, str]]:
    """Wait until the app is idle, every card the summary counts is drawn, and
    ``check(results, summary)`` holds; returns the results."""

    def ready(d: Any) -> list[dict[str, str]] | bool:
        if not idle(d):
            return False
        found, line = results(d), summary(d)
        count = line.split(" ", 1)[0]
        if not found or not count.isdigit() or len(found) != int(count):
            return False  # the run is still drawing its cards
        return found if check(found, line) else False

    return wait(driver, ready, what=what)


def choose_mode(driver: Any, mode: str) -> None:
    for button in css(driver, '[data-testid="stButtonGroup"] button'):
        if button.text.strip() == mode:
            click(driver, button)
            return
    raise LookupError(f"no mode button {mode!r}")


def choose_in_multiselect(driver: Any, label: str, option: str) -> None:
    """Pick the option starting with ``option`` in the multiselect labelled ``label``."""
    from selenium.webdriver.common.keys import Keys

    for widget in css(driver, '[data-testid="stMultiSelect"]'):
        if widget.text.splitlines() and widget.text.splitlines()[0].strip() == label:
            box = widget.find_element("css selector", "input")
            click(driver, box)
            box.send_keys(option)
            wait(
                driver, lambda d: css(d, '[role="option"]'), timeout=10, what=f"options of {label}"
            )
            for choice in css(driver, '[role="option"]'):
                if choice.text.strip().startswith(option):
                    click(driver, choice)
                    break
            else:
                raise LookupError(f"no option {option!r} in {label!r}")
            box.send_keys(Keys.ESCAPE)
            return
    raise LookupError(f"no multiselect labelled {label!r}")


def open_tab(driver: Any, name: str) -> None:
    for tab in css(driver, '[role="tab"]'):
        if tab.text.strip() == name:
            click(driver, tab)
            return
    raise LookupError(f"no tab {name!r}")


def comparison(driver: Any) -> dict[str, list[dict[str, str]]]:
    """The rows of both comparison columns: doc id, rank and movement label of each."""
    rows: dict[str, list[dict[str, str]]] = {"a": [], "b": []}
    for row in css(driver, ".compare-row"):
        side = row.get_attribute("data-side") or ""
        rows.setdefault(side, []).append(
            {
                "doc_id": row.get_attribute("data-doc-id"),
                "rank": row.get_attribute("data-rank"),
                "move": row.get_attribute("data-move"),
            }
        )
    return rows
