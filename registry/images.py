"""Decoding client images (PNG or JPEG) into arrays, safely.

An image is the one input whose decoded size is not bounded by its body size: a 50 KB
PNG can claim 20000x20000 pixels and inflate to 400 MB. So every check that needs only
the header runs before a single pixel is decoded, in this order:

1. the signature: only PNG and JPEG reach Pillow, whose other plugins (dozens of formats,
   some rarely exercised) stay out of reach of clients;
2. the header (Pillow's plugin reads only it): its width x height against
   ``ImageLimits.max_pixels``, refused with ``ImageTooLarge`` (413);
3. only then the pixels, inside a guard that turns any decoder failure into
   ``InvalidInput`` (422) rather than a 500.

Pillow's own bomb check (``Image.MAX_IMAGE_PIXELS``, 89 M pixels, a warning above it and
an error above twice it) lives in ``Image.open``. This module opens through the PNG and
JPEG plugins directly, so ``ImageLimits`` is the one limit: Pillow never pre-empts it
with a message naming no size, and never emits ``DecompressionBombWarning``.

Pillow's other safety settings are left at their defaults and relied on:
``ImageFile.LOAD_TRUNCATED_IMAGES`` is False (a truncated file is an error, not a
half-black image) and ``PngImagePlugin.MAX_TEXT_CHUNK`` / ``MAX_TEXT_MEMORY`` bound
what text chunks may inflate to while the header is read.

No torch here: this runs on the request path before any model is involved.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin

from registry.errors import ImageTooLarge, InvalidInput

DEFAULT_MAX_PIXELS = 4096 * 4096
"""16.7 M pixels: at most 67 MB decoded (4 bytes a pixel), plus one 8-bit copy."""

ACCEPTED = ("image/png", "image/jpeg")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"  # NOTE: SOI, then the first marker's 0xFF

OUTPUT_MODES = frozenset({"L", "LA", "RGB", "RGBA"})
"""Pillow modes of 8 bits a channel: each maps onto a uint8 array as it is."""

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

# NOTE: what Pillow's decoders raise on a malformed file: OSError (truncated data, a
# decoder error; UnidentifiedImageError is one), SyntaxError (a bad header), ValueError
# (a chunk too large or inconsistent), struct.error / EOFError / IndexError (short
# reads), zlib.error. Warning: only where warnings are errors (pytest here), e.g.
# Pillow's "Invalid APNG" on a malformed acTL chunk.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    struct.error,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    zlib.error,
    Warning,
)

_OTHER_FORMATS = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "RIFF (WebP?)"),
)


@dataclass(frozen=True)
class ImageLimits:
    """What one image may claim in its header; checked before any pixel is decoded.

    ``max_pixels`` bounds width x height, hence the decoded memory, whatever the aspect
    ratio: a 1 x 16 M strip costs what a 4096 x 4096 square does, so no separate bound
    on width or height is needed.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, not {self.max_pixels}")


def decode_image(
    data: bytes,
    *,
    limits: ImageLimits,
    mode: str = "L",
    size: tuple[int, int] | None = None,
    upright: bool = False,
) -> npt.NDArray[np.uint8]:
    """The first frame of a PNG or JPEG as uint8, (H, W) for ``"L"``, else (H, W, C).

    ``mode`` is the Pillow mode to convert to (one of ``OUTPUT_MODES``); ``size`` is
    (width, height), reached with a box (area) filter, which averages every source pixel
    into its target pixel: downscaling by an integer factor recovers the original
    exactly. ``upright`` turns the pixels as the EXIF orientation tag says (a phone
    stores a portrait photo sideways and tags it) before resizing; off, pixels are taken
    as stored, which is what training pipelines that open files with Pillow saw.

    Raises ``InvalidInput`` for anything but PNG or JPEG and for a file that does not
    decode, ``ImageTooLarge`` for one whose header claims more than
    ``limits.max_pixels``, and ``ValueError`` for a bad ``mode`` or ``size`` (the
    caller's mistake, not the client's).
    """
    _check_request(mode, size)
    image = _open_header(data)
    try:
        _check_size(image.size, limits)
        return _decode(image, limits, mode, size, upright)
    finally:
        image.close()


