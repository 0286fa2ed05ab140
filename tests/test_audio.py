"""Audio intake on real recordings, files made with ffmpeg and the wave module, and broken inputs."""

from __future__ import annotations

import hashlib
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from core.audio import SAMPLE_RATE_HZ, AudioError, load_audio
from core.settings import Settings

JFK_DURATION_S = 11.0


def write_wav(path: Path, samples: np.ndarray, *, rate_hz: int = SAMPLE_RATE_HZ) -> Path:
    """Write float samples in [-1, 1], shaped (n,) or (n, channels), as 16-bit PCM WAV."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    pcm = np.clip(np.round(frames * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(frames.shape[1])
        handle.setsampwidth(2)
        handle.setframerate(rate_hz)
        handle.writeframes(pcm.tobytes())
    return path


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly and fail the test on an error."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


@pytest.mark.parametrize("name, expected_format", [("jfk.wav", "wav"), ("jfk.flac", "flac"), ("jfk.mp3", "mp3")])
def test_real_files_decode_to_16k_mono(realdata: Path, settings: Settings, name: str, expected_format: str) -> None:
    path = realdata / "speech" / name
    audio = load_audio(path, settings=settings)

    assert audio.format == expected_format
    assert audio.source == name
    assert audio.samples.dtype == np.float32
    assert audio.samples.ndim == 1
    assert audio.duration_s == pytest.approx(JFK_DURATION_S, abs=0.1)
    assert audio.samples.shape[0] == pytest.approx(JFK_DURATION_S * SAMPLE_RATE_HZ, abs=0.1 * SAMPLE_RATE_HZ)
    assert audio.size_bytes == path.stat().st_size
    assert audio.id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert 0.1 < float(np.abs(audio.samples).max()) <= 1.0


@pytest.mark.parametrize(
    "suffix, codec_args, expected_format",
    [(".ogg", ["-c:a", "libopus"], "ogg"), (".webm", ["-c:a", "libopus"], "webm"), (".m4a", ["-c:a", "aac"], "m4a")],
)
def test_browser_formats_decode(
    realdata: Path, settings: Settings, tmp_path: Path, suffix: str, codec_args: list[str], expected_format: str
) -> None:
    path = tmp_path / ("jfk" + suffix)
    ffmpeg("-i", str(realdata / "speech" / "jfk.wav"), *codec_args, str(path))

    audio = load_audio(path, settings=settings)

    assert audio.format == expected_format
    assert audio.duration_s == pytest.approx(JFK_DURATION_S, abs=0.1)


def test_source_name_overrides_file_name(realdata: Path, settings: Settings) -> None:
    audio = load_audio(realdata / "speech" / "jfk.wav", source="voice note.wav", settings=settings)

    assert audio.source == "voice note.wav"


def test_stereo_mixed_to_mono(settings: Settings, tmp_path: Path) -> None:
    time_s = np.arange(SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
    tone = 0.5 * np.sin(2 * np.pi * 440 * time_s)
    stereo = np.stack([tone, np.zeros_like(tone)], axis=1)
    path = write_wav(tmp_path / "stereo.wav", stereo)

    audio = load_audio(path, settings=settings)

    assert audio.samples.ndim == 1
    assert audio.samples.shape[0] == SAMPLE_RATE_HZ
    # The channel mean of a 0.5 tone and silence peaks at 0.25.
    assert float(np.abs(audio.samples).max()) == pytest.approx(0.25, abs=0.01)


def test_resampled_to_16k(settings: Settings, tmp_path: Path) -> None:
    rate_hz = 44_100
    samples = 0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * rate_hz) / rate_hz)
    path = write_wav(tmp_path / "cd.wav", samples, rate_hz=rate_hz)

    audio = load_audio(path, settings=settings)

    assert audio.samples.shape[0] == pytest.approx(2 * SAMPLE_RATE_HZ, abs=100)
    assert audio.duration_s == pytest.approx(2.0, abs=0.01)


def test_empty_file_rejected(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "note.wav"
    path.write_bytes(b"")

    with pytest.raises(AudioError) as caught:
        load_audio(path, settings=settings)

    message = str(caught.value)
    assert "'note.wav'" in message
    assert "empty (0 bytes)" in message
    assert "Record the voice note again" in message


def test_random_bytes_named_wav_rejected(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 50_000, dtype=np.uint8).tobytes())

    with pytest.raises(AudioError) as caught:
        load_audio(path, settings=settings)

    message = str(caught.value)
    assert "'noise.wav'" in message
    assert "is not an audio file" in message
    assert "WAV, FLAC, MP3, OGG/Opus, M4A or WebM" in message


def test_truncated_mp3_rejected(realdata: Path, settings: Settings, tmp_path: Path) -> None:
    data = (realdata / "speech" / "jfk.mp3").read_bytes()
    path = tmp_path / "cut.mp3"
    path.write_bytes(data[: len(data) * 3 // 10])

    with pytest.raises(AudioError) as caught:
        load_audio(path, settings=settings)

    message = str(caught.value)
    assert "'cut.mp3'" in message
    assert "ends early" in message
    assert "declares 11.0 s" in message
    assert "truncated or damaged" in message
    assert "Upload the complete file" in message


def test_image_file_rejected(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "screenshot.png"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=32x32", "-frames:v", "1", str(path))

    with pytest.raises(AudioError) as caught:
        load_audio(path, settings=settings)

    message = str(caught.value)
    assert "'screenshot.png'" in message
    assert "no audio stream" in message


def test_text_file_rejected(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "notes.mp3"
    path.write_text("This is a text file, not a recording.\n" * 20, encoding="utf-8")

    with pytest.raises(AudioError) as caught:
        load_audio(path, settings=settings)

    assert "is not an audio file" in str(caught.value)


def test_unaccepted_container_rejected(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "note.aiff"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", str(path))

    with pytest.raises(AudioError) as caught:
        load_audio(path, settings=settings)

    message = str(caught.value)
    assert "'note.aiff'" in message
    assert "does not accept" in message


def test_missing_file_rejected(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(AudioError) as caught:
        load_audio(tmp_path / "gone.wav", settings=settings)

    assert "'gone.wav' was not found" in str(caught.value)


def test_file_over_size_limit_rejected(realdata: Path, tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path / "data", max_audio_mb=0.1)

    with pytest.raises(AudioError) as caught:
        load_audio(realdata / "speech" / "jfk.wav", settings=settings)

    message = str(caught.value)
    assert "'jfk.wav'" in message
    assert "over the limit of 0.1 MB" in message
    assert "SIGHTLINE_MAX_AUDIO_MB" in message


def test_file_over_duration_limit_rejected(realdata: Path, tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path / "data", max_audio_s=5)

    with pytest.raises(AudioError) as caught:
        load_audio(realdata / "speech" / "jfk.wav", settings=settings)

    message = str(caught.value)
    assert "'jfk.wav' is 11 s long" in message
    assert "over the limit of 5 s" in message
    assert "SIGHTLINE_MAX_AUDIO_S" in message


def test_stream_without_duration_limited_while_decoding(realdata: Path, tmp_path: Path) -> None:
    """A WebM written to a pipe, as a browser records it, declares no duration in its header."""
    path = tmp_path / "live.webm"
    with path.open("wb") as handle:
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(realdata / "speech" / "jfk.wav"),
             "-c:a", "libopus", "-f", "webm", "pipe:1"],
            check=True,
            stdout=handle,
        )
    settings = Settings.load(data_dir=tmp_path / "data", max_audio_s=5)

    with pytest.raises(AudioError) as caught:
        load_audio(path, settings=settings)

    message = str(caught.value)
    assert "'live.webm'" in message
    assert "over the limit of 5 s" in message
