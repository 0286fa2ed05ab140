"""The offline extractive answer engine: picks the sentences and steps that answer the question.

It needs no generative model. It copies sentences and numbered steps word for word
from the best knowledge-base section, and lines from the user's screenshot or
voice note, and puts a ``[n]`` marker after each one. When the best section is
too far from the question, it says that the knowledge base does not cover the
question and shows what it read in the user's media instead of guessing.

Example::

    engine = ExtractiveAnswerEngine(embedder=embedder, settings=settings)
    answer = engine.answer(question, retrieved=hits, ocr_lines=lines, transcript=None)
    print(answer.text)          # "Your screenshot shows “…” [1]\\n…"
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.documents import CODE_FENCE, IMAGE_CAPTION_PREFIX
from core.embeddings import TextEmbedder
from core.retrieval import DENSE_CONTEXT_CHARS, tokenize
from core.settings import Settings
from core.types import Answer, Citation, Evidence, OcrLine, RetrievedSection, Transcript

if TYPE_CHECKING:
    from core.image_index import ImageMatch
    from core.vision import LabelScore

ENGINE_NAME = "extractive"
CONFIDENT_SIMILARITY = 0.40
"""Cosine similarity of the best section above which the question counts as covered without a word check."""
GENERIC_QUESTION_WORDS = frozenset("""
mean means meaning fix fixed solve resolve error errors problem issue wrong happen happened happening work
working get got see seen show shows shown help need want tell explain screen screenshot image picture
message say says said thing one ok okay please thanks
""".split())
"""Words that say what kind of answer is wanted, not what it is about."""
UNIT_VECTOR_CACHE_SIZE = 50_000
"""Section sentences whose embeddings are kept in memory, about 80 MB at 384 float32 dimensions."""
MAX_STEPS = 6
"""Numbered steps quoted at most from one section."""
MAX_SCREENSHOT_LINES = 2
"""Screenshot lines cited at most in a covered answer."""
MAX_SHOWN_LINES_UNCOVERED = 5
"""Screenshot lines shown at most when the knowledge base does not cover the question."""
MIN_OCR_CONFIDENCE = 50.0
MIN_UNIT_WORDS = 4
RELATIVE_SCORE_FLOOR = 0.7
"""A unit is quoted only if its score is at least this share of the best unit's score."""
STEP_SCORE_FLOOR = 0.4
"""For a how-to question, steps are quoted if the best step scores at least this share of the best unit."""

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"”’)]))\s+(?=[A-Z0-9\"“(])")
_LIST_ITEM = re.compile(r"^\s*(?:(\d+)[.)]|[-*•])\s+")
_HOW_TO = re.compile(r"\b(how (?:do|can|to|should)|fix|resolve|solve|steps?|what (?:should|can|do) i|get rid|repair|"
                     r"restore|enable|disable|change|set ?up|configure|reset)\b", re.IGNORECASE)


_FACT_QUESTION = re.compile(r"^\s*(who|why|when|where|which|how (?:many|much|soon|long|often|fast))\b", re.IGNORECASE)
"""Questions that ask for a fact, not for a procedure, even when they mention fixing something."""
MAX_IMAGE_MATCHES_CITED = 2
"""Knowledge-base images cited at most for the user's screenshot, all of the best match's kind."""
_WHAT_IMAGE_SHOWS = re.compile(r"\bwhat(?:'s| is| does)? (?:is )?(?:shown|(?:in |on )?(?:this|the|my) "
                               r"(?:image|picture|photo|screenshot)(?! mean))", re.IGNORECASE)
"""Questions about what the image shows, which zero-shot labels help answer."""


@dataclass
class _Unit:
    """A sentence or list item of a section, the smallest piece the engine quotes."""

    text: str
    section_rank: int
    position: int
    step_number: int | None = None
    score: float = 0.0
    answers_part: bool = False
    """True when this unit answers one part of a question with several parts best."""