def _check_request(mode: str, size: tuple[int, int] | None) -> None:
    """The server's own arguments, checked first so a misconfiguration never reads as a
    client's bad image."""
    if mode not in OUTPUT_MODES:
        raise ValueError(f"mode must be one of {sorted(OUTPUT_MODES)}, not {mode!r}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (width, height), both at least 1, not {size!r}")


def _open_header(data: bytes) -> ImageFile.ImageFile:
    """Pick the plugin by signature and let it read the header only.

    The plugin class is called directly rather than through ``Image.open``: that skips
    Pillow's global bomb check (``ImageLimits`` is the limit; see the module docstring)
    and the probing of every other registered format. For JPEG it also skips the MPO
    upgrade, so a multi-picture file reads as its first picture.
    """
    plugin = _plugin_for(data)
    with _decoding():
        return plugin(io.BytesIO(data))


def _plugin_for(data: bytes) -> type[ImageFile.ImageFile]:
    """The signature decides, before Pillow sees a byte: a client never reaches a
    plugin other than PNG's or JPEG's."""
    if data.startswith(PNG_SIGNATURE):
        return PngImagePlugin.PngImageFile
    if data.startswith(JPEG_SIGNATURE):
        return JpegImagePlugin.JpegImageFile
    raise InvalidInput(
        f"only PNG and JPEG images are accepted; {_describe(data)}", accepted=list(ACCEPTED)
    )


def _describe(data: bytes) -> str:
    """What the client sent instead, where the signature tells; never echoes the bytes."""
    if not data:
        return "the image is empty"
    for signature, name in _OTHER_FORMATS:
        if data.startswith(signature):
            return f"this is {name}"
    return "the data starts with neither signature"


def _check_size(size: tuple[int, int], limits: ImageLimits) -> None:
    """Refuse on the header's claim, before ``load``: a bomb costs its header's parse.

    The claim is what a decoder would allocate, so it is the right thing to bound even
    when the file is too short to fill it (a truncated file would fail later anyway).
    """
    width, height = size
    if width * height > limits.max_pixels:
        raise ImageTooLarge(width, height, limits.max_pixels)


def _decode(
    image: ImageFile.ImageFile,
    limits: ImageLimits,
    mode: str,
    size: tuple[int, int] | None,
    upright: bool,
) -> npt.NDArray[np.uint8]:
    """Decode, turn, convert and resize inside the guard: every failure past the header
    is the file's fault (truncated, corrupt, a malformed EXIF block), so a client error,
    never a 500. Turning keeps the pixel count the header's check bounded."""
    try:
        with _decoding():
            image.load()
            if upright:
                ImageOps.exif_transpose(image, in_place=True)
            converted = _convert(image, mode)
            if size is not None and converted.size != size:
                converted = converted.resize(size, Image.Resampling.BOX)
            return np.array(converted, dtype=np.uint8)
    except Image.DecompressionBombError:
        # NOTE: unreachable through the PNG and JPEG plugins today (Pillow checks in
        # Image.open, which is not used); kept so a future check inside load() still
        # answers 413 with the size rather than 500.
        width, height = image.size
        raise ImageTooLarge(width, height, limits.max_pixels) from None


@contextmanager
def _decoding() -> Iterator[None]:
    """Whatever Pillow raises on a malformed file becomes a 422 naming the cause."""
    try:
        yield
    except _DECODE_ERRORS as exc:
        raise InvalidInput(f"the image could not be decoded: {exc}") from exc


def _convert(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode``, with the two conversions Pillow gets wrong done first.

    16-bit greyscale (PNG's I;16): Pillow's ``convert`` clips at 255 rather than scaling,
    which would turn nearly every pixel white; the top 8 bits are kept instead.
    A palette image whose transparency is a byte string: Pillow warns converting it to
    L or RGB (a warning is an error under pytest, and noise in production); going
    through RGBA first gives the same colours without the warning.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        # NOTE: in the array's own width (uint16, or int32 for mode I): an int64 copy
        # of a 16-megapixel image was 128 MB, three times over
        pixels = np.asarray(image)
        if pixels.dtype.kind != "u":
            pixels = np.clip(pixels, 0, 0xFFFF)
        image = Image.fromarray((pixels >> 8).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == mode else image.convert(mode)
