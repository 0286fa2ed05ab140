"""The Sightline chat web app, built on Gradio 6.

A person attaches screenshots or a voice note in the chat input, asks a question,
and gets an answer whose ``[n]`` markers point at a numbered source list. The
screenshot in context is shown beside the chat with the cited lines boxed.

Each browser session keeps its own ``Conversation`` in ``gr.State``, so a follow-up
question without a new image asks about the images of the latest turn that brought
any. Engine calls run through the Gradio queue one at a time.

Example::

    from app.ui import serve
    serve(Settings.load())        # http://127.0.0.1:7860
"""

from __future__ import annotations

import os

# Gradio reads this variable to decide on telemetry and on the version check that calls
# api.gradio.app. It is set before the import so that no Gradio code runs without it.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import atexit
import html
import logging
import queue
import re
import shutil
import string
import tempfile
import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from starlette.middleware import Middleware

from app.file_guard import FileGuard, FileGuardMiddleware, browser_of
from core.access import BUSY_MESSAGE, RateLimiter, check_bind, verify_password
from core.media_store import MediaStore
from core.pipeline import Conversation, ImageInContext, Sightline
from core.settings import Settings
from core.types import Answer, Citation, SightlineError
from core.verify import UNSUPPORTED_MARK

logger = logging.getLogger(__name__)

NO_VISION_NOTE = "No vision model configured: images are read by OCR only."
EMPTY_CONTEXT_TEXT = "No screenshot in context. Attach one to ask about it."
FORGOTTEN_IMAGE_TEXT = "(image forgotten)"
THOROUGH_LABEL = "Thorough answer (uses the configured model)"
INPUT_PLACEHOLDER = "Ask about a screenshot: upload, paste or drop it here, or record a voice note"

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".webm"})
"""Attachments with these suffixes go to audio intake, and every other attachment to image intake."""

EXCERPT_MAX_CHARS = 160
BOX_LABEL_MAX_CHARS = 40
TIMING_STAGES = (
    ("intake", "intake"),
    ("ocr", "OCR"),
    ("audio_intake", "audio intake"),
    ("speech", "speech"),
    ("retrieval", "retrieval"),
    ("answer", "answer"),
    ("verify", "citation check"),
    ("total", "total"),
)
"""Keys of ``Answer.timings_ms`` in pipeline order, with the name shown for each."""

# NOTE: the session limits below are estimates, not measurements. A conversation keeps its
# decoded images in memory (about 3 MB for a 1280x800 screenshot).
SESSION_STATE_TTL_S = 4 * 3600
MAX_SESSIONS = 500
QUEUE_MAX_SIZE = 64
CACHE_CLEANUP_INTERVAL_S = 3600
CACHE_MAX_AGE_S = 24 * 3600

CSS = """
#sl-vision-note { border-left: 4px solid var(--color-accent); padding-left: 0.75em; }
#sl-context { font-size: var(--text-sm); }
#sl-evidence mark { background: #ffe58a; color: inherit; }
#sl-evidence .sl-evidence-text { white-space: pre-wrap; max-height: 22em; overflow-y: auto; }
"""

EVIDENCE_BOX_COLOR = (230, 40, 40)
EVIDENCE_BOX_WIDTH_PX = 4
EVIDENCE_IMAGE_HEIGHT_PX = 480
"""Height of each image in the side-by-side view of a reference image match."""
NO_EVIDENCE_TEXT = "Click a source of the last answer to see its evidence."
EXTRACTIVE_PREVIEW_NOTE = "_Quick answer from the help center. Asking the configured model for a thorough answer…_"
STREAMING_NOTE = "_Model answer, checking citations…_"


@dataclass
class Submission:
    """A question sent from the chat input and not yet answered."""

    text: str
    files: list[str]
    first_message_index: int
    """Index in the chat history of the user message that shows this submission."""
    owner: str = ""
    """Gradio session hash under which the media store keeps this submission's files."""


@dataclass
class SessionState:
    """Everything one browser session keeps: its conversation, chat history and pending question."""

    conversation: Conversation = field(default_factory=Conversation)
    messages: list[dict[str, Any]] = field(default_factory=list)
    pending: Submission | None = None


# Formatting. Every text that comes from a user, an image, a recording or a document goes
# through escape_markdown, so that it renders as literal text and never as a link or HTML.


def escape_markdown(text: str) -> str:
    """Escape text so that Markdown and HTML render it literally.

    ``&``, ``<`` and ``>`` become HTML entities, and every other ASCII punctuation
    character gets a backslash, which CommonMark allows for all of them. This stops
    links, images, emphasis, lists, headings, tables and bare-URL autolinks.

    NOTE: Gradio 6.31 copies the raw message into each bubble's aria-label, so
    screen readers may read these backslashes aloud.
    """
    escaped = []
    for character in text:
        if character in "&<>":
            escaped.append(html.escape(character))
        elif character in string.punctuation:
            escaped.append("\\" + character)
        else:
            escaped.append(character)
    return "".join(escaped)


def shorten(text: str, *, max_chars: int) -> str:
    """Collapse whitespace and cut the text at a word boundary to at most ``max_chars`` characters."""
    collapsed = " ".join(text.split())
    if len(collapsed) <= max_chars:
        return collapsed
    cut = collapsed[: max_chars - 1].rsplit(" ", 1)[0]
    return cut + "…"