class ExtractiveAnswerEngine:
    """Writes a short answer from retrieved sections and the user's media, citing every sentence."""

    name = ENGINE_NAME

    def __init__(self, *, embedder: TextEmbedder, settings: Settings) -> None:
        self.embedder = embedder
        self.settings = settings
        self._unit_vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    def answer(self, question: str, *, retrieved: list[RetrievedSection], ocr_lines: list[OcrLine],
               transcript: Transcript | None = None, question_from_transcript: bool = False,
               image_matches: list[ImageMatch] | None = None,
               image_labels: list[tuple[str, LabelScore]] | None = None) -> Answer:
        """Answer ``question`` from the retrieved sections, the screenshot lines and the transcript.

        ``image_matches`` are knowledge-base images that match the user's screenshot; their
        sections must be in ``retrieved``. A match makes the question covered. ``image_labels``
        are (image id, zero-shot label) pairs, cited when the question asks what the image shows.
        """
        citations = _CitationList()
        readable_lines = [line for line in ocr_lines if _is_readable(line)]
        matched = _matched_sections(image_matches or [], retrieved)
        covered = self.is_covered(question, retrieved, readable_lines) or bool(matched)
        parts: list[str] = []

        if question_from_transcript and transcript is not None and transcript.segments:
            parts.append(self._quote_transcript(transcript, citations))

        if matched:
            parts.append(_image_match_text(matched, citations))

        if image_labels and _WHAT_IMAGE_SHOWS.search(question):
            parts.append(_image_label_text(image_labels, citations))

        if not covered:
            parts.append(self._uncovered_text(readable_lines, citations))
            return Answer(text="\n\n".join(part for part in parts if part), citations=citations.items,
                          covered=False, engine=ENGINE_NAME)

        sections = _primary_document_sections(retrieved)
        units = self._rank_units(question, sections, readable_lines)
        chosen = self._choose_units(question, units)
        primary = sections[chosen[0].section_rank] if chosen else sections[0]

        screenshot_lines = _pick_screenshot_lines(question, readable_lines, primary)
        if screenshot_lines:
            quoted = " ".join(f"“{line.text}” {citations.cite(_line_evidence(line), line.text)}"
                              for line in screenshot_lines)
            parts.append(f"Your screenshot shows {quoted}.")

        if transcript is not None and not question_from_transcript:
            spoken = _pick_transcript_segment(transcript, primary)
            if spoken is not None:
                parts.append(f"In your voice note you said “{spoken.text.strip()}” "
                             f"{citations.cite(_segment_evidence(transcript, spoken), spoken.text.strip())}.")

        parts.append(self._compose_section_text(chosen, sections, citations))
        return Answer(text="\n\n".join(part for part in parts if part), citations=citations.items,
                      covered=True, engine=ENGINE_NAME)

    def is_covered(self, question: str, retrieved: list[RetrievedSection], ocr_lines: list[OcrLine]) -> bool:
        """Decide whether the best section is close enough to the question to answer from it.

        Above CONFIDENT_SIMILARITY the embedding alone decides. Between min_dense_similarity
        and it, the best hit's document must also contain a specific word of the question,
        or, for a question made only of generic words ("what does this error mean?"), at
        least two words of the screenshot.
        """
        if not retrieved:
            return False
        best = max((hit.dense_similarity or 0.0) for hit in retrieved)
        if best >= CONFIDENT_SIMILARITY:
            return True
        if best < self.settings.min_dense_similarity:
            return False

        top = retrieved[0].section
        document_tokens = set(tokenize(f"{top.title} {' '.join(top.heading_path)} {top.text}"))
        specific = set(tokenize(question)) - GENERIC_QUESTION_WORDS
        if specific:
            return bool(specific & document_tokens)
        screenshot_tokens = {token for line in ocr_lines for token in tokenize(line.text)}
        return len(screenshot_tokens & document_tokens) >= 2

    def _rank_units(self, question: str, sections: list[RetrievedSection],
                    ocr_lines: list[OcrLine]) -> list[_Unit]:
        """Split the sections into units and score each against the question and the screenshot text.

        The score mixes embedding similarity to the question alone and to the question
        with the screenshot text, word overlap with both, and the section's retrieval rank.
        """
        units: list[_Unit] = []
        for rank, hit in enumerate(sections):
            units.extend(_split_units(hit.section.text, rank, start_position=len(units),
                                      headings=set(hit.section.heading_path)))
        if not units:
            return []

        screenshot_text = " ".join(line.text for line in ocr_lines)
        with_screenshot = f"{question}\n{screenshot_text[:DENSE_CONTEXT_CHARS]}".strip()
        query_vectors = self.embedder.embed([question, with_screenshot])
        unit_vectors = self._embed_units([unit.text for unit in units])
        question_similarity = unit_vectors @ query_vectors[0]
        context_similarity = unit_vectors @ query_vectors[1]
        question_tokens = set(tokenize(question))
        screenshot_tokens = set(tokenize(screenshot_text))

        for index, unit in enumerate(units):
            unit_tokens = set(tokenize(unit.text))
            heading_tokens = set(tokenize(sections[unit.section_rank].section.heading_path[-1]))
            question_overlap = len(unit_tokens & question_tokens) / max(len(question_tokens), 1)
            heading_overlap = len(heading_tokens & question_tokens) / max(len(question_tokens), 1)
            screenshot_overlap = len(unit_tokens & screenshot_tokens) / max(len(unit_tokens), 1)
            rank_weight = 1.0 / (1 + unit.section_rank)
            unit.score = (0.45 * float(question_similarity[index]) + 0.15 * float(context_similarity[index])
                          + 0.3 * question_overlap + 0.2 * heading_overlap + 0.1 * screenshot_overlap
                          + 0.1 * rank_weight)

        self._mark_best_per_part(question, units, unit_vectors)
        return units

    def _embed_units(self, texts: list[str]) -> np.ndarray:
        """Embed section sentences, reusing vectors of sentences seen before: sections rarely change."""
        with self._cache_lock:
            missing = list(dict.fromkeys(text for text in texts if text not in self._unit_vectors))
        if missing:
            fresh = self.embedder.embed(missing)
            with self._cache_lock:
                for text, vector in zip(missing, fresh):
                    self._unit_vectors[text] = vector
                while len(self._unit_vectors) > UNIT_VECTOR_CACHE_SIZE:
                    self._unit_vectors.popitem(last=False)

        with self._cache_lock:
            vectors = []
            for text in texts:
                vector = self._unit_vectors.get(text)
                if vector is None:
                    vector = self.embedder.embed([text])[0]
                else:
                    self._unit_vectors.move_to_end(text)
                vectors.append(vector)
        return np.stack(vectors)

    def _mark_best_per_part(self, question: str, units: list[_Unit], unit_vectors: np.ndarray) -> None:
        """For a question with several parts ("why … and who …"), mark the unit that best answers each part."""
        parts = split_question(question)
        if len(parts) < 2:
            return
        part_vectors = self.embedder.embed(parts)
        for part, part_vector in zip(parts, part_vectors):
            part_tokens = set(tokenize(part))
            similarities = unit_vectors @ part_vector
            scores = [
                0.7 * float(similarity) + 0.3 * len(set(tokenize(unit.text)) & part_tokens) / max(len(part_tokens), 1)
                for unit, similarity in zip(units, similarities)
            ]
            units[int(np.argmax(scores))].answers_part = True

    def _choose_units(self, question: str, units: list[_Unit]) -> list[_Unit]:
        """Pick the units to quote, in document order.

        A how-to question gets the best explanatory unit and the numbered steps of the
        best section that has steps. Any other question gets the best units that score
        at least RELATIVE_SCORE_FLOOR of the best one, up to max_answer_sentences.
        """
        if not units:
            return []

        ranked = sorted(units, key=lambda unit: unit.score, reverse=True)
        best = ranked[0]
        prose = [unit for unit in ranked if unit.step_number is None]
        steps = [unit for unit in units if unit.step_number is not None]

        floor = RELATIVE_SCORE_FLOOR * best.score
        best_step = max(steps, key=lambda unit: unit.score, default=None)
        if (best_step is not None and best_step.score >= STEP_SCORE_FLOOR * best.score
                and _HOW_TO.search(question) and not _FACT_QUESTION.match(_last_sentence(question))):
            chosen = [unit for unit in steps if unit.section_rank == best_step.section_rank][:MAX_STEPS]
            if prose and prose[0].score >= floor:
                chosen.insert(0, prose[0])
        else:
            chosen = [unit for unit in ranked[:self.settings.max_answer_sentences] if unit.score >= floor]
            chosen += [unit for unit in units if unit.answers_part and unit not in chosen]
        return sorted(chosen, key=lambda unit: unit.position)

    @staticmethod
    def _compose_section_text(chosen: list[_Unit], sections: list[RetrievedSection],
                              citations: _CitationList) -> str:
        """Write the chosen units in document order, each followed by its section's marker."""
        cited_text: dict[int, list[str]] = {}
        for unit in chosen:
            cited_text.setdefault(unit.section_rank, []).append(unit.text)

        markers = {
            rank: citations.cite(_section_evidence(sections[rank]), " ".join(texts))
            for rank, texts in cited_text.items()
        }

        numbered = _complete_step_runs(chosen)
        lines: list[str] = []
        for unit in chosen:
            prefix = f"{unit.step_number}. " if unit.step_number is not None and unit.section_rank in numbered else ""
            lines.append(f"{prefix}{unit.text} {markers[unit.section_rank]}")
        return "\n".join(lines)

    @staticmethod
    def _uncovered_text(lines: list[OcrLine], citations: _CitationList) -> str:
        message = "The knowledge base does not cover this question, so Sightline will not guess."
        if not lines:
            return message
        shown = sorted(lines, key=lambda line: (-len(tokenize(line.text)), line.id))[:MAX_SHOWN_LINES_UNCOVERED]
        shown.sort(key=lambda line: (line.box.top, line.box.left))
        quoted = "\n".join(f"- “{line.text}” {citations.cite(_line_evidence(line), line.text)}" for line in shown)
        return f"{message} This is what it read in your screenshot:\n{quoted}"

    @staticmethod
    def _quote_transcript(transcript: Transcript, citations: _CitationList) -> str:
        markers = " ".join(citations.cite(_segment_evidence(transcript, segment), segment.text.strip())
                           for segment in transcript.segments)
        return f"You asked in your voice note: “{transcript.text}” {markers}"


