"""Answers from a language model behind any OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp, hosted APIs).

The engine numbers the evidence of a request, fits as much of it as the model's
context allows, streams the model's reply, and checks its ``[n]`` markers against the
evidence it sent. A failed call (connection refused, time-out, an HTTP error, a reply
that is not a chat completion) raises ``LlmError``, and a reply that fails the
citation check comes back marked as rejected. In both cases ``core.routing`` shows
the extractive answer with a note.

Logging follows the model of simonw/llm: one INFO record per call with the model,
token counts, duration and outcome, and hashes and lengths in place of the prompt
and reply text, which contain the user's screenshot and voice-note text. Set
``llm_log_prompts`` to log the full prompt and reply as well.

Example::

    engine = OpenAICompatibleEngine(settings=Settings.load(llm_base_url="http://127.0.0.1:8080/v1",
                                                           llm_model="smollm2"))
    reply = engine.complete(request, on_delta=lambda text: print(text, end="", flush=True))
    print(reply.answer.text, reply.answer.citations)
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import openai

from core.engines import AnswerRequest, collect_evidence
from core.injection import build_evidence_block, build_messages, new_nonce
from core.settings import Settings
from core.types import Answer, Citation, Evidence, ImageInput
from core.verify import CitationVerifier

logger = logging.getLogger(__name__)

ENGINE_PREFIX = "llm"
"""``Answer.engine`` of a model's answer is ``llm:<model>``."""
DEFAULT_API_KEY = "not-needed"
"""Sent when no key is configured: local servers ignore the key, but the client requires one."""
CHARS_PER_TOKEN_ESTIMATE = 4
MESSAGE_OVERHEAD_TOKENS = 8
"""Tokens that a chat template adds around each message (role markers), an estimate."""
# NOTE: the tokens an image costs depend on the model and the image size; this is a guess.
IMAGE_TOKENS_ESTIMATE = 1024
MIN_TOP_EVIDENCE_TOKENS = 16
"""Below this many tokens left for the top evidence item, the prompt is not sent at all."""
TOKENIZE_TIMEOUT_S = 5.0
MAX_IMAGE_SIDE_PX = 1568
TRUNCATED_MARKER = " [truncated]"
TEMPERATURE = 0.0

_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


class LlmError(Exception):
    """The configured model gave no usable answer; the message says why, for a note beside the fallback."""


@dataclass
class PromptPlan:
    """The messages sent to the model, the evidence they number, and what had to be left out."""

    messages: list[dict[str, Any]]
    evidence: list[Evidence]
    """Evidence in the prompt: item ``[n]`` is ``evidence[n - 1]``."""
    prompt_tokens: int
    dropped: int = 0
    """Evidence items left out, lowest-ranked first, to fit the context."""
    truncated: bool = False
    """True when the top evidence item was cut to fit."""
    exact_counts: bool = True
    """False when token counts are estimates because the server has no tokenize endpoint."""
    warnings: list[str] = field(default_factory=list)


@dataclass
class LlmReply:
    """A model's answer with the raw streamed text and the prompt it answered."""

    answer: Answer
    raw_text: str
    """The reply exactly as streamed, before markers were renumbered or checked."""
    plan: PromptPlan
    response_tokens: int
    duration_ms: float
    rejection: str | None = None
    """Reason the citation check rejected the answer, or None when it may be shown."""


