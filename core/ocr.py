"""OCR stage: read the text lines of a screenshot with Tesseract, each with its box.

Before Tesseract reads the image, the stage prepares a greyscale copy:

1. Light-on-dark regions (dark themes, code panels, filled buttons) are inverted,
   because Tesseract's LSTM model reads dark text on a light background best.
2. Small text is enlarged: a line height under ``SMALL_LINE_HEIGHT_PX`` is read at
   2x, under ``TINY_LINE_HEIGHT_PX`` at 3x.
3. Only when the first reading looks poor, Tesseract's orientation detection (OSD)
   runs, and a scan that lies on its side or upside down is turned upright and read again.

Every box in the result is in the coordinates of the intake image as the user gave
it: unscaled, and not rotated, so a rotated scan gets boxes that lie across its
rotated text. The UI draws them on the user's own image.

Example::

    result = OcrStage(settings=settings).run(image)
    for line in result.lines:
        print(line.id, line.box.as_list(), line.text)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytesseract
from PIL import Image, ImageFilter

from core.settings import Settings
from core.types import Box, ImageInput, OcrLine, OcrResult, OcrWord, SightlineError

logger = logging.getLogger(__name__)

OCR_LANGUAGE = "eng"
PAGE_SEGMENTATION_MODE = 3
"""Tesseract's automatic page segmentation (--psm 3), the best of modes 3, 4, 6 and 11 on screenshots."""
OCR_TIMEOUT_S = 60
"""Upper bound for one Tesseract call. The limit is an estimate with a wide margin, not a measured time."""

DARK_LUMINANCE = 128
"""Regions whose background luminance (0 to 255) is below this are inverted."""
POLARITY_BLOCK_PX = 8
POLARITY_WINDOW_BLOCKS = 7
TEXT_CONTRAST = 48
"""Pixels that differ from their background luminance by more than this count as text."""
MIN_TEXT_PIXELS = 16
"""Fewer light text pixels than this in a window are too few to call it light text."""
LIGHT_TEXT_RATIO = 2
"""Light text pixels must outnumber dark ones by this factor, so a grey overlay with dark text stays as it is."""

INK_CONTRAST = 48
"""A pixel darker than the median luminance by this much counts as text ink when estimating text size."""
PROFILE_STRIP_PX = 128
"""Width of the vertical strips whose rows are profiled to measure line heights."""
SMALL_LINE_HEIGHT_PX = 13
TINY_LINE_HEIGHT_PX = 8
MIN_INK_RUN_PX = 3

POOR_MEAN_CONFIDENCE = 60.0
POOR_MIN_WORDS = 3
MIN_OSD_CONFIDENCE = 1.5
"""Tesseract's orientation confidence below which the detected rotation is ignored."""

MIN_LINE_CONFIDENCE = 10.0
TALL_WORD_RATIO = 2.5
"""A word this many times taller than its line's median word is dropped as an icon or a shape."""
MIN_SINGLE_CHARACTER_CONFIDENCE = 30.0
COLUMN_GAP_RATIO = 3.0
"""A gap between two words wider than this many median word heights splits a line in two.

Tesseract joins words across columns (a sidebar and a banner) into one line; word
spacing inside a sentence stays under one word height.
"""
ICON_WORD_MAX_CONFIDENCE = 60.0
"""A short word split off a line by a column gap, below this confidence, is an icon read as letters."""
ICON_WORD_MAX_CHARS = 4

TILE_HEIGHT_PX = 4000
"""Images taller than this (long scrolling screenshots) are read in horizontal tiles of this height."""
TILE_OVERLAP_PX = 200
"""Rows that two neighbouring tiles share, so a line cut by one tile's edge is whole in the other."""

_omp_lock = threading.Lock()
_omp_users = 0


@dataclass
class _Word:
    """A word from image_to_data in the coordinates of the image Tesseract read."""

    key: tuple[int, int, int]
    """(block, paragraph, line), the line the word belongs to."""
    text: str
    confidence: float
    left: int
    top: int
    width: int
    height: int


@dataclass
class _Prepared:
    """The greyscale image that Tesseract reads, and how it was made from the intake image."""

    image: Image.Image
    inverted: bool
    scale: int