class _CitationList:
    """Numbers evidence in order of first use; citing the same evidence again reuses its number."""

    def __init__(self) -> None:
        self.items: list[Citation] = []
        self._by_id: dict[str, Citation] = {}

    def cite(self, evidence: Evidence, text: str) -> str:
        existing = self._by_id.get(evidence.id)
        if existing is None:
            existing = Citation(n=len(self.items) + 1, evidence=evidence, text=text)
            self.items.append(existing)
            self._by_id[evidence.id] = existing
        return f"[{existing.n}]"


def split_question(question: str) -> list[str]:
    """Split a question into its parts at question marks and at "and" before a question word."""
    parts = re.split(r"\?\s*|\s+and\s+(?=(?:who|why|what|when|where|which|how|can|do|does|is|are)\b)",
                     question, flags=re.IGNORECASE)
    return [part.strip() for part in parts if part and len(tokenize(part)) >= 1]


def _complete_step_runs(chosen: list[_Unit]) -> set[int]:
    """Return the section ranks whose quoted steps run 1, 2, 3… without a gap, so their numbers read right.

    A step quoted alone, or with gaps, is shown without its number, since "4." out of context misleads.
    """
    steps_by_section: dict[int, list[int]] = {}
    for unit in chosen:
        if unit.step_number is not None:
            steps_by_section.setdefault(unit.section_rank, []).append(unit.step_number)
    return {rank for rank, numbers in steps_by_section.items()
            if len(numbers) >= 2 and numbers == list(range(1, len(numbers) + 1))}