def describe_citation(citation: Citation) -> str:
    """Render one source-list entry as Markdown: where the cited text is, then the text."""
    evidence = citation.evidence
    excerpt = "“" + escape_markdown(shorten(citation.text, max_chars=EXCERPT_MAX_CHARS)) + "”"

    if evidence.kind == "ocr_line":
        return f"Screenshot line: {excerpt}"
    if evidence.kind == "transcript":
        start_s = evidence.start_s or 0.0
        end_s = evidence.end_s if evidence.end_s is not None else start_s
        return f"Voice note {start_s:.1f}–{end_s:.1f} s: {excerpt}"
    if evidence.kind == "kb_section":
        place = escape_markdown(_document_place(evidence.document_title, evidence.heading))
        return f"**{place}** ({escape_markdown(evidence.source)}): {excerpt}"
    if evidence.kind == "kb_image":
        place = escape_markdown(evidence.document_title or evidence.source)
        return f"Reference image in **{place}** ({escape_markdown(evidence.image_path or evidence.source)})"
    return f"{escape_markdown(evidence.kind)}: {excerpt}"


def _document_place(title: str | None, heading: str | None) -> str:
    """Return "title › heading" without repeating the title, which heading paths usually start with."""
    title = title or ""
    heading = heading or ""
    if not heading or heading == title:
        return title or heading
    if heading.startswith(title + " › "):
        return heading
    return f"{title} › {heading}" if title else heading


def describe_timings(timings_ms: dict[str, float]) -> str:
    """Render the per-stage latency as one line, leaving out stages that did not run."""
    parts = [f"{name} {timings_ms[key]:,.0f} ms" for key, name in TIMING_STAGES if key in timings_ms]
    return "Latency: " + " · ".join(parts)


def describe_context(context: dict[str, Any]) -> str:
    """Render which images the answer used, from ``Answer.context``."""
    active = [image for image in context.get("images", []) if image.get("active")]
    if not active:
        return "No screenshot in context."
    names = ", ".join(
        f"{escape_markdown(image['source'])} (from question {image['from_turn'] + 1}, {image['lines']} lines read)"
        for image in active
    )
    return f"Screenshot in context: {names}"


def format_answer(answer: Answer) -> str:
    """Render an answer as Markdown: the text, the numbered sources, the context, latency and warnings."""
    blocks = [render_answer_text(answer.text)]

    if answer.citations:
        sources = [f"\\[{citation.n}\\] {describe_citation(citation)}" for citation in answer.citations]
        blocks.append("**Sources**\n" + "\n".join(sources))

    details = [describe_grounding(answer), describe_context(answer.context), describe_timings(answer.timings_ms)]
    details.extend(f"Warning: {escape_markdown(warning)}" for warning in answer.warnings)
    blocks.append("\n".join(details))
    return "\n\n".join(blocks)


def render_answer_text(text: str) -> str:
    """Escape the answer text and show each unsupported mark in bold, so a reader cannot miss it."""
    parts = text.split(UNSUPPORTED_MARK)
    marked = f"**{escape_markdown(UNSUPPORTED_MARK)}**"
    return marked.join(escape_markdown(part) for part in parts)


def describe_grounding(answer: Answer) -> str:
    """Render the grounding badge: the answer's score and how many sentences failed the citation check."""
    if answer.grounding is None:
        return "Grounding: not checked"
    unsupported = sum(sentence.status == "unsupported" for sentence in answer.sentences)
    removed = sum(sentence.status == "removed" for sentence in answer.sentences)
    badge = f"**Grounding {answer.grounding:.2f}**"
    if unsupported:
        badge += f" · {unsupported} unsupported sentence{'s' if unsupported != 1 else ''} marked"
    if removed:
        badge += f" · {removed} uncited sentence{'s' if removed != 1 else ''} removed"
    return badge


def format_progress(extractive: Answer | None, streamed: str) -> str:
    """Render the answer in progress: the model's reply so far, or else the unchecked extractive answer.

    Both are untrusted text, so they are escaped like a final answer.
    """
    if streamed:
        return f"{escape_markdown(streamed)}\n\n{STREAMING_NOTE}"
    if extractive is not None:
        return f"{render_answer_text(extractive.text)}\n\n{EXTRACTIVE_PREVIEW_NOTE}"
    return STREAMING_NOTE


def format_pending_question(submission: Submission) -> str:
    """Render the user's message while the engine works: the question and the attached file names."""
    lines = [escape_markdown(submission.text)] if submission.text.strip() else []
    if submission.files:
        names = ", ".join(escape_markdown(Path(path).name) for path in submission.files)
        lines.append(f"Attached: {names}")
    return "\n".join(lines) or "(empty question)"


def format_transcript_note(answer: Answer) -> str | None:
    """Render the voice note's transcript, marked as transcribed and with its language, or None."""
    transcript = answer.transcript
    if transcript is None:
        return None
    language = escape_markdown(transcript.language or "unknown")
    if not transcript.segments:
        return f"Voice note {escape_markdown(transcript.source)}: no speech detected."
    return f"Transcribed voice note (language: {language}): “{escape_markdown(transcript.text)}”"


