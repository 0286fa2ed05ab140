"""Tests of the OCR stage on real scans and screenshots, and on text that the tests render."""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

import core.ocr as ocr
from core.intake import load_image
from core.ocr import OcrStage
from core.settings import Settings
from core.types import Box, ImageInput, OcrResult

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
MAX_CER = 0.02
BOX_TOLERANCE_PX = 6

DRAWN_LINES = [
    "Connection refused while syncing your workspace",
    "Retry in 30 seconds or check the proxy settings",
    "Error code TP-4021: storage quota exceeded",
]

MORE_LINES = [
    "The quick brown fox jumps over the lazy dog",
    "Open the sync panel and choose Resume now",
    "Storage used: 15.2 GB of 15 GB on this plan",
]

STREAMLIT_PHRASES = {
    "huh-this-isnt-supposed-to-happen.png": ["supposed to happen", "Please contact support."],
    "app-state-oh-no.png": ["Error running app", "Streamlit docs and forums"],
    "app-state-oh-no-developer.png": ["Error running app", "Manage app"],
    "app-state-zzzz.png": ["zzzz", "gone to sleep due to inactivity", "yes, get this app back up!"],
    "unserializable-session-state-error.png": [
        "UnserializableSessionStateError",
        "Cannot serialize the value",
        "pickle-serializable type",
    ],
    "GitHub-auth-denied-XL.png": ["Organization access", "we-love-streamlit"],
    # NOTE: Tesseract 5.3's TSV output, which image_to_data parses, leaves out "per" in
    # "Resources per app" although its plain-text output has it.
    "workspace-settings-limits.png": ["Resources", "2.7 GBs", "Private apps", "Unlimited"],
}


@dataclass
class Drawn:
    """A rendered image and the ink box of each line of text drawn on it."""

    image: Image.Image
    boxes: dict[str, Box]


def render_lines(
    lines: list[str],
    *,
    font_px: int,
    background: tuple[int, int, int] = (255, 255, 255),
    ink: tuple[int, int, int] = (20, 20, 20),
    size: tuple[int, int] | None = None,
) -> Drawn:
    """Draw lines of DejaVu Sans text and record the ink box of each."""
    font = ImageFont.truetype(str(FONT_DIR / "DejaVuSans.ttf"), font_px)
    margin = font_px * 2
    line_step = int(font_px * 2)
    size = size or (font_px * 36, margin * 2 + line_step * len(lines))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)

    boxes = {}
    for index, line in enumerate(lines):
        position = (margin, margin + index * line_step)
        draw.text(position, line, font=font, fill=ink)
        left, top, right, bottom = draw.textbbox(position, line, font=font)
        boxes[line] = Box(left=left, top=top, width=right - left, height=bottom - top)
    return Drawn(image=image, boxes=boxes)


def as_input(image: Image.Image, settings: Settings, source: str = "rendered.png") -> ImageInput:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return load_image(buffer.getvalue(), source=source, settings=settings)


TYPOGRAPHIC_QUOTES = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"'})


def normalize(text: str) -> str:
    """Collapse whitespace and straighten quotes, which Tesseract's English model prints curly."""
    return " ".join(text.translate(TYPOGRAPHIC_QUOTES).split())


def levenshtein(first: str, second: str) -> int:
    """Count the insertions, deletions and substitutions that turn first into second."""
    previous = list(range(len(second) + 1))
    for i, first_character in enumerate(first, start=1):
        current = [i]
        for j, second_character in enumerate(second, start=1):
            current.append(min(
                previous[j] + 1,
                current[j - 1] + 1,
                previous[j - 1] + (first_character != second_character),
            ))
        previous = current
    return previous[-1]


def character_error_rate(hypothesis: str, reference: str) -> float:
    reference = normalize(reference)
    return levenshtein(normalize(hypothesis), reference) / len(reference)


def find_line(result: OcrResult, text: str):
    """Return the OCR line whose text, whitespace aside, equals text."""
    matches = [line for line in result.lines if normalize(line.text) == normalize(text)]
    assert matches, f"{text!r} not read; lines: {[line.text for line in result.lines]}"
    return matches[0]


def assert_box_near(actual: Box, expected: Box, tolerance_px: int = BOX_TOLERANCE_PX) -> None:
    assert abs(actual.left - expected.left) <= tolerance_px, (actual, expected)
    assert abs(actual.top - expected.top) <= tolerance_px, (actual, expected)
    assert abs(actual.width - expected.width) <= tolerance_px, (actual, expected)
    assert abs(actual.height - expected.height) <= tolerance_px, (actual, expected)


@pytest.fixture(scope="module")
def stage() -> OcrStage:
    return OcrStage(settings=Settings.load())


