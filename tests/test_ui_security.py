"""Browser tests of hostile uploads, media privacy and access control on a real ``sightline serve``.

The server runs with TMPDIR pointed at a test folder, so its private media folder
(``sightline-media-*``) and Gradio's upload cache (``sightline-gradio-*``) can be
inspected, and with a short retention period so that the sweep can be watched.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, expect

from core.access import hash_password
from tests.test_ui_browser import (
    ANSWER_TIMEOUT_MS,
    REPO_ROOT,
    SCREENSHOT,
    _bot_message,
    _free_port,
    _open_page,
    _send,
    _server_environment,
    browser,  # noqa: F401 - the pytest fixture
    stop_server,
)
from tests.test_ui_browser import start_server as start_browser_test_server

RETENTION_S = 30
SWEEP_WAIT_S = RETENTION_S + 25
"""Retention plus the sweep interval (a quarter of the retention, at least 5 s) plus room for a busy machine."""
BOMB_SIDE_PX = 50_000
MAX_RSS_GROWTH_BYTES = 64 * 1024 * 1024
"""Bound on server memory growth while a bomb is rejected; decoding it would take 7.5 GB of RGB pixels."""
PASSWORD = "correct horse battery"


@dataclass
class Server:
    """A running ``sightline serve`` and the folders it writes to."""

    url: str
    process: subprocess.Popen
    tmp_dir: Path
    data_dir: Path

    def media_files(self) -> list[Path]:
        return [path for folder in self.tmp_dir.glob("sightline-media-*") for path in folder.rglob("*")
                if path.is_file()]

    def gradio_files(self) -> list[Path]:
        return [path for folder in self.tmp_dir.glob("sightline-gradio-*") for path in folder.rglob("*")
                if path.is_file()]

    def memory_kib(self, field_name: str) -> int:
        """Return VmRSS or VmHWM of the server process from /proc, in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise AssertionError(f"{field_name} not in /proc/{self.process.pid}/status")


def start_server(folder: Path, extra_environment: dict[str, str]) -> Server:
    """Start ``sightline serve`` on a free loopback port with its temporary folder inside ``folder``."""
    tmp_dir = folder / "tmp"
    tmp_dir.mkdir()
    url, process = start_browser_test_server(folder, {"TMPDIR": str(tmp_dir),
                                                      "SIGHTLINE_MEDIA_RETENTION_S": str(RETENTION_S),
                                                      **extra_environment})
    return Server(url=url, process=process, tmp_dir=tmp_dir, data_dir=folder / "data")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("ui-security"), {})
    yield running
    stop_server(running.process)


def bomb_png(path: Path) -> Path:
    """Write a 16x16 PNG whose header declares BOMB_SIDE_PX x BOMB_SIDE_PX pixels, with a valid CRC."""
    Image.new("L", (16, 16), 255).save(path, format="PNG")
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", BOMB_SIDE_PX, BOMB_SIDE_PX)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def contains_bytes(files: list[Path], content: bytes) -> list[Path]:
    return [path for path in files if path.exists() and path.read_bytes() == content]


@pytest.mark.browser
def test_svg_renamed_png_rejected(server: Server, browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    svg = tmp_path / "diagram.png"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40">'
                   '<script>alert(1)</script></svg>')
    page = _open_page(browser, server.url, [])

    _send(page, "What is this?", files=[svg])
    message = _bot_message(page, 1)

    assert "Could not answer" in message
    assert "diagram.png is an SVG drawing" in message
    assert contains_bytes(server.media_files() + server.gradio_files(), svg.read_bytes()) == []


