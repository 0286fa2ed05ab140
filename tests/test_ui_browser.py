"""Browser test of the chat app: a real ``sightline serve`` process driven by headless Chromium.

The test starts the server on a free loopback port with a fresh data folder and the
demo knowledge base, so the server indexes it (8 s on 2 shared cores) before the page loads.
It needs Debian's Chromium at /usr/bin/chromium and never downloads a browser.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

REPO_ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO_ROOT / "assets" / "sync-paused-quota.png"
CHROMIUM_PATH = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

SERVER_START_TIMEOUT_S = 240
"""Room for indexing the demo knowledge base and loading the models, which took 12 to 25 s on 2 shared cores."""
SERVER_STOP_TIMEOUT_S = 10
ANSWER_TIMEOUT_MS = 90_000
"""One answer took 2 to 6 s on 2 shared cores, and the rest is room for a busy machine."""
LOG_TAIL_CHARS = 3000

FIRST_QUESTION = "What does this error mean and how do I fix it?"
FOLLOW_UP_QUESTION = "Who can buy more storage?"
MARKUP_QUESTION = "What is [docs](https:example.invalid) <img src=x> **bold**?"
"""A question with a Markdown link, an HTML tag and emphasis, which must all render as literal text."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_environment() -> dict[str, str]:
    """Return the environment for the server: no Sightline settings from outside, nothing sent out."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("SIGHTLINE_")}
    environment.update({"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return environment


def _wait_for_http(url: str, process: subprocess.Popen, log_path: Path) -> None:
    """Poll the URL until it returns 200, and fail with the server log when the process exits or time runs out."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sightline serve exited with code {process.returncode}:\n"
                        f"{log_path.read_text(errors='replace')[-LOG_TAIL_CHARS:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"sightline serve did not answer {url} within {SERVER_START_TIMEOUT_S} s:\n"
                f"{log_path.read_text(errors='replace')[-LOG_TAIL_CHARS:]}")


