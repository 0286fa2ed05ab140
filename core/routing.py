"""Tiered answering: the extractive answer always comes first, and the configured model only when needed.

The model answers when one is configured (``llm_base_url``) and either the user asked
for a thorough answer, or the extractive engine is unsure: the knowledge base does not
cover the question, or the best section's similarity is below ``llm_confident_similarity``.
When the model fails or its answer fails the citation check, the extractive answer is
returned with a note that says why.

Example::

    router = TieredAnswerRouter(extractive=ExtractiveEngineAdapter(engine), llm=llm_engine, settings=settings)
    answer = router.answer(AnswerRequest(question="Why is sync paused?", retrieved=hits, thorough=True))
    answer.engine       # "extractive" or "llm:<model>"
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from core.embeddings import TextEmbedder
from core.engines import AnswerEngine, AnswerRequest
from core.llm import LlmError, OpenAICompatibleEngine
from core.settings import Settings
from core.types import Answer
from core.verify import CitationVerifier

logger = logging.getLogger(__name__)


class TieredAnswerRouter:
    """Answers with the extractive engine, and with the model when the route rules call for it."""

    def __init__(self, *, extractive: AnswerEngine, llm: OpenAICompatibleEngine | None, settings: Settings) -> None:
        self.extractive = extractive
        self.llm = llm
        self.settings = settings

    def answer(self, request: AnswerRequest, *, on_delta: Callable[[str], None] | None = None,
               on_extractive: Callable[[Answer], None] | None = None) -> Answer:
        """Return the model's checked answer when the route calls for it, else the extractive answer.

        ``on_delta`` receives the model's reply as it streams. ``on_extractive``
        receives the extractive answer, before its citation check, just before the
        model is asked. Neither is called when the extractive answer suffices.
        """
        extractive = self.extractive.answer(request)
        reason = route_reason(extractive, request, settings=self.settings)
        if self.llm is None or reason is None:
            return extractive

        logger.info("Asking the model engine=%s reason=%s", self.llm.name, reason)
        if on_extractive is not None:
            on_extractive(extractive)
        try:
            reply = self.llm.complete(request, on_delta=on_delta)
        except LlmError as error:
            logger.warning("Model answer not used engine=%s reason=%s fallback=extractive: %s",
                           self.llm.name, reason, error)
            extractive.warnings.append(f"The configured model's answer could not be used ({error}), "
                                       "so this is the extractive answer.")
            return extractive

        if reply.rejection is not None:
            logger.warning("Model answer rejected engine=%s reason=%s fallback=extractive: %s",
                           self.llm.name, reason, reply.rejection)
            extractive.warnings.append(f"The configured model's answer failed the citation check "
                                       f"({reply.rejection}), so this is the extractive answer.")
            return extractive

        return reply.answer


def build_llm_engine(settings: Settings, *, embedder: TextEmbedder) -> OpenAICompatibleEngine | None:
    """Return the configured model's engine with the citation check, or None when ``llm_base_url`` is unset."""
    if not settings.llm_base_url:
        return None
    logger.info("Language model configured base_url=%s model=%s vision=%s", settings.llm_base_url,
                settings.llm_model, settings.llm_vision)
    return OpenAICompatibleEngine(settings=settings, verifier=CitationVerifier(embedder=embedder, settings=settings))


def route_reason(extractive: Answer, request: AnswerRequest, *, settings: Settings) -> str | None:
    """Return why the model should answer this request, or None when the extractive answer suffices."""
    if not settings.llm_base_url:
        return None
    if request.thorough:
        return "thorough answer requested"
    if not extractive.covered:
        return "knowledge base does not cover the question"

    best = max((hit.dense_similarity or 0.0 for hit in request.retrieved), default=0.0)
    if best < settings.llm_confident_similarity:
        return f"best section similarity {best:.2f} is below {settings.llm_confident_similarity:.2f}"
    return None