class TokenCounter:
    """Counts tokens with the server's tokenizer, or estimates 4 characters per token without one.

    llama.cpp's server and vLLM serve ``POST /tokenize`` and llama-cpp-python serves
    ``POST /extras/tokenize``, each at the root of the host that serves ``/v1``.
    The first call finds the endpoint that works; later calls reuse it.
    """

    def __init__(self, *, base_url: str, model: str | None, api_key: str) -> None:
        self.root = _host_root(base_url)
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self._endpoint: tuple[str, str] | None = None
        self._probed = False

    @property
    def exact(self) -> bool:
        """Return True when counts come from the server's tokenizer."""
        return self._endpoint is not None

    def count(self, text: str) -> int:
        """Return the number of tokens in ``text``."""
        if not text:
            return 0
        if not self._probed:
            self._probe(text)
        if self._endpoint is None:
            return _estimate_tokens(text)

        path, key = self._endpoint
        try:
            return self._post(path, key, text)
        except (httpx.HTTPError, ValueError, KeyError) as error:
            logger.warning("Token count failed at %s%s, estimating from now on: %s", self.root, path, error)
            self._endpoint = None
            return _estimate_tokens(text)

    def _probe(self, text: str) -> None:
        """Find the tokenize endpoint of the server, or settle on estimates."""
        self._probed = True
        for path, key in (("/tokenize", "content"), ("/extras/tokenize", "input")):
            try:
                self._post(path, key, text)
            except (httpx.HTTPError, ValueError, KeyError):
                continue
            self._endpoint = (path, key)
            logger.info("Counting tokens with %s%s", self.root, path)
            return
        logger.info("No tokenize endpoint at %s; estimating %d characters per token",
                    self.root, CHARS_PER_TOKEN_ESTIMATE)

    def _post(self, path: str, key: str, text: str) -> int:
        body: dict[str, Any] = {key: text, "add_special": False}
        if key == "content":
            # vLLM reads "prompt" and "model"; llama.cpp reads "content" and ignores the rest.
            body.update(prompt=text, model=self.model, add_special_tokens=False)
        response = httpx.post(self.root + path, json=body, headers=self.headers, timeout=TOKENIZE_TIMEOUT_S)
        response.raise_for_status()
        record = response.json()
        if "count" in record:
            return int(record["count"])
        return len(record["tokens"])


