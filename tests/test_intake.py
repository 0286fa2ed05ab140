"""Tests of image intake on images that each test generates with Pillow."""

from __future__ import annotations

import dataclasses
import io
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from core.intake import MIN_SIDE_PX, IntakeError, load_image
from core.settings import Settings

PATTERN_SIZE = (48, 32)
EXIF_ORIENTATION_TAG = 0x0112
GPS_IFD_TAG = 0x8825

# Transpose that undoes each EXIF orientation, as ImageOps.exif_transpose applies it.
UPRIGHT_METHOD = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# The inverse of each method above: what a camera stores for the upright scene.
STORED_METHOD = {
    **UPRIGHT_METHOD,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def make_pattern() -> Image.Image:
    """Build an asymmetric RGB picture: red top-left, green top-right, blue bottom-left, white elsewhere."""
    image = Image.new("RGB", PATTERN_SIZE, (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 8, 6))
    image.paste((0, 255, 0), (40, 0, 48, 6))
    image.paste((0, 0, 255), (0, 26, 8, 32))
    return image


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def encode_rgb(image_format: str, size: tuple[int, int] = (40, 30)) -> Callable[[], bytes]:
    return lambda: encode(Image.new("RGB", size, (200, 10, 10)), image_format)


def encode_heic() -> bytes:
    from pillow_heif import register_heif_opener

    register_heif_opener()
    return encode(Image.new("RGB", (40, 30), (200, 10, 10)), "HEIF")


def encode_animated_gif() -> bytes:
    first = Image.new("RGB", (40, 30), (255, 0, 0))
    second = Image.new("RGB", (40, 30), (0, 0, 255))
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def encode_animated_webp() -> bytes:
    first = Image.new("RGB", (40, 30), (255, 0, 0))
    second = Image.new("RGB", (40, 30), (0, 0, 255))
    return encode(first, "WEBP", save_all=True, append_images=[second], duration=100, loop=0, lossless=True)


def encode_noise(image_format: str) -> bytes:
    """Encode random pixels, which compress badly, so that cutting the file cuts pixel data."""
    pixels = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), image_format)


def truncate(data: bytes, fraction: float = 0.6) -> bytes:
    return data[: int(len(data) * fraction)]


def encode_png_declaring(width: int, height: int) -> bytes:
    """Write a tiny PNG, then patch its IHDR to declare width x height, with a correct CRC."""
    data = bytearray(encode(Image.new("L", (16, 16), 255), "PNG"))
    ihdr_start = 8
    data[ihdr_start + 8 : ihdr_start + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr_start + 4 : ihdr_start + 21]))
    data[ihdr_start + 21 : ihdr_start + 25] = struct.pack(">I", crc)
    return bytes(data)


def encode_jpeg_with_gps() -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 1
    exif[0x010F] = "PhoneMaker"
    exif.get_ifd(GPS_IFD_TAG)[2] = (52.0, 31.0, 12.0)
    return encode(make_pattern(), "JPEG", exif=exif, quality=95)


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40"><script>alert(1)</script></svg>'
HTML = b"<!DOCTYPE html>\n<html><head><title>x</title></head><body>Not an image</body></html>"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
SHELL_SCRIPT = b"#!/bin/sh\necho 'not an image'\n"


@dataclasses.dataclass
class Case:
    """One upload and what intake must return for it: a format and size, or an error fragment."""

    name: str
    make: Callable[[], bytes]
    source: str = "screenshot.png"
    format: str | None = None
    size: tuple[int, int] | None = None
    error: str | None = None
    settings: dict = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


