"""Voice notes through the whole pipeline: as the question, as cited evidence, and with no speech."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from core.pipeline import Sightline
from core.settings import Settings
from core.types import SightlineError

from tests.conftest import REPO_ROOT

SAMPLE_RATE_HZ = 16_000


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Sightline:
    settings = Settings.load(data_dir=tmp_path_factory.mktemp("voice-data"), kb_dir=REPO_ROOT / "knowledge_base")
    engine = Sightline(settings=settings)
    engine.index()
    return engine


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE_HZ)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_voice_question_about_screenshot_cites_both(engine: Sightline):
    answer = engine.ask("", image_paths=[REPO_ROOT / "assets" / "sync-paused-quota.png"],
                        audio_path=REPO_ROOT / "assets" / "voice" / "ask-tp4021.wav")
    kinds = {citation.evidence.kind for citation in answer.citations}

    assert answer.transcript is not None
    assert answer.transcript.language == "en"
    assert "fix it" in answer.transcript.text.lower()
    assert "transcript" in kinds, answer.text
    assert "ocr_line" in kinds, answer.text
    assert "kb_section" in kinds, answer.text
    sources = {citation.evidence.source for citation in answer.citations if citation.evidence.kind == "kb_section"}
    assert "sync-paused-tp-4021-storage-quota.md" in sources
    assert answer.timings_ms["speech"] > 0


def test_transcript_citation_has_time_span(engine: Sightline):
    answer = engine.ask("", audio_path=REPO_ROOT / "assets" / "voice" / "ask-device-limit.wav")
    spoken = [citation for citation in answer.citations if citation.evidence.kind == "transcript"]

    assert spoken, answer.text
    assert spoken[0].evidence.start_s is not None
    assert spoken[0].evidence.end_s > spoken[0].evidence.start_s
    assert spoken[0].to_json()["end_s"] <= answer.transcript.duration_s + 0.5
    assert "3 devices" in answer.text
    assert any(citation.evidence.kind == "kb_section" for citation in answer.citations)


def test_silent_note_makes_no_question(engine: Sightline, tmp_path: Path):
    silence = write_wav(tmp_path / "silence.wav", np.zeros(SAMPLE_RATE_HZ * 3))

    with pytest.raises(SightlineError, match="No speech detected"):
        engine.ask("", audio_path=silence)


def test_silent_note_with_typed_question_warns(engine: Sightline, tmp_path: Path):
    tone = write_wav(tmp_path / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE_HZ * 3) / SAMPLE_RATE_HZ))
    answer = engine.ask("What does TP-4021 mean?", audio_path=tone)

    assert any("No speech detected" in warning for warning in answer.warnings)
    assert all(citation.evidence.kind != "transcript" for citation in answer.citations)
    assert answer.covered


def test_failed_turn_keeps_conversation(engine: Sightline, tmp_path: Path):
    from core.pipeline import Conversation

    conversation = Conversation()
    engine.ask("What does this error mean?", conversation=conversation,
               image_paths=[REPO_ROOT / "assets" / "sync-paused-quota.png"])
    fake = tmp_path / "fake.png"
    fake.write_text("<svg xmlns='http://www.w3.org/2000/svg'></svg>")

    with pytest.raises(SightlineError, match="fake.png"):
        engine.ask("And this one?", conversation=conversation,
                   image_paths=[REPO_ROOT / "assets" / "device-limit-dark.png", fake])

    assert len(conversation.images) == 1
    assert conversation.images[0].image.source == "sync-paused-quota.png"
    assert len(conversation.turns) == 1
