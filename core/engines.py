"""The interface every answer engine implements, and the evidence list that engines number and cite.

An engine takes one ``AnswerRequest`` (the question and everything read for it) and
returns an ``Answer`` whose ``[n]`` markers name its citations. Two engines exist: the
offline extractive one (``ExtractiveEngineAdapter`` around ``ExtractiveAnswerEngine``)
and ``core.llm.OpenAICompatibleEngine``. ``core.routing`` picks between them.

Example::

    request = AnswerRequest(question="Why is sync paused?", retrieved=hits, ocr_lines=lines)
    answer = ExtractiveEngineAdapter(extractive).answer(request)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from core.answer import ExtractiveAnswerEngine, _is_readable, _line_evidence, _section_evidence, _segment_evidence
from core.types import Answer, Evidence, ImageInput, OcrLine, RetrievedSection, Transcript

if TYPE_CHECKING:
    from core.image_index import ImageMatch
    from core.vision import LabelScore


@dataclass
class AnswerRequest:
    """One question with the sections retrieved for it and the media read in its conversation."""

    question: str
    retrieved: list[RetrievedSection] = field(default_factory=list)
    """Knowledge-base sections, best first."""
    ocr_lines: list[OcrLine] = field(default_factory=list)
    """Lines of the active screenshots, in reading order."""
    transcript: Transcript | None = None
    """The voice note of this turn, if it had any speech."""
    question_from_transcript: bool = False
    """True when the question is the voice note's transcript."""
    images: list[ImageInput] = field(default_factory=list)
    """The active screenshots, sent to a vision-capable model."""
    image_matches: list[ImageMatch] = field(default_factory=list)
    """Knowledge-base images that match the active screenshots, best first."""
    image_labels: list[tuple[str, LabelScore]] = field(default_factory=list)
    """Zero-shot labels of the active screenshots, each with its image id."""
    thorough: bool = False
    """True when the user asked for a thorough answer from the configured model."""


class AnswerEngine(Protocol):
    """An engine that answers a request with text whose ``[n]`` markers name its citations."""

    name: str

    def answer(self, request: AnswerRequest) -> Answer:
        """Answer the request. Raise SightlineError only for a problem with the user's input."""
        ...


class ExtractiveEngineAdapter:
    """Runs the extractive engine, whose ``answer`` takes keyword arguments, on an AnswerRequest."""

    def __init__(self, engine: ExtractiveAnswerEngine) -> None:
        self.engine = engine
        self.name = engine.name

    def answer(self, request: AnswerRequest) -> Answer:
        """Return the extractive answer for the request; images and the thorough flag are ignored."""
        # Image matches and labels go along only when present, so the adapter also runs an
        # engine whose ``answer`` does not take them.
        image_context: dict[str, Any] = {}
        if request.image_matches:
            image_context["image_matches"] = request.image_matches
        if request.image_labels:
            image_context["image_labels"] = request.image_labels
        return self.engine.answer(request.question, retrieved=request.retrieved, ocr_lines=request.ocr_lines,
                                  transcript=request.transcript,
                                  question_from_transcript=request.question_from_transcript, **image_context)


def collect_evidence(request: AnswerRequest) -> list[Evidence]:
    """List the evidence of a request in rank order, most important first.

    The order is: the best section, the readable screenshot lines in reading order,
    the voice-note segments in time order, then the other sections in retrieval order.
    A prompt that must shrink drops items from the end, so the best section and the
    user's own media go last. An evidence id appears at most once.

    NOTE: matched knowledge-base images and zero-shot labels are not listed yet, so a
    model answer cannot cite them; the extractive answer can.
    """
    sections = [_section_evidence(hit) for hit in request.retrieved]
    lines = [_line_evidence(line) for line in request.ocr_lines if _is_readable(line)]
    segments = []
    if request.transcript is not None:
        segments = [_segment_evidence(request.transcript, segment) for segment in request.transcript.segments
                    if segment.text.strip()]

    ranked = [*sections[:1], *lines, *segments, *sections[1:]]
    seen: set[str] = set()
    unique = []
    for evidence in ranked:
        if evidence.id not in seen:
            seen.add(evidence.id)
            unique.append(evidence)
    return unique