@pytest.mark.parametrize(
    ("file_name", "rotation_degrees"),
    [("phototest.png", 0), ("phototest-rotated-180.png", 180), ("phototest-rotated-L.png", 90)],
)
def test_phototest_cer(realdata: Path, stage: OcrStage, file_name: str, rotation_degrees: int) -> None:
    folder = realdata / "ocr" / "tesseract"
    image = load_image(folder / file_name, settings=stage.settings)
    reference = (folder / "phototest.txt").read_text()

    result = stage.run(image)

    assert character_error_rate(result.text, reference) <= MAX_CER
    assert result.rotation_degrees == rotation_degrees


def test_rotated_boxes_in_original_coordinates(realdata: Path, stage: OcrStage) -> None:
    folder = realdata / "ocr" / "tesseract"
    upright = stage.run(load_image(folder / "phototest.png", settings=stage.settings))
    turned = stage.run(load_image(folder / "phototest-rotated-180.png", settings=stage.settings))
    sideways = stage.run(load_image(folder / "phototest-rotated-L.png", settings=stage.settings))
    first = upright.lines[0].box

    # Upside down, the first line sits mirrored in both axes of the 640x480 page.
    expected_turned = Box(640 - first.left - first.width, 480 - first.top - first.height, first.width, first.height)
    assert_box_near(turned.lines[0].box, expected_turned, tolerance_px=10)

    # Turned left, the first line runs up the left edge: tall and narrow.
    sideways_box = sideways.lines[0].box
    assert sideways_box.height > 5 * sideways_box.width
    assert sideways_box.left < 120


@pytest.mark.parametrize("turn_degrees", [90, 270])
def test_rendered_rotation_boxes(stage: OcrStage, settings: Settings, turn_degrees: int) -> None:
    drawn = render_lines(DRAWN_LINES + MORE_LINES, font_px=20)
    width, height = drawn.image.size
    # Image.rotate turns counter-clockwise, so the stage must turn the page clockwise by the same angle.
    turned = drawn.image.rotate(turn_degrees, expand=True, fillcolor=(255, 255, 255))

    result = stage.run(as_input(turned, settings))

    # Tesseract reads some sideways text blocks without OSD, and then no rotation is needed.
    assert result.rotation_degrees in (0, turn_degrees)
    assert [normalize(line.text) for line in result.lines] == DRAWN_LINES + MORE_LINES
    box = drawn.boxes[DRAWN_LINES[0]]
    if turn_degrees == 90:
        expected = Box(box.top, width - box.left - box.width, box.height, box.width)
    else:
        expected = Box(height - box.top - box.height, box.left, box.height, box.width)
    assert_box_near(find_line(result, DRAWN_LINES[0]).box, expected)


def test_light_on_dark_read(stage: OcrStage, settings: Settings) -> None:
    drawn = render_lines(DRAWN_LINES, font_px=18, background=(24, 26, 32), ink=(225, 228, 235))

    result = stage.run(as_input(drawn.image, settings))

    assert result.inverted
    assert [normalize(line.text) for line in result.lines] == DRAWN_LINES
    for line in DRAWN_LINES:
        assert_box_near(find_line(result, line).box, drawn.boxes[line])


def test_dark_panel_in_light_page(stage: OcrStage, settings: Settings) -> None:
    drawn = render_lines(DRAWN_LINES, font_px=16, size=(800, 400))
    draw = ImageDraw.Draw(drawn.image)
    draw.rectangle((20, 220, 780, 380), fill=(30, 30, 36))
    mono = ImageFont.truetype(str(FONT_DIR / "DejaVuSansMono.ttf"), 16)
    draw.text((40, 250), "Traceback (most recent call last):", font=mono, fill=(230, 230, 230))
    draw.text((40, 290), "ModuleNotFoundError: No module named 'pandas'", font=mono, fill=(230, 230, 230))

    result = stage.run(as_input(drawn.image, settings))

    assert result.inverted
    text = normalize(result.text)
    assert "Traceback (most recent call last):" in text
    assert "No module named 'pandas'" in text
    assert DRAWN_LINES[2] in text


