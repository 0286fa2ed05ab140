"""The engine's front door: intake, OCR, speech, retrieval and answering for one question.

Example::

    engine = Sightline(settings=Settings.load())
    engine.warm_up()
    conversation = Conversation()
    answer = engine.ask("What does this error mean?", conversation=conversation,
                        image_paths=[Path("assets/sync-paused-quota.png")])
    follow_up = engine.ask("Who can fix it?", conversation=conversation)   # same screenshot
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core.answer import ExtractiveAnswerEngine
from core.engines import AnswerRequest, ExtractiveEngineAdapter
from core.embeddings import TextEmbedder
from core.image_index import ImageMatch, ReferenceImageIndex
from core.injection import (find_injections, label_evidence_texts, reveal_hidden_ink, reveal_small_text,
                            unique_findings)
from core.knowledge_base import IndexReport, KnowledgeBase
from core.retrieval import HybridRetriever
from core.routing import TieredAnswerRouter, build_llm_engine
from core.settings import Settings
from core.types import Answer, ImageInput, OcrResult, RetrievedSection, SightlineError, Transcript
from core.verify import CitationVerifier
from core.vision import LabelScore, VisionEncoder, log_missing_vision_model

logger = logging.getLogger(__name__)

OCR_CACHE_SIZE = 64
"""OCR results kept in memory by image content hash, so a follow-up question reads nothing twice."""
NO_SPEECH_MESSAGE = "No speech detected in the voice note"


@dataclass
class ImageInContext:
    """An image of the conversation with what OCR read from it."""

    image: ImageInput
    ocr: OcrResult
    turn: int
    """Index of the turn that brought the image, from 0."""
    matches: list[ImageMatch] = field(default_factory=list)
    """Knowledge-base images that match this image, best first."""
    labels: list[LabelScore] = field(default_factory=list)
    """Zero-shot labels of the image, when a vision model is configured."""
    hidden_text: str = ""
    """Text too faint or too small for the first OCR pass, found by the hidden-text scan. It is never evidence."""


@dataclass
class Turn:
    """One question of the conversation and the answer it got."""

    question: str
    answer: Answer


@dataclass
class Conversation:
    """The media and turns of one chat; a follow-up question keeps the images of earlier turns."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    images: list[ImageInContext] = field(default_factory=list)
    transcripts: list[Transcript] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)

    def active_images(self) -> list[ImageInContext]:
        """Return the images of the latest turn that brought any: the ones a follow-up asks about."""
        if not self.images:
            return []
        latest_turn = max(item.turn for item in self.images)
        return [item for item in self.images if item.turn == latest_turn]


