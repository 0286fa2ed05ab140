"""The citation check: wrong, shifted, missing and unsupported citations, and grounding on real answers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.embeddings import TextEmbedder
from core.pipeline import Sightline
from core.settings import Settings
from core.types import Box, Citation, Evidence
from core.verify import NO_SUPPORTED_TEXT, UNSUPPORTED_MARK, CitationVerifier

from tests.conftest import REPO_ROOT
from tests.test_grounded_answers import STREAMLIT_CASES, read_demo_manifest

QUOTA_SECTION = (
    "Tidepool Desktop shows a yellow Sync paused banner with the code TP-4021 when your team has used all of "
    "its storage. New and changed files stop uploading, and downloads continue.\n\n"
    "1. Open the web console and go to Settings › Storage.\n"
    "2. Empty Trash: go to Files › Trash and select Empty Trash.\n"
    "Paused syncs resume within 15 minutes after usage drops below 100%."
)
DEVICE_SECTION = (
    "The Free plan allows 3 devices per user. Remove a device in the web console under Account › Devices, "
    "and the slot is free immediately."
)
OCR_LINE = "TP-4021 Storage quota exceeded"

UNRELATED_QUESTIONS = [
    "What is the boiling point of water at sea level?",
    "Who wrote the novel Pride and Prejudice?",
    "How many legs does a spider have?",
    "What is the capital city of Australia?",
    "How do I bake sourdough bread at home?",
    "Which planet is closest to the sun?",
    "What year did the first moon landing happen?",
    "How do I tune a guitar by ear?",
]
"""Questions that no Streamlit page answers, asked with the Streamlit screenshots."""
MIN_GROUNDING_MARGIN = 0.3
MIN_RIGHT_GROUNDING = 0.4
"""Lowest grounding of a right demo answer; measured 0.48 for the generic "What does this error mean?"."""


def make_citations() -> list[Citation]:
    """Return three citations: a screenshot line [1], the quota section [2], the device-limit section [3]."""
    line = Evidence(kind="ocr_line", id="sha256:aa#L2", source="sha256:aa", text=OCR_LINE,
                    box=Box(10, 40, 300, 20))
    quota = Evidence(kind="kb_section", id="quota.md#0", source="quota.md", text=QUOTA_SECTION,
                     document_title="Sync paused", heading="TP-4021")
    device = Evidence(kind="kb_section", id="device.md#1", source="device.md", text=DEVICE_SECTION,
                      document_title="Device limit reached", heading="What it means")
    return [Citation(1, line, line.text), Citation(2, quota, quota.text), Citation(3, device, device.text)]


CORRECT = (
    f"Your screenshot shows “{OCR_LINE}” [1].\n\n"
    "Paused syncs resume within 15 minutes after usage drops below 100%. [2]\n"
    "Remove a device in the web console under Account › Devices, and the slot is free immediately. [3]"
)


@pytest.fixture(scope="module")
def verifier() -> CitationVerifier:
    settings = Settings.load()
    return CitationVerifier(embedder=TextEmbedder(model=settings.text_embedding_model), settings=settings)


def markers(text: str) -> list[int]:
    return [int(number) for number in re.findall(r"\[(\d+)\]", text)]


def test_correct_answer_unchanged(verifier: CitationVerifier):
    result = verifier.verify(CORRECT, make_citations())

    assert result.text == CORRECT
    assert [sentence.status for sentence in result.sentences] == ["verified"] * 3
    assert result.grounding == pytest.approx(1.0)
    assert [citation.n for citation in result.citations] == [1, 2, 3]


def test_wrong_index_repaired(verifier: CitationVerifier):
    text = "Paused syncs resume within 15 minutes after usage drops below 100%. [3]"
    result = verifier.verify(text, make_citations())

    assert result.sentences[0].status == "repaired"
    assert result.sentences[0].supported
    assert result.text.endswith("[1]")
    assert [citation.evidence.id for citation in result.citations] == ["quota.md#0"]


def test_shifted_indexes_repaired(verifier: CitationVerifier):
    shifted = re.sub(r"\[(\d)\]", lambda match: f"[{int(match.group(1)) + 1}]", CORRECT)
    result = verifier.verify(shifted, make_citations())

    assert [sentence.status for sentence in result.sentences] == ["repaired"] * 3
    assert result.text == CORRECT
    assert [citation.evidence.id for citation in result.citations] == ["sha256:aa#L2", "quota.md#0", "device.md#1"]


def test_missing_marker_added(verifier: CitationVerifier):
    text = "Paused syncs resume within 15 minutes after usage drops below 100%."
    result = verifier.verify(text, make_citations())

    assert result.sentences[0].status == "added"
    assert result.text == text + " [1]"
    assert result.citations[0].evidence.id == "quota.md#0"


def test_marker_to_nothing_repaired(verifier: CitationVerifier):
    text = "The Free plan allows 3 devices per user. [9]"
    result = verifier.verify(text, make_citations())

    assert result.sentences[0].status == "repaired"
    assert result.text == "The Free plan allows 3 devices per user. [1]"
    assert result.citations[0].evidence.id == "device.md#1"


def test_marker_to_nothing_unsupported(verifier: CitationVerifier):
    text = f"Your screenshot shows “{OCR_LINE}” [1]. Tidepool stores files on the moon. [7]"
    result = verifier.verify(text, make_citations())

    assert result.sentences[1].status == "unsupported"
    assert not result.sentences[1].supported
    assert f"{UNSUPPORTED_MARK} Tidepool stores files on the moon." in result.text
    assert "[7]" not in result.text
    assert markers(result.text) == [1]
    assert len(result.citations) == 1


def test_unsupported_sentence_marked(verifier: CitationVerifier):
    text = "Paused syncs resume within 15 minutes after usage drops below 100%. [2]\n" \
           "Tidepool refunds every customer twice a year automatically. [2]"
    result = verifier.verify(text, make_citations())

    assert [sentence.status for sentence in result.sentences] == ["verified", "unsupported"]
    assert result.text.splitlines()[1] == f"{UNSUPPORTED_MARK} Tidepool refunds every customer twice a year automatically."
    assert result.grounding < 0.8


def test_uncited_unsupported_sentence_removed(verifier: CitationVerifier):
    text = "Paused syncs resume within 15 minutes after usage drops below 100%. [2] PWNED. Bananas are yellow."
    result = verifier.verify(text, make_citations())

    assert [sentence.status for sentence in result.sentences] == ["verified", "removed", "removed"]
    assert "PWNED" not in result.text
    assert "Bananas" not in result.text
    assert result.text == "Paused syncs resume within 15 minutes after usage drops below 100%. [1]"


def test_paraphrase_verified(verifier: CitationVerifier):
    text = "Once usage drops below 100%, paused syncs resume within 15 minutes. [2]"
    result = verifier.verify(text, make_citations())

    assert result.sentences[0].status == "verified"
    assert 0.6 < result.sentences[0].score < 1.0


def test_unused_citations_dropped_and_renumbered(verifier: CitationVerifier):
    text = "The slot is free immediately after you remove a device. [3]"
    result = verifier.verify(text, make_citations())

    assert result.text.endswith("[1]")
    assert [(citation.n, citation.evidence.id) for citation in result.citations] == [(1, "device.md#1")]
    assert result.sentences[0].citations == [1]


def test_quoted_line_with_wrong_marker_repaired(verifier: CitationVerifier):
    text = f"Your screenshot shows “{OCR_LINE}” [3]."
    result = verifier.verify(text, make_citations())

    assert result.sentences[0].status == "repaired"
    assert result.citations[0].evidence.kind in ("ocr_line", "kb_section")
    assert OCR_LINE.lower() in result.citations[0].evidence.text.lower()


def test_extra_marker_in_group_dropped(verifier: CitationVerifier):
    text = "Paused syncs resume within 15 minutes after usage drops below 100%. [2] [3]"
    result = verifier.verify(text, make_citations())

    assert result.text == "Paused syncs resume within 15 minutes after usage drops below 100%. [1]"
    assert result.sentences[0].citations == [1]


def test_marker_inside_quote_ignored(verifier: CitationVerifier):
    line = Evidence(kind="ocr_line", id="sha256:bb#L1", source="sha256:bb", text="Footnote [2] applies")
    text = "Your screenshot shows “Footnote [2] applies” [1]."
    result = verifier.verify(text, [Citation(1, line, line.text)])

    assert result.text == text
    assert result.sentences[0].status == "verified"


def test_lead_in_and_notice_kept(verifier: CitationVerifier):
    text = ("The knowledge base does not cover this question, so Sightline will not guess. "
            f"This is what it read in your screenshot:\n- “{OCR_LINE}” [1]")
    result = verifier.verify(text, make_citations())

    assert result.text == text
    assert len(result.sentences) == 1


def test_nothing_supported_replaced(verifier: CitationVerifier):
    result = verifier.verify("The moon is made of cheese. [1]", make_citations()[:1])

    assert result.text == NO_SUPPORTED_TEXT
    assert result.citations == []
    assert result.grounding < 0.5


def test_verify_idempotent(verifier: CitationVerifier):
    text = CORRECT + "\nTidepool refunds every customer twice a year automatically. [2]"
    first = verifier.verify(text, make_citations())
    second = verifier.verify(first.text, first.citations)

    assert second.text == first.text
    assert [citation.evidence.id for citation in second.citations] == \
        [citation.evidence.id for citation in first.citations]


def test_verify_leaves_input_citations(verifier: CitationVerifier):
    citations = make_citations()
    verifier.verify("The Free plan allows 3 devices per user. [3]", citations)

    assert [citation.n for citation in citations] == [1, 2, 3]


# Real answers: the extractive engine quotes word for word, so every citation must pass as it is.


@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory) -> Sightline:
    settings = Settings.load(data_dir=tmp_path_factory.mktemp("verify-demo"), kb_dir=REPO_ROOT / "knowledge_base")
    engine = Sightline(settings=settings)
    engine.index()
    return engine


@pytest.fixture(scope="module")
def streamlit_engine(realdata: Path, tmp_path_factory) -> Sightline:
    settings = Settings.load(data_dir=tmp_path_factory.mktemp("verify-streamlit"),
                             kb_dir=realdata / "kb_pairs" / "streamlit" / "docs")
    engine = Sightline(settings=settings)
    engine.index()
    return engine


def section_citations(answer) -> list[Citation]:
    return [citation for citation in answer.citations if citation.evidence.kind == "kb_section"]


def assert_every_citation_holds(answer, label: str) -> None:
    statuses = [sentence.status for sentence in answer.sentences]
    assert all(sentence.supported for sentence in answer.sentences), f"{label}: {statuses}\n{answer.text}"
    assert set(statuses) <= {"verified"}, f"{label}: the check changed an extractive answer: {statuses}"
    assert UNSUPPORTED_MARK not in answer.text, label
    assert set(markers(answer.text)) == {citation.n for citation in answer.citations}, label
    assert "verify" in answer.timings_ms, label


@pytest.mark.parametrize("row", read_demo_manifest(), ids=lambda row: row["file"])
def test_extractive_demo_answers_pass(demo_engine: Sightline, row: dict[str, str]):
    answer = demo_engine.ask(row["question"], image_paths=[REPO_ROOT / "assets" / row["file"]])

    assert_every_citation_holds(answer, row["file"])
    assert answer.grounding >= MIN_RIGHT_GROUNDING, answer.text


def test_streamlit_grounding_separates_unrelated(streamlit_engine: Sightline, realdata: Path,
                                                 verifier: CitationVerifier):
    images = realdata / "kb_pairs" / "streamlit" / "images"
    right, unrelated, own, crossed = [], [], [], []
    answers = []

    for (image, question, _page, _facts), other_question in zip(STREAMLIT_CASES, UNRELATED_QUESTIONS):
        answer = streamlit_engine.ask(question, image_paths=[images / image])
        assert_every_citation_holds(answer, image)
        right.append(answer.grounding)
        answers.append(answer)

        off_topic = streamlit_engine.ask(other_question, image_paths=[images / image])
        assert_every_citation_holds(off_topic, f"{image} with an unrelated question")
        unrelated.append(off_topic.grounding)

    # The section sentences of one answer checked against its own sections and against those of
    # an answer from another page: the support part of the score alone must tell them apart.
    for index, answer in enumerate(answers):
        other = answers[(index + 3) % len(answers)]
        section_text = "\n".join(line for line in answer.text.splitlines() if "“" not in line)
        own.append(verifier.verify(section_text, section_citations(answer)).support)
        crossed.append(verifier.verify(section_text, section_citations(other)).support)

    report = "\n".join(f"{name} {sorted(round(score, 3) for score in scores)}" for name, scores in
                       [("right", right), ("unrelated", unrelated), ("own", own), ("crossed", crossed)])
    print(report)
    assert min(right) - max(unrelated) >= MIN_GROUNDING_MARGIN, report
    assert min(own) - max(crossed) >= MIN_GROUNDING_MARGIN, report