def _last_sentence(text: str) -> str:
    sentences = [part for part in re.split(r"(?<=[.!?])\s+", text.strip()) if part]
    return sentences[-1] if sentences else ""


def _primary_document_sections(retrieved: list[RetrievedSection]) -> list[RetrievedSection]:
    """Keep the retrieved sections of the best hit's document, in rank order.

    An answer quoted from one document reads as one explanation, and the other
    sections of that document often hold the steps that its best section lacks.
    """
    best_document = retrieved[0].section.doc_path
    return [hit for hit in retrieved if hit.section.doc_path == best_document]


def _split_units(text: str, section_rank: int, *, start_position: int = 0,
                 headings: set[str] = frozenset()) -> list[_Unit]:
    """Split a section's text into list items and sentences, skipping image captions and fragments.

    Positions count from ``start_position``, so units of consecutive sections keep document order.
    """
    units: list[_Unit] = []
    for paragraph in re.split(r"\n\s*\n", _drop_code_blocks(text)):
        for line in _join_wrapped_lines(paragraph):
            if line.startswith(IMAGE_CAPTION_PREFIX) or line in headings:
                continue
            item = _LIST_ITEM.match(line)
            if item:
                step = int(item.group(1)) if item.group(1) else None
                body = line[item.end():].strip()
                if body:
                    units.append(_Unit(body, section_rank, start_position + len(units), step_number=step))
                continue
            for sentence in _SENTENCE_END.split(line):
                sentence = sentence.strip()
                if len(sentence.split()) >= MIN_UNIT_WORDS and not sentence.endswith(":"):
                    units.append(_Unit(sentence, section_rank, start_position + len(units)))
    _renumber_steps(units)
    return units


