"""Client images decode to the right pixels, and hostile ones are refused before decoding."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageFile

from registry.errors import ImageTooLarge, InvalidInput, PayloadTooLarge
from registry.examples.digit_images import pixels_from_image, render_jpeg, render_png, to_grey
from registry.images import DEFAULT_MAX_PIXELS, ImageLimits, decode_image

LIMITS = ImageLimits()
BOMB_SIDE = 20000


@pytest.fixture(scope="module")
def digits() -> npt.NDArray[np.float64]:
    from sklearn.datasets import load_digits

    data: npt.NDArray[np.float64] = load_digits().data[:50]
    return data


# --- building PNG files by hand, so a test can say anything in a header ------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def blank_png(width: int, height: int, bit_depth: int = 8, *, extra: bytes = b"") -> bytes:
    """A valid greyscale PNG of zeros: IDAT is one zlib stream fed row-block by row-block,
    so a 20000x20000 picture compresses without 400 MB ever being in memory."""
    row = bytes(1 + (width * bit_depth + 7) // 8)  # NOTE: filter byte 0, then the row
    rows_per_block = max(1, (1 << 20) // len(row))
    stream = zlib.compressobj(9)
    idat = []
    for start in range(0, height, rows_per_block):
        idat.append(stream.compress(row * min(rows_per_block, height - start)))
    idat.append(stream.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            png_chunk(b"IHDR", header),
            extra,
            png_chunk(b"IDAT", b"".join(idat)),
            png_chunk(b"IEND", b""),
        )
    )


def resized_header(png: bytes, width: int, height: int) -> bytes:
    """``png`` with its IHDR claiming another size (the pixel data no longer matches)."""
    start = len(b"\x89PNG\r\n\x1a\n")
    header = struct.pack(">II", width, height) + png[start + 16 : start + 21]
    return png[:start] + png_chunk(b"IHDR", header) + png[start + 25 :]


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """20000x20000 1-bit greyscale: 400 M pixels (400 MB once Pillow holds it as mode 1)."""
    return blank_png(BOMB_SIDE, BOMB_SIDE, bit_depth=1)


def encoded(image: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


class LoadSpy:
    """Counts ``ImageFile.load`` calls: the one door to a plugin's pixel decoder."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original: Callable[[ImageFile.ImageFile], Any] = ImageFile.ImageFile.load

        def counted(image: ImageFile.ImageFile) -> Any:
            self.calls += 1
            return original(image)

        monkeypatch.setattr(ImageFile.ImageFile, "load", counted)


@pytest.fixture
def load_spy(monkeypatch: pytest.MonkeyPatch) -> LoadSpy:
    return LoadSpy(monkeypatch)


# --- good images ---------------------------------------------------------------------------


def test_a_png_digit_round_trips_exactly(digits: npt.NDArray[np.float64]) -> None:
    for digit in digits:
        decoded = decode_image(render_png(digit), limits=LIMITS, size=(8, 8))
        assert decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, to_grey(digit))
        back = pixels_from_image(decoded)
        assert back.shape == (1, 8, 8)
        assert back.dtype == np.float32
        np.testing.assert_allclose(back.ravel(), digit, atol=0.04, rtol=0)


def test_a_jpeg_digit_comes_back_close(digits: npt.NDArray[np.float64]) -> None:
    for digit in digits:
        decoded = decode_image(render_jpeg(digit), limits=LIMITS, size=(8, 8))
        assert decoded.shape == (8, 8)
        # NOTE: lossy; quality 95 stays within 0.1 on the 0..16 scale for these digits
        np.testing.assert_allclose(pixels_from_image(decoded).ravel(), digit, atol=0.25, rtol=0)


def test_without_size_the_image_keeps_its_own(digits: npt.NDArray[np.float64]) -> None:
    grey = decode_image(render_png(digits[0], scale=3), limits=LIMITS)
    assert grey.shape == (24, 24)
    np.testing.assert_array_equal(grey[::3, ::3], to_grey(digits[0]))


@pytest.mark.parametrize(
    ("mode", "shape"), [("L", (32, 32)), ("RGB", (32, 32, 3)), ("RGBA", (32, 32, 4))]
)
def test_mode_sets_the_channels(
    digits: npt.NDArray[np.float64], mode: str, shape: tuple[int, ...]
) -> None:
    array = decode_image(render_png(digits[0]), limits=LIMITS, mode=mode)
    assert array.shape == shape
    assert array.dtype == np.uint8


def test_colour_converts_to_grey_by_luminance() -> None:
    red = Image.new("RGB", (4, 2), (255, 0, 0))
    grey = decode_image(encoded(red, "PNG"), limits=LIMITS)
    np.testing.assert_array_equal(grey, np.full((2, 4), 76, dtype=np.uint8))  # 0.299 * 255


