"""Benchmark the whole engine: a warm ask on a screenshot, retrieval over 1,000 sections, cold start.

Run from the repository root::

    .venv/bin/python bench/bench_pipeline.py
    .venv/bin/python bench/bench_pipeline.py --runs 9 --queries 30

Three measurements, each printed as Markdown with the load average next to it:

1. Warm ask: ``Sightline.ask`` on assets/sync-paused-quota.png in one process whose
   models are loaded, after one unmeasured warm-up ask. The engine caches OCR by
   the image's content hash, so every measured ask gets a fresh copy of the
   screenshot with one pixel changed, and OCR runs each time.
2. Retrieval: ``HybridRetriever.search`` over a synthetic knowledge base of
   100 Markdown documents with 10 ``##`` sections each, built from a fixed seed.
3. Cold start: imports, ``Sightline(...)`` and ``warm_up()`` in fresh subprocesses
   on an indexed data folder, and the wall time of one ``sightline ask --json``.

Everything is written to a temporary folder that is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from PIL import Image  # noqa: E402

from bench.common import describe_load, describe_machine, describe_revision, package_versions  # noqa: E402
from core.pipeline import Sightline  # noqa: E402
from core.settings import Settings  # noqa: E402

SCREENSHOT = REPO_ROOT / "assets" / "sync-paused-quota.png"
SCREENSHOT_SIZE_PX = (1280, 800)
QUESTION = "Why did sync pause and how do I fix it?"
STAGES = ("intake", "ocr", "retrieval", "answer", "total")

RUNS = 7
QUERIES = 20
COLD_RUNS = 3
SEED = 20240601
DOCUMENTS = 100
SECTIONS_PER_DOCUMENT = 10
SECTION_WORDS = (40, 120)
"""Range of words per synthetic section. At 120 words a section stays under the 1,500-character split."""
QUERY_WORDS = (3, 9)
CONTEXT_CHARS = 1200
"""Screenshot text the retriever adds to a query at most (core.retrieval.MAX_CONTEXT_CHARS)."""

END_TO_END_GOAL_MS = 1500
OCR_GOAL_MS = 600
RETRIEVAL_GOAL_MS = 50
COLD_START_GOAL_S = 10

COLD_START_CODE = """
import json, sys, time
started = time.perf_counter()
from core.pipeline import Sightline
from core.settings import Settings
imported = time.perf_counter()
engine = Sightline(settings=Settings.load(data_dir=sys.argv[1], kb_dir=sys.argv[2]))
engine.warm_up()
done = time.perf_counter()
print(json.dumps({"import_s": imported - started, "load_s": done - imported, "total_s": done - started}))
"""
"""Child program for the cold start: argv[1] is the indexed data folder, argv[2] the knowledge base."""


def main(argv: list[str] | None = None) -> int:
    """Run the three benchmarks and print machine information and Markdown tables."""
    parser = argparse.ArgumentParser(description="Benchmark the Sightline engine end to end.")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"measured asks after the warm-up (default {RUNS})")
    parser.add_argument("--queries", type=int, default=QUERIES, help=f"retrieval queries (default {QUERIES})")
    parser.add_argument("--cold-runs", type=int, default=COLD_RUNS,
                        help=f"cold-start subprocesses (default {COLD_RUNS})")
    args = parser.parse_args(argv)

    with Image.open(SCREENSHOT) as image:
        if image.size != SCREENSHOT_SIZE_PX:
            print(f"error: {SCREENSHOT} is {image.size[0]}x{image.size[1]}, expected 1280x800. Restore it with `git checkout -- assets`.", file=sys.stderr)
            return 2

    print(f"Machine: {describe_machine()}")
    print(f"Packages: {package_versions()}")
    print(f"Code: {describe_revision(REPO_ROOT)}")
    print(f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print()

    with tempfile.TemporaryDirectory(prefix="sightline-bench-") as temp:
        temp_dir = Path(temp)
        data_dir = bench_warm_ask(temp_dir, runs=args.runs)
        bench_retrieval(temp_dir, queries=args.queries)
        bench_cold_start(data_dir, kb_dir=Settings.load().kb_dir, runs=args.cold_runs)
    return 0


# --- 1. Warm ask -------------------------------------------------------------------------------

def bench_warm_ask(temp_dir: Path, *, runs: int) -> Path:
    """Time ``ask`` on fresh copies of the screenshot in a warm engine, and return the indexed data folder."""
    data_dir = temp_dir / "data"
    settings = Settings.load(data_dir=data_dir)
    engine = Sightline(settings=settings)
    index_report = engine.index(settings.kb_dir)
    engine.warm_up()
    engine.ask(QUESTION, image_paths=[write_variant(SCREENSHOT, temp_dir, 0)])

    load_before = describe_load()
    timings = {stage: [] for stage in STAGES}
    for run in range(1, runs + 1):
        answer = engine.ask(QUESTION, image_paths=[write_variant(SCREENSHOT, temp_dir, run)])
        for stage in STAGES:
            timings[stage].append(answer.timings_ms[stage])
    load_after = describe_load()

    print(f"## Warm ask on a 1280x800 screenshot ({SCREENSHOT.relative_to(REPO_ROOT)})")
    print()
    print(f"Question: {QUESTION!r}. Knowledge base: {settings.kb_dir.name}/ "
          f"({index_report.sections_total} sections). Median of {runs} asks after one warm-up ask. "
          "Each ask gets a copy of the screenshot with one pixel changed, so the OCR cache "
          "(keyed by content hash) never hits and OCR runs every time.")
    print(f"Load average (1 / 5 / 15 min) before: {load_before}; after: {load_after}")
    print()
    print("| stage | median ms | min ms | max ms | goal ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    goals = {"ocr": OCR_GOAL_MS, "total": END_TO_END_GOAL_MS}
    for stage in STAGES:
        values = timings[stage]
        goal = goals.get(stage)
        print(f"| {stage} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} | "
              f"{goal if goal else ''} |")
    print()
    return data_dir


def write_variant(source: Path, folder: Path, number: int) -> Path:
    """Write a PNG copy of ``source`` whose top-left pixel encodes ``number``, so its content hash is new."""
    path = folder / f"screenshot-{number}.png"
    with Image.open(source) as image:
        copy = image.convert("RGB")
    red, green, _ = copy.getpixel((0, 0))
    copy.putpixel((0, 0), (red, green, number % 256))
    copy.save(path)
    return path


# --- 2. Retrieval over 1,000 sections ----------------------------------------------------------

def bench_retrieval(temp_dir: Path, *, queries: int) -> None:
    """Index a synthetic knowledge base, then time HybridRetriever.search with and without embedding."""
    rng = random.Random(SEED)
    vocabulary = build_vocabulary(Settings.load().kb_dir)
    kb_dir = temp_dir / "synthetic-kb"
    write_synthetic_knowledge_base(kb_dir, vocabulary, rng)

    settings = Settings.load(data_dir=temp_dir / "synthetic-data", kb_dir=kb_dir)
    engine = Sightline(settings=settings)
    engine.warm_up()
    load_before_index = describe_load()
    report = engine.index(kb_dir)

    retriever = engine.retriever
    started = time.perf_counter()
    retriever.search("warm-up query")
    first_search_ms = (time.perf_counter() - started) * 1000

    questions = [random_words(vocabulary, rng, QUERY_WORDS) for _ in range(queries)]
    contexts = [[" ".join(random_words(vocabulary, rng, (250, 250)))[:CONTEXT_CHARS]] for _ in range(queries)]
    load_before = describe_load()
    rows = [
        ("question only", *time_search(retriever, questions, [[] for _ in questions])),
        (f"question + {CONTEXT_CHARS} chars of screenshot text", *time_search(retriever, questions, contexts)),
    ]
    load_after = describe_load()

    print(f"## Retrieval over {report.sections_total} sections")
    print()
    print(f"Synthetic knowledge base: {DOCUMENTS} Markdown documents x {SECTIONS_PER_DOCUMENT} sections of "
          f"{SECTION_WORDS[0]}-{SECTION_WORDS[1]} words drawn from the words of the demo knowledge base "
          f"(seed {SEED}). Indexing (embedding and writing to Chroma): {report.elapsed_ms / 1000:.1f} s, "
          f"load average before: {load_before_index}. First search, which builds the two BM25 indexes: "
          f"{first_search_ms:.0f} ms.")
    print(f"Median over {queries} queries of {QUERY_WORDS[0]}-{QUERY_WORDS[1]} words, top "
          f"{settings.retrieval_top_k}. Load average (1 / 5 / 15 min) before: {load_before}; after: {load_after}")
    print()
    print("| query | search ms (median / min / max) | without query embedding ms | embedding ms | goal ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, full_ms, without_embedding_ms, embedding_ms in rows:
        print(f"| {label} | {spread(full_ms)} | {spread(without_embedding_ms)} | {spread(embedding_ms)} | "
              f"{RETRIEVAL_GOAL_MS} |")
    print()


def build_vocabulary(kb_dir: Path) -> list[str]:
    """Return the distinct lowercase words of the demo knowledge base's Markdown files, sorted."""
    words: set[str] = set()
    for path in sorted(kb_dir.rglob("*.md")):
        words.update(re.findall(r"[a-z][a-z'-]{1,20}", path.read_text(encoding="utf-8").lower()))
    return sorted(words)