def format_error(error: Exception, *, error_id: str) -> str:
    """Render an error for the chat, with what to do next."""
    if isinstance(error, SightlineError):
        return (f"**Could not answer:** {escape_markdown(str(error))}\n\n"
                "Your question is back in the text box. Fix what the message names, then send it again.")
    return (f"**Something went wrong on the server** (error id {error_id}). Your question is back "
            "in the text box: send it again, and report the error id if it keeps failing.")


# The screenshot panel.


def annotate_screenshot(images: list[ImageInContext], answer: Answer | None) -> tuple[Any, str] | None:
    """Pick the active image with the most cited lines and pair it with their boxes and labels.

    Returns the AnnotatedImage value and a panel label, or None when no image is in
    context. Boxes are (x1, y1, x2, y2) in the upright pixels that intake produced,
    which is also what OCR boxes are measured in.
    """
    if not images:
        return None

    cited_by_image: dict[str, list[tuple[tuple[int, int, int, int], str]]] = {item.image.id: [] for item in images}
    for citation in answer.citations if answer is not None else []:
        evidence = citation.evidence
        if evidence.kind != "ocr_line" or evidence.box is None or evidence.source not in cited_by_image:
            continue
        box = evidence.box
        corners = (box.left, box.top, box.left + box.width, box.top + box.height)
        label = f"[{citation.n}] {shorten(citation.text, max_chars=BOX_LABEL_MAX_CHARS)}"
        cited_by_image[evidence.source].append((corners, label))

    # NOTE: one panel shows one image. With several active images, the others are
    # listed in the context text but not drawn.
    chosen = max(images, key=lambda item: len(cited_by_image[item.image.id]))
    boxes = cited_by_image[chosen.image.id]
    count = f"{len(boxes)} cited line{'s' if len(boxes) != 1 else ''}" if boxes else "no line cited in this answer"
    return (chosen.image.image, boxes), f"{chosen.image.source}: {count}"


def describe_conversation(conversation: Conversation) -> str:
    """Render the panel text that lists the images a follow-up question will use.

    Voice notes are left out because the engine uses a voice note only in the turn that brought it.
    """
    active = conversation.active_images()
    if not active:
        return EMPTY_CONTEXT_TEXT

    lines = [
        f"**Screenshot in context:** {escape_markdown(item.image.source)} "
        f"(from question {item.turn + 1}, {len(item.ocr.lines)} lines read)"
        for item in active
    ]
    lines.append("Follow-up questions without a new image ask about it.")
    lines.extend(_describe_turn_media(conversation))
    return "\n\n".join(lines)


def _describe_turn_media(conversation: Conversation) -> list[str]:
    """List every image and voice note of the conversation with its question number and whether it is in use.

    The sections of the last answer are listed too, so a reader sees all the context of the latest turn.
    """
    active_ids = {item.image.id for item in conversation.active_images()}
    lines = []
    if conversation.images:
        images = ", ".join(
            f"{escape_markdown(item.image.source)} (question {item.turn + 1}, "
            f"{'in use' if item.image.id in active_ids else 'not in use'})"
            for item in conversation.images
        )
        lines.append(f"All images: {images}")
    last = conversation.turns[-1].answer if conversation.turns else None
    voice_notes = last.context.get("transcripts", []) if last is not None else []
    if voice_notes:
        notes = ", ".join(
            f"{escape_markdown(note['source'])} (question {note.get('from_turn', 0) + 1}, "
            f"{'in use' if note.get('active') else 'not in use'})"
            for note in voice_notes
        )
        lines.append(f"Voice notes: {notes}")
    places = last.context.get("section_places", []) if last is not None else []
    if places:
        sections = ", ".join(escape_markdown(place["heading"] or place["document"]) for place in places)
        lines.append(f"Sections in play for question {len(conversation.turns)}: {sections}")
    return lines


# The evidence panel: a click on a source shows the evidence behind it.


def citation_choices(answer: Answer | None) -> list[tuple[str, str]]:
    """Return one (label, value) radio choice per citation of ``answer``; the value is the citation number."""
    if answer is None:
        return []
    return [(f"[{citation.n}] {_plain_place(citation)}", str(citation.n)) for citation in answer.citations]


def _plain_place(citation: Citation) -> str:
    evidence = citation.evidence
    if evidence.kind == "ocr_line":
        return f"Screenshot line: {shorten(citation.text, max_chars=BOX_LABEL_MAX_CHARS)}"
    if evidence.kind == "transcript":
        return f"Voice note {(evidence.start_s or 0.0):.1f}–{(evidence.end_s or evidence.start_s or 0.0):.1f} s"
    if evidence.kind == "kb_image":
        return f"Reference image: {evidence.image_path or evidence.source}"
    if evidence.kind == "kb_section":
        return _document_place(evidence.document_title, evidence.heading)
    return f"{evidence.kind}: {shorten(citation.text, max_chars=BOX_LABEL_MAX_CHARS)}"