CASES = [
    Case("png", encode_rgb("PNG"), format="PNG", size=(40, 30)),
    Case("jpeg", encode_rgb("JPEG"), format="JPEG", size=(40, 30)),
    Case("webp", encode_rgb("WEBP"), format="WEBP", size=(40, 30)),
    Case("gif", encode_rgb("GIF"), format="GIF", size=(40, 30)),
    Case("bmp", encode_rgb("BMP"), format="BMP", size=(40, 30)),
    Case("tiff", encode_rgb("TIFF"), format="TIFF", size=(40, 30)),
    Case("heic named jpg", encode_heic, source="photo.jpg", format="HEIF", size=(40, 30)),
    Case("jpeg named png", encode_rgb("JPEG"), source="photo.png", format="JPEG", size=(40, 30)),
    Case("heic named heic", encode_heic, source="photo.heic", format="HEIF", size=(40, 30)),
    Case("animated gif", encode_animated_gif, source="clip.gif", format="GIF", size=(40, 30),
         notes=["Only the first frame of the animated GIF image was read."]),
    Case("animated webp", encode_animated_webp, source="clip.webp", format="WEBP", size=(40, 30),
         notes=["Only the first frame of the animated WEBP image was read."]),
    Case("tall screenshot", encode_rgb("PNG", (400, 12_000)), format="PNG", size=(400, 12_000)),
    Case("strip over aspect limit", encode_rgb("PNG", (10, 3_000)),
         error="10x3000 pixels, a strip more than 40 times longer than it is wide"),
    Case("minimum side", encode_rgb("PNG", (MIN_SIDE_PX, MIN_SIDE_PX)), format="PNG", size=(8, 8)),
    Case("truncated jpeg", lambda: truncate(encode_noise("JPEG")), error="truncated or damaged"),
    Case("truncated png", lambda: truncate(encode_noise("PNG")), error="truncated or damaged"),
    Case(
        "bomb header over pillow limit",
        lambda: encode_png_declaring(50_000, 50_000),
        error="too many pixels to decode, over the limit of 40,000,000 pixels",
    ),
    Case(
        "bomb header",
        lambda: encode_png_declaring(7_000, 7_000),
        error="7000x7000 pixels (49,000,000), over the limit of 40,000,000 pixels",
    ),
    Case(
        "pixels over lowered limit",
        encode_rgb("PNG", (100, 100)),
        error="100x100 pixels (10,000), over the limit of 5,000 pixels",
        settings={"max_image_pixels": 5_000},
    ),
    Case("svg named png", lambda: SVG, error="is an SVG drawing"),
    Case("html named png", lambda: HTML, error="is an HTML page"),
    Case("pdf named png", lambda: PDF, error="is a PDF document"),
    Case("shell script named png", lambda: SHELL_SCRIPT, error="is a script"),
    Case("random bytes named png", lambda: random.Random(0).randbytes(4096), error="not an image in an accepted format"),
    Case("empty file", lambda: b"", error="is empty (0 bytes)"),
    Case("one pixel", encode_rgb("PNG", (1, 1)), error="only 1x1 pixels"),
    Case("thin strip", encode_rgb("PNG", (400, 4)), error="only 400x4 pixels"),
    Case(
        "over upload limit",
        lambda: encode_noise("PNG"),
        error="over the upload limit of 0.1 MB",
        settings={"max_upload_mb": 0.1},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_load_image_table(case: Case, tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path / "data", **case.settings)
    data = case.make()

    if case.error is not None:
        with pytest.raises(IntakeError) as raised:
            load_image(data, source=case.source, settings=settings)
        message = str(raised.value)
        assert case.error in message
        assert case.source in message
        return

    result = load_image(data, source=case.source, settings=settings)
    assert result.format == case.format
    assert result.image.size == case.size
    assert result.image.mode == "RGB"
    assert result.source == case.source
    assert result.size_bytes == len(data)
    assert result.notes == case.notes


def test_rejected_content_names_accepted_formats(settings: Settings) -> None:
    with pytest.raises(IntakeError) as raised:
        load_image(SVG, source="drawing.png", settings=settings)
    assert "Upload a PNG, JPEG, WebP, GIF, BMP, TIFF or HEIC image" in str(raised.value)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_made_upright(orientation: int, settings: Settings) -> None:
    upright = make_pattern()
    stored = upright if orientation == 1 else upright.transpose(STORED_METHOD[orientation])
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation

    result = load_image(encode(stored, "PNG", exif=exif), source="photo.png", settings=settings)

    assert result.image.size == PATTERN_SIZE
    assert list(result.image.getdata()) == list(upright.getdata())


def test_exif_orientation_in_jpeg(settings: Settings) -> None:
    stored = make_pattern().transpose(STORED_METHOD[6])
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6

    result = load_image(encode(stored, "JPEG", exif=exif, quality=95), source="photo.jpg", settings=settings)

    assert result.image.size == PATTERN_SIZE
    red, green, blue = (np.asarray(result.image.crop(box)).reshape(-1, 3).mean(axis=0) for box in
                        ((1, 1, 7, 5), (41, 1, 47, 5), (1, 27, 7, 31)))
    assert red[0] > 200
    assert red[1] < 60
    assert green[1] > 200
    assert green[0] < 60
    assert blue[2] > 200
    assert blue[0] < 60


def test_metadata_dropped(settings: Settings) -> None:
    data = encode_jpeg_with_gps()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(GPS_IFD_TAG)

    result = load_image(data, source="photo.jpg", settings=settings)

    assert result.image.info == {}
    assert len(result.image.getexif()) == 0
    assert result.image.getexif().get_ifd(GPS_IFD_TAG) == {}


def test_rgba_composited_on_white(settings: Settings) -> None:
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 10, 20))
    image.paste((0, 0, 0, 128), (10, 0, 20, 20))

    result = load_image(encode(image, "PNG"), settings=settings)

    assert result.image.getpixel((2, 2)) == (255, 0, 0)
    assert result.image.getpixel((15, 2)) in {(127, 127, 127), (128, 128, 128)}


