"""Benchmark the citation check: milliseconds it adds to one answer.

Run from the repository root::

    .venv/bin/python bench/bench_verify.py
    .venv/bin/python bench/bench_verify.py --runs 9

The script answers the questions of assets/MANIFEST.tsv about their screenshots
with the demo knowledge base once, then times ``CitationVerifier.verify`` on each
answer in three forms:

1. as the extractive engine wrote it, without the question: verbatim quotes need
   no embedding;
2. as written, with the question, as ``Sightline.ask`` runs it: the question and the
   cited section sentences are embedded for the relevance factor, and the question
   is new on every run (padded with spaces, so the vector cache misses);
3. with every marker shifted by one, so each sentence fails its marker and is
   repaired, with the evidence vectors cached by an earlier call;
4. the shifted form with a fresh verifier, so no evidence vector is cached.

It prints the median and maximum over answers of the per-answer median over runs,
as Markdown. Everything is written to a temporary folder that is deleted at the end.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.common import describe_load, describe_machine, package_versions  # noqa: E402
from core.pipeline import Sightline  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.verify import CitationVerifier  # noqa: E402

RUNS = 5
GOAL_MS = 100


def read_cases() -> list[tuple[str, str]]:
    """Return (screenshot file, question) pairs from the asset manifest."""
    with (REPO_ROOT / "assets" / "MANIFEST.tsv").open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(row["file"], row["question"]) for row in rows if row["question"] and not row["file"].startswith("voice/")]


def shift_markers(text: str) -> str:
    return re.sub(r"\[(\d+)\]", lambda match: f"[{int(match.group(1)) + 1}]", text)


def time_ms(function, runs: int) -> float:
    """Return the median wall time of ``function()`` over ``runs`` calls, in milliseconds."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"timed calls per answer and form (default {RUNS})")
    parser.add_argument("--torch-threads", type=int, help="set torch's intra-op thread count (default: torch's own)")
    arguments = parser.parse_args(argv)
    if arguments.torch_threads:
        import torch

        torch.set_num_threads(arguments.torch_threads)

    print(f"Machine: {describe_machine()}")
    print(f"Packages: {package_versions()}")
    print(f"Load average (1 / 5 / 15 min) at start: {describe_load()}")
    print(f"Torch threads: {arguments.torch_threads or 'default'}")
    print()

    with tempfile.TemporaryDirectory(prefix="sightline-bench-verify-") as folder:
        settings = Settings.load(data_dir=Path(folder) / "data", kb_dir=REPO_ROOT / "knowledge_base")
        engine = Sightline(settings=settings)
        engine.index()
        engine.warm_up()
        answers = [engine.ask(question, image_paths=[REPO_ROOT / "assets" / file]) for file, question in read_cases()]

        # The pipeline already verified these answers; verify the text the engine wrote again.
        verifier = CitationVerifier(embedder=engine.embedder, settings=settings)
        forms: dict[str, list[float]] = {"extractive, as written": [], "as written, with the question": [],
                                          "markers shifted, cache warm": [], "markers shifted, cache cold": []}
        padding = itertools.count(1)
        for answer, (_, question) in zip(answers, read_cases()):
            text, citations = answer.text, answer.citations
            shifted = shift_markers(text)
            forms["extractive, as written"].append(time_ms(lambda: verifier.verify(text, citations), arguments.runs))
            forms["as written, with the question"].append(time_ms(
                lambda: verifier.verify(text, citations, question=question + " " * next(padding)), arguments.runs))
            verifier.verify(shifted, citations)
            forms["markers shifted, cache warm"].append(
                time_ms(lambda: verifier.verify(shifted, citations), arguments.runs))
            forms["markers shifted, cache cold"].append(time_ms(
                lambda: CitationVerifier(embedder=engine.embedder, settings=settings).verify(shifted, citations),
                arguments.runs))

    print(f"Citation check over {len(answers)} answers, median of {arguments.runs} runs per answer "
          f"(goal: at most {GOAL_MS} ms added per answer)")
    print()
    print("| answer form | median ms | max ms |")
    print("|---|---:|---:|")
    for form, samples in forms.items():
        print(f"| {form} | {statistics.median(samples):.1f} | {max(samples):.1f} |")
    print()
    print(f"Load average (1 / 5 / 15 min) at end: {describe_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