def test_sixteen_bit_grey_keeps_its_top_byte_rather_than_clipping() -> None:
    wide = (np.arange(16, dtype=np.uint16) * 4096 + 255).reshape(2, 8)
    data = encoded(Image.fromarray(wide), "PNG")
    grey = decode_image(data, limits=LIMITS)
    np.testing.assert_array_equal(grey, (wide >> 8).astype(np.uint8))


def test_a_palette_with_byte_transparency_decodes_without_a_warning() -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 200, 200] + [0] * 762)
    data = encoded(palette, "PNG", transparency=b"\x80\x40")
    grey = decode_image(data, limits=LIMITS)  # NOTE: pytest turns a warning into a failure
    assert grey.shape == (4, 4)
    assert int(grey[0, 0]) == 200


def test_only_the_first_frame_of_an_animated_png_is_read() -> None:
    frames = [Image.new("L", (4, 4), value) for value in (10, 20, 30)]
    data = encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(decode_image(data, limits=LIMITS), np.full((4, 4), 10))


# NOTE: how each EXIF orientation (tag 274) is undone: the stored pixels turned this way
# are what a viewer shows (numpy's rot90 turns counter-clockwise).
UPRIGHT: dict[int, Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.uint8]]] = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.rot90(a, 1)[::-1],  # transpose: rows become columns
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, -1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def tagged(pixels: npt.NDArray[np.uint8], orientation: int, image_format: str) -> bytes:
    exif = Image.Exif()
    exif[274] = orientation
    return encoded(Image.fromarray(pixels), image_format, exif=exif.tobytes())


STORED = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20  # NOTE: no symmetry to hide a turn


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_turns_the_pixels_only_when_asked(orientation: int) -> None:
    data = tagged(STORED, orientation, "PNG")
    np.testing.assert_array_equal(decode_image(data, limits=LIMITS), STORED)
    upright = decode_image(data, limits=LIMITS, upright=True)
    np.testing.assert_array_equal(upright, UPRIGHT[orientation](STORED))


def test_a_sideways_jpeg_is_turned_before_it_is_resized() -> None:
    """A phone's portrait photo: stored 16 wide and 8 high, tagged 6 (turn clockwise).
    Upright it is 8 wide and 16 high, dark on top; resized to 2x4 it keeps that."""
    stored = np.zeros((8, 16), dtype=np.uint8)
    stored[:, 8:] = 255  # NOTE: the right half, which the turn puts at the bottom
    data = tagged(stored, 6, "JPEG")
    upright = decode_image(data, limits=LIMITS, size=(2, 4), upright=True)
    assert upright.shape == (4, 2)
    assert upright[:2].max() < 40
    assert upright[2:].min() > 215
    assert decode_image(data, limits=LIMITS, size=(2, 4)).shape == (4, 2)  # squeezed


def test_a_malformed_exif_block_is_the_clients_error() -> None:
    data = encoded(Image.fromarray(STORED), "PNG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff")
    np.testing.assert_array_equal(decode_image(data, limits=LIMITS), STORED)  # not read
    with pytest.raises(InvalidInput, match="could not be decoded"):
        decode_image(data, limits=LIMITS, upright=True)


# --- refused before decoding -----------------------------------------------------------------


def test_a_png_bomb_is_refused_from_its_header(bomb: bytes, load_spy: LoadSpy) -> None:
    assert len(bomb) < 300_000  # NOTE: what makes it a bomb: tiny file, 400 M pixels
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(bomb, limits=LIMITS)
    error = caught.value
    assert isinstance(error, PayloadTooLarge)
    assert (error.status_code, error.code) == (413, "image_too_large")
    assert error.details == {"max_pixels": DEFAULT_MAX_PIXELS, "width": 20000, "height": 20000}
    assert error.message == (
        f"the image is 20000x20000 pixels; this model takes at most {DEFAULT_MAX_PIXELS} pixels"
    )
    assert load_spy.calls == 0


def test_the_load_spy_sees_an_ordinary_decode(
    digits: npt.NDArray[np.float64], load_spy: LoadSpy
) -> None:
    """The control for the test above: ``load`` is the door decoding goes through."""
    decode_image(render_png(digits[0]), limits=LIMITS)
    assert load_spy.calls >= 1


def test_a_jpeg_claiming_30000x30000_is_refused(
    digits: npt.NDArray[np.float64], load_spy: LoadSpy
) -> None:
    jpeg = render_jpeg(digits[0])
    sof = jpeg.index(b"\xff\xc0")  # NOTE: baseline frame header: length, precision, H, W
    claim = struct.pack(">HH", 30000, 30000)
    forged = jpeg[: sof + 5] + claim + jpeg[sof + 9 :]
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(forged, limits=LIMITS)
    assert caught.value.details["width"] == caught.value.details["height"] == 30000
    assert load_spy.calls == 0


