"""Time OcrStage.run on a rendered 1280x800 screenshot and print a Markdown table row.

The screenshot has a light sidebar, body text, a filled button and a dark code panel,
drawn with DejaVu fonts at 14 px. One warm-up run comes first, then the median of
the timed runs is reported, with the CPU model and the core count.

    .venv/bin/python bench/bench_ocr.py --runs 7
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_model  # noqa: E402
from core.intake import load_image  # noqa: E402
from core.ocr import PAGE_SEGMENTATION_MODE, OcrStage  # noqa: E402
from core.settings import Settings  # noqa: E402

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
SCREEN_SIZE_PX = (1280, 800)
FONT_SIZE_PX = 14

BODY_LINES = [
    "Something went wrong while starting the application server.",
    "Check the logs in the lower right corner for the full traceback.",
    "ModuleNotFoundError: No module named 'pandas' in requirements.txt",
    "If the problem persists, reboot the app from the Manage app menu.",
    "Apps without traffic for 12 hours go to sleep to save resources.",
]
CODE_LINES = [
    "$ streamlit run app.py",
    "Traceback (most recent call last):",
    '  File "app.py", line 3, in <module>',
    "    import pandas as pd",
    "ModuleNotFoundError: No module named 'pandas'",
]
SIDEBAR_ITEMS = ["Home", "Deployments", "Settings", "Logs", "Billing", "Help"]


def render_screenshot() -> Image.Image:
    """Draw a 1280x800 app screenshot with light and dark regions, as a user would upload it."""
    image = Image.new("RGB", SCREEN_SIZE_PX, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    sans = ImageFont.truetype(str(FONT_DIR / "DejaVuSans.ttf"), FONT_SIZE_PX)
    bold = ImageFont.truetype(str(FONT_DIR / "DejaVuSans-Bold.ttf"), 22)
    mono = ImageFont.truetype(str(FONT_DIR / "DejaVuSansMono.ttf"), FONT_SIZE_PX)

    draw.rectangle((0, 0, 240, 800), fill=(240, 242, 246))
    for index, item in enumerate(SIDEBAR_ITEMS):
        draw.text((24, 80 + index * 36), item, font=sans, fill=(49, 51, 63))

    draw.text((280, 40), "Error running app", font=bold, fill=(0, 0, 0))
    for index, line in enumerate(BODY_LINES):
        draw.text((280, 100 + index * 26), line, font=sans, fill=(49, 51, 63))

    draw.rounded_rectangle((280, 260, 460, 300), 6, fill=(30, 130, 230))
    draw.text((300, 272), "Reboot this app", font=sans, fill=(255, 255, 255))

    draw.rectangle((280, 340, 1240, 560), fill=(30, 30, 36))
    for index, line in enumerate(CODE_LINES):
        draw.text((300, 360 + index * 24), line, font=mono, fill=(230, 230, 230))

    for index in range(6):
        row = f"Row {index + 1}: status healthy, memory 512 MB, uptime {3 + index} days"
        draw.text((280, 600 + index * 26), row, font=sans, fill=(49, 51, 63))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs after the warm-up run (default 7)")
    arguments = parser.parse_args()

    settings = Settings.load()
    buffer = io.BytesIO()
    render_screenshot().save(buffer, format="PNG")
    image = load_image(buffer.getvalue(), source="bench-1280x800.png", settings=settings)
    stage = OcrStage(settings=settings)

    result = stage.run(image)
    timings_ms = []
    for _ in range(arguments.runs):
        started = time.perf_counter()
        stage.run(image)
        timings_ms.append((time.perf_counter() - started) * 1000)

    print("| machine | cores | OMP_THREAD_LIMIT | image | psm | lines | median ms | min ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {cpu_model()} | {os.cpu_count()} | {settings.ocr_threads} | "
        f"{SCREEN_SIZE_PX[0]}x{SCREEN_SIZE_PX[1]} screenshot | {PAGE_SEGMENTATION_MODE} | {len(result.lines)} | "
        f"{statistics.median(timings_ms):.0f} | {min(timings_ms):.0f} | {max(timings_ms):.0f} |"
    )


if __name__ == "__main__":
    main()
