"""Audio intake: read a voice note from disk into 16 kHz mono float32 samples.

The container and codec come from the bytes, never from the file name. FFmpeg,
through PyAV, decodes WAV, FLAC, MP3, OGG/Opus, M4A (AAC in MP4) and WebM
(Opus in Matroska, as browsers record it). Every input problem surfaces as
``AudioError`` with a message that names the file, the problem and the fix.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from core.settings import Settings
from core.types import SightlineError

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16_000
BYTES_PER_MB = 1024 * 1024
"""``max_audio_mb`` counts mebibytes."""

ACCEPTED_CONTAINERS = {
    "wav": "wav",
    "flac": "flac",
    "mp3": "mp3",
    "ogg": "ogg",
    "mov,mp4,m4a,3gp,3g2,mj2": "m4a",
    "matroska,webm": "webm",
}
"""FFmpeg demuxer name to the format name that AudioInput reports."""

ACCEPTED_FORMATS_TEXT = "WAV, FLAC, MP3, OGG/Opus, M4A or WebM"

TRUNCATION_TOLERANCE_S = 0.5
TRUNCATION_TOLERANCE_RATIO = 0.05
"""Decoded audio may fall short of the declared duration by max(0.5 s, 5 %) before the file counts as truncated."""


class AudioError(SightlineError):
    """A voice note that cannot be read: missing, empty, too large, too long, damaged or not audio."""


@dataclass
class AudioInput:
    """A voice note after intake: mono float32 samples at 16 kHz and where they came from."""

    id: str
    """Content hash of the bytes the user gave, ``sha256:<hex>`` cut to 16 hex digits."""
    source: str
    """The file name the user gave, for messages only: the format comes from the bytes."""
    samples: np.ndarray
    """Mono float32 samples at SAMPLE_RATE_HZ, nominally within [-1, 1]."""
    duration_s: float
    format: str
    """One of the values of ACCEPTED_CONTAINERS: wav, flac, mp3, ogg, m4a or webm."""
    size_bytes: int
    notes: list[str] = field(default_factory=list)
    """Facts the user should be told, such as "only the first of 2 audio streams was read"."""


def load_audio(path: Path, *, source: str | None = None, settings: Settings) -> AudioInput:
    """Read, check and decode the audio file at ``path`` into an AudioInput.

    ``source`` is the name shown in messages, the file name by default. Raises
    AudioError when the file is missing, empty, over ``settings.max_audio_mb`` or
    ``settings.max_audio_s``, not audio in an accepted format, truncated or damaged.
    """
    path = Path(path)
    source = source or path.name

    size_bytes = _check_size(path, source=source, max_mb=settings.max_audio_mb)
    data = _read_bytes(path, source=source)
    audio_id = "sha256:" + hashlib.sha256(data).hexdigest()[:16]

    samples, audio_format, notes = _decode(data, source=source, max_s=settings.max_audio_s)
    duration_s = samples.shape[0] / SAMPLE_RATE_HZ

    logger.info(
        "Read audio %s: format %s, %d bytes, %.2f s", audio_id, audio_format, size_bytes, duration_s
    )
    return AudioInput(
        id=audio_id,
        source=source,
        samples=samples,
        duration_s=duration_s,
        format=audio_format,
        size_bytes=size_bytes,
        notes=notes,
    )


def _check_size(path: Path, *, source: str, max_mb: float) -> int:
    """Return the file size in bytes, or raise AudioError for a missing, empty or oversized file."""
    try:
        size_bytes = path.stat().st_size
    except FileNotFoundError as error:
        raise AudioError(f"Audio file {source!r} was not found. Upload it again.") from error
    except OSError as error:
        raise AudioError(f"Audio file {source!r} could not be read: {error.strerror}.") from error

    if not path.is_file():
        raise AudioError(f"{source!r} is not a regular file. Upload an audio file.")

    if size_bytes == 0:
        raise AudioError(
            f"Audio file {source!r} is empty (0 bytes). Record the voice note again or choose another file."
        )

    max_bytes = int(max_mb * BYTES_PER_MB)
    if size_bytes > max_bytes:
        raise AudioError(
            f"Audio file {source!r} is {size_bytes / BYTES_PER_MB:.1f} MB, over the limit of {max_mb:g} MB. "
            "Upload a shorter or more compressed recording, or raise SIGHTLINE_MAX_AUDIO_MB."
        )
    return size_bytes


def _read_bytes(path: Path, *, source: str) -> bytes:
    """Return the whole content of ``path``; the caller has checked its size."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise AudioError(f"Audio file {source!r} could not be read: {error.strerror}.") from error