class OpenAICompatibleEngine:
    """Answers from the evidence with a model behind an OpenAI-compatible chat endpoint, streamed.

    ``verifier`` checks and repairs the citations of each answer. Without one, only
    markers that name no evidence item are removed. Raises LlmError when no usable
    answer comes back.
    """

    def __init__(self, *, settings: Settings, verifier: CitationVerifier | None = None) -> None:
        if not settings.llm_base_url:
            raise ValueError("llm_base_url is not set: set SIGHTLINE_LLM_BASE_URL to use a language model.")
        self.settings = settings
        self.model = settings.llm_model or "default"
        self.name = f"{ENGINE_PREFIX}:{self.model}"
        self.verifier = verifier
        api_key = settings.llm_api_key or DEFAULT_API_KEY
        self.client = openai.OpenAI(base_url=settings.llm_base_url, api_key=api_key,
                                    timeout=settings.llm_timeout_s, max_retries=settings.llm_max_retries)
        self.counter = TokenCounter(base_url=settings.llm_base_url, model=settings.llm_model, api_key=api_key)

    def answer(self, request: AnswerRequest) -> Answer:
        """Return the model's checked answer to the request; raise LlmError when there is none."""
        reply = self.complete(request)
        if reply.rejection is not None:
            raise LlmError(reply.rejection)
        return reply.answer

    def complete(self, request: AnswerRequest, *, on_delta: Callable[[str], None] | None = None) -> LlmReply:
        """Send the request to the model, pass each streamed piece of text to ``on_delta``, and check the reply.

        A reply that fails the citation check comes back with ``rejection`` set.
        Raises LlmError when the prompt cannot fit, the call fails after its retries,
        or the reply is empty or not a chat completion.
        """
        plan = self.plan_prompt(request)
        started = time.perf_counter()
        outcome = "ok"
        raw_text, response_tokens = "", 0
        try:
            raw_text, response_tokens = self._stream(plan.messages, on_delta)
            answer, rejection = self._check(raw_text, plan, question=request.question)
            if rejection is not None:
                outcome = f"rejected: {rejection}"
        except LlmError as error:
            outcome = f"failed: {error}"
            raise
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            self._log_call(plan, raw_text, response_tokens, duration_ms, outcome)

        return LlmReply(answer=answer, raw_text=raw_text, plan=plan, response_tokens=response_tokens,
                        duration_ms=duration_ms, rejection=rejection)

    def plan_prompt(self, request: AnswerRequest) -> PromptPlan:
        """Build the messages, leaving out the lowest-ranked evidence until the prompt fits the context.

        The question is never cut. The top evidence item is cut, with a visible
        ``[truncated]`` marker and a warning, only when it alone does not fit.
        Raises LlmError when the question and instructions alone do not fit.
        """
        settings = self.settings
        evidence = collect_evidence(request)
        images = request.images if settings.llm_vision else []
        nonce = new_nonce()
        limit = settings.llm_context_tokens - settings.llm_max_answer_tokens - IMAGE_TOKENS_ESTIMATE * len(images)

        fixed_tokens = self._count_messages(self._text_messages(request, [], nonce))
        budget = limit - fixed_tokens
        if budget < MIN_TOP_EVIDENCE_TOKENS:
            raise LlmError(
                f"the question and instructions need {fixed_tokens} tokens, which leaves no room for evidence "
                f"in a context of {settings.llm_context_tokens} tokens with {settings.llm_max_answer_tokens} "
                "reserved for the answer; raise llm_context_tokens or lower llm_max_answer_tokens")

        kept, truncated = self._fit_evidence(evidence, budget, nonce)
        messages = self._text_messages(request, kept, nonce)
        prompt_tokens = self._count_messages(messages)
        # Items counted one by one can add up to less than the whole block, so drop more if needed.
        while prompt_tokens > limit and len(kept) > 1:
            kept.pop()
            messages = self._text_messages(request, kept, nonce)
            prompt_tokens = self._count_messages(messages)

        warnings = []
        if truncated:
            warnings.append(f"The top evidence item {kept[0].id} was cut to fit the model's context of "
                            f"{settings.llm_context_tokens} tokens.")
        dropped = len(evidence) - len(kept)
        if dropped:
            warnings.append(f"The model's context of {settings.llm_context_tokens} tokens fit {len(kept)} of "
                            f"{len(evidence)} evidence items; the {dropped} lowest-ranked were left out.")
        if not self.counter.exact:
            # NOTE: without the server's tokenizer the fit is an estimate and may still overflow.
            warnings.append(f"Token counts are estimated at {CHARS_PER_TOKEN_ESTIMATE} characters per token "
                            "because the model server has no tokenize endpoint.")

        return PromptPlan(messages=attach_images(messages, images), evidence=kept,
                          prompt_tokens=prompt_tokens + IMAGE_TOKENS_ESTIMATE * len(images), dropped=dropped,
                          truncated=truncated, exact_counts=self.counter.exact, warnings=warnings)

    def _text_messages(self, request: AnswerRequest, evidence: list[Evidence], nonce: str) -> list[dict[str, Any]]:
        """Build the system and user messages of core.injection for the question and the evidence."""
        return build_messages(request.question, evidence, question_from_transcript=request.question_from_transcript,
                              nonce=nonce)

    def _count_messages(self, messages: list[dict[str, Any]]) -> int:
        """Count the tokens of text-only messages, with an estimate for the chat template's role markers."""
        return sum(self.counter.count(message["content"]) + MESSAGE_OVERHEAD_TOKENS for message in messages)

    def _fit_evidence(self, evidence: list[Evidence], budget: int, nonce: str) -> tuple[list[Evidence], bool]:
        """Keep evidence in rank order while it fits ``budget`` tokens; cut the top item if it alone does not.

        Returns the kept items and whether the top item was cut.
        """
        frame_tokens = self.counter.count(build_evidence_block([], nonce=nonce))
        kept: list[Evidence] = []
        used = 0
        for number, item in enumerate(evidence, start=1):
            tokens = self._count_item(number, item, nonce, frame_tokens)
            if used + tokens > budget:
                break
            kept.append(item)
            used += tokens

        if kept or not evidence:
            return kept, False
        return [self._truncate(evidence[0], budget, nonce, frame_tokens)], True

    def _count_item(self, number: int, item: Evidence, nonce: str, frame_tokens: int) -> int:
        """Count the tokens that item ``[number]`` adds to the evidence block."""
        block = build_evidence_block([Citation(n=number, evidence=item, text=item.text)], nonce=nonce)
        return max(self.counter.count(block) - frame_tokens, 1)

    def _truncate(self, item: Evidence, budget: int, nonce: str, frame_tokens: int) -> Evidence:
        """Cut the item's text at a word boundary and mark the cut, so that the item fits ``budget`` tokens."""
        text = item.text
        for _ in range(8):
            candidate = replace(item, text=text + TRUNCATED_MARKER)
            tokens = self._count_item(1, candidate, nonce, frame_tokens)
            if tokens <= budget:
                return candidate
            keep_chars = int(len(text) * budget / tokens * 0.9)
            text = text[:keep_chars].rsplit(" ", 1)[0] if " " in text[:keep_chars] else text[:keep_chars]
        raise LlmError(f"the top evidence item {item.id} could not be cut to fit {budget} tokens")

    def _stream(self, messages: list[dict[str, Any]], on_delta: Callable[[str], None] | None) -> tuple[str, int]:
        """Stream a chat completion and return its text and its number of response tokens."""
        pieces: list[str] = []
        chunks = 0
        usage_tokens = None
        try:
            stream = self.client.chat.completions.create(
                model=self.model, messages=messages, stream=True, temperature=TEMPERATURE,
                max_tokens=self.settings.llm_max_answer_tokens)
            for chunk in stream:
                usage = getattr(chunk, "usage", None)
                if usage is not None and usage.completion_tokens:
                    usage_tokens = usage.completion_tokens
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta.content if chunk.choices[0].delta else None
                if delta:
                    chunks += 1
                    pieces.append(delta)
                    if on_delta is not None:
                        on_delta(delta)
        except openai.APITimeoutError as error:
            raise LlmError(f"the model at {self.settings.llm_base_url} did not reply within "
                           f"{self.settings.llm_timeout_s:g} s (after {self.settings.llm_max_retries} retries)") from error
        except openai.APIConnectionError as error:
            raise LlmError(f"the model server at {self.settings.llm_base_url} could not be reached "
                           f"(after {self.settings.llm_max_retries} retries): {error}") from error
        except openai.APIStatusError as error:
            raise LlmError(f"the model server at {self.settings.llm_base_url} returned HTTP "
                           f"{error.status_code} for model {self.model}: {_short(error.message)}") from error
        except (openai.OpenAIError, ValueError, AttributeError, TypeError) as error:
            raise LlmError(f"the reply from {self.settings.llm_base_url} is not a valid chat completion: "
                           f"{type(error).__name__}: {_short(str(error))}") from error

        text = "".join(pieces)
        if not text.strip():
            raise LlmError(f"the model {self.model} returned an empty answer")
        # llama.cpp servers send one token per chunk, so the chunk count is used when usage is missing.
        return text, usage_tokens if usage_tokens is not None else chunks

    def _check(self, raw_text: str, plan: PromptPlan, *, question: str) -> tuple[Answer, str | None]:
        """Check the reply's citations; return the checked answer and why it must not be shown, or None.

        With a verifier, every evidence item in the prompt is offered as citation
        ``[n]``, so the verifier can repair a marker that names the wrong item. The
        check fails when no citation remains, a sentence is unsupported, or the
        grounding score is below ``llm_min_grounding``.
        """
        if self.verifier is None:
            answer = build_answer(raw_text, plan, engine=self.name)
        else:
            offered = [Citation(n=number, evidence=item, text=item.text)
                       for number, item in enumerate(plan.evidence, start=1)]
            answer = Answer(text=raw_text.strip(), citations=offered, covered=True, engine=self.name)
            self.verifier.verify_answer(answer, question=question)
            answer.covered = any(citation.evidence.kind == "kb_section" for citation in answer.citations)

        answer.warnings = plan.warnings + answer.warnings
        unsupported = sum(sentence.status == "unsupported" for sentence in answer.sentences)
        if not answer.citations:
            return answer, f"the answer of model {self.model} cites none of the {len(plan.evidence)} evidence items"
        if unsupported:
            return answer, (f"{unsupported} sentence(s) of the answer of model {self.model} "
                            "failed the citation check")
        if answer.grounding is not None and answer.grounding < self.settings.llm_min_grounding:
            return answer, (f"the answer of model {self.model} has a grounding score of {answer.grounding:.2f}, "
                            f"below llm_min_grounding {self.settings.llm_min_grounding:.2f}")
        return answer, None

    def _log_call(self, plan: PromptPlan, raw_text: str, response_tokens: int, duration_ms: float,
                  outcome: str) -> None:
        """Log one record per model call, with hashes and lengths in place of the text."""
        prompt_text = _messages_text(plan.messages)
        logger.info(
            "LLM call engine=%s model=%s base_url=%s prompt_tokens=%d prompt_sha256=%s prompt_chars=%d "
            "evidence=%d dropped=%d truncated=%s exact_counts=%s response_tokens=%d response_sha256=%s "
            "response_chars=%d duration_ms=%.0f outcome=%s",
            self.name, self.model, self.settings.llm_base_url, plan.prompt_tokens, _sha256(prompt_text),
            len(prompt_text), len(plan.evidence), plan.dropped, plan.truncated, plan.exact_counts,
            response_tokens, _sha256(raw_text), len(raw_text), duration_ms, outcome,
        )
        if self.settings.llm_log_prompts:
            logger.info("LLM prompt engine=%s messages=%r", self.name, _messages_text(plan.messages))
            logger.info("LLM response engine=%s text=%r", self.name, raw_text)