def test_la_composited_on_white(settings: Settings) -> None:
    image = Image.new("LA", (20, 20), (0, 0))

    result = load_image(encode(image, "PNG"), settings=settings)

    assert result.image.getpixel((5, 5)) == (255, 255, 255)


def test_palette_transparency_on_white(settings: Settings) -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 - 2) * 3)
    image.paste(1, (0, 0, 10, 20))

    result = load_image(encode(image, "PNG", transparency=0), settings=settings)

    assert result.image.getpixel((2, 2)) == (255, 0, 0)
    assert result.image.getpixel((15, 2)) == (255, 255, 255)


def test_gif_transparency_on_white(settings: Settings) -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 - 2) * 3)
    image.paste(1, (0, 0, 10, 20))

    result = load_image(encode(image, "GIF", transparency=0), settings=settings)

    assert result.image.getpixel((2, 2)) == (0, 0, 255)
    assert result.image.getpixel((15, 2)) == (255, 255, 255)


def test_16_bit_grey_keeps_range(settings: Settings) -> None:
    gradient = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1))
    image = Image.fromarray(gradient)
    assert image.mode.startswith("I;16")

    result = load_image(encode(image, "PNG"), settings=settings)

    grey = np.asarray(result.image)[:, :, 0].astype(int)
    assert grey.min() == 0
    assert grey.max() == 255
    assert np.all(np.diff(grey[0]) >= 0)
    assert abs(int(grey[0, 128]) - 128) <= 1


def test_32_bit_grey_stretched(settings: Settings) -> None:
    values = np.tile(np.linspace(-1000, 200_000, 64).astype(np.int32), (16, 1))

    result = load_image(encode(Image.fromarray(values, mode="I"), "TIFF"), settings=settings)

    grey = np.asarray(result.image)[:, :, 0]
    assert grey.min() == 0
    assert grey.max() == 255


@pytest.mark.parametrize("image_format", ["JPEG", "TIFF"])
def test_cmyk_converted(image_format: str, settings: Settings) -> None:
    image = Image.new("CMYK", (20, 20), (0, 255, 255, 0))

    result = load_image(encode(image, image_format), settings=settings)

    red, green, blue = result.image.getpixel((10, 10))
    assert red > 230
    assert green < 30
    assert blue < 30


