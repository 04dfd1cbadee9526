"""One prediction, protocol-neutral: request bytes and headers in, response out.

The native predict routes call this (through FastAPI or the fast path, which calls the
same routes); the V2 routes share its ``provenance``. Inputs come as JSON (the
default), raw little-endian bytes with ``X-Shape``, or ``.npy`` (a model with one numeric
input), or an image (``image/png``, ``image/jpeg``: a model with one ``bytes`` input), at
most the model's ``batching.max_batch_size`` instances (413 past it: one request never
makes a forward pass larger than the batcher would); the answer follows ``Accept`` in the
same three forms where the model has one numeric output, and is JSON otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from registry import tracing
from registry.batching import Array, Tensors
from registry.binary import NPY, RAW, decode_npy, decode_raw, encode_npy, encode_raw
from registry.codec import encode_prediction
from registry.errors import InvalidInput, UnsupportedMediaType
from registry.images import ACCEPTED as IMAGES
from registry.manifest import TensorSpec, fits_shape
from registry.model import LoadedModel
from registry.named import Decoded, decode_inputs

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Prediction:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)
    """Lower-case names, as HTTP/1.1 and ASGI send them."""


async def predict(
    model: LoadedModel,
    body: bytes,
    *,
    timeout_s: float,
    content_type: str | None = None,
    shape: str | None = None,
    accept: str | None = None,
) -> Prediction:
    """Decode by ``content_type``, queue behind other requests, wait, encode by ``accept``."""
    spec = model.spec
    decoded = tracing.step(
        "decode",
        decode,
        body,
        content_type,
        shape,
        spec.inputs,
        spec.batching.max_batch_size,
    )
    outputs = await model.infer_tensors(decoded.tensors, timeout_s)
    return tracing.step("encode", _answer, model, outputs, decoded.batched, accept)


def _answer(model: LoadedModel, outputs: Tensors, batched: bool, accept: str | None) -> Prediction:
    """The outputs in the form ``accept`` prefers, where the model has one numeric output;
    JSON otherwise."""
    spec = model.spec
    headers = provenance(model)
    wanted = preferred_answer(accept)
    if wanted != JSON and len(spec.outputs) == 1:
        array = outputs[spec.outputs[0].name]
        if array.dtype.kind != "O":
            answer = array if batched else array[0]
            if wanted == RAW:
                raw, shape_headers = encode_raw(answer)
                return Prediction(raw, RAW, headers | shape_headers)
            return Prediction(encode_npy(answer), NPY, headers)
    document = encode_prediction(model.name, model.version, outputs, batched, spec.outputs)
    return Prediction(document, JSON, headers)


def provenance(model: LoadedModel) -> dict[str, str]:
    """The headers every prediction carries, so a client knows what answered."""
    return {"x-model-name": model.name, "x-model-version": model.version}


def decode(
    body: bytes,
    content_type: str | None,
    shape: str | None,
    specs: tuple[TensorSpec, ...],
    max_rows: int,
) -> Decoded:
    """The request's inputs; at most ``max_rows`` instances (the model's batch size cap)."""
    media = _media(content_type)
    if media in (JSON, "", "*/*", "text/plain"):
        return decode_inputs(body, specs, max_rows=max_rows)
    (spec,) = specs if len(specs) == 1 else (None,)
    if spec is not None and spec.dtype == "bytes" and media in IMAGES:
        return Decoded({spec.name: _one_image(body, spec)}, batched=False)
    if spec is not None and not spec.text:
        if media == RAW:
            return Decoded.of(spec, decode_raw(body, shape, spec, max_rows=max_rows))
        if media == NPY:
            return Decoded.of(spec, decode_npy(body, spec, max_rows=max_rows))
    return _unsupported(media, spec)


def _one_image(body: bytes, spec: TensorSpec) -> Array:
    """The body as the one instance of an input that holds one image an instance."""
    one = (1,) * len(spec.shape)
    if not fits_shape(one, spec.shape):
        raise InvalidInput(
            f"an image body is one image; input {spec.name!r} takes {list(spec.shape)} "
            "of them an instance: send them in JSON",
            expected_shape=list(spec.shape),
        )
    return np.array([body], dtype=object).reshape(1, *one)


def _unsupported(media: str, spec: TensorSpec | None) -> Decoded:
    if spec is not None and spec.dtype == "bytes":
        raise UnsupportedMediaType(media, [JSON, *IMAGES])
    if spec is None or spec.text:
        raise UnsupportedMediaType(media, [JSON])
    raise UnsupportedMediaType(media, [JSON, RAW, NPY], hint=" (raw tensors need X-Shape)")


_ANSWERS = (JSON, RAW, NPY)


def preferred_answer(accept: str | None) -> str:
    """The answer type ``Accept`` prefers by q-value; JSON when it accepts none we make.

    ``application/json;q=0.1, application/x-npy`` is ``.npy``. Each type takes the q of the
    most specific range that names it (exact, then ``application/*``, then ``*/*``), as
    RFC 9110 says; equal preferences go to JSON, then raw, then ``.npy``. Falling back to
    JSON rather than answering 406 keeps clients with a browser's ``Accept`` working.
    """
    if not accept or accept == "*/*":
        return JSON
    ranges = []
    for part in accept.split(","):
        media, _, parameters = part.partition(";")
        ranges.append((media.strip().lower(), _quality(parameters)))
    q, _, answer = max((_q_for(answer, ranges), -i, answer) for i, answer in enumerate(_ANSWERS))
    return answer if q > 0 else JSON


def _q_for(answer: str, ranges: list[tuple[str, float]]) -> float:
    family = answer.split("/", 1)[0] + "/*"
    specificity = {answer: 2, family: 1, "*/*": 0}
    named = [(specificity[media], q) for media, q in ranges if media in specificity]
    return max(named)[1] if named else 0.0


def _quality(parameters: str) -> float:
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


def _media(header: str | None) -> str:
    """The first media type named, lower-cased, without parameters; JSON by default."""
    if not header:
        return JSON
    first = header.split(",", 1)[0]
    return first.split(";", 1)[0].strip().lower()