def test_white_on_coloured_button(stage: OcrStage, settings: Settings) -> None:
    image = Image.new("RGB", (480, 160), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((40, 50, 330, 110), 8, fill=(255, 75, 75))
    font = ImageFont.truetype(str(FONT_DIR / "DejaVuSans.ttf"), 20)
    draw.text((64, 68), "Manage this app", font=font, fill=(255, 255, 255))

    result = stage.run(as_input(image, settings))

    assert result.inverted
    assert normalize(result.text) == "Manage this app"


def test_dark_text_not_inverted(stage: OcrStage, settings: Settings) -> None:
    drawn = render_lines(DRAWN_LINES, font_px=18)

    result = stage.run(as_input(drawn.image, settings))

    assert not result.inverted
    assert result.scale == 1.0
    assert result.rotation_degrees == 0


def test_small_text_enlarged(stage: OcrStage, settings: Settings) -> None:
    drawn = render_lines(DRAWN_LINES, font_px=9)

    result = stage.run(as_input(drawn.image, settings))

    assert result.scale > 1.0
    assert character_error_rate(result.text, "\n".join(DRAWN_LINES)) <= MAX_CER
    for line in DRAWN_LINES:
        assert_box_near(find_line(result, line).box, drawn.boxes[line], tolerance_px=4)


def test_boxes_on_drawn_text(stage: OcrStage, settings: Settings) -> None:
    drawn = render_lines(DRAWN_LINES, font_px=18)
    image = as_input(drawn.image, settings)

    result = stage.run(image)

    for line in DRAWN_LINES:
        ocr_line = find_line(result, line)
        assert_box_near(ocr_line.box, drawn.boxes[line])
        assert len(ocr_line.words) == len(line.split())
        assert ocr_line.confidence > 80


def test_line_ids_in_reading_order(stage: OcrStage, settings: Settings) -> None:
    image = as_input(render_lines(DRAWN_LINES, font_px=18).image, settings)

    result = stage.run(image)

    assert result.image_id == image.id
    assert [line.id for line in result.lines] == [f"{image.id}#L{n}" for n in range(1, len(DRAWN_LINES) + 1)]
    assert [normalize(line.text) for line in result.lines] == DRAWN_LINES


def test_blank_image_has_no_lines(stage: OcrStage, settings: Settings) -> None:
    result = stage.run(as_input(Image.new("RGB", (300, 200), (255, 255, 255)), settings))
    assert result.lines == []


@pytest.mark.parametrize(("file_name", "phrases"), list(STREAMLIT_PHRASES.items()))
def test_streamlit_screenshot_phrases(realdata: Path, stage: OcrStage, file_name: str, phrases: list[str]) -> None:
    path = realdata / "kb_pairs" / "streamlit" / "images" / file_name
    result = stage.run(load_image(path, settings=stage.settings))

    # Case is ignored because bold "Zzzz" reads as "ZZZz" as often as not.
    text = normalize(result.text).lower()
    for phrase in phrases:
        assert phrase.lower() in text


def test_streamlit_boxes_inside_image(realdata: Path, stage: OcrStage) -> None:
    path = realdata / "kb_pairs" / "streamlit" / "images" / "cloud-logs.png"
    image = load_image(path, settings=stage.settings)

    result = stage.run(image)

    assert len(result.lines) > 20
    for line in result.lines:
        assert line.box.left >= 0
        assert line.box.top >= 0
        assert line.box.left + line.box.width <= image.width
        assert line.box.top + line.box.height <= image.height


GARBAGE_CASES = [
    (["|"], 90.0, True),
    (["—", "..."], 90.0, True),
    (["e"], 20.0, True),
    (["1"], 90.0, False),
    (["OK"], 25.0, False),
    (["Settings"], 5.0, True),
    (["Settings"], 60.0, False),
]


@pytest.mark.parametrize(("texts", "confidence", "garbage"), GARBAGE_CASES)
def test_garbage_line_filter(texts: list[str], confidence: float, garbage: bool) -> None:
    words = [ocr._Word(key=(1, 1, 1), text=text, confidence=confidence, left=0, top=0, width=5, height=5) for text in texts]
    assert ocr._is_garbage(words) is garbage


def record_thread_limit(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Record OMP_THREAD_LIMIT at each image_to_data call, which still runs Tesseract."""
    seen: list[str | None] = []
    real_image_to_data = ocr.pytesseract.image_to_data

    def recording_image_to_data(*args, **kwargs):
        seen.append(os.environ.get("OMP_THREAD_LIMIT"))
        return real_image_to_data(*args, **kwargs)

    monkeypatch.setattr(ocr.pytesseract, "image_to_data", recording_image_to_data)
    return seen


def test_omp_thread_limit_during_call(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    seen = record_thread_limit(monkeypatch)
    settings.ocr_threads = 2
    OcrStage(settings=settings).run(as_input(render_lines(DRAWN_LINES, font_px=18).image, settings))

    assert seen == ["2"]
    assert "OMP_THREAD_LIMIT" not in os.environ


def test_omp_thread_limit_user_value_kept(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("OMP_THREAD_LIMIT", "3")
    seen = record_thread_limit(monkeypatch)
    OcrStage(settings=settings).run(as_input(render_lines(DRAWN_LINES, font_px=18).image, settings))

    assert seen == ["3"]
    assert os.environ["OMP_THREAD_LIMIT"] == "3"


def test_log_has_timing_not_text(stage: OcrStage, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    image = as_input(render_lines(DRAWN_LINES, font_px=18).image, settings)

    with caplog.at_level(logging.DEBUG, logger="core.ocr"):
        stage.run(image)

    messages = [record.getMessage() for record in caplog.records if record.name == "core.ocr"]
    assert any(re.search(r"in \d+ ms", message) for message in messages)
    for message in messages:
        for line in DRAWN_LINES:
            for word in line.split():
                if len(word) > 4:
                    assert word not in message


def test_missing_tesseract_message(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setattr(ocr.pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")

    with pytest.raises(ocr.SightlineError) as raised:
        OcrStage(settings=settings).run(as_input(render_lines(DRAWN_LINES, font_px=18).image, settings))
    assert "tesseract-ocr" in str(raised.value)