def attach_images(messages: list[dict[str, Any]], images: list[ImageInput]) -> list[dict[str, Any]]:
    """Return the messages with the images added to the user message as PNG data URLs."""
    if not images:
        return messages
    user = messages[-1]
    parts: list[dict[str, Any]] = [{"type": "text", "text": user["content"]}]
    parts += [{"type": "image_url", "image_url": {"url": image_data_url(image)}} for image in images]
    return [*messages[:-1], {"role": user["role"], "content": parts}]


def image_data_url(image: ImageInput) -> str:
    """Encode the image as a PNG data URL, scaled down to at most MAX_IMAGE_SIDE_PX on its longer side."""
    pixels = image.image.copy()
    pixels.thumbnail((MAX_IMAGE_SIDE_PX, MAX_IMAGE_SIDE_PX))
    buffer = io.BytesIO()
    pixels.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def build_answer(raw_text: str, plan: PromptPlan, *, engine: str) -> Answer:
    """Turn the model's text into an Answer whose citations are numbered 1, 2, 3 in order of first use.

    Markers that name no evidence item in the prompt are removed, and a warning counts them.
    """
    renumbered: dict[int, int] = {}
    citations: list[Citation] = []
    dangling: list[int] = []

    def replace(match: re.Match[str]) -> str:
        markers = []
        for part in match.group(1).split(","):
            number = int(part)
            if not 1 <= number <= len(plan.evidence):
                dangling.append(number)
                continue
            if number not in renumbered:
                renumbered[number] = len(citations) + 1
                evidence = plan.evidence[number - 1]
                citations.append(Citation(n=renumbered[number], evidence=evidence, text=evidence.text))
            markers.append(f"[{renumbered[number]}]")
        return "".join(markers)

    text = _MARKER.sub(replace, raw_text).strip()
    text = re.sub(r"[ \t]+([.,;:!?])", r"\1", re.sub(r"[ \t]{2,}", " ", text))
    warnings = []
    if dangling:
        warnings.append(f"The model cited evidence numbers that do not exist ({sorted(set(dangling))}); "
                        "those markers were removed.")
    covered = any(citation.evidence.kind == "kb_section" for citation in citations)
    return Answer(text=text, citations=citations, covered=covered, engine=engine, warnings=warnings)


def _estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN_ESTIMATE)


def _host_root(base_url: str) -> str:
    """Return scheme, host and port of ``base_url``: the root where tokenize endpoints live."""
    url = httpx.URL(base_url)
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


def _messages_text(messages: list[dict[str, Any]]) -> str:
    """Join the text parts of the messages; images count by their data URL's length only."""
    parts = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            parts.append(content)
            continue
        for part in content:
            parts.append(part["text"] if part["type"] == "text" else f"<image {len(part['image_url']['url'])} chars>")
    return "\n".join(parts)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _short(text: str, max_chars: int = 200) -> str:
    return text if len(text) <= max_chars else text[:max_chars] + "…"