@pytest.mark.browser
def test_bomb_rejected_memory_bounded(server: Server, browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    bomb = bomb_png(tmp_path / "bomb.png")
    page = _open_page(browser, server.url, [])
    rss_before = server.memory_kib("VmRSS")
    peak_before = server.memory_kib("VmHWM")

    _send(page, "What does this say?", files=[bomb])
    message = _bot_message(page, 1)

    rss_after = server.memory_kib("VmRSS")
    peak_after = server.memory_kib("VmHWM")
    print(f"Server memory: RSS {rss_before} -> {rss_after} KiB, peak {peak_before} -> {peak_after} KiB")
    assert "bomb.png declares too many pixels" in message
    assert (rss_after - rss_before) * 1024 < MAX_RSS_GROWTH_BYTES
    assert (peak_after - peak_before) * 1024 < MAX_RSS_GROWTH_BYTES


@pytest.mark.browser
def test_sessions_isolated_and_forget(server: Server, browser: Browser) -> None:  # noqa: F811
    owner = _open_page(browser, server.url, [])
    other = _open_page(browser, server.url, [])
    upload_bytes = SCREENSHOT.read_bytes()

    with owner.expect_response(lambda response: "/gradio_api/upload" in response.url) as upload_response:
        _send(owner, "What does this error mean?", files=[SCREENSHOT])
    uploaded_path = upload_response.value.json()[0]
    answer = _bot_message(owner, 1)
    assert "[1]" in answer

    # The upload left Gradio's cache, so its URL answers nobody, the uploader included.
    upload_url = f"{server.url}gradio_api/file={uploaded_path}"
    assert other.request.get(upload_url).status in (403, 404)
    assert owner.request.get(upload_url).status in (403, 404)
    assert contains_bytes(server.media_files() + server.gradio_files(), upload_bytes) == []

    # The display copy in the owner's chat is served to the owner only.
    image_source = owner.locator("#sl-chat [data-testid=user] img").first.get_attribute("src")
    image_url = image_source if image_source.startswith("http") else server.url.rstrip("/") + image_source
    owned = owner.request.get(image_url)
    assert owned.status == 200
    display_bytes = owned.body()
    assert other.request.get(image_url).status == 404

    # The other session has no screenshot and none of the owner's history.
    _send(other, "Who can buy more storage?")
    other_answer = _bot_message(other, 1)
    assert "No screenshot in context" in other_answer
    expect(other.locator("#sl-chat")).not_to_contain_text("What does this error mean?")

    # Forget removes the image from the chat and every copy from disk.
    assert contains_bytes(server.media_files() + server.gradio_files(), display_bytes) != []
    owner.locator("#sl-forget").click()
    expect(owner.locator("#sl-chat [data-testid=user] img")).to_have_count(0, timeout=ANSWER_TIMEOUT_MS)
    expect(owner.locator("#sl-context")).to_contain_text("No screenshot in context")
    assert contains_bytes(server.media_files() + server.gradio_files(), display_bytes) == []
    assert server.media_files() == []
    assert owner.request.get(image_url).status in (403, 404)
    assert list(server.data_dir.rglob("*.png")) == []


@pytest.mark.browser
def test_retention_deletes_upload(server: Server, browser: Browser) -> None:  # noqa: F811
    page = _open_page(browser, server.url, [])
    _send(page, "What does this error mean?", files=[SCREENSHOT])
    assert "[1]" in _bot_message(page, 1)
    assert server.media_files() != []

    time.sleep(SWEEP_WAIT_S)

    assert server.media_files() == []
    assert contains_bytes(server.gradio_files(), SCREENSHOT.read_bytes()) == []
    assert [path for path in server.gradio_files() if path.suffix in (".png", ".webp")] == []
    assert list(server.data_dir.rglob("*.png")) == []


@pytest.mark.browser
def test_login_required_with_users(browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    users = f"alice:{hash_password(PASSWORD)}"
    running = start_server(tmp_path, {"SIGHTLINE_AUTH_USERS": users})
    try:
        context = browser.new_context()
        page = context.new_page()
        page.goto(running.url)
        password = page.locator("input[type=password]")
        expect(password).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
        assert page.locator("#sl-input").count() == 0

        page.locator("input[type=text]").first.fill("alice")
        password.fill("wrong password")
        page.get_by_role("button", name="Login").click()
        expect(page.get_by_text("Incorrect Credentials")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)

        page.locator("input[type=text]").first.fill("alice")
        password.fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        expect(page.locator("#sl-input textarea")).to_be_editable(timeout=ANSWER_TIMEOUT_MS)
        context.close()
    finally:
        stop_server(running.process)


def test_remote_bind_rejected_without_login(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", str(_free_port()),
               "--data-dir", str(tmp_path / "data")]
    result = subprocess.run(command, cwd=REPO_ROOT, env=_server_environment(), capture_output=True, text=True,
                            timeout=120)

    assert result.returncode == 1
    assert "Refusing to bind to 0.0.0.0" in result.stderr