def _drop_code_blocks(text: str) -> str:
    """Remove fenced code, which reads badly as an answer sentence, keeping the prose around it."""
    kept: list[str] = []
    in_fence = False
    for line in text.split("\n"):
        if line.strip() == CODE_FENCE:
            in_fence = not in_fence
            kept.append("")
        elif not in_fence:
            kept.append(line)
    return "\n".join(kept)


def _join_wrapped_lines(paragraph: str) -> list[str]:
    """Join lines that continue the previous one; list items and captions start new lines."""
    lines: list[str] = []
    for raw in paragraph.split("\n"):
        line = raw.strip()
        if not line:
            continue
        starts_new = bool(_LIST_ITEM.match(line)) or line.startswith(IMAGE_CAPTION_PREFIX)
        if lines and not starts_new and not lines[-1].startswith(IMAGE_CAPTION_PREFIX):
            lines[-1] = f"{lines[-1]} {line}"
        else:
            lines.append(line)
    return lines


def _renumber_steps(units: list[_Unit]) -> None:
    """Number consecutive steps 1, 2, 3 even when the source writes every step as ``1.``."""
    counter = 0
    previous_position = None
    for unit in units:
        if unit.step_number is None:
            counter = 0
            continue
        if previous_position is not None and unit.position != previous_position + 1:
            counter = 0
        counter += 1
        unit.step_number = counter
        previous_position = unit.position


def _is_readable(line: OcrLine) -> bool:
    return line.confidence >= MIN_OCR_CONFIDENCE and len(tokenize(line.text)) >= 1 and len(line.text) >= 3


def _pick_screenshot_lines(question: str, lines: list[OcrLine], primary: RetrievedSection) -> list[OcrLine]:
    """Pick the screenshot lines that the question or the chosen section talks about."""
    question_tokens = set(tokenize(question))
    section_tokens = set(tokenize(f"{primary.section.title} {primary.section.heading} {primary.section.text}"))
    scored = []
    for line in lines:
        tokens = set(tokenize(line.text))
        if not tokens:
            continue
        question_hits = len(tokens & question_tokens)
        section_share = len(tokens & section_tokens) / len(tokens)
        score = 2.0 * question_hits + section_share * min(len(tokens), 6)
        if question_hits or (section_share >= 0.5 and len(tokens) >= 2):
            scored.append((score, line))
    scored.sort(key=lambda pair: pair[0], reverse=True)
    picked = [line for score, line in scored[:MAX_SCREENSHOT_LINES] if score >= 0.6 * scored[0][0]]
    return sorted(picked, key=lambda line: (line.box.top, line.box.left))