class Sightline:
    """Runs every stage for a question and records how long each took."""

    def __init__(self, *, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.load()
        self.embedder = TextEmbedder(model=self.settings.text_embedding_model)
        self.knowledge_base = KnowledgeBase(settings=self.settings, embedder=self.embedder)
        self.retriever = HybridRetriever(knowledge_base=self.knowledge_base, embedder=self.embedder,
                                         settings=self.settings)
        self.answer_engine = ExtractiveAnswerEngine(embedder=self.embedder, settings=self.settings)
        self.router = TieredAnswerRouter(extractive=ExtractiveEngineAdapter(self.answer_engine),
                                         llm=build_llm_engine(self.settings, embedder=self.embedder),
                                         settings=self.settings)
        self.verifier = CitationVerifier(embedder=self.embedder, settings=self.settings)
        self.vision = VisionEncoder(settings=self.settings)
        self.image_index = ReferenceImageIndex(settings=self.settings, knowledge_base=self.knowledge_base,
                                               encoder=self.vision, ocr=lambda image: self._read_image(image).text)
        self._ocr_stage = None
        self._speech_stage = None
        self._ocr_cache: OrderedDict[str, OcrResult] = OrderedDict()
        self._audit = None
        self._lock = threading.Lock()

    @property
    def ocr_stage(self):
        if self._ocr_stage is None:
            from core.ocr import OcrStage

            self._ocr_stage = OcrStage(settings=self.settings)
        return self._ocr_stage

    @property
    def speech_stage(self):
        if self._speech_stage is None:
            from core.speech import SpeechStage

            self._speech_stage = SpeechStage(settings=self.settings)
        return self._speech_stage

    def warm_up(self, *, speech: bool = False) -> None:
        """Load the text embedding model and open the knowledge base; load Whisper too if ``speech``."""
        self.embedder.warm_up()
        self.knowledge_base.sections()
        log_missing_vision_model(self.settings)
        self.image_index.warm_up()
        if speech:
            self.speech_stage.warm_up()

    def index(self, kb_dir: Path | None = None, *, progress: bool = False) -> IndexReport:
        """Index the knowledge-base folder and its reference images incrementally.

        The reference image report is in ``report.images`` (see ReferenceImageIndex.index).
        NOTE: reference images are always read from ``settings.kb_dir``, even when ``kb_dir`` differs.
        """
        report = self.knowledge_base.index(kb_dir, progress=progress)
        report.images = self.image_index.index(progress=progress)
        return report

    def ask(self, question: str, *, conversation: Conversation | None = None,
            image_paths: list[Path] | tuple[Path, ...] = (), audio_path: Path | None = None,
            thorough: bool = False, on_delta: Callable[[str], None] | None = None,
            on_extractive: Callable[[Answer], None] | None = None) -> Answer:
        """Answer a question about new media and the media already in the conversation.

        With ``thorough`` the configured model answers even when the extractive answer
        is confident (see core.routing). When the model is asked, ``on_extractive``
        first receives the unchecked extractive answer, and ``on_delta`` then receives
        the model's reply as it streams.

        An empty question with a voice note takes the transcript as the question. Raises
        SightlineError (with a message for the user) when an input cannot be used, and then
        leaves ``conversation`` unchanged. Calls for different conversations may run in
        parallel threads; calls for one conversation must not.
        """
        conversation = conversation if conversation is not None else Conversation()
        images_before = len(conversation.images)
        transcripts_before = len(conversation.transcripts)
        try:
            answer = self._ask(question, conversation, image_paths, audio_path, thorough=thorough, on_delta=on_delta,
                               on_extractive=on_extractive)
        except BaseException:
            # A failed turn leaves the conversation as it was, so a bad upload cannot replace
            # the screenshot that follow-up questions are about.
            del conversation.images[images_before:]
            del conversation.transcripts[transcripts_before:]
            raise

        self._record_audit(answer, conversation)
        return answer

    def _ask(self, question: str, conversation: Conversation, image_paths, audio_path: Path | None, *,
             thorough: bool = False, on_delta: Callable[[str], None] | None = None,
             on_extractive: Callable[[Answer], None] | None = None) -> Answer:
        timings: dict[str, float] = {}
        warnings: list[str] = []
        started = time.perf_counter()
        turn_index = len(conversation.turns)

        with _timed(timings, "intake"):
            new_images = [self._load_image(Path(path)) for path in image_paths]
        for image in new_images:
            warnings.extend(f"{image.source}: {note}" for note in image.notes)

        with _timed(timings, "ocr"):
            for image in new_images:
                conversation.images.append(ImageInContext(image=image, ocr=self._read_image(image), turn=turn_index))

        with _timed(timings, "hidden_text_scan"):
            for item in conversation.images[len(conversation.images) - len(new_images):] if new_images else []:
                item.hidden_text = self._read_hidden_text(item)

        new_items = conversation.images[len(conversation.images) - len(new_images):] if new_images else []
        with _timed(timings, "image_match"):
            for item in new_items:
                item.matches = self.image_index.query(item.image, ocr_text=item.ocr.text)
        if self.vision.configured and new_items:
            with _timed(timings, "image_labels"):
                for item in new_items:
                    item.labels = self.vision.zero_shot(item.image)

        transcript = None
        question_from_transcript = False
        if audio_path is not None:
            transcript = self._transcribe(Path(audio_path), timings)
            if transcript.segments:
                conversation.transcripts.append(transcript)
                if not question.strip():
                    question = transcript.text
                    question_from_transcript = True
            else:
                warnings.append(f"{transcript.source}: {NO_SPEECH_MESSAGE}.")

        if not question.strip():
            if transcript is not None and not transcript.segments:
                raise SightlineError(f"{NO_SPEECH_MESSAGE} {transcript.source}, so there is no question to answer. "
                                     "Record again closer to the microphone, or type the question.")
            raise SightlineError("The question is empty. Type a question, or record one as a voice note.")

        active = conversation.active_images()
        ocr_lines = [line for item in active for line in item.ocr.lines]
        context = [item.ocr.text for item in active]
        if transcript is not None and transcript.segments and not question_from_transcript:
            context.append(transcript.text)

        with _timed(timings, "retrieval"):
            retrieved = self.retriever.search(question, context=context)
        image_matches = sorted((match for item in active for match in item.matches),
                               key=lambda match: (match.kind != "near_duplicate", -match.score))
        retrieved = self._put_matched_sections_first(retrieved, image_matches)
        image_labels = [(item.image.id, label) for item in active for label in item.labels]

        with _timed(timings, "answer"):
            request = AnswerRequest(question=question, retrieved=retrieved, ocr_lines=ocr_lines,
                                    transcript=transcript if transcript and transcript.segments else None,
                                    question_from_transcript=question_from_transcript,
                                    images=[item.image for item in active], image_matches=image_matches,
                                    image_labels=image_labels, thorough=thorough)
            answer = self.router.answer(request, on_delta=on_delta, on_extractive=on_extractive)

        # Every answer is checked before it is shown. A model engine checks its own
        # answer (it must, to decide whether to fall back), so that check is not repeated.
        with _timed(timings, "verify"):
            if answer.grounding is None:
                self.verifier.verify_answer(answer, question=question)

        with _timed(timings, "injection_scan"):
            findings = find_injections(label_evidence_texts(
                screenshots=[(item.image.source, item.ocr) for item in active],
                transcript=transcript, sections=[hit.section for hit in retrieved],
                hidden=[(item.image.source, item.hidden_text) for item in active if item.hidden_text]))
        warnings.extend(finding.warning() for finding in unique_findings(findings))

        timings["total"] = (time.perf_counter() - started) * 1000
        answer.timings_ms = timings
        answer.warnings = warnings + answer.warnings
        answer.ocr = [item.ocr for item in active]
        answer.transcript = transcript
        answer.retrieved = retrieved
        answer.context = _describe_context(conversation, active, retrieved, transcript=transcript)
        conversation.turns.append(Turn(question=question, answer=answer))

        logger.info(
            "Answered conversation=%s turn=%d images=%s engine=%s covered=%s citations=%d timings_ms=%s",
            conversation.id, turn_index, [item.image.id for item in active], answer.engine, answer.covered,
            len(answer.citations), {stage: round(ms) for stage, ms in timings.items()},
        )
        return answer

    def _put_matched_sections_first(self, retrieved: list[RetrievedSection],
                                    matches: list[ImageMatch]) -> list[RetrievedSection]:
        """Add the sections behind image matches to the retrieved list, leading it with the best match's document.

        When retrieval already ranks the best match's document first, its order stays,
        because the question picks the section of that document better than the image
        does. Otherwise the matched sections move to the top, in match order. A matched
        section that retrieval did not find joins with the match score as its score.
        """
        by_id = {hit.section.id: hit for hit in retrieved}
        matched: list[RetrievedSection] = []
        for match in matches:
            if match.section_id is None or any(hit.section.id == match.section_id for hit in matched):
                continue
            hit = by_id.get(match.section_id)
            if hit is None:
                try:
                    hit = RetrievedSection(section=self.knowledge_base.get_section(match.section_id), score=match.score)
                except KeyError:
                    logger.warning("Image match %s names section %s, which is no longer indexed; skipping it.",
                                   match.image_path, match.section_id)
                    continue
            matched.append(hit)

        if not matched:
            return retrieved
        if retrieved and retrieved[0].section.doc_path == matched[0].section.doc_path:
            return retrieved + [hit for hit in matched if hit not in retrieved]
        return matched + [hit for hit in retrieved if hit not in matched]

    def forget_image(self, conversation: Conversation, image_id: str) -> bool:
        """Remove an image, its OCR result and the OCR lines kept in earlier answers from a conversation.

        Returns False when the conversation has no such image. The cached OCR result goes
        too, so another conversation with the same image has it read again.
        NOTE: answer texts that already quote the image's lines stay in the turns' answers.
        """
        kept = [item for item in conversation.images if item.image.id != image_id]
        if len(kept) == len(conversation.images):
            return False
        conversation.images[:] = kept
        for turn in conversation.turns:
            turn.answer.ocr = [result for result in turn.answer.ocr if result.image_id != image_id]
        with self._lock:
            self._ocr_cache.pop(image_id, None)
        logger.info("Forgot image conversation=%s image=%s", conversation.id, image_id)
        return True

    @property
    def audit(self):
        """The audit record in the data folder, opened on first use; None when auditing is off."""
        if not self.settings.audit_enabled:
            return None
        if self._audit is None:
            from core.audit import AuditRecord

            self._audit = AuditRecord(settings=self.settings)
        return self._audit

    def _record_audit(self, answer: Answer, conversation: Conversation) -> None:
        """Append the answer to the audit record. An SQLite, file or settings error is logged and does not fail the answer."""
        import sqlite3

        try:
            record = self.audit
            if record is None:
                return
            inputs = [(item.image.id, item.image.size_bytes) for item in conversation.active_images()]
            if answer.transcript is not None:
                inputs.append((answer.transcript.audio_id, None))
            record.add(conversation.turns[-1].question, answer, conversation_id=conversation.id,
                       turn=len(conversation.turns) - 1, inputs=inputs)
        except (sqlite3.Error, OSError, SightlineError) as error:
            logger.error("Could not write the audit record for conversation=%s: %s", conversation.id, error)

    def _load_image(self, path: Path) -> ImageInput:
        from core.intake import load_image

        return load_image(path, source=path.name, settings=self.settings)

    def _read_image(self, image: ImageInput) -> OcrResult:
        """Run OCR once per image content hash; later calls return the cached result."""
        with self._lock:
            cached = self._ocr_cache.get(image.id)
            if cached is not None:
                self._ocr_cache.move_to_end(image.id)
                return cached

        result = self.ocr_stage.run(image)

        with self._lock:
            self._ocr_cache[image.id] = result
            while len(self._ocr_cache) > OCR_CACHE_SIZE:
                self._ocr_cache.popitem(last=False)
        return result

    def _read_hidden_text(self, item: ImageInContext) -> str:
        """Read faint or tiny text that the first OCR pass missed, to warn about instructions hidden in it.

        Each kind of hidden text is revealed on its own sheet, and OCR runs once per
        sheet, only when the scan finds such ink outside the lines already read.
        """
        from core.ocr import SMALL_LINE_HEIGHT_PX

        read_boxes = [line.box for line in item.ocr.lines]
        sheets = {
            "faint": reveal_hidden_ink(item.image.image, read_boxes),
            "small": reveal_small_text(item.image.image, read_boxes, max_height_px=SMALL_LINE_HEIGHT_PX),
        }
        texts = []
        for kind, sheet in sheets.items():
            if sheet is None:
                continue
            hidden = ImageInput(id=f"{item.image.id}#{kind}", image=sheet.convert("RGB"), source=item.image.source,
                                format="PNG", size_bytes=0)
            texts.append(self.ocr_stage.run(hidden).text)
        return "\n".join(text for text in texts if text)

    def _transcribe(self, path: Path, timings: dict[str, float]) -> Transcript:
        from core.audio import load_audio

        with _timed(timings, "audio_intake"):
            audio = load_audio(path, source=path.name, settings=self.settings)
        with _timed(timings, "speech"):
            return self.speech_stage.run(audio)


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    """Add the time spent in the block, in milliseconds, to ``timings[stage]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - started) * 1000


def _describe_context(conversation: Conversation, active: list[ImageInContext], retrieved, *,
                      transcript: Transcript | None = None) -> dict:
    """List the media and sections in play for a turn, for the JSON output and the UI.

    A voice note is active only in the turn that brought it, ``transcript``.
    """
    active_ids = {item.image.id for item in active}
    transcript_turns = {turn.answer.transcript.audio_id: index for index, turn in enumerate(conversation.turns)
                        if turn.answer.transcript is not None}
    return {
        "conversation_id": conversation.id,
        "turn": len(conversation.turns),
        "images": [
            {"id": item.image.id, "source": item.image.source, "from_turn": item.turn,
             "active": item.image.id in active_ids, "lines": len(item.ocr.lines)}
            for item in conversation.images
        ],
        "transcripts": [
            {"audio_id": item.audio_id, "source": item.source, "language": item.language,
             "from_turn": transcript_turns.get(item.audio_id, len(conversation.turns)),
             "active": transcript is not None and item.audio_id == transcript.audio_id,
             "duration_s": round(item.duration_s, 2)}
            for item in conversation.transcripts
        ],
        "sections": [hit.section.id for hit in retrieved],
        "section_places": [
            {"id": hit.section.id, "document": hit.section.doc_path, "heading": hit.section.heading}
            for hit in retrieved
        ],
    }