def test_pillows_own_bomb_limit_neither_warns_nor_pre_empts(
    monkeypatch: pytest.MonkeyPatch, digits: npt.NDArray[np.float64]
) -> None:
    """ImageLimits is the one limit: with Pillow's set far below an image, it still
    decodes, and no DecompressionBombWarning (an error under pytest) is raised."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert decode_image(render_png(digits[0]), limits=LIMITS).shape == (32, 32)


def test_the_limit_is_inclusive() -> None:
    data = blank_png(64, 32)
    assert decode_image(data, limits=ImageLimits(max_pixels=64 * 32)).shape == (32, 64)
    with pytest.raises(ImageTooLarge) as caught:
        decode_image(data, limits=ImageLimits(max_pixels=64 * 32 - 1))
    assert caught.value.details["max_pixels"] == 64 * 32 - 1


def test_an_image_at_the_default_limit_decodes() -> None:
    side = 4096
    assert side * side == DEFAULT_MAX_PIXELS
    assert decode_image(blank_png(side, side), limits=LIMITS, size=(8, 8)).shape == (8, 8)
    with pytest.raises(ImageTooLarge):
        decode_image(resized_header(blank_png(8, 8), side + 1, side), limits=LIMITS)


def test_a_png_text_bomb_is_refused_by_pillows_text_limit() -> None:
    inflated = zlib.compress(bytes(8 << 20), 9)  # NOTE: 8 MB of text, PIL allows 1 MB
    ztxt = png_chunk(b"zTXt", b"Comment\x00\x00" + inflated)
    with pytest.raises(InvalidInput, match="could not be decoded"):
        decode_image(blank_png(8, 8, extra=ztxt), limits=LIMITS)


# --- not an image we take ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (encoded(Image.new("L", (4, 4)), "GIF"), "GIF"),
        (encoded(Image.new("RGB", (4, 4)), "BMP"), "BMP"),
        (encoded(Image.new("RGB", (4, 4)), "TIFF"), "TIFF"),
        (b"hello, this is plain text", "neither signature"),
        (b"", "empty"),
    ],
    ids=["gif", "bmp", "tiff", "text", "empty"],
)
def test_other_formats_are_refused_naming_png_and_jpeg(data: bytes, named: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_image(data, limits=LIMITS)
    assert caught.value.message.startswith("only PNG and JPEG images are accepted")
    assert named in caught.value.message
    assert caught.value.details == {"accepted": ["image/png", "image/jpeg"]}


# --- broken files --------------------------------------------------------------------------


def test_garbage_after_a_png_signature_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="could not be decoded"):
        decode_image(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, limits=LIMITS)


def test_garbage_after_a_jpeg_signature_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="could not be decoded"):
        decode_image(b"\xff\xd8\xff" + bytes(range(256)) * 4, limits=LIMITS)


def test_a_png_with_corrupt_pixel_data_is_invalid(digits: npt.NDArray[np.float64]) -> None:
    png = bytearray(render_png(digits[0]))
    start = png.index(b"IDAT") + 4
    png[start + 2 : start + 40] = bytes(38)  # NOTE: past the zlib header, into the deflate
    with pytest.raises(InvalidInput, match="could not be decoded"):
        decode_image(bytes(png), limits=LIMITS)


@pytest.mark.parametrize("render", [render_png, render_jpeg], ids=["png", "jpeg"])
def test_a_truncated_image_is_invalid(
    digits: npt.NDArray[np.float64], render: Callable[[npt.ArrayLike], bytes]
) -> None:
    whole = render(digits[0])
    with pytest.raises(InvalidInput, match="could not be decoded"):
        decode_image(whole[: len(whole) * 2 // 3], limits=LIMITS)


# --- the caller's own mistakes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"mode": "I;16"}, {"mode": "P"}, {"size": (0, 8)}, {"size": (8, -1)}]
)
def test_bad_arguments_are_the_callers_error(
    digits: npt.NDArray[np.float64], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="must be"):
        decode_image(render_png(digits[0]), limits=LIMITS, **kwargs)


def test_limits_must_allow_a_pixel() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ImageLimits(max_pixels=0)


@pytest.mark.parametrize("bad", [np.zeros(63), np.full(64, 17.0), np.full(64, np.nan)])
def test_render_refuses_what_is_not_a_digit(bad: npt.NDArray[np.float64]) -> None:
    with pytest.raises(ValueError, match="digit"):
        render_png(bad)


def test_a_16_bit_image_is_narrowed_in_its_own_width() -> None:
    """Memory, not time: a 16-bit greyscale PNG at 4 megapixels is narrowed without an
    int64 copy (17 bytes a pixel of temporaries before, about 5 now)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((2048, 2048), 0x1234, np.uint16)).save(buffer, "PNG")
    tracemalloc.start()
    try:
        grey = decode_image(buffer.getvalue(), limits=ImageLimits(), mode="L", size=(8, 8))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (grey == 0x12).all()
    assert peak < 8 * 2048 * 2048
