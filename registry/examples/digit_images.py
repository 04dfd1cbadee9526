"""Scikit-learn's 8x8 digits as the PNG and JPEG files an image client would send.

Used by tests and the benchmark. A digit's pixels run 0..16, ink high; the image keeps
that polarity (bright ink on black) at 8 bits, v -> round(v * 255 / 16), upscaled by
repeating each pixel ``scale`` x ``scale`` times (nearest neighbour). A box resize back
to 8x8 averages each block of equal pixels, so it recovers the 8-bit values exactly, and
``pixels_from_image`` maps them back to within 16 / 255 / 2 of the original values.

No torch and no scikit-learn here: the caller brings the pixels.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image

SIDE = 8
MAX_VALUE = 16
JPEG_QUALITY = 95


def render_png(pixels: npt.ArrayLike, scale: int = 4) -> bytes:
    """One digit (64 values 0..16, any shape) as a greyscale PNG, ``8 * scale`` square."""
    return _encode(_upscaled(pixels, scale), "PNG")


def render_jpeg(pixels: npt.ArrayLike, scale: int = 4, quality: int = JPEG_QUALITY) -> bytes:
    """The same image as ``render_png`` as a greyscale JPEG: lossy, so values come back
    only close to the original."""
    return _encode(_upscaled(pixels, scale), "JPEG", quality=quality)


def pixels_from_image(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """An 8x8 uint8 greyscale image back to the digits' scale, shaped (1, 8, 8)."""
    if image.shape != (SIDE, SIDE) or image.dtype != np.uint8:
        raise ValueError(f"expected an 8x8 uint8 image, got {image.shape} {image.dtype}")
    scaled = image.astype(np.float32) * np.float32(MAX_VALUE / 255)
    return scaled.reshape(1, SIDE, SIDE)


def to_grey(pixels: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """64 digit values 0..16 as an 8x8 uint8 image, v -> round(v * 255 / 16)."""
    values = np.asarray(pixels, dtype=np.float64)
    if values.size != SIDE * SIDE:
        raise ValueError(f"a digit has {SIDE * SIDE} pixels, got {values.size}")
    if not np.all((values >= 0) & (values <= MAX_VALUE)):
        raise ValueError(f"digit pixels run 0..{MAX_VALUE}")
    grey = np.rint(values.reshape(SIDE, SIDE) * (255 / MAX_VALUE))
    return grey.astype(np.uint8)


def _upscaled(pixels: npt.ArrayLike, scale: int) -> npt.NDArray[np.uint8]:
    """Nearest neighbour by repetition: each block holds one value, which is what lets a
    box filter undo it exactly."""
    if scale < 1:
        raise ValueError(f"scale must be at least 1, not {scale}")
    return to_grey(pixels).repeat(scale, axis=0).repeat(scale, axis=1)


def _encode(grey: npt.NDArray[np.uint8], image_format: str, **options: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, image_format, **options)
    return buffer.getvalue()