def _decode(data: bytes, *, source: str, max_s: float) -> tuple[np.ndarray, str, list[str]]:
    """Decode the first audio stream of ``data`` into mono 16 kHz samples, its format name and notes."""
    try:
        container = av.open(io.BytesIO(data), metadata_errors="ignore")
    except av.error.FFmpegError as error:
        raise AudioError(
            f"{source!r} is not an audio file that Sightline can read ({_describe(error)}). "
            f"Upload a {ACCEPTED_FORMATS_TEXT} file."
        ) from error

    with container:
        audio_format = _check_container(container, source=source)
        stream = container.streams.audio[0]
        notes: list[str] = []
        if len(container.streams.audio) > 1:
            notes.append(f"Only the first of {len(container.streams.audio)} audio streams was read.")

        declared_s = _declared_duration_s(container, stream)
        if declared_s is not None and declared_s > max_s + TRUNCATION_TOLERANCE_S:
            raise _too_long(source, declared_s, max_s)

        samples = _decode_stream(container, stream, source=source, max_s=max_s)

    decoded_s = samples.shape[0] / SAMPLE_RATE_HZ
    if decoded_s == 0.0:
        raise AudioError(
            f"Audio file {source!r} contains no decodable audio. Record the voice note again or choose another file."
        )
    if declared_s is not None and _is_truncated(decoded_s, declared_s):
        # NOTE: an MP3 without a Xing/Info header has an estimated duration, so a
        # truncated one of that kind passes, and a very uneven VBR one may be rejected.
        raise AudioError(
            f"Audio file {source!r} ends early: its header declares {declared_s:.1f} s of audio but only "
            f"{decoded_s:.1f} s could be decoded, so the file is truncated or damaged. "
            "Upload the complete file or record the voice note again."
        )
    return samples, audio_format, notes


def _check_container(container: av.container.InputContainer, *, source: str) -> str:
    """Return the format name of an accepted container with an audio stream, or raise AudioError."""
    demuxer = container.format.name
    long_name = container.format.long_name or demuxer

    if not container.streams.audio:
        raise AudioError(
            f"{source!r} is not an audio file: FFmpeg read it as {long_name} with no audio stream. "
            f"Upload a {ACCEPTED_FORMATS_TEXT} file."
        )
    if demuxer not in ACCEPTED_CONTAINERS:
        raise AudioError(
            f"{source!r} is a {long_name} file, which Sightline does not accept. "
            f"Convert it to {ACCEPTED_FORMATS_TEXT}, for example with ffmpeg."
        )
    return ACCEPTED_CONTAINERS[demuxer]


def _declared_duration_s(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """Return the duration the stream or container header declares, or None when it declares none."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _decode_stream(
    container: av.container.InputContainer, stream: av.AudioStream, *, source: str, max_s: float
) -> np.ndarray:
    """Decode ``stream`` to 16 kHz, average its channels and stop with AudioError past ``max_s``."""
    resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE_HZ)
    max_samples = int((max_s + TRUNCATION_TOLERANCE_S) * SAMPLE_RATE_HZ)
    pieces: list[np.ndarray] = []
    decoded = 0

    try:
        for frame in container.decode(stream):
            for resampled in resampler.resample(frame):
                decoded += _append_mono(pieces, resampled)
            if decoded > max_samples:
                raise _too_long(source, decoded / SAMPLE_RATE_HZ, max_s, at_least=True)

        for resampled in resampler.resample(None):
            decoded += _append_mono(pieces, resampled)
    except av.error.FFmpegError as error:
        raise AudioError(
            f"Audio file {source!r} is damaged: decoding failed after {decoded / SAMPLE_RATE_HZ:.1f} s "
            f"({_describe(error)}). Upload the complete file or record the voice note again."
        ) from error
    except ValueError as error:
        # PyAV raises ValueError when the channel layout or sample rate changes mid-stream.
        raise AudioError(
            f"Audio file {source!r} could not be decoded ({error}). Convert it to {ACCEPTED_FORMATS_TEXT}."
        ) from error

    if decoded > max_samples:
        raise _too_long(source, decoded / SAMPLE_RATE_HZ, max_s)
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32, copy=False)


def _append_mono(pieces: list[np.ndarray], frame: av.AudioFrame) -> int:
    """Append the channel mean of a planar float frame to ``pieces`` and return its sample count."""
    planes = frame.to_ndarray()
    mono = planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0]
    pieces.append(mono)
    return mono.shape[0]


def _is_truncated(decoded_s: float, declared_s: float) -> bool:
    """Return True when the decoded audio is clearly shorter than the header declares."""
    tolerance_s = max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_RATIO * declared_s)
    return decoded_s < declared_s - tolerance_s


def _too_long(source: str, duration_s: float, max_s: float, *, at_least: bool = False) -> AudioError:
    """Build the AudioError for a note longer than ``max_s`` seconds."""
    length = f"over {duration_s:.0f} s" if at_least else f"{duration_s:.0f} s"
    return AudioError(
        f"Audio file {source!r} is {length} long, over the limit of {max_s:g} s. "
        "Trim the voice note or raise SIGHTLINE_MAX_AUDIO_S."
    )


def _describe(error: av.error.FFmpegError) -> str:
    """Return FFmpeg's reason for ``error`` without the errno and file name PyAV adds."""
    return error.strerror or str(error)
