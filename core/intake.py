"""Image intake: turn the bytes a user uploads into upright RGB pixels without metadata.

The format comes from the bytes, never from the file name, and only the formats
in ``ACCEPTED_FORMATS`` are decoded. Size limits are checked before any pixel is
decoded, so an upload that declares a huge canvas (a decompression bomb) costs
only the read of its header.

Example::

    image = load_image(Path("screenshot.png"), settings=Settings.load())
    image.id, image.width, image.height, image.notes
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from core.settings import Settings
from core.types import ImageInput, SightlineError

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "HEIF")
"""Pillow format names that intake decodes. HEIF covers HEIC and is decoded by pillow-heif."""
ACCEPTED_FORMATS_HINT = "Upload a PNG, JPEG, WebP, GIF, BMP, TIFF or HEIC image"
MIN_SIDE_PX = 8
"""Images thinner than this on either side cannot hold a readable line of text."""
MAX_ASPECT_RATIO = 40
"""Longer side over shorter side. A full-page phone screenshot is about 1:20, a 1:40 strip is a ruler or a border."""
BACKGROUND_RGB = (255, 255, 255)
"""Transparent pixels are composited on white, as most viewers show them."""
MAX_16_BIT_VALUE = 65535
HEADER_BYTES = 512
"""How much of the start of a rejected upload is inspected to name what it is."""

# Decoders signal a damaged file with any of these, depending on the format.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)

_heif_registered = False


class IntakeError(SightlineError):
    """An upload that is not a usable image, with a message that names the file and the fix."""


def load_image(data: bytes | Path, *, source: str | None = None, settings: Settings) -> ImageInput:
    """Decode an uploaded image into upright RGB pixels with all metadata dropped.

    ``data`` is the uploaded bytes or a path to them. ``source`` is the name shown in
    messages and defaults to the path's file name, or to "upload" for bytes.
    Raises IntakeError when the upload is too large, empty, not an accepted image
    format, damaged, too small, or declares more pixels than settings.max_image_pixels.
    """
    if isinstance(data, Path):
        source = source or data.name
        raw = _read_file(data, source=source, max_bytes=_max_upload_bytes(settings))
    else:
        source = source or "upload"
        raw = bytes(data)
        _check_byte_size(len(raw), source=source, max_bytes=_max_upload_bytes(settings))

    if not raw:
        raise IntakeError(f"{source} is empty (0 bytes). {ACCEPTED_FORMATS_HINT}.")

    image_id = "sha256:" + hashlib.sha256(raw).hexdigest()[:16]

    opened = _open_header(raw, source=source, max_pixels=settings.max_image_pixels)
    _check_dimensions(opened, source=source, max_pixels=settings.max_image_pixels)

    notes: list[str] = []
    pixels = _decode_first_frame(opened, source=source, notes=notes)
    pixels = _to_rgb(pixels, source=source)

    # A fresh image from the pixel bytes alone carries no EXIF, GPS, ICC or text chunks.
    clean = Image.frombytes("RGB", pixels.size, pixels.tobytes())

    logger.debug("Intake of %s: %s %dx%d, %d bytes", image_id, opened.format, clean.width, clean.height, len(raw))
    return ImageInput(
        id=image_id,
        image=clean,
        source=source,
        format=opened.format or "unknown",
        size_bytes=len(raw),
        notes=notes,
    )


def _max_upload_bytes(settings: Settings) -> int:
    return int(settings.max_upload_mb * 1024 * 1024)


def _format_mb(size_bytes: int) -> str:
    """Format a byte count in MB with at most two decimals: 25, 0.1, 1.25."""
    return f"{size_bytes / 1024 / 1024:.2f}".rstrip("0").rstrip(".")


def _check_byte_size(size_bytes: int, *, source: str, max_bytes: int) -> None:
    """Raise IntakeError when an upload is larger than the upload limit."""
    if size_bytes > max_bytes:
        raise IntakeError(
            f"{source} is {_format_mb(size_bytes)} MB, over the upload limit of "
            f"{_format_mb(max_bytes)} MB; upload a smaller or more compressed image, "
            "or raise max_upload_mb (SIGHTLINE_MAX_UPLOAD_MB)."
        )


def _read_file(path: Path, *, source: str, max_bytes: int) -> bytes:
    """Read a file whole after checking its size on disk against the upload limit."""
    try:
        size_bytes = path.stat().st_size
    except FileNotFoundError as error:
        raise IntakeError(f"{source} was not found at {path}; check the path and upload it again.") from error
    except OSError as error:
        raise IntakeError(f"{source} could not be read ({error.strerror}); check the file and try again.") from error

    if not path.is_file():
        raise IntakeError(f"{source} is not a regular file. {ACCEPTED_FORMATS_HINT}.")
    _check_byte_size(size_bytes, source=source, max_bytes=max_bytes)

    try:
        with path.open("rb") as handle:
            # One byte past the limit is enough to notice a file that grew after the stat.
            raw = handle.read(max_bytes + 1)
    except OSError as error:
        raise IntakeError(f"{source} could not be read ({error.strerror}); check the file and try again.") from error

    _check_byte_size(len(raw), source=source, max_bytes=max_bytes)
    return raw


def _register_heif() -> None:
    """Register pillow-heif's opener with Pillow once, on the first upload."""
    global _heif_registered
    if _heif_registered:
        return

    from pillow_heif import register_heif_opener

    register_heif_opener()
    _heif_registered = True