def render_evidence(citation: Citation, answer: Answer, conversation: Conversation,
                    kb_dir: Path) -> tuple[Image.Image | None, str]:
    """Return the image and the HTML that show the evidence behind one citation.

    A screenshot line gets its image with only that line's box drawn, a section its
    text with the cited sentences marked, a voice-note segment its time span and text,
    and a reference image the user's image beside the matched one. Every untrusted
    text is HTML-escaped.
    """
    evidence = citation.evidence
    title = f"<p><strong>[{citation.n}]</strong> "
    if evidence.kind == "ocr_line":
        item = _image_by_id(conversation, evidence.source)
        image = _draw_box(item.image.image, evidence.box) if item is not None and evidence.box is not None else None
        where = html.escape(item.image.source) if item is not None else "an image no longer in the conversation"
        return image, (f"{title}Screenshot line {html.escape(evidence.id.rsplit('#', 1)[-1])} of {where}:</p>"
                       f"<blockquote>{html.escape(evidence.text)}</blockquote>")

    if evidence.kind == "transcript":
        start_s = evidence.start_s or 0.0
        end_s = evidence.end_s if evidence.end_s is not None else start_s
        return None, (f"{title}Voice note {html.escape(evidence.source)}, {start_s:.1f}–{end_s:.1f} s:</p>"
                      f"<blockquote>{html.escape(evidence.text)}</blockquote>")

    if evidence.kind == "kb_image":
        active = conversation.active_images()
        reference = _open_reference_image(kb_dir, evidence.image_path)
        image = _side_by_side(active[0].image.image if active else None, reference)
        place = html.escape(_document_place(evidence.document_title, evidence.heading))
        return image, (f"{title}Your screenshot (left) and the matched image "
                       f"{html.escape(evidence.image_path or '')} in <em>{place}</em> "
                       f"({html.escape(evidence.source)}) on the right.</p>")

    if evidence.kind == "kb_section":
        cited = [sentence.evidence_text for sentence in answer.sentences
                 if citation.n in sentence.citations and sentence.evidence_text]
        place = html.escape(_document_place(evidence.document_title, evidence.heading))
        return None, (f"{title}<em>{place}</em> in {html.escape(evidence.source)}</p>"
                      f"<div class='sl-evidence-text'>{highlight(evidence.text, cited)}</div>")

    return None, f"{title}{html.escape(evidence.kind)}:</p><blockquote>{html.escape(citation.text)}</blockquote>"


def highlight(text: str, passages: list[str]) -> str:
    """Return ``text`` HTML-escaped, with each passage wrapped in <mark> where it occurs, line breaks allowed."""
    spans = []
    for passage in dict.fromkeys(passages):
        words = passage.split()
        if not words:
            continue
        pattern = re.compile(r"\s+".join(re.escape(word) for word in words))
        spans.extend((match.start(), match.end()) for match in pattern.finditer(text))

    parts, position = [], 0
    for start, end in sorted(spans):
        if start < position:
            continue
        parts.append(html.escape(text[position:start]))
        parts.append(f"<mark>{html.escape(text[start:end])}</mark>")
        position = end
    parts.append(html.escape(text[position:]))
    return "".join(parts)


def _image_by_id(conversation: Conversation, image_id: str) -> ImageInContext | None:
    return next((item for item in conversation.images if item.image.id == image_id), None)


def _draw_box(image: Image.Image, box) -> Image.Image:
    """Return a copy of ``image`` with one box outlined."""
    copy = image.convert("RGB")
    draw = ImageDraw.Draw(copy)
    draw.rectangle((box.left - 2, box.top - 2, box.left + box.width + 2, box.top + box.height + 2),
                   outline=EVIDENCE_BOX_COLOR, width=EVIDENCE_BOX_WIDTH_PX)
    return copy