class OcrStage:
    """Read the text lines of an intake image with Tesseract through pytesseract."""

    def __init__(self, *, settings: Settings) -> None:
        self.settings = settings
        # Tesseract's own retry of inverted lines is off, because the stage inverts dark regions itself.
        self.config = f"--oem 1 --psm {PAGE_SEGMENTATION_MODE} -c tessedit_do_invert=0"

    def run(self, image: ImageInput) -> OcrResult:
        """Read the lines of an image in reading order, with boxes in the intake image's coordinates.

        Raises SightlineError when Tesseract is missing or fails.
        """
        if image.height > TILE_HEIGHT_PX:
            return self._run_tiles(image)

        started = time.perf_counter()
        prepared = prepare_image(image.image)

        words = self._read_words(prepared.image)
        rotation_degrees = 0
        if _looks_poor(words):
            rotation_degrees, words = self._read_rotated(prepared.image, words)

        lines = _group_lines(
            words,
            image=image,
            scale=prepared.scale,
            rotation_degrees=rotation_degrees,
            prepared_size=prepared.image.size,
        )

        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.info(
            "OCR of %s: %d lines in %.0f ms (scale %d, inverted %s, rotation %d)",
            image.id, len(lines), elapsed_ms, prepared.scale, prepared.inverted, rotation_degrees,
        )
        return OcrResult(
            image_id=image.id,
            lines=lines,
            rotation_degrees=rotation_degrees,
            inverted=prepared.inverted,
            scale=float(prepared.scale),
        )

    def _run_tiles(self, image: ImageInput) -> OcrResult:
        """Read a tall image in overlapping tiles and join their lines, with boxes in the whole image.

        A line read in the overlap belongs to the tile that holds its vertical centre
        away from the edge, so it is kept once. Rotation detection runs per tile.
        """
        tops = list(range(0, image.height - TILE_OVERLAP_PX, TILE_HEIGHT_PX - TILE_OVERLAP_PX))
        lines: list[OcrLine] = []
        results = []
        for index, top in enumerate(tops):
            bottom = min(top + TILE_HEIGHT_PX, image.height)
            tile = dataclasses.replace(image, image=image.image.crop((0, top, image.width, bottom)))
            result = self.run(tile)
            results.append(result)

            owned_top = top + (TILE_OVERLAP_PX // 2 if index > 0 else 0)
            owned_bottom = bottom - (TILE_OVERLAP_PX // 2 if index < len(tops) - 1 else 0)
            for line in result.lines:
                shifted = _shift_line(line, dy=top, line_id=f"{image.id}#L{len(lines) + 1}")
                centre = shifted.box.top + shifted.box.height / 2
                if owned_top <= centre < owned_bottom:
                    lines.append(shifted)

        logger.info("OCR of %s in %d tiles: %d lines", image.id, len(tops), len(lines))
        return OcrResult(
            image_id=image.id,
            lines=lines,
            rotation_degrees=results[0].rotation_degrees,
            inverted=any(result.inverted for result in results),
            scale=max(result.scale for result in results),
        )

    def _read_rotated(self, prepared: Image.Image, words: list[_Word]) -> tuple[int, list[_Word]]:
        """Detect the page orientation and read again upright; keep the better of the two readings."""
        rotation_degrees = self._detect_rotation(prepared)
        if rotation_degrees == 0:
            return 0, words

        # Image.rotate turns counter-clockwise, so a negative angle turns clockwise.
        upright = prepared.rotate(-rotation_degrees, expand=True)
        upright_words = self._read_words(upright)
        if _quality(upright_words) <= _quality(words):
            logger.debug("Kept the unrotated reading: OSD proposed %d degrees but read worse", rotation_degrees)
            return 0, words
        return rotation_degrees, upright_words

    def _detect_rotation(self, prepared: Image.Image) -> int:
        """Return the clockwise rotation in degrees that makes the text upright, per Tesseract's OSD."""
        try:
            with _tesseract_input(prepared) as path, _omp_thread_limit(self.settings.ocr_threads):
                osd = pytesseract.image_to_osd(
                    path, config="--psm 0", output_type=pytesseract.Output.DICT, timeout=OCR_TIMEOUT_S
                )
        except pytesseract.TesseractError as error:
            # OSD fails on pages with too few characters, and when osd.traineddata is missing.
            logger.debug("Orientation detection failed, reading as is: %s", error.message)
            return 0
        except RuntimeError as error:
            logger.warning("Orientation detection timed out after %d s, reading as is: %s", OCR_TIMEOUT_S, error)
            return 0

        if float(osd.get("orientation_conf", 0.0)) < MIN_OSD_CONFIDENCE:
            return 0
        return int(osd.get("rotate", 0)) % 360

    def _read_words(self, prepared: Image.Image) -> list[_Word]:
        """Run Tesseract on a prepared image and return its non-empty words."""
        try:
            with _tesseract_input(prepared) as path, _omp_thread_limit(self.settings.ocr_threads):
                data = pytesseract.image_to_data(
                    path,
                    lang=OCR_LANGUAGE,
                    config=self.config,
                    output_type=pytesseract.Output.DICT,
                    timeout=OCR_TIMEOUT_S,
                )
        except pytesseract.TesseractNotFoundError as error:
            raise SightlineError(
                "Tesseract is not installed or not on PATH; install the Debian packages "
                "tesseract-ocr, tesseract-ocr-eng and tesseract-ocr-osd (make system-app)."
            ) from error
        except pytesseract.TesseractError as error:
            raise SightlineError(f"Tesseract failed to read the image: {error.message}") from error
        except RuntimeError as error:
            # pytesseract signals a timeout with a bare RuntimeError.
            if "timeout" not in str(error):
                raise
            raise SightlineError(
                f"Tesseract timed out after {OCR_TIMEOUT_S} s; upload a smaller image or a crop of the text."
            ) from error
        return _parse_words(data)


def prepare_image(image: Image.Image) -> _Prepared:
    """Make the greyscale image Tesseract reads: dark text on white, small text enlarged."""
    grey = image.convert("L")
    grey, inverted = invert_light_text(grey)

    scale = choose_scale(estimate_line_height_px(grey))
    if scale > 1:
        grey = grey.resize((grey.width * scale, grey.height * scale), Image.Resampling.BICUBIC)
    return _Prepared(image=grey, inverted=inverted, scale=scale)


def invert_light_text(grey: Image.Image) -> tuple[Image.Image, bool]:
    """Invert the regions that hold light text on a darker background, so all text reads dark on light.

    The background of each 8x8 block is the median of the block medians in a window of
    7x7 blocks (56 px), so text strokes do not count as background. Pixels that differ from
    their own block's median by more than TEXT_CONTRAST are text. A window where light text
    pixels outnumber dark ones LIGHT_TEXT_RATIO to one (white text on a coloured button) is inverted, and
    so is every block whose background is darker than DARK_LUMINANCE (dark panels and
    themes). Returns the image and whether any block was inverted.
    """
    pixels = np.asarray(grey)
    height, width = pixels.shape

    block_medians = _block_reduce(pixels, POLARITY_BLOCK_PX, np.median).astype(np.uint8)
    block_background = Image.fromarray(block_medians).filter(ImageFilter.MedianFilter(POLARITY_WINDOW_BLOCKS))
    block_background = np.asarray(block_background)
    background = _spread_blocks(block_background, POLARITY_BLOCK_PX, height, width)

    # Text pixels are counted against their own block's median: against the window's
    # background, the page beside a panel's edge would count as a block of text.
    own_median = _spread_blocks(block_medians, POLARITY_BLOCK_PX, height, width)
    difference = pixels.astype(np.int16) - own_median.astype(np.int16)
    lighter = _window_sum(_block_reduce(difference > TEXT_CONTRAST, POLARITY_BLOCK_PX, np.sum), POLARITY_WINDOW_BLOCKS)
    darker = _window_sum(_block_reduce(difference < -TEXT_CONTRAST, POLARITY_BLOCK_PX, np.sum), POLARITY_WINDOW_BLOCKS)

    # Light text needs a background at least TEXT_CONTRAST below white, which keeps the
    # white page around a button from being inverted along with the button.
    can_hold_light_text = block_background < 255 - TEXT_CONTRAST
    light_text = (lighter >= MIN_TEXT_PIXELS) & (lighter > LIGHT_TEXT_RATIO * darker) & can_hold_light_text
    dark_blocks = (block_background < DARK_LUMINANCE) | light_text
    if not dark_blocks.any():
        return grey, False

    # Inverted pixels are also divided by their inverted background, so that a
    # coloured button turns white around its text as the page around it is.
    dark_pixels = _spread_blocks(dark_blocks, POLARITY_BLOCK_PX, height, width)
    inverted_background = np.maximum(255.0 - background, 1.0)
    flattened = np.clip((255.0 - pixels) * (255.0 / inverted_background), 0, 255)
    return Image.fromarray(np.where(dark_pixels, flattened, pixels).astype(np.uint8)), True


def _block_reduce(values: np.ndarray, block_px: int, reduce) -> np.ndarray:
    """Reduce each block_px x block_px block with ``reduce``, padding the last partial blocks by repetition."""
    height, width = values.shape
    rows = -(-height // block_px)
    columns = -(-width // block_px)
    padded = np.pad(values, ((0, rows * block_px - height), (0, columns * block_px - width)), mode="edge")
    blocks = padded.reshape(rows, block_px, columns, block_px).transpose(0, 2, 1, 3).reshape(rows, columns, -1)
    return reduce(blocks, axis=2)


def _spread_blocks(blocks: np.ndarray, block_px: int, height: int, width: int) -> np.ndarray:
    """Give each pixel its block's value, cut to height x width."""
    return np.repeat(np.repeat(blocks, block_px, axis=0), block_px, axis=1)[:height, :width]


def _window_sum(values: np.ndarray, window: int) -> np.ndarray:
    """Sum each value's window x window neighbourhood, with zeros beyond the edges."""
    half = window // 2
    padded = np.pad(values.astype(np.int64), ((half + 1, half), (half + 1, half)))
    cumulative = padded.cumsum(axis=0).cumsum(axis=1)
    return (
        cumulative[window:, window:]
        - cumulative[:-window, window:]
        - cumulative[window:, :-window]
        + cumulative[:-window, :-window]
    )


def estimate_line_height_px(grey: Image.Image) -> float:
    """Estimate the typical text line height of a dark-on-light image, in pixels; 0 when no text shows.

    The rows of each 128 px wide strip that contain ink form runs, one run per text line,
    and the median run length is the estimate.
    NOTE: on a scan lying on its side the runs measure words, not lines, so the estimate is off.
    """
    pixels = np.asarray(grey)
    ink = pixels < float(np.median(pixels)) - INK_CONTRAST

    height, width = ink.shape
    strip_count = max(1, width // PROFILE_STRIP_PX)
    strip_width = width // strip_count
    rows_with_ink = ink[:, : strip_count * strip_width].reshape(height, strip_count, strip_width).any(axis=2)

    # Run starts and ends are where the padded column of flags changes value.
    padded = np.zeros((height + 2, strip_count), dtype=np.int8)
    padded[1:-1] = rows_with_ink
    changes = np.diff(padded, axis=0)
    starts = np.nonzero(changes.T == 1)
    ends = np.nonzero(changes.T == -1)
    run_lengths = ends[1] - starts[1]

    run_lengths = run_lengths[run_lengths >= MIN_INK_RUN_PX]
    if run_lengths.size == 0:
        return 0.0
    return float(np.median(run_lengths))


def choose_scale(line_height_px: float) -> int:
    """Return the enlargement that brings small text to a size Tesseract reads well."""
    if line_height_px <= 0:
        return 1
    if line_height_px < TINY_LINE_HEIGHT_PX:
        return 3
    if line_height_px < SMALL_LINE_HEIGHT_PX:
        return 2
    return 1


@contextmanager
def _tesseract_input(prepared: Image.Image) -> Iterator[str]:
    """Write the image to a temporary PGM file and yield its path for Tesseract.

    PGM is uncompressed, so writing it costs far less than the PNG that pytesseract writes.
    """
    with tempfile.TemporaryDirectory(prefix="sightline-ocr-") as folder:
        path = Path(folder) / "page.pgm"
        prepared.save(path, format="PPM")
        yield str(path)


@contextmanager
def _omp_thread_limit(threads: int) -> Iterator[None]:
    """Set OMP_THREAD_LIMIT for the Tesseract subprocesses started inside the block.

    pytesseract starts Tesseract with os.environ, so the variable has to be set there.
    A value the user set before is kept. The stage removes its own value when the
    last concurrent call ends, because libgomp reads the variable when it loads and
    a library loaded later in this process (torch) would otherwise be held to one thread.
    """
    global _omp_users
    with _omp_lock:
        if _omp_users == 0 and "OMP_THREAD_LIMIT" in os.environ:
            _omp_users = -1
        if _omp_users >= 0:
            if _omp_users == 0:
                os.environ["OMP_THREAD_LIMIT"] = str(max(1, threads))
            _omp_users += 1
    try:
        yield
    finally:
        with _omp_lock:
            if _omp_users > 0:
                _omp_users -= 1
                if _omp_users == 0:
                    os.environ.pop("OMP_THREAD_LIMIT", None)
            elif _omp_users == -1:
                _omp_users = 0


def _parse_words(data: dict[str, list]) -> list[_Word]:
    """Collect the non-empty words (level 5 rows) of image_to_data's output."""
    words = []
    for index, level in enumerate(data["level"]):
        text = str(data["text"][index]).strip()
        if int(level) != 5 or not text:
            continue
        words.append(
            _Word(
                key=(int(data["block_num"][index]), int(data["par_num"][index]), int(data["line_num"][index])),
                text=text,
                confidence=max(0.0, float(data["conf"][index])),
                left=int(data["left"][index]),
                top=int(data["top"][index]),
                width=int(data["width"][index]),
                height=int(data["height"][index]),
            )
        )
    return words


def _real_words(words: list[_Word]) -> list[_Word]:
    """Return the words with at least two letters or digits, the ones that show a reading worked."""
    return [word for word in words if sum(character.isalnum() for character in word.text) >= 2]


def _looks_poor(words: list[_Word]) -> bool:
    """Tell whether a reading has too few real words or too low a confidence to trust its orientation."""
    real = _real_words(words)
    if len(real) < POOR_MIN_WORDS:
        return True
    return statistics.fmean(word.confidence for word in real) < POOR_MEAN_CONFIDENCE


def _quality(words: list[_Word]) -> float:
    """Score a reading by the confidence summed over its real words."""
    return sum(word.confidence for word in _real_words(words))


def _group_lines(
    words: list[_Word],
    *,
    image: ImageInput,
    scale: int,
    rotation_degrees: int,
    prepared_size: tuple[int, int],
) -> list[OcrLine]:
    """Group words into lines in Tesseract's reading order and map their boxes to the intake image."""
    grouped: dict[tuple[int, int, int], list[_Word]] = {}
    for word in words:
        if not _is_stray_character(word):
            grouped.setdefault(word.key, []).append(word)

    runs: list[list[_Word]] = []
    for line_words in grouped.values():
        line_runs = _split_at_column_gaps(_drop_tall_words(line_words))
        if len(line_runs) > 1:
            line_runs = [run for run in line_runs if not _is_icon_word(run)]
        runs.extend(line_runs)

    lines: list[OcrLine] = []
    for line_words in runs:
        if _is_garbage(line_words):
            continue

        ocr_words = [
            OcrWord(
                text=word.text,
                box=_to_intake_box(word, scale=scale, rotation_degrees=rotation_degrees,
                                   prepared_size=prepared_size, image_size=image.image.size),
                confidence=word.confidence,
            )
            for word in line_words
        ]
        lines.append(
            OcrLine(
                id=f"{image.id}#L{len(lines) + 1}",
                text=" ".join(word.text for word in line_words),
                box=_union([word.box for word in ocr_words]),
                confidence=statistics.fmean(word.confidence for word in line_words),
                words=ocr_words,
            )
        )
    return lines


def _is_stray_character(word: _Word) -> bool:
    """Tell whether a word is a single weak character, as the edge of an icon or a button reads."""
    alphanumeric_count = sum(character.isalnum() for character in word.text)
    return alphanumeric_count <= 1 and len(word.text) <= 2 and word.confidence < MIN_SINGLE_CHARACTER_CONFIDENCE


def _split_at_column_gaps(line_words: list[_Word]) -> list[list[_Word]]:
    """Split a line's words, in reading order, wherever the gap is wider than COLUMN_GAP_RATIO word heights.

    Sideways text that Tesseract read without turning the page has no horizontal gaps, so it stays whole.
    """
    if len(line_words) < 2:
        return [line_words] if line_words else []
    ordered = line_words
    max_gap = COLUMN_GAP_RATIO * statistics.median(word.height for word in ordered)

    runs = [[ordered[0]]]
    for previous, word in zip(ordered, ordered[1:]):
        if word.left - (previous.left + previous.width) > max_gap:
            runs.append([])
        runs[-1].append(word)
    return runs


def _is_icon_word(line_words: list[_Word]) -> bool:
    """Tell whether a run split off a line is one short, weak word, as an icon or a window control reads."""
    if len(line_words) != 1:
        return False
    word = line_words[0]
    return len(word.text) <= ICON_WORD_MAX_CHARS and word.confidence < ICON_WORD_MAX_CONFIDENCE


def _drop_tall_words(line_words: list[_Word]) -> list[_Word]:
    """Drop words far taller than the line's median word, which are icons or shapes read as letters."""
    if len(line_words) < 2:
        return line_words
    median_height = statistics.median(word.height for word in line_words)
    return [word for word in line_words if word.height <= TALL_WORD_RATIO * median_height]


def _is_garbage(line_words: list[_Word]) -> bool:
    """Tell whether a line is noise: no letter or digit, one weak character, or a very low confidence.

    Icons, borders and shading read as stray punctuation or single letters with a low
    confidence. Real single characters (a "1", an "x") keep theirs high.
    """
    text = "".join(word.text for word in line_words)
    alphanumeric_count = sum(character.isalnum() for character in text)
    confidence = statistics.fmean(word.confidence for word in line_words)

    if alphanumeric_count == 0:
        return True
    if alphanumeric_count == 1 and confidence < MIN_SINGLE_CHARACTER_CONFIDENCE:
        return True
    return confidence < MIN_LINE_CONFIDENCE


def _to_intake_box(
    word: _Word,
    *,
    scale: int,
    rotation_degrees: int,
    prepared_size: tuple[int, int],
    image_size: tuple[int, int],
) -> Box:
    """Map a box from the image Tesseract read back to the intake image: undo the rotation, then the scale."""
    left, top = word.left, word.top
    right, bottom = word.left + word.width, word.top + word.height
    width, height = prepared_size

    # The reading image is the prepared image turned clockwise by rotation_degrees;
    # turn the corners counter-clockwise by the same angle.
    if rotation_degrees == 90:
        left, top, right, bottom = top, height - right, bottom, height - left
    elif rotation_degrees == 180:
        left, top, right, bottom = width - right, height - bottom, width - left, height - top
    elif rotation_degrees == 270:
        left, top, right, bottom = width - bottom, left, width - top, right

    image_width, image_height = image_size
    left = min(max(0, int(left / scale)), image_width)
    top = min(max(0, int(top / scale)), image_height)
    right = min(max(left, -(-right // scale)), image_width)
    bottom = min(max(top, -(-bottom // scale)), image_height)
    return Box(left=left, top=top, width=right - left, height=bottom - top)


def _shift_box(box: Box, dy: int) -> Box:
    return Box(left=box.left, top=box.top + dy, width=box.width, height=box.height)


def _shift_line(line: OcrLine, *, dy: int, line_id: str) -> OcrLine:
    """Move a tile's line down by ``dy`` pixels into the whole image, under a new id."""
    words = [OcrWord(text=word.text, box=_shift_box(word.box, dy), confidence=word.confidence) for word in line.words]
    return OcrLine(id=line_id, text=line.text, box=_shift_box(line.box, dy), confidence=line.confidence, words=words)


def _union(boxes: list[Box]) -> Box:
    left = min(box.left for box in boxes)
    top = min(box.top for box in boxes)
    right = max(box.left + box.width for box in boxes)
    bottom = max(box.top + box.height for box in boxes)
    return Box(left=left, top=top, width=right - left, height=bottom - top)
