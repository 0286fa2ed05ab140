"""Run every benchmark in its own process, one after another, and print their Markdown output.

Run from the repository root (``make bench`` does the same)::

    .venv/bin/python bench/run_all.py

The scripts run in sequence so that they do not compete for the cores. Their
standard error (progress bars, logs) passes through to this process's standard
error. The exit code is 1 when any script failed, after all of them have run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from bench.common import describe_load, describe_machine, describe_revision  # noqa: E402

SCRIPTS = ("bench_ocr.py", "bench_speech.py", "bench_pipeline.py", "bench_image_index.py")


def run_script(name: str) -> bool:
    """Run one benchmark script, print its standard output under a heading, and return True on success."""
    print(f"# {name}")
    print()
    print(f"Load average (1 / 5 / 15 min) at start: {describe_load()}")
    print()
    sys.stdout.flush()

    started = time.perf_counter()
    completed = subprocess.run([sys.executable, str(BENCH_DIR / name)], cwd=BENCH_DIR.parent,
                               stdout=subprocess.PIPE, text=True, check=False)
    elapsed_s = time.perf_counter() - started

    print(completed.stdout.rstrip())
    print()
    print(f"Load average (1 / 5 / 15 min) at end: {describe_load()}; the script ran {elapsed_s:.0f} s.")
    if completed.returncode != 0:
        print(f"**{name} failed with exit code {completed.returncode}; its error output is above on stderr.**")
    print()
    sys.stdout.flush()
    return completed.returncode == 0


def main() -> int:
    """Run every script in SCRIPTS; return 1 when any of them failed."""
    print(f"Machine: {describe_machine()}")
    print(f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"Code: {describe_revision(BENCH_DIR.parent)}")
    print()
    results = [run_script(name) for name in SCRIPTS]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