def start_server(folder: Path, extra_environment: dict[str, str] | None = None) -> tuple[str, subprocess.Popen]:
    """Start ``sightline serve`` on a free loopback port with the demo knowledge base; return its URL and process.

    The data folder and the log are inside ``folder``; ``extra_environment`` adds settings.
    """
    port = _free_port()
    log_path = folder / "serve.log"
    command = [
        sys.executable, "-m", "app.cli", "--log-level", "INFO", "serve",
        "--host", "127.0.0.1", "--port", str(port),
        "--data-dir", str(folder / "data"), "--kb", str(REPO_ROOT / "knowledge_base"),
    ]
    environment = {**_server_environment(), **(extra_environment or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)

    url = f"http://127.0.0.1:{port}/"
    try:
        started = time.monotonic()
        _wait_for_http(url, process, log_path)
        print(f"sightline serve answered after {time.monotonic() - started:.1f} s")
    except BaseException:
        stop_server(process)
        raise
    return url, process


def stop_server(process: subprocess.Popen) -> None:
    """Stop a server that start_server started, by its process, killing it if it does not exit in time."""
    process.terminate()
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``sightline serve`` on a free loopback port and stop that process at the end."""
    url, process = start_server(tmp_path_factory.mktemp("ui-server"))
    yield url
    stop_server(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Launch Debian's headless Chromium, never a browser that Playwright downloads."""
    assert CHROMIUM_PATH.exists(), f"{CHROMIUM_PATH} not found. Install it with: apt-get install chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM_PATH), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _open_page(browser: Browser, url: str, outside_requests: list[str]) -> Page:
    """Open the app in a fresh browser context, which is a new Gradio session.

    Requests to any host other than loopback are recorded in ``outside_requests`` and aborted.
    """
    context = browser.new_context(viewport={"width": 1400, "height": 1100})

    def guard(route: Route) -> None:
        host = urlparse(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK_HOSTS:
            route.continue_()
        else:
            outside_requests.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.goto(url, wait_until="load")
    expect(page.locator("#sl-input textarea")).to_be_editable(timeout=ANSWER_TIMEOUT_MS)
    return page


def _send(page: Page, question: str, *, files: list[Path] = ()) -> None:
    """Attach files through the chat input's file input, type the question and submit it."""
    textarea = page.locator("#sl-input textarea")
    expect(textarea).to_be_editable(timeout=ANSWER_TIMEOUT_MS)
    if files:
        page.locator("#sl-input input[type=file]").set_input_files([str(path) for path in files])
        expect(page.locator("#sl-input .thumbnail-item")).to_have_count(len(files), timeout=ANSWER_TIMEOUT_MS)
    textarea.fill(question)
    page.locator("#sl-input [data-testid=submit-button]").click()


def _bot_message(page: Page, count: int) -> str:
    """Wait until the chat contains ``count`` bot messages and return the text of the last one."""
    messages = page.locator("#sl-chat [data-testid=bot]")
    expect(messages).to_have_count(count, timeout=ANSWER_TIMEOUT_MS)
    return messages.nth(count - 1).inner_text()


@pytest.mark.browser
def test_chat_flow_in_chromium(server_url: str, browser: Browser, tmp_path: Path) -> None:
    outside_requests: list[str] = []
    page = _open_page(browser, server_url, outside_requests)

    # The page notes that images are read by OCR only, since the test sets no vision model.
    expect(page.locator("#sl-vision-note")).to_contain_text("No vision model configured")

    # First question with the screenshot: a cited answer, a source list and the boxed lines.
    _send(page, FIRST_QUESTION, files=[SCREENSHOT])
    answer = _bot_message(page, 1)
    assert "[1]" in answer
    assert "Sources" in answer
    assert "TP-4021" in answer
    assert "sync-paused-tp-4021-storage-quota.md" in answer
    assert "Latency: intake" in answer
    assert "total" in answer

    user_images = page.locator("#sl-chat [data-testid=user] img")
    expect(user_images.first).to_be_visible()

    screenshot_panel = page.locator("#sl-screenshot")
    expect(screenshot_panel.locator("img.base-image")).to_be_visible()
    assert screenshot_panel.locator("img.mask").count() >= 1
    # The first label is the first cited screenshot line, which follows any reference-image citation.
    expect(screenshot_panel.locator(".legend-item").first).to_contain_text(re.compile(r"\[\d+\]"))
    expect(page.locator("#sl-context")).to_contain_text("sync-paused-quota.png")

    # Follow-up without an upload: still grounded in the same screenshot.
    _send(page, FOLLOW_UP_QUESTION)
    follow_up = _bot_message(page, 2)
    assert "[1]" in follow_up
    assert "Screenshot line" in follow_up or "TP-4021" in follow_up
    assert "Screenshot in context: sync-paused-quota.png (from question 1" in follow_up
    expect(screenshot_panel.locator("img.base-image")).to_be_visible()

    # A text file renamed .png: a message that names the file, and the question comes back.
    fake_png = tmp_path / "notes.png"
    fake_png.write_text("These are meeting notes, not a picture.\n")
    _send(page, MARKUP_QUESTION, files=[fake_png])
    rejection = _bot_message(page, 3)
    assert "Could not answer" in rejection
    assert "notes.png" in rejection
    expect(page.locator("#sl-input textarea")).to_have_value(MARKUP_QUESTION, timeout=ANSWER_TIMEOUT_MS)

    # The question's markup renders as literal text, never as a link, an image or bold text.
    chat = page.locator("#sl-chat")
    expect(chat).to_contain_text("[docs](https:example.invalid)")
    assert chat.locator("a[href*='example.invalid']").count() == 0
    assert chat.locator("img[src='x']").count() == 0
    assert chat.locator("strong", has_text="bold").count() == 0

    # The app keeps working, and the rejected upload did not replace the screenshot.
    page.locator("#sl-input textarea").fill("")
    _send(page, "How soon do paused syncs resume?")
    recovered = _bot_message(page, 4)
    assert "[1]" in recovered
    assert "Screenshot in context: sync-paused-quota.png" in recovered

    # A second browser session starts empty: sessions never share a conversation.
    other_page = _open_page(browser, server_url, outside_requests)
    _send(other_page, FOLLOW_UP_QUESTION)
    other_answer = _bot_message(other_page, 1)
    assert "No screenshot in context" in other_answer
    expect(other_page.locator("#sl-screenshot")).to_be_hidden()

    page.bring_to_front()
    page.locator("#sl-chat [data-testid=bot]").last.scroll_into_view_if_needed()
    screenshot_path = tmp_path / "sightline-ui.png"
    page.screenshot(path=str(screenshot_path), full_page=True)
    print(f"Page screenshot: {screenshot_path}")

    assert outside_requests == []
