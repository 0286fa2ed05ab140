"""Browser test of streaming: a model's reply grows in the chat before the checked answer replaces it.

The model is a mock OpenAI-compatible server on loopback that streams a reply in
slow chunks. The reply copies the first sentences of the first knowledge-base
section in the prompt and cites it, so it passes the citation check. The server has no tokenize
endpoint, so the engine estimates token counts.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.test_ui_browser import (
    ANSWER_TIMEOUT_MS,
    SCREENSHOT,
    _open_page,
    _send,
    browser,  # noqa: F401 (a fixture used by name)
    start_server,
    stop_server,
)

MODEL_NAME = "mock-model"
CHUNK_COUNT = 5
CHUNK_DELAY_S = 0.3
POLL_INTERVAL_S = 0.05
QUESTION = "What does the storage quota exceeded error mean and how do I fix it?"


def _cited_reply(prompt: str, *, max_sentences: int = 3) -> str:
    """Return a reply that copies the first sentences of the first knowledge-base section in a prompt, cited."""
    lines = prompt.splitlines()
    start = next(index for index, line in enumerate(lines)
                 if re.match(r"\[\d+\] knowledge-base section", line))
    number = re.match(r"\[(\d+)\]", lines[start]).group(1)
    sentences = re.split(r"(?<=[.!?])\s+", lines[start + 1].strip())[:max_sentences]
    return " ".join(f"{sentence.rstrip('.!?')} [{number}]." for sentence in sentences)


def _split_into_chunks(text: str, count: int) -> list[str]:
    words = re.findall(r"\S+\s*", text)
    size = max(1, -(-len(words) // count))
    return ["".join(words[index:index + size]) for index in range(0, len(words), size)]


class SlowModelHandler(BaseHTTPRequestHandler):
    """Stream a cited chat completion in CHUNK_COUNT chunks CHUNK_DELAY_S apart, and return 404 for other paths."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return

        prompt = body["messages"][-1]["content"]
        if isinstance(prompt, list):
            prompt = "\n".join(part.get("text", "") for part in prompt if isinstance(part, dict))
        reply = _cited_reply(prompt)

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in _split_into_chunks(reply, CHUNK_COUNT):
            chunk = {"id": "mock", "object": "chat.completion.chunk", "created": 0, "model": MODEL_NAME,
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(CHUNK_DELAY_S)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture(scope="module")
def model_url() -> Iterator[str]:
    """Start the slow mock model server on 127.0.0.1 and return its /v1 base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowModelHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory, model_url: str) -> Iterator[str]:
    """Start ``sightline serve`` with the mock model configured, and stop that process at the end."""
    url, process = start_server(tmp_path_factory.mktemp("ui-streaming"), {
        "SIGHTLINE_LLM_BASE_URL": model_url, "SIGHTLINE_LLM_MODEL": MODEL_NAME, "SIGHTLINE_LLM_MAX_RETRIES": "0",
    })
    yield url
    stop_server(process)


@pytest.mark.browser
def test_model_reply_streams_into_chat(server_url: str, browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    outside_requests: list[str] = []
    page = _open_page(browser, server_url, outside_requests)
    page.locator("#sl-thorough input[type=checkbox]").check()

    _send(page, QUESTION, files=[SCREENSHOT])
    bot = page.locator("#sl-chat [data-testid=bot]")
    expect(bot).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)

    # Record every distinct text of the bot message until the final answer with its sources shows.
    seen: list[str] = []
    deadline = time.monotonic() + ANSWER_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        text = bot.first.inner_text()
        if not seen or text != seen[-1]:
            seen.append(text)
        if "Sources" in text:
            break
        time.sleep(POLL_INTERVAL_S)

    streaming = [text for text in seen if "checking citations" in text]
    final = seen[-1]
    assert "Sources" in final, seen
    assert len(streaming) >= 2, seen
    assert len(streaming[0]) < len(streaming[-1]), streaming
    assert "checking citations" not in final
    assert "[1]" in final
    assert "Grounding" in final
    assert "could not be used" not in final
    assert "failed the citation check" not in final
    assert outside_requests == []