def test_icc_profile_converted_to_srgb(settings: Settings) -> None:
    srgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.new("RGB", (20, 20), (200, 100, 50))

    result = load_image(encode(image, "PNG", icc_profile=srgb_profile), settings=settings)

    red, green, blue = result.image.getpixel((10, 10))
    assert abs(red - 200) <= 2
    assert abs(green - 100) <= 2
    assert abs(blue - 50) <= 2
    assert "icc_profile" not in result.image.info


def test_animated_gif_first_frame_noted(settings: Settings) -> None:
    result = load_image(encode_animated_gif(), source="clip.gif", settings=settings)

    assert result.image.getpixel((5, 5)) == (255, 0, 0)
    assert result.notes == ["Only the first frame of the animated GIF image was read."]


def test_still_image_has_no_notes(settings: Settings) -> None:
    result = load_image(encode_rgb("GIF")(), source="still.gif", settings=settings)
    assert result.notes == []


def test_id_hashes_original_bytes(settings: Settings) -> None:
    import hashlib

    data = encode_rgb("PNG")()

    result = load_image(data, settings=settings)

    assert result.id == "sha256:" + hashlib.sha256(data).hexdigest()[:16]
    assert result.source == "upload"


def test_path_input_uses_file_name(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "shot.webp"
    path.write_bytes(encode_rgb("PNG")())

    result = load_image(path, settings=settings)

    assert result.source == "shot.webp"
    assert result.format == "PNG"


def test_path_over_limit_rejected_before_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(b"\0" * 300_000)
    settings = Settings.load(data_dir=tmp_path / "data", max_upload_mb=0.1)

    def fail_read(*args, **kwargs):
        raise AssertionError("the file was opened although its size is over the limit")

    monkeypatch.setattr(Path, "open", fail_read)
    with pytest.raises(IntakeError) as raised:
        load_image(path, settings=settings)
    assert "huge.png is 0.29 MB, over the upload limit of 0.1 MB" in str(raised.value)


def test_missing_path_rejected(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(IntakeError) as raised:
        load_image(tmp_path / "gone.png", settings=settings)
    assert "gone.png was not found" in str(raised.value)


def test_truncation_flag_left_off(settings: Settings) -> None:
    from PIL import ImageFile

    with pytest.raises(IntakeError):
        load_image(truncate(encode_noise("JPEG")), settings=settings)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_exif_transpose_reference_matches_table() -> None:
    """Check the test's own orientation table against Pillow, so a wrong table cannot pass."""
    for orientation, method in STORED_METHOD.items():
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = orientation
        stored = Image.open(io.BytesIO(encode(make_pattern().transpose(method), "PNG", exif=exif)))
        assert list(ImageOps.exif_transpose(stored).getdata()) == list(make_pattern().getdata())


def test_tall_screenshot_read_in_tiles(settings: Settings) -> None:
    from PIL import ImageDraw, ImageFont

    from core.ocr import TILE_HEIGHT_PX, TILE_OVERLAP_PX, OcrStage

    height = 2 * TILE_HEIGHT_PX + 500
    image = Image.new("RGB", (900, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=28)
    # The middle line sits in the overlap of the first two tiles, so both read it.
    rows = {"Storage quota exceeded": 100,
            "Sync paused on this device": TILE_HEIGHT_PX - TILE_OVERLAP_PX // 2 - 10,
            "Contact your workspace admin": height - 200}
    for text, top in rows.items():
        draw.text((40, top), text, fill=(0, 0, 0), font=font)

    result = OcrStage(settings=settings).run(load_image(encode(image, "PNG"), source="long.png", settings=settings))

    texts = [line.text for line in result.lines]
    assert texts == list(rows)
    for line, top in zip(result.lines, rows.values()):
        assert abs(line.box.top - top) <= 12
        assert line.words[0].box.top >= line.box.top
    assert [line.id for line in result.lines] == [f"{result.image_id}#L{n}" for n in (1, 2, 3)]