def _open_reference_image(kb_dir: Path, image_path: str | None) -> Image.Image | None:
    """Open a reference image by its path inside the knowledge base, or return None if it is missing or outside."""
    if not image_path:
        return None
    root = kb_dir.resolve()
    path = (root / image_path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        logger.warning("Reference image %s not found in %s", image_path, root)
        return None
    with Image.open(path) as opened:
        return opened.convert("RGB")


def _side_by_side(left: Image.Image | None, right: Image.Image | None) -> Image.Image | None:
    """Return both images scaled to one height and placed side by side, or the one that exists."""
    images = [image for image in (left, right) if image is not None]
    if not images:
        return None
    scaled = [image.resize((max(1, image.width * EVIDENCE_IMAGE_HEIGHT_PX // image.height), EVIDENCE_IMAGE_HEIGHT_PX))
              for image in images]
    gap_px = 16
    canvas = Image.new("RGB", (sum(image.width for image in scaled) + gap_px * (len(scaled) - 1),
                               EVIDENCE_IMAGE_HEIGHT_PX), "white")
    offset = 0
    for image in scaled:
        canvas.paste(image.convert("RGB"), (offset, 0))
        offset += image.width + gap_px
    return canvas


# Event handlers.


class ChatHandlers:
    """The event handlers of one app. Per-session data arrives and leaves through SessionState."""

    def __init__(self, *, engine: Sightline, image_dir: Path, media_store: MediaStore | None = None,
                 rate_limiter: RateLimiter | None = None) -> None:
        self.engine = engine
        self.image_dir = image_dir
        self.media_store = media_store
        self.rate_limiter = rate_limiter
        self.file_guard = FileGuard(media_store=media_store) if media_store is not None else None

    def show_question(self, submitted: dict[str, Any] | None, session: SessionState | None):
        """Add the user's message to the chat at once and lock the input until the answer comes."""
        session = session if session is not None else SessionState()
        submitted = submitted or {}
        submission = Submission(text=submitted.get("text") or "", files=list(submitted.get("files") or []),
                                first_message_index=len(session.messages))
        session.pending = submission
        session.messages.append({"role": "user", "content": format_pending_question(submission)})
        return session.messages, gr.MultimodalTextbox(value=None, interactive=False), session

    def answer_question(self, session: SessionState | None, request: gr.Request, thorough: bool = False):
        """Run the engine on the pending question and stream the answer into the chat, or show the error.

        ``thorough`` comes from the "Thorough answer" checkbox, shown only when a model is configured.
        When the model is asked, the chat first shows the extractive answer, then the
        model's reply as it streams, marked as being checked. The last update replaces
        it with the checked answer, or with the extractive answer and a note why.
        Updates before the last change only the chat.
        """
        session = session if session is not None else SessionState()
        submission = session.pending
        session.pending = None
        if submission is None:
            yield self._outputs(session, textbox_value=None, answer=None)
            return

        conversation = session.conversation
        images_before = len(conversation.images)
        transcripts_before = len(conversation.transcripts)
        session_id = request.session_hash if request is not None else None
        logger.info("Question received session=%s conversation=%s attachments=%d",
                    session_id, conversation.id, len(submission.files))

        if self.rate_limiter is not None and not self.rate_limiter.allow(session_id or "anonymous"):
            yield self._show_error(session, submission, SightlineError(BUSY_MESSAGE), session_id=session_id,
                                   images_accepted=True)
            return
        if self.file_guard is not None and session_id:
            self.file_guard.bind_session(session_id, browser_of(request))
        adopted = self._adopt_uploads(session_id, submission)

        try:
            image_paths, audio_path = split_attachments(submission.files)
            answer = yield from self._ask_in_background(session, submission.text, thorough=bool(thorough),
                                                        image_paths=image_paths, audio_path=audio_path)
        except Exception as error:
            accepted_images = len(conversation.images) - images_before
            self._settle_uploads(submission, adopted, conversation.images[images_before:],
                                 keep_originals=accepted_images == len(image_attachments(submission)))
            self._roll_back(conversation, images_before=images_before, transcripts_before=transcripts_before)
            yield self._show_error(session, submission, error, session_id=session_id,
                                   images_accepted=accepted_images == len(image_attachments(submission)))
            return

        new_images = conversation.images[images_before:]
        self._settle_uploads(submission, adopted, new_images, keep_originals=False)
        session.messages[submission.first_message_index:] = [
            self._user_message(submission, new_images, answer, audio_path=audio_path),
            {"role": "assistant", "content": format_answer(answer)},
        ]
        yield self._outputs(session, textbox_value=None, answer=answer)

    def _ask_in_background(self, session: SessionState, question: str, *, thorough: bool,
                           image_paths: list[Path], audio_path: Path | None) -> Generator[tuple, None, Answer]:
        """Run Sightline.ask in a worker thread, yield outputs that show the answer in progress, return the answer.

        Re-raises the exception that Sightline.ask raised. Events that arrive
        together are shown in one update, so a fast model does not flood the page.
        NOTE: when the browser leaves mid-answer, the worker still finishes the turn.
        """
        conversation = session.conversation
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["answer"] = self.engine.ask(
                    question, conversation=conversation, thorough=thorough, image_paths=image_paths,
                    audio_path=audio_path, on_delta=lambda text: events.put(("delta", text)),
                    on_extractive=lambda answer: events.put(("extractive", answer)))
            except Exception as error:
                outcome["error"] = error
            finally:
                events.put(("done", None))

        worker = threading.Thread(target=work, name=f"answer-{conversation.id}", daemon=True)
        worker.start()

        extractive: Answer | None = None
        streamed: list[str] = []
        done = False
        while not done:
            batch = [events.get()]
            while not events.empty():
                batch.append(events.get_nowait())
            for kind, value in batch:
                if kind == "done":
                    done = True
                elif kind == "extractive":
                    extractive = value
                else:
                    streamed.append(value)
            if not done:
                yield self._progress_outputs(session, format_progress(extractive, "".join(streamed)))

        worker.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["answer"]

    def list_citations(self, session: SessionState | None):
        """Offer the citations of the last answer in the source picker and clear the evidence panel."""
        conversation = session.conversation if session is not None else None
        answer = conversation.turns[-1].answer if conversation is not None and conversation.turns else None
        choices = citation_choices(answer)
        return (gr.Radio(choices=choices, value=None, visible=bool(choices)),
                gr.Image(value=None, visible=False), NO_EVIDENCE_TEXT if choices else "")

    def show_evidence(self, choice: str | None, session: SessionState | None):
        """Show the evidence behind the picked citation of the last answer."""
        conversation = session.conversation if session is not None else None
        if not choice or conversation is None or not conversation.turns:
            return gr.Image(value=None, visible=False), NO_EVIDENCE_TEXT
        answer = conversation.turns[-1].answer
        citation = next((item for item in answer.citations if str(item.n) == str(choice)), None)
        if citation is None:
            logger.warning("Citation %s not found in the last answer of conversation=%s", choice, conversation.id)
            return gr.Image(value=None, visible=False), NO_EVIDENCE_TEXT
        image, text = render_evidence(citation, answer, conversation, self.engine.settings.kb_dir)
        return gr.Image(value=image, visible=image is not None), text

    def reset(self, request: gr.Request):
        """Start a new conversation: forget the session's images, voice notes and chat, and delete their files."""
        self.end_session(request)
        session = SessionState()
        return self._outputs(session, textbox_value=None, answer=None)

    def forget_images(self, session: SessionState | None, request: gr.Request):
        """Forget the images in context: drop them from the conversation and chat and delete their files."""
        session = session if session is not None else SessionState()
        conversation = session.conversation
        owner = request.session_hash if request is not None else ""
        forgotten = [item.image.id for item in conversation.active_images()]

        removed_paths: set[str] = set()
        for image_id in forgotten:
            self.engine.forget_image(conversation, image_id)
            if self.media_store is not None:
                removed_paths.add(str(self.media_store.session_dir(owner) / (image_id.replace("sha256:", "") + ".png")))
                self.media_store.forget(owner, image_id)
        _replace_images_in_messages(session.messages, removed_paths)
        logger.info("Forgot images session=%s conversation=%s images=%d", owner, conversation.id, len(forgotten))

        screenshot = self._screenshot_panel(conversation, None)
        return session.messages, gr.skip(), screenshot, describe_conversation(conversation), session

    def end_session(self, request: gr.Request) -> None:
        """Delete every file of a browser session; Gradio calls this when the tab closes."""
        owner = request.session_hash if request is not None else None
        if owner is None:
            return
        if self.media_store is not None:
            self.media_store.end_session(owner)
        if self.rate_limiter is not None:
            self.rate_limiter.forget(owner)

    def _adopt_uploads(self, session_id: str | None, submission: Submission) -> dict[str, str]:
        """Move the submission's uploads out of Gradio's cache into the private store; map new path to media id.

        The submission's file list is changed to the private paths.
        """
        submission.owner = session_id or "anonymous"
        if self.media_store is None:
            return {}
        adopted: dict[str, str] = {}
        private_files = []
        for file in submission.files:
            try:
                media_id, private_path = self.media_store.adopt_upload(submission.owner, Path(file))
            except OSError as error:
                logger.error("Could not move upload session=%s into the media store: %s", submission.owner, error)
                private_files.append(file)
                continue
            adopted[str(private_path)] = media_id
            private_files.append(str(private_path))
        submission.files = private_files
        return adopted

    def _settle_uploads(self, submission: Submission, adopted: dict[str, str], new_images: list[ImageInContext],
                        *, keep_originals: bool) -> None:
        """Key stored images by content id, and delete the original image bytes unless they go back to the input.

        Voice notes stay, because the chat plays them, until forget, session end or retention.
        """
        if self.media_store is None:
            return
        image_files = [file for file in image_attachments(submission) if file in adopted]
        for file, item in zip(image_files, new_images):
            self.media_store.rename(submission.owner, adopted[file], item.image.id)
            adopted[file] = item.image.id
        for file, media_id in adopted.items():
            if file in image_files and not keep_originals:
                self.media_store.discard_original(submission.owner, media_id)
            else:
                self.media_store.add_derived(submission.owner, media_id, Path(file))

    def _show_error(self, session: SessionState, submission: Submission, error: Exception, *,
                    session_id: str | None, images_accepted: bool):
        """Log the error, show it in the chat and put the question back in the chat input."""
        error_id = uuid.uuid4().hex[:8]
        if isinstance(error, SightlineError):
            logger.warning("Input rejected session=%s conversation=%s error_id=%s: %s: %s",
                           session_id, session.conversation.id, error_id, type(error).__name__, error)
        else:
            logger.exception("Answering failed session=%s conversation=%s error_id=%s",
                             session_id, session.conversation.id, error_id)

        # Attachments that intake accepted go back with the text, so a question that was
        # only missing its text keeps its screenshot. A rejected file and a voice note
        # without speech stay out: the person has to replace them.
        restored_files = image_attachments(submission) if images_accepted else []
        session.messages.append({"role": "assistant", "content": format_error(error, error_id=error_id)})
        return self._outputs(session, textbox_value={"text": submission.text, "files": restored_files},
                             answer=None, keep_screenshot=True)

    @staticmethod
    def _roll_back(conversation: Conversation, *, images_before: int, transcripts_before: int) -> None:
        """Drop the media that a failed turn added, so the conversation looks as if it never ran.

        NOTE: Sightline.ask keeps the images it read before it raises (an empty question
        with a screenshot, or a voice note that fails after the images). The UI undoes that here.
        """
        del conversation.images[images_before:]
        del conversation.transcripts[transcripts_before:]

    def _user_message(self, submission: Submission, new_images: list[ImageInContext], answer: Answer, *,
                      audio_path: Path | None) -> dict[str, Any]:
        """Build the user's message: the upright images, the voice note, the question and the transcript."""
        content: list[Any] = []
        for item in new_images:
            content.append({"path": str(self._save_upright(item, owner=submission.owner)), "alt_text": item.image.source})
        if audio_path is not None:
            content.append({"path": str(audio_path), "alt_text": audio_path.name})
        if submission.text.strip():
            content.append(escape_markdown(submission.text))
        transcript_note = format_transcript_note(answer)
        if transcript_note is not None:
            content.append(transcript_note)
        return {"role": "user", "content": content}

    def _save_upright(self, item: ImageInContext, *, owner: str = "") -> Path:
        """Write the intake's upright, metadata-free pixels as a PNG named by content hash, once."""
        if self.media_store is not None:
            return self.media_store.save_display_copy(owner, item.image)
        path = self.image_dir / (item.image.id.replace("sha256:", "") + ".png")
        if not path.exists():
            item.image.image.save(path, format="PNG")
        return path

    @staticmethod
    def _outputs(session: SessionState, *, textbox_value: dict[str, Any] | None, answer: Answer | None,
                 keep_screenshot: bool = False):
        """Return the values of chat, chat input, screenshot panel, context text and session state.

        With ``keep_screenshot`` the panel keeps the boxes of the last answer.
        """
        if keep_screenshot:
            screenshot = gr.skip()
        else:
            screenshot = ChatHandlers._screenshot_panel(session.conversation, answer)
        textbox = gr.MultimodalTextbox(value=textbox_value, interactive=True)
        return session.messages, textbox, screenshot, describe_conversation(session.conversation), session

    @staticmethod
    def _progress_outputs(session: SessionState, text: str):
        """Return the outputs for an answer in progress: the chat with ``text`` as the last message, nothing else."""
        messages = session.messages + [{"role": "assistant", "content": text}]
        return messages, gr.skip(), gr.skip(), gr.skip(), gr.skip()

    @staticmethod
    def _screenshot_panel(conversation: Conversation, answer: Answer | None) -> gr.AnnotatedImage:
        """Return the screenshot panel for the active images, hidden when there are none."""
        annotated = annotate_screenshot(conversation.active_images(), answer)
        if annotated is None:
            return gr.AnnotatedImage(value=None, visible=False)
        value, label = annotated
        return gr.AnnotatedImage(value=value, label=label, visible=True)


def _replace_images_in_messages(messages: list[dict[str, Any]], removed_paths: set[str]) -> None:
    """Replace every chat attachment whose path is in ``removed_paths`` with a short note."""
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        message["content"] = [
            FORGOTTEN_IMAGE_TEXT if isinstance(part, dict) and str(part.get("path")) in removed_paths else part
            for part in content
        ]


def split_attachments(files: list[str]) -> tuple[list[Path], Path | None]:
    """Sort attachments into images and at most one voice note, by file suffix.

    Raises SightlineError when more than one voice note is attached, because the
    engine answers one voice note per question.
    """
    paths = [Path(file) for file in files]
    audio = [path for path in paths if path.suffix.lower() in AUDIO_SUFFIXES]
    images = [path for path in paths if path.suffix.lower() not in AUDIO_SUFFIXES]
    if len(audio) > 1:
        names = ", ".join(path.name for path in audio)
        raise SightlineError(f"Several voice notes are attached ({names}). Attach one voice note per question.")
    return images, audio[0] if audio else None


def image_attachments(submission: Submission) -> list[str]:
    """Return the submission's attachments that go to image intake."""
    return [file for file in submission.files if Path(file).suffix.lower() not in AUDIO_SUFFIXES]


# Layout and serving.


def build_app(engine: Sightline, *, settings: Settings) -> gr.Blocks:
    """Build the chat app around an engine that is already indexed. The caller launches it."""
    image_dir = Path(tempfile.mkdtemp(prefix="sightline-ui-"))
    atexit.register(shutil.rmtree, image_dir, ignore_errors=True)
    media_store = _open_media_store(settings)
    handlers = ChatHandlers(engine=engine, image_dir=image_dir, media_store=media_store,
                            rate_limiter=RateLimiter(max_per_minute=settings.rate_limit_per_minute))
    retention_s = max(1, int(settings.media_retention_s))
    sweep_interval_s = min(CACHE_CLEANUP_INTERVAL_S, max(1, retention_s // 4))

    with gr.Blocks(title="Sightline", analytics_enabled=False,
                   delete_cache=(sweep_interval_s, retention_s)) as app:
        session = gr.State(None, time_to_live=SESSION_STATE_TTL_S)

        gr.Markdown("# Sightline\nAsk about a screenshot or a voice note. Each answer cites the screenshot "
                    "lines, voice-note times and help-center sections it rests on.")
        if not settings.clip_model:
            gr.Markdown(NO_VISION_NOTE, elem_id="sl-vision-note")

        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(elem_id="sl-chat", label="Conversation", height=640,
                                     latex_delimiters=[], sanitize_html=True, allow_tags=False,
                                     feedback_options=None, buttons=["copy", "copy_all"],
                                     placeholder=INPUT_PLACEHOLDER)
                textbox = gr.MultimodalTextbox(elem_id="sl-input", sources=["upload", "microphone"],
                                               file_count="multiple", show_label=False, autofocus=True,
                                               placeholder=INPUT_PLACEHOLDER)
                new_conversation = gr.Button("New conversation", size="sm", variant="secondary")
                forget = gr.Button("Forget this image", size="sm", variant="secondary", elem_id="sl-forget")
                thorough = None
                if settings.llm_base_url:
                    thorough = gr.Checkbox(value=False, label=THOROUGH_LABEL, elem_id="sl-thorough")
            with gr.Column(scale=2):
                screenshot = gr.AnnotatedImage(elem_id="sl-screenshot", label="Screenshot", format="png",
                                               visible=False)
                context = gr.Markdown(EMPTY_CONTEXT_TEXT, elem_id="sl-context")
                sources = gr.Radio(label="Sources of the last answer: pick one to see its evidence",
                                   choices=[], elem_id="sl-sources", visible=False)
                evidence_image = gr.Image(elem_id="sl-evidence-image", label="Evidence", format="png",
                                          interactive=False, visible=False)
                evidence_text = gr.HTML("", elem_id="sl-evidence")

        outputs = [chatbot, textbox, screenshot, context, session]
        evidence_outputs = [sources, evidence_image, evidence_text]
        shown = textbox.submit(handlers.show_question, [textbox, session], [chatbot, textbox, session],
                               queue=False)
        answer_inputs = [session] if thorough is None else [session, thorough]
        answered = shown.then(handlers.answer_question, answer_inputs, outputs, concurrency_id="engine")
        answered.then(handlers.list_citations, [session], evidence_outputs, queue=False)
        new_conversation.click(handlers.reset, None, outputs, queue=False).then(
            handlers.list_citations, [session], evidence_outputs, queue=False)
        chatbot.clear(handlers.reset, None, outputs, queue=False).then(
            handlers.list_citations, [session], evidence_outputs, queue=False)
        forget.click(handlers.forget_images, [session], outputs, queue=False).then(
            handlers.list_citations, [session], evidence_outputs, queue=False)
        sources.change(handlers.show_evidence, [sources, session], [evidence_image, evidence_text], queue=False)
        app.unload(handlers.end_session)

    app.sightline_file_guard = handlers.file_guard
    return app


def _open_media_store(settings: Settings) -> MediaStore:
    """Point Gradio's upload cache at a private folder and open the media store that cleans it.

    GRADIO_TEMP_DIR is read when gr.Blocks and the server app are created (Gradio 6.31),
    so this runs before both.
    """
    gradio_cache = Path(tempfile.mkdtemp(prefix="sightline-gradio-"))
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_cache)
    atexit.register(shutil.rmtree, gradio_cache, ignore_errors=True)

    store = MediaStore(root=settings.media_dir, retention_s=settings.media_retention_s,
                       gradio_cache_dir=gradio_cache)
    store.start_sweeper(interval_s=min(CACHE_CLEANUP_INTERVAL_S, settings.media_retention_s / 4))
    atexit.register(store.close)
    return store


def _make_auth(users: dict[str, str]):
    """Build Gradio's login check: scrypt hashes compared in constant time, and an unknown name costs as much."""
    dummy_hash = next(iter(users.values()))

    def check(user_name: str, password: str) -> bool:
        stored_hash = users.get(user_name)
        matches = verify_password(password, stored_hash or dummy_hash)
        accepted = matches and stored_hash is not None
        logger.info("Login %s for user=%r", "accepted" if accepted else "rejected", user_name)
        return accepted

    return check


def serve(settings: Settings) -> None:
    """Index the knowledge base, warm the models up and serve the app until interrupted.

    Raises SightlineError before any work when the bind address is unsafe (see core.access.check_bind).
    """
    users = check_bind(settings)
    started = time.perf_counter()
    logger.info("Starting Sightline UI host=%s port=%d kb_dir=%s", settings.host, settings.port, settings.kb_dir)

    engine = Sightline(settings=settings)
    report = engine.index(settings.kb_dir)
    logger.info("Indexed %s: %s (%.1f s)", settings.kb_dir, report.summary(), report.elapsed_ms / 1000)
    for path, reason in report.failed.items():
        logger.warning("Could not index %s: %s", path, reason)

    # NOTE: Whisper loads on the first voice note, which makes that answer slower by the load time.
    engine.warm_up()
    logger.info("Models ready in %.1f s", time.perf_counter() - started)

    app = build_app(engine, settings=settings)
    # NOTE: a full queue is answered by Gradio's own "Queue is full" message, which Sightline cannot reword.
    app.queue(default_concurrency_limit=1, max_size=settings.queue_max_size)
    # Gradio rejects larger uploads before they reach the disk, with its own message. Both
    # engine limits count mebibytes.
    max_upload_bytes = int(max(settings.max_upload_mb, settings.max_audio_mb) * 1024 * 1024)
    # Gradio runs quiet, so this line is where a user learns the address to open.
    print(f"Sightline is starting on http://{settings.host}:{settings.port} (Ctrl+C stops it)", flush=True)
    app.launch(server_name=settings.host, server_port=settings.port, share=False,
               max_file_size=max_upload_bytes, state_session_capacity=MAX_SESSIONS,
               ssr_mode=False, mcp_server=False, footer_links=["api", "settings"], css=CSS,
               quiet=True, auth=_make_auth(users) if users else None,
               auth_message="Log in to Sightline." if users else None,
               blocked_paths=[str(settings.data_dir)],
               app_kwargs={"middleware": [Middleware(FileGuardMiddleware, guard=app.sightline_file_guard)]})
    logger.info("Stopped Sightline UI host=%s port=%d", settings.host, settings.port)
