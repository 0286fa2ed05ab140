"""Typed results that the stages pass to each other.

Every record carries its provenance (source, box, time span, score) so that an
answer can point back at the exact evidence behind each claim.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

EvidenceKind = Literal["ocr_line", "kb_section", "transcript", "kb_image", "image_label"]


class SightlineError(Exception):
    """An error caused by the user's input or set-up, with a message meant for that user."""


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels of the upright image: left and top edge, width and height."""

    left: int
    top: int
    width: int
    height: int

    def as_list(self) -> list[int]:
        return [self.left, self.top, self.width, self.height]


@dataclass
class ImageInput:
    """An image after intake: upright RGB pixels with every metadata field dropped."""

    id: str
    """Content hash of the bytes the user gave, ``sha256:<hex>`` cut to 16 hex digits."""
    image: Image.Image
    source: str
    """The file name the user gave, for messages only: the format comes from the bytes."""
    format: str
    size_bytes: int
    notes: list[str] = field(default_factory=list)
    """Facts the user should be told, such as "only the first frame of the animated GIF was read"."""

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


@dataclass
class OcrWord:
    """One word Tesseract read, with its box and confidence (0 to 100)."""

    text: str
    box: Box
    confidence: float


@dataclass
class OcrLine:
    """One line of text in an image, with its box and mean word confidence (0 to 100)."""

    id: str
    """``<image id>#L<n>``, numbered from 1 in reading order."""
    text: str
    box: Box
    confidence: float
    words: list[OcrWord] = field(default_factory=list)


@dataclass
class OcrResult:
    """The lines read from one image, and how the image was prepared for reading."""

    image_id: str
    lines: list[OcrLine]
    rotation_degrees: int = 0
    """Clockwise rotation applied to make the text upright."""
    inverted: bool = False
    """True when light-on-dark text was inverted before reading."""
    scale: float = 1.0
    """Factor by which the image was enlarged for reading; boxes are in the unscaled image."""

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


@dataclass
class TranscriptSegment:
    """A span of a voice note with its text and time in seconds from the start."""

    id: str
    """``<audio id>#S<n>``, numbered from 1."""
    text: str
    start_s: float
    end_s: float
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass
class Transcript:
    """The speech found in one voice note."""

    audio_id: str
    source: str
    language: str | None
    segments: list[TranscriptSegment]
    duration_s: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(segment.text.strip() for segment in self.segments).strip()


@dataclass
class Section:
    """A section of a knowledge-base document, cut at its headings."""

    id: str
    """``<document path>#<n>``, stable while the document does not change."""
    doc_path: str
    """Path relative to the knowledge-base folder, with forward slashes."""
    title: str
    heading_path: list[str]
    text: str
    start: int
    """Character offset of the section in the document's source text."""
    end: int
    doc_hash: str
    image_refs: list[str] = field(default_factory=list)
    """Image paths or URLs that this section references, as written in the document."""

    @property
    def heading(self) -> str:
        return " › ".join(self.heading_path)


@dataclass
class RetrievedSection:
    """A section found for a query, with its fused score and its rank in each retriever."""

    section: Section
    score: float
    dense_rank: int | None = None
    bm25_rank: int | None = None
    dense_similarity: float | None = None
    """Cosine similarity of the section to the query, from the dense retriever."""


@dataclass
class Evidence:
    """One piece of text an answer may cite, with the provenance a reader needs to check it."""

    kind: EvidenceKind
    id: str
    source: str
    """Image id, document path or audio id that the text comes from."""
    text: str
    score: float = 0.0
    box: Box | None = None
    document_title: str | None = None
    heading: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    image_path: str | None = None
    """For ``kb_image`` evidence: the matched reference image inside the knowledge base."""


@dataclass
class Citation:
    """A numbered pointer from the answer to the evidence that supports it."""

    n: int
    evidence: Evidence
    text: str
    """The exact cited text: a sentence or step of the evidence, or the whole of it."""

    def to_json(self) -> dict[str, Any]:
        evidence = self.evidence
        record: dict[str, Any] = {
            "n": self.n,
            "kind": evidence.kind,
            "source": evidence.source,
            "evidence_id": evidence.id,
            "text": self.text,
            "score": round(evidence.score, 4),
        }
        if evidence.box is not None:
            record["box"] = evidence.box.as_list()
        if evidence.document_title is not None:
            record["document"] = evidence.document_title
        if evidence.heading is not None:
            record["heading"] = evidence.heading
        if evidence.start_s is not None:
            record["start_s"] = round(evidence.start_s, 2)
            record["end_s"] = round(evidence.end_s or evidence.start_s, 2)
        if evidence.image_path is not None:
            record["image_path"] = evidence.image_path
        return record


@dataclass
class SentenceGrounding:
    """One checked sentence of an answer: its citations, support score and verdict."""

    text: str
    """The sentence as shown, without its ``[n]`` markers."""
    citations: list[int]
    """Numbers of the citations that support it, after repair and renumbering."""
    score: float
    """Support from 0 to 1: mean of content-word recall and embedding cosine against the best evidence sentence."""
    supported: bool
    status: str = "verified"
    """``verified``, ``repaired`` (marker rewritten), ``added`` (missing marker added),
    ``unsupported`` (shown with a mark) or ``removed`` (left out of the text)."""
    evidence_text: str | None = None
    """The evidence sentence that supports it best, for highlighting in the evidence view."""

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"text": self.text, "citations": list(self.citations),
                                  "score": round(self.score, 3), "supported": self.supported,
                                  "status": self.status}
        if self.evidence_text is not None:
            record["evidence_text"] = self.evidence_text
        return record


@dataclass
class Answer:
    """The reply to one question: text with ``[n]`` markers and the citations they name."""

    text: str
    citations: list[Citation]
    covered: bool
    """False when the knowledge base did not cover the question and the answer says so."""
    engine: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    ocr: list[OcrResult] = field(default_factory=list)
    transcript: Transcript | None = None
    retrieved: list[RetrievedSection] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    """The images, voice notes and sections in play for this turn."""
    grounding: float | None = None
    """Share of the answer, by content words, that its cited evidence supports (0 to 1); None before the check."""
    sentences: list[SentenceGrounding] = field(default_factory=list)
    """The checked sentences, including removed ones, in answer order."""

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "answer": self.text,
            "covered": self.covered,
            "engine": self.engine,
            "citations": [citation.to_json() for citation in self.citations],
            "timings_ms": {stage: round(ms, 1) for stage, ms in self.timings_ms.items()},
            "warnings": list(self.warnings),
            "context": self.context,
            "grounding": None if self.grounding is None else round(self.grounding, 3),
            "sentences": [sentence.to_json() for sentence in self.sentences],
        }
        if self.ocr:
            record["ocr"] = [
                {
                    "image_id": result.image_id,
                    "rotation_degrees": result.rotation_degrees,
                    "inverted": result.inverted,
                    "scale": result.scale,
                    "lines": [
                        {"id": line.id, "text": line.text, "box": line.box.as_list(),
                         "confidence": round(line.confidence, 1)}
                        for line in result.lines
                    ],
                }
                for result in self.ocr
            ]
        if self.transcript is not None:
            record["transcript"] = {
                "audio_id": self.transcript.audio_id,
                "source": self.transcript.source,
                "language": self.transcript.language,
                "duration_s": round(self.transcript.duration_s, 2),
                "text": self.transcript.text,
                "segments": [dataclasses.asdict(segment) for segment in self.transcript.segments],
            }
        return record