def _open_header(raw: bytes, *, source: str, max_pixels: int) -> Image.Image:
    """Identify the format from the bytes and read the header only, so no pixel is decoded yet."""
    _register_heif()
    try:
        return Image.open(io.BytesIO(raw), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        # Pillow's own guard fired first, at twice Image.MAX_IMAGE_PIXELS.
        raise IntakeError(
            f"{source} declares too many pixels to decode, over the limit of {max_pixels:,} pixels; "
            "upload a smaller image or a crop of the part you want to ask about."
        ) from error
    except UnidentifiedImageError as error:
        raise IntakeError(f"{source} {_describe_unaccepted(raw)}. {ACCEPTED_FORMATS_HINT}.") from error
    except DECODE_ERRORS as error:
        raise IntakeError(
            f"{source} has a damaged image header ({error}); export or save the image again and upload the new file."
        ) from error


def _describe_unaccepted(raw: bytes) -> str:
    """Name what an upload that Pillow did not accept looks like, judged by its first bytes."""
    head = raw[:HEADER_BYTES]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()

    if head.startswith(b"%PDF"):
        return "is a PDF document, not an image (a screenshot of the page works)"
    if b"<svg" in text:
        return "is an SVG drawing, which is not accepted because it can hold scripts and links"
    if text.startswith((b"<!doctype html", b"<html")) or b"<head" in text or b"<body" in text:
        return "is an HTML page, not an image"
    if text.startswith(b"<?xml"):
        return "is an XML document, not an image"
    if head.startswith(b"#!"):
        return "is a script, not an image"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "is an AVIF image, which is not accepted"
    if _looks_like_text(head):
        return "is a text file, not an image"
    return "is not an image in an accepted format (its content was not recognized, whatever its file name)"


def _looks_like_text(head: bytes) -> bool:
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(character.isprintable() or character in "\t\r\n" for character in decoded)


def _check_dimensions(opened: Image.Image, *, source: str, max_pixels: int) -> None:
    """Reject images that are too small to read or that declare too many pixels to decode."""
    width, height = opened.size
    if width * height > max_pixels:
        raise IntakeError(
            f"{source} declares {width}x{height} pixels ({width * height:,}), over the limit of "
            f"{max_pixels:,} pixels; upload a smaller image or a crop of the part you want to ask about, "
            "or raise max_image_pixels (SIGHTLINE_MAX_IMAGE_PIXELS)."
        )
    if width < MIN_SIDE_PX or height < MIN_SIDE_PX:
        raise IntakeError(
            f"{source} is only {width}x{height} pixels, too small to hold readable text "
            f"(at least {MIN_SIDE_PX} pixels on each side are needed); upload a larger screenshot."
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise IntakeError(
            f"{source} is {width}x{height} pixels, a strip more than {MAX_ASPECT_RATIO} times longer than "
            "it is wide, which cannot be read as a screenshot; crop it to the part you want to ask about."
        )


def _decode_first_frame(opened: Image.Image, *, source: str, notes: list[str]) -> Image.Image:
    """Decode the first frame, apply its EXIF orientation, and note frames that were skipped.

    Damaged files raise IntakeError: truncated data is never padded with grey.
    """
    try:
        opened.load()
    except DECODE_ERRORS as error:
        raise IntakeError(
            f"{source} is truncated or damaged and could not be decoded ({error}); "
            "export or save the image again and upload the new file."
        ) from error

    try:
        upright = ImageOps.exif_transpose(opened)
    except DECODE_ERRORS as error:
        logger.warning("Ignoring the unreadable EXIF orientation of %s: %s", source, error)
        upright = opened
        notes.append("The EXIF orientation could not be read, so the image is used as stored.")

    # Asking for is_animated after the first frame is decoded costs no second decode of frame 0.
    if getattr(opened, "is_animated", False):
        kind = "page of the multi-page" if opened.format == "TIFF" else "frame of the animated"
        notes.append(f"Only the first {kind} {opened.format} image was read.")
    return upright


def _to_rgb(image: Image.Image, *, source: str) -> Image.Image:
    """Convert any decoded mode to 8-bit sRGB, compositing transparency on white."""
    mode = image.mode

    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _scale_to_8_bit(image).convert("RGB")

    image = _to_srgb_by_profile(image)
    mode = image.mode

    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND_RGB + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")

    try:
        return image.convert("RGB")
    except ValueError as error:
        raise IntakeError(
            f"{source} uses the color mode {mode}, which cannot be converted to RGB; "
            "save it as an RGB or greyscale PNG and upload it again."
        ) from error


def _scale_to_8_bit(image: Image.Image) -> Image.Image:
    """Map 16-bit and 32-bit greyscale to 8 bits by scaling, so no tone range is clipped.

    16-bit data is divided by 257 so 0..65535 maps onto 0..255. Integer data outside
    that range and float data are stretched from their minimum to their maximum.
    """
    values = np.asarray(image).astype(np.float64)
    low, high = float(values.min()), float(values.max())

    if image.mode != "F" and low >= 0 and high <= MAX_16_BIT_VALUE:
        scaled = values / 257.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _to_srgb_by_profile(image: Image.Image) -> Image.Image:
    """Convert through the embedded ICC profile to sRGB, or return the image unchanged when it has none.

    Display P3 screenshots and CMYK JPEGs with a profile keep their intended colors this way.
    A profile that littleCMS cannot use is skipped, and the plain conversion follows.
    """
    icc_profile = image.info.get("icc_profile")
    if not icc_profile or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image

    output_mode = "RGBA" if image.mode == "RGBA" else "RGB"
    try:
        embedded = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        srgb = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(image, embedded, srgb, outputMode=output_mode)
    except (ImageCms.PyCMSError, OSError, ValueError) as error:
        logger.debug("Skipping an unusable ICC profile: %s", error)
        return image
