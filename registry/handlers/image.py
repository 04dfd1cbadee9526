"""Images (PNG or JPEG) as the float tensor an image model takes.

The model's ``bytes`` input holds encoded images, sent as ``{"b64": ...}`` in JSON, as a
raw ``image/png`` or ``image/jpeg`` body, or as V2 ``BYTES``. Each is checked and decoded
by ``registry.images`` (a header that claims more than ``max_pixels`` is refused, 413,
before a pixel is decoded), converted to ``mode``, resized to ``size`` with an area
filter, scaled by ``scale`` and laid out channels first: ``[rows, channels, height,
width]``, the model's input under the same name. With ``exif_orientation`` the pixels are
first turned as the image's EXIF orientation tag says.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from registry.batching import Array, Tensors
from registry.handler import Handler, HandlerContext, placeholders
from registry.images import DEFAULT_MAX_PIXELS, OUTPUT_MODES, ImageLimits, decode_image


class ImageTensor(Handler):
    def __init__(
        self,
        context: HandlerContext,
        *,
        size: Sequence[int],
        mode: str = "RGB",
        scale: float = 1 / 255,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        exif_orientation: bool = False,
    ) -> None:
        super().__init__(context)
        self.images = [spec.name for spec in context.inputs if spec.dtype == "bytes"]
        if not self.images:
            raise ValueError("an image handler needs a 'bytes' input")
        width, height = size
        self.size = (int(width), int(height))
        if mode not in OUTPUT_MODES:
            raise ValueError(f"mode must be one of {sorted(OUTPUT_MODES)}, not {mode!r}")
        self.mode = mode
        self.scale = np.float32(scale)
        self.limits = ImageLimits(max_pixels=max_pixels)
        if not isinstance(exif_orientation, bool):
            raise ValueError(f"exif_orientation must be true or false, not {exif_orientation!r}")
        self.upright = exif_orientation

    def decode(self, inputs: Tensors) -> Tensors:
        """Each image as ``[channels, height, width]`` floats, in place of its bytes."""
        decoded = dict(inputs)
        for name in self.images:
            images = inputs[name]
            pixels = np.stack([self._pixels(data) for data in images.reshape(-1)])
            decoded[name] = pixels.reshape(*images.shape, *pixels.shape[1:])
        return decoded

    def _pixels(self, data: bytes) -> Array:
        image = decode_image(
            data, limits=self.limits, mode=self.mode, size=self.size, upright=self.upright
        )
        scaled = image.astype(np.float32) * self.scale
        return scaled[np.newaxis] if scaled.ndim == 2 else scaled.transpose(2, 0, 1)

    def warmup_inputs(self, rows: int) -> Tensors | None:
        """Blank images of the model's size: the default cannot make a valid image."""
        buffer = io.BytesIO()
        Image.new(self.mode, self.size).save(buffer, format="PNG")
        made = placeholders(self.context.inputs, rows)
        for spec in self.context.inputs:
            if spec.dtype == "bytes":
                blank = np.empty((rows, *(max(n, 1) for n in spec.shape)), dtype=object)
                blank.fill(buffer.getvalue())
                made[spec.name] = blank
        return made