def random_words(vocabulary: list[str], rng: random.Random, count_range: tuple[int, int]) -> str:
    """Return a space-separated run of random words, its length drawn from ``count_range``."""
    return " ".join(rng.choices(vocabulary, k=rng.randint(*count_range)))


def write_synthetic_knowledge_base(kb_dir: Path, vocabulary: list[str], rng: random.Random) -> None:
    """Write DOCUMENTS Markdown files of SECTIONS_PER_DOCUMENT ``##`` sections each.

    The files have no ``#`` title line, because the text under a title would make an
    eleventh section per document.
    """
    kb_dir.mkdir(parents=True)
    for document in range(DOCUMENTS):
        parts = []
        for section in range(SECTIONS_PER_DOCUMENT):
            heading = random_words(vocabulary, rng, (2, 5)).capitalize()
            body = random_words(vocabulary, rng, SECTION_WORDS).capitalize() + "."
            parts.append(f"## {heading} {document}.{section}\n\n{body}\n")
        (kb_dir / f"doc-{document:03d}.md").write_text("\n".join(parts), encoding="utf-8")


def time_search(retriever, questions: list[str], contexts: list[list[str]]) -> tuple[list[float], ...]:
    """Return per-query milliseconds of the full search, the search given the vector, and the embedding."""
    full_ms, without_embedding_ms, embedding_ms = [], [], []
    for question, context in zip(questions, contexts):
        started = time.perf_counter()
        retriever.search(question, context=context)
        full_ms.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        vector = retriever.embedder.embed([retriever.build_dense_query(question, context)])[0]
        embedding_ms.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        retriever.search(question, context=context, query_vector=vector)
        without_embedding_ms.append((time.perf_counter() - started) * 1000)
    return full_ms, without_embedding_ms, embedding_ms