def _pick_transcript_segment(transcript: Transcript, primary: RetrievedSection):
    section_tokens = set(tokenize(primary.section.text))
    best = None
    best_overlap = 1
    for segment in transcript.segments:
        overlap = len(set(tokenize(segment.text)) & section_tokens)
        if overlap > best_overlap:
            best, best_overlap = segment, overlap
    return best


def _line_evidence(line: OcrLine) -> Evidence:
    return Evidence(kind="ocr_line", id=line.id, source=line.id.split("#", 1)[0], text=line.text,
                    score=line.confidence / 100.0, box=line.box)


def _section_evidence(hit: RetrievedSection) -> Evidence:
    section = hit.section
    # The top heading usually repeats the document title, so the heading names only what follows it.
    headings = section.heading_path[1:] if section.heading_path[:1] == [section.title] else section.heading_path
    return Evidence(kind="kb_section", id=section.id, source=section.doc_path, text=section.text,
                    score=float(hit.dense_similarity or 0.0), document_title=section.title,
                    heading=" › ".join(headings) or section.title)


def _matched_sections(matches: list[ImageMatch],
                      retrieved: list[RetrievedSection]) -> list[tuple[ImageMatch, RetrievedSection]]:
    """Pair the best image matches with their retrieved sections: one per section, all of the best kind."""
    by_id = {hit.section.id: hit for hit in retrieved}
    paired: list[tuple[ImageMatch, RetrievedSection]] = []
    for match in matches:
        hit = by_id.get(match.section_id or "")
        if hit is None or any(other.section.id == hit.section.id for _, other in paired):
            continue
        if paired and match.kind != paired[0][0].kind:
            break
        paired.append((match, hit))
        if len(paired) == MAX_IMAGE_MATCHES_CITED:
            break
    return paired


def _image_match_text(matched: list[tuple[ImageMatch, RetrievedSection]], citations: _CitationList) -> str:
    """Write "Your screenshot matches the image in “<title › heading>” [n]" for the matched sections.

    The curly quotes keep a title with a full stop in it ("Huh. This isn't …") one sentence.
    """
    places = []
    for match, hit in matched:
        evidence = _image_evidence(match, hit)
        place = f"“{evidence.document_title} › {evidence.heading}”"
        places.append(f"{place} {citations.cite(evidence, evidence.text)}")
    return f"Your screenshot matches the image in {' and the image in '.join(places)}."


def _image_evidence(match: ImageMatch, hit: RetrievedSection) -> Evidence:
    section_evidence = _section_evidence(hit)
    relation = {"near_duplicate": "looks the same as", "semantic": "looks like",
                "ocr_text": "shows the same text as"}[match.kind]
    return Evidence(kind="kb_image", id=f"{hit.section.id}@{match.image_path}", source=hit.section.doc_path,
                    text=f"The screenshot {relation} the image {match.image_path} in this section.",
                    score=match.score, document_title=section_evidence.document_title,
                    heading=section_evidence.heading, image_path=match.image_path)


def _image_label_text(labels: list[tuple[str, LabelScore]], citations: _CitationList) -> str:
    """Write the zero-shot labels of the images with their probabilities, each cited."""
    quoted = []
    for index, (image_id, label) in enumerate(labels):
        evidence = Evidence(kind="image_label", id=f"{image_id}#label{index + 1}", source=image_id,
                            text=label.label, score=label.score)
        quoted.append(f"{label.label} ({label.score:.0%}) {citations.cite(evidence, label.label)}")
    return f"The vision model labels the image as: {'; '.join(quoted)}."


def _segment_evidence(transcript: Transcript, segment) -> Evidence:
    return Evidence(kind="transcript", id=segment.id, source=transcript.audio_id, text=segment.text.strip(),
                    score=float(np.exp(segment.avg_logprob)) if segment.avg_logprob else 0.0,
                    start_s=segment.start_s, end_s=segment.end_s)
