"""Time the perceptual-hash lookup over 10,000 reference images and an embedding cache hit.

The hash table contains the 36 crop-view pHashes of the Streamlit screenshots (from
the shared real data when present) plus random hashes up to 10,000 images. Each
query is a Streamlit screenshot, or a drawn screen without that folder. The lookup
time excludes hashing the query, which is reported on its own row.

The cache rows time ``VisionEncoder.embed_images`` for an image whose vector is
already cached, in memory and on disk. No model is loaded: a cache hit needs none.

    .venv/bin/python bench/bench_image_index.py --runs 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_model  # noqa: E402
from core.image_index import CROP_SPLITS, HASH_WORDS, NEAR_DUPLICATE_MAX_BITS, HashTable, hash_query, hash_views  # noqa: E402
from core.intake import load_image  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.vision import VisionEncoder  # noqa: E402

REFERENCE_COUNT = 10_000
MAX_LOOKUP_MS = 20.0
MAX_CACHE_HIT_MS = 5.0
SHARED_DIR = Path(os.environ.get("SIGHTLINE_SHARED_DIR", Path(__file__).resolve().parent.parent.parent / "shared"))
STREAMLIT_IMAGES = SHARED_DIR / "realdata" / "kb_pairs" / "streamlit" / "images"


def query_images() -> list[Image.Image]:
    """Return the Streamlit screenshots, or one drawn screen when the shared folder is missing."""
    paths = sorted(STREAMLIT_IMAGES.glob("*.png")) if STREAMLIT_IMAGES.is_dir() else []
    if paths:
        return [Image.open(path).convert("RGB") for path in paths]
    image = Image.new("RGB", (1280, 800), "white")
    ImageDraw.Draw(image).rectangle((200, 200, 900, 500), fill=(220, 60, 60))
    return [image]


def build_table(real_views: list[np.ndarray], *, count: int, seed: int = 0) -> HashTable:
    """Return a table of the real views followed by random ones, ``count`` images in all."""
    rng = np.random.default_rng(seed)
    views = len(CROP_SPLITS) ** 2
    random_views = rng.integers(0, np.iinfo(np.uint64).max, size=(count - len(real_views), views, HASH_WORDS),
                                dtype=np.uint64, endpoint=True)
    return HashTable(real_views + list(random_views))


def time_ms(function, runs: int) -> list[float]:
    """Call ``function`` once to warm up, then ``runs`` times, and return each run's milliseconds."""
    function()
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def row(name: str, timings: list[float], limit_ms: float | None) -> str:
    """Format one Markdown table row: median and 95th percentile, and whether the median meets the limit."""
    median = statistics.median(timings)
    p95 = float(np.percentile(timings, 95))
    verdict = ""
    limit = ""
    if limit_ms is not None:
        verdict = "yes" if median <= limit_ms else "NO"
        limit = f"{limit_ms:g}"
    return f"| {name} | {median:.3f} | {p95:.3f} | {limit} | {verdict} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs per measurement (default 50)")
    arguments = parser.parse_args()

    images = query_images()
    table = build_table([hash_views(image) for image in images], count=REFERENCE_COUNT)
    queries = [hash_query(image) for image in images]
    found = [table.nearest(query, max_bits=NEAR_DUPLICATE_MAX_BITS) for query in queries]
    assert all(hits and hits[0][0] == index for index, hits in enumerate(found)), "a query missed its own image"

    lookups = []
    for query in queries:
        lookups += time_ms(lambda: table.nearest(query, max_bits=NEAR_DUPLICATE_MAX_BITS), arguments.runs)
    largest = max(images, key=lambda image: image.width * image.height)
    hashing = time_ms(lambda: hash_query(largest), max(5, arguments.runs // 5))

    with tempfile.TemporaryDirectory() as folder:
        settings = Settings.load(data_dir=Path(folder), clip_model="bench/cache-only")
        image_path = Path(folder) / "shot.png"
        images[0].save(image_path)
        image = load_image(image_path, settings=settings)

        encoder = VisionEncoder(settings=settings)
        encoder._store(image.id, np.ones(512, dtype=np.float32) / np.sqrt(512))
        memory_hits = time_ms(lambda: encoder.embed_images([image]), arguments.runs)

        disk_hits = []
        for _ in range(arguments.runs):
            fresh = VisionEncoder(settings=settings)
            started = time.perf_counter()
            fresh.embed_images([image])
            disk_hits.append((time.perf_counter() - started) * 1000)

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; {arguments.runs} runs per query")
    print()
    print("| measurement | median ms | p95 ms | limit ms | within limit |")
    print("| --- | --- | --- | --- | --- |")
    print(row(f"pHash lookup, {REFERENCE_COUNT:,} references x {len(CROP_SPLITS) ** 2} views", lookups,
              MAX_LOOKUP_MS))
    print(row(f"pHash of the largest query image ({largest.width}x{largest.height})", hashing, None))
    print(row("embedding cache hit, in memory", memory_hits, MAX_CACHE_HIT_MS))
    print(row("embedding cache hit, on disk (new encoder)", disk_hits, MAX_CACHE_HIT_MS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