def spread(values: list[float]) -> str:
    """Format the median, minimum and maximum of ``values`` as "median / min / max"."""
    return f"{statistics.median(values):.1f} / {min(values):.1f} / {max(values):.1f}"


# --- 3. Cold start -----------------------------------------------------------------------------

def bench_cold_start(data_dir: Path, *, kb_dir: Path, runs: int) -> None:
    """Time imports and model loads in fresh interpreters, then one cold `sightline ask --json`."""
    load_before = describe_load()
    records = []
    for _ in range(runs):
        started = time.perf_counter()
        completed = subprocess.run([sys.executable, "-c", COLD_START_CODE, str(data_dir), str(kb_dir)],
                                   cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        record = json.loads(completed.stdout.strip().splitlines()[-1])
        record["wall_s"] = time.perf_counter() - started
        records.append(record)
    load_after = describe_load()

    cli_load_before = describe_load()
    cli_wall_s, cli_timings = time_cli_ask(data_dir, kb_dir)
    cli_load_after = describe_load()

    print("## Cold start")
    print()
    print(f"Fresh `{Path(sys.executable).name} -c` subprocesses on a data folder indexed in part 1: "
          "import core.pipeline, then `Sightline(settings=...)` and `warm_up()`, which loads the "
          f"text embedding model and reads the sections from Chroma (Whisper is not loaded). Median of {runs}. "
          f"Load average (1 / 5 / 15 min) before: {load_before}; after: {load_after}")
    print()
    print("| part | median s | min s | max s | goal s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for key, label in (("import_s", "imports"), ("load_s", "Sightline() + warm_up()"),
                       ("total_s", "imports + loads"), ("wall_s", "subprocess wall time")):
        values = [record[key] for record in records]
        goal = COLD_START_GOAL_S if key == "total_s" else ""
        print(f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | {goal} |")
    print()
    print(f"One cold `sightline ask --json --image {SCREENSHOT.relative_to(REPO_ROOT)}` on the same data folder "
          f"(includes the incremental re-index check): wall time {cli_wall_s:.2f} s; the command's own timings_ms: "
          f"{format_timings(cli_timings)}. Load average before: {cli_load_before}; after: {cli_load_after}")
    print()


def time_cli_ask(data_dir: Path, kb_dir: Path) -> tuple[float, dict[str, float]]:
    """Run one `sightline ask --json` in a new process; return its wall seconds and its timings_ms."""
    command = [str(Path(sys.executable).with_name("sightline")), "ask", "--json", "--data-dir", str(data_dir),
               "--kb", str(kb_dir), "--image", str(SCREENSHOT), QUESTION]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    wall_s = time.perf_counter() - started
    return wall_s, json.loads(completed.stdout)["timings_ms"]


def format_timings(timings: dict[str, float]) -> str:
    """Format a timings_ms mapping as "stage 123 ms" pairs in the command's order."""
    return ", ".join(f"{stage} {milliseconds:.0f} ms" for stage, milliseconds in timings.items())


if __name__ == "__main__":
    sys.exit(main())
