"""What ``make soak`` sends, and how it judges what comes back.

Good requests: every model, every route (default, each version and alias, native and V2),
every encoding (JSON, raw tensor with ``X-Shape``, ``.npy``; V2 JSON and Triton's binary
extension), answered in every form (``Accept``, V2 binary output). Their expected outputs
are computed in this process from the same weight files (``registry.loaders.load_version``)
on real rows of the data sets the example models were trained on, so every 200 is checked:
outputs within a float tolerance, shape, labels, and the version that answered.

Bad requests: every way a client can get one wrong (``BAD_CASES``). Each must be refused
with a 4xx; ``named`` is the status the contract names, and another 4xx is reported as
off-contract but is not a failure.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from registry.batching import Array
from registry.dtypes import DTYPES
from registry.loaders import load_version
from registry.manifest import ModelSpec, load_manifest

RTOL, ATOL = 1e-4, 1e-5
# NOTE: finite in JSON and in float64, infinite once cast to the model's dtype.
OVERFLOW = {"float32": 3.5e38, "float16": 7.0e4}
SOAK_ALIAS = "soak"  # moved between two versions by every reload
MEDIA = {"json": "application/json", "raw": "application/octet-stream", "npy": "application/x-npy"}
FROM_V2 = {row.v2: row.numpy for row in DTYPES.values()}
V2_ID = "soak"
NPY_GARBAGE = b"\x93NUMPY\x01\x00 this is not an array header"


@dataclass(frozen=True, eq=False)
class ModelCase:
    """One model as the soak knows it: its schema, real inputs and torch's outputs for them."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    max_batch: int
    labels: tuple[str, ...] | None
    default: str
    aliases: Mapping[str, str]
    versions: tuple[str, ...]
    inputs: Array
    expected: Mapping[str, Array]

    def targets(self) -> list[str | None]:
        """Everything a route can name: the default (None), each version, each alias."""
        return [None, *self.versions, *self.aliases]

    def resolve(self, target: str | None) -> str:
        if target is None:
            return self.default
        return self.aliases.get(target, target)


@dataclass(frozen=True, eq=False)
class Expect:
    """What a good request asked for, so that its answer can be checked."""

    model: ModelCase
    rows: Array
    single: bool
    target: str | None
    answer: str  # json | raw | npy | v2-json | v2-binary

    def wanted(self, version: str) -> Array:
        outputs = self.model.expected[version][self.rows]
        return outputs[0] if self.single else outputs


@dataclass(frozen=True, eq=False)
class Request:
    kind: str  # "good/<protocol>" or "bad/<case>"
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    chunked: bool = False
    expect: Expect | None = None
    named: frozenset[int] = field(default_factory=frozenset)

    @property
    def v2(self) -> bool:
        return self.path.startswith("/v2/")


# --- the reference ------------------------------------------------------------------------


def load_reference(manifest: Path, weights_root: Path) -> list[ModelCase]:
    """Every model in ``manifest`` of one numeric input and one output, with real inputs
    and each version's outputs for them.

    NOTE: the soak sends every model raw tensors and ``.npy`` too, which only such models
    take; the text and image examples have tests of their own
    (``tests/integration/test_rich_models.py``).
    """
    cases = []
    for spec in load_manifest(manifest).models:
        if len(spec.inputs) != 1 or spec.inputs[0].text or len(spec.outputs) != 1:
            continue
        inputs = sample_inputs(spec)
        expected = {}
        for version in spec.versions:
            model = load_version(spec, version, weights_root)
            expected[version.version] = model.forward_blocking(inputs)
        cases.append(
            ModelCase(
                name=spec.name,
                shape=spec.inputs[0].shape,
                dtype=spec.inputs[0].dtype,
                max_batch=spec.batching.max_batch_size,
                labels=spec.outputs[0].labels,
                default=spec.resolved_default,
                aliases=dict(spec.aliases),
                versions=tuple(v.version for v in spec.versions),
                inputs=inputs,
                expected=expected,
            )
        )
    return cases


def sample_inputs(spec: ModelSpec) -> Array:
    """Held-out rows of the data set the example models were trained on, else seeded noise."""
    from registry.examples.data import diabetes_split, digits_split

    shape, dtype = spec.inputs[0].shape, DTYPES[spec.inputs[0].dtype].numpy
    rows: Array
    if int(np.prod(shape)) == 64 and dtype.kind == "f":
        rows = digits_split().x_test
    elif shape == (10,) and dtype.kind == "f":
        rows = diabetes_split().x_test
    else:
        rows = np.random.default_rng(0).standard_normal((64, *shape))
    return np.ascontiguousarray(rows.reshape(len(rows), *shape).astype(dtype))


# --- good requests ------------------------------------------------------------------------


Combination = tuple[ModelCase, str | None, str, str]


def good_combinations(models: list[ModelCase]) -> list[Combination]:
    """(model, target, encoding, answer form) for every route, encoding and answer form."""
    combos: list[Combination] = []
    for model in models:
        for target in model.targets():
            for encoding in ("json", "raw", "npy"):
                combos += [(model, target, encoding, answer) for answer in MEDIA]
            for encoding in ("v2-json", "v2-binary"):
                combos += [(model, target, encoding, a) for a in ("v2-json", "v2-binary")]
    return combos


def good_request(combination: Combination, rng: np.random.Generator) -> Request:
    model, target, encoding, answer = combination
    v2 = encoding.startswith("v2")
    single = not v2 and bool(rng.random() < 0.3)
    if single:
        count = 1
    elif rng.random() < 0.1:
        count = model.max_batch  # the most one request may hold: still a 200
    else:
        count = int(rng.integers(2, min(8, model.max_batch) + 1))
    rows = rng.choice(len(model.inputs), size=min(count, len(model.inputs)), replace=False)
    x = model.inputs[rows][0] if single else model.inputs[rows]
    expect = Expect(model, rows, single, target, answer)
    route = f"/versions/{target}" if target else ""
    if v2:
        body, headers = v2_body(
            x, model, binary_input=encoding == "v2-binary", binary_output=answer == "v2-binary"
        )
        path = f"/v2/models/{model.name}{route}/infer"
        return Request(f"good/{encoding}", "POST", path, headers, body, expect=expect)
    headers = {"Accept": MEDIA[answer], **native_headers(encoding, x)}
    path = f"/models/{model.name}{route}/predict"
    return Request(
        f"good/native-{encoding}", "POST", path, headers, native_body(encoding, x), expect=expect
    )


def native_headers(encoding: str, x: Array) -> dict[str, str]:
    headers = {"Content-Type": MEDIA[encoding]}
    if encoding == "raw":
        headers["X-Shape"] = ",".join(map(str, x.shape))
    return headers


def native_body(encoding: str, x: Array) -> bytes:
    if encoding == "raw":
        return little_endian(x)
    if encoding == "npy":
        return npy(x)
    return orjson.dumps({"inputs": x.tolist()})


def v2_body(
    x: Array,
    model: ModelCase,
    *,
    binary_input: bool,
    binary_output: bool = False,
    datatype: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    tensor: dict[str, Any] = {
        "name": "input",
        "shape": list(x.shape),
        "datatype": datatype or DTYPES[model.dtype].v2,
    }
    raw = little_endian(x) if binary_input else b""
    if binary_input:
        tensor["parameters"] = {"binary_data_size": len(raw)}
    else:
        tensor["data"] = x.reshape(-1).tolist()
    document: dict[str, Any] = {"id": V2_ID, "inputs": [tensor]}
    if binary_output:
        document["outputs"] = [{"name": "output", "parameters": {"binary_data": True}}]
    head = orjson.dumps(document)
    if not binary_input:
        return head, {"Content-Type": "application/json"}
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return head + raw, headers


def little_endian(x: Array) -> bytes:
    return x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes()


def npy(x: Array, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x, allow_pickle=allow_pickle)
    return buffer.getvalue()


# --- checking an answer -------------------------------------------------------------------


def check_answer(
    expect: Expect, status: int, headers: Mapping[str, str], body: bytes, allowed: frozenset[str]
) -> str | None:
    """None when the answer is right, else what is wrong with it.

    ``allowed`` holds the versions the route may resolve to (two while an alias moves).
    """
    model = expect.model
    if status != 200:
        return f"status {status}"
    lowered = {k.lower(): v for k, v in headers.items()}
    version = lowered.get("x-model-version")
    if version not in allowed:
        return f"X-Model-Version {version!r}; the route resolves to {sorted(allowed)}"
    if lowered.get("x-model-name") != model.name:
        return f"X-Model-Name {lowered.get('x-model-name')!r}, not {model.name!r}"
    try:
        got, labels, named = decode_answer(expect.answer, lowered, body)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return f"undecodable {expect.answer} answer: {type(exc).__name__}: {exc}"
    if named is not None and named != (model.name, version):
        return f"the body names {named}, the headers {(model.name, version)}"
    wanted = expect.wanted(version)
    if got.shape != wanted.shape:
        return f"outputs of shape {list(got.shape)}, expected {list(wanted.shape)}"
    if not np.allclose(got, wanted, rtol=RTOL, atol=ATOL):
        worst = float(np.max(np.abs(got.astype(np.float64) - wanted)))
        return f"outputs differ from torch in-process by up to {worst:.3g} (version {version})"
    if expect.answer == "json":
        return _check_labels(model, wanted, labels, expect.single)
    return None


def decode_answer(
    answer: str, headers: Mapping[str, str], body: bytes
) -> tuple[Array, object, tuple[str, str] | None]:
    """(outputs, labels or None, (model, version) named in the body or None)."""
    if answer == "raw":
        shape = [int(n) for n in headers["x-shape"].split(",") if n]
        dtype = np.dtype(headers["x-dtype"]).newbyteorder("<")
        return np.frombuffer(body, dtype=dtype).reshape(shape), None, None
    if answer == "npy":
        return np.load(io.BytesIO(body), allow_pickle=False), None, None
    if answer == "json":
        document = orjson.loads(body)
        named = (document["model"], document["version"])
        return np.asarray(document["outputs"], dtype=np.float64), document.get("labels"), named
    head_length = int(headers.get("inference-header-content-length", len(body)))
    if answer == "v2-binary" and "inference-header-content-length" not in headers:
        raise KeyError("binary output asked for, no Inference-Header-Content-Length")
    document = orjson.loads(body[:head_length])
    if document.get("id") != V2_ID:
        raise ValueError(f"id {document.get('id')!r} not echoed")
    tensor = document["outputs"][0]
    named = (document["model_name"], document["model_version"])
    if answer == "v2-json":
        return np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"]), None, named
    size = tensor["parameters"]["binary_data_size"]
    if head_length + size != len(body):
        raise ValueError(f"{head_length} + {size} bytes declared, the body has {len(body)}")
    dtype = FROM_V2[tensor["datatype"]].newbyteorder("<")
    raw = np.frombuffer(body[head_length:], dtype=dtype)
    return raw.reshape(tensor["shape"]), None, named


def _check_labels(model: ModelCase, wanted: Array, labels: object, single: bool) -> str | None:
    if model.labels is None:
        return None if labels is None else f"labels {labels!r} from a model without labels"
    rows = wanted.reshape(1 if single else len(wanted), -1)
    got = [labels] if single else labels
    if not isinstance(got, list) or len(got) != len(rows):
        return f"labels {labels!r} for {len(rows)} row(s)"
    for row, label in zip(rows, got, strict=True):
        # NOTE: a near-tie may fall either way; any label within tolerance of the top is right.
        tied = np.isclose(row, row.max(), rtol=RTOL, atol=ATOL)
        if label not in {model.labels[i] for i in np.flatnonzero(tied)}:
            return f"label {label!r}; torch's argmax is {model.labels[int(row.argmax())]!r}"
    return None


# --- bad requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class BadCase:
    name: str
    named: frozenset[int]
    build: Callable[[ModelCase, int], Request]
    eligible: Callable[[ModelCase], bool] = lambda _: True

    def request(self, model: ModelCase, max_body_bytes: int) -> Request:
        built = self.build(model, max_body_bytes)
        return replace(built, kind=f"bad/{self.name}", named=self.named)


def _native(model: ModelCase, target: str | None = None) -> str:
    return f"/models/{model.name}" + (f"/versions/{target}" if target else "") + "/predict"


def _v2(model: ModelCase, target: str | None = None) -> str:
    return f"/v2/models/{model.name}" + (f"/versions/{target}" if target else "") + "/infer"


def _post(
    path: str,
    body: bytes,
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> Request:
    return Request("", "POST", path, {"Content-Type": content_type, **(headers or {})}, body)


def _json(path: str, document: object) -> Request:
    return _post(path, orjson.dumps(document))


def _row(model: ModelCase) -> Array:
    return np.asarray(model.inputs[0])


def _rows(model: ModelCase, count: int) -> Array:
    return np.resize(model.inputs, (count, *model.shape)).astype(model.inputs.dtype)


def _overflowing(model: ModelCase) -> Array:
    row = _row(model).astype(np.float64)
    row.reshape(-1)[0] = OVERFLOW[model.dtype]
    return row


def _overflows(model: ModelCase) -> bool:
    return model.dtype in OVERFLOW


def _short(model: ModelCase) -> Array:
    """One value fewer than an instance: the wrong shape however it is read."""
    return _row(model).reshape(-1)[:-1]


def _oversized(max_body_bytes: int) -> bytes:
    count = max_body_bytes // 2 + 1
    return b'{"inputs": [' + b"0," * count + b"0]}"


def _raw(model: ModelCase, x: Array, shape: str | None) -> Request:
    headers = {"X-Shape": shape} if shape is not None else {}
    return _post(_native(model), little_endian(x), MEDIA["raw"], headers)


def _raw_rows(model: ModelCase, count: int) -> Request:
    x = _rows(model, count)
    return _raw(model, x, ",".join(map(str, x.shape)))


def _npy(model: ModelCase, data: bytes) -> Request:
    return _post(_native(model), data, MEDIA["npy"])


def _v2_json(model: ModelCase, x: Array, **tensor: object) -> Request:
    body, headers = v2_body(x, model, binary_input=False)
    document = orjson.loads(body)
    document["inputs"][0] |= tensor
    return _post(_v2(model), orjson.dumps(document), headers["Content-Type"])


def _v2_binary(
    model: ModelCase, tail: int = 0, head: int | str = 0, size: int | None = None
) -> Request:
    """A binary-extension request whose lengths are off: ``tail`` bytes more (fewer: half
    the tensor), the JSON length ``head`` more (or a string), or ``binary_data_size``."""
    x = _row(model)[np.newaxis]
    raw = little_endian(x)
    body, headers = v2_body(x, model, binary_input=True)
    document: dict[str, Any] = orjson.loads(body[: int(headers["Inference-Header-Content-Length"])])
    if size is not None:
        document["inputs"][0]["parameters"]["binary_data_size"] = size
    header = orjson.dumps(document)
    body = header + (raw[: len(raw) // 2] if tail < 0 else raw + b"\0" * tail)
    length = head if isinstance(head, str) else str(len(header) + head)
    return _post(_v2(model), body, MEDIA["raw"], {"Inference-Header-Content-Length": length})


def _wrong_method(model: ModelCase, _: int) -> Request:
    return Request("", "GET", _native(model), {})


def _chunked(request: Request) -> Request:
    return replace(request, chunked=True)


def _other_datatype(model: ModelCase) -> str:
    return "FP64" if DTYPES[model.dtype].v2 != "FP64" else "FP32"


BAD_CASES: tuple[BadCase, ...] = (
    # native JSON
    BadCase("json_invalid", frozenset({400}), lambda m, _: _post(_native(m), b'{"inputs": [1, 2')),
    BadCase("json_empty_body", frozenset({400}), lambda m, _: _post(_native(m), b"")),
    BadCase("json_not_an_object", frozenset({422}), lambda m, _: _json(_native(m), [1, 2, 3])),
    BadCase(
        "json_missing_inputs",
        frozenset({422}),
        lambda m, _: _json(_native(m), {"instances": _row(m).tolist()}),
    ),
    BadCase(
        "json_wrong_shape",
        frozenset({422}),
        lambda m, _: _json(_native(m), {"inputs": _short(m).tolist()}),
    ),
    BadCase(
        "json_ragged",
        frozenset({422}),
        lambda m, _: _json(_native(m), {"inputs": [_row(m).tolist(), _short(m).tolist()]}),
    ),
    BadCase(
        "json_wrong_dtype",
        frozenset({422}),
        lambda m, _: _json(_native(m), {"inputs": np.full(m.shape, "x").tolist()}),
    ),
    BadCase("json_empty_inputs", frozenset({422}), lambda m, _: _json(_native(m), {"inputs": []})),
    BadCase(
        "json_nan_literal",
        frozenset({400}),
        lambda m, _: _post(_native(m), b'{"inputs": [NaN, Infinity]}'),
    ),
    BadCase(
        "json_overflow",
        frozenset({422}),
        lambda m, _: _json(_native(m), {"inputs": _overflowing(m).tolist()}),
        _overflows,
    ),
    BadCase(
        "json_too_many_rows",
        frozenset({413, 422}),
        lambda m, _: _json(_native(m), {"inputs": _rows(m, m.max_batch + 1).tolist()}),
    ),
    BadCase(
        "unknown_model",
        frozenset({404}),
        lambda m, _: _json("/models/no-such-model/predict", {"inputs": _row(m).tolist()}),
    ),
    BadCase(
        "unknown_version",
        frozenset({404}),
        lambda m, _: _json(_native(m, "no-such-version"), {"inputs": _row(m).tolist()}),
    ),
    BadCase(
        "unsupported_media_type",
        frozenset({415}),
        lambda m, _: _post(_native(m), b"1,2,3\n", "text/csv"),
    ),
    BadCase(
        "oversized_body", frozenset({413}), lambda m, limit: _post(_native(m), _oversized(limit))
    ),
    BadCase(
        "oversized_chunked",
        frozenset({413}),
        lambda m, limit: _chunked(_post(_native(m), _oversized(limit))),
    ),
    BadCase("wrong_method", frozenset({405}), _wrong_method),
    # native raw tensor
    BadCase("raw_missing_shape", frozenset({422}), lambda m, _: _raw(m, _row(m), None)),
    BadCase("raw_shape_not_numbers", frozenset({422}), lambda m, _: _raw(m, _row(m), "1,sixty")),
    BadCase(
        "raw_lying_shape",
        frozenset({422}),
        lambda m, _: _raw(m, _row(m), ",".join(map(str, (2, *m.shape)))),
    ),
    BadCase(
        "raw_wrong_shape",
        frozenset({422}),
        lambda m, _: _raw(m, _short(m), f"1,{_short(m).size}"),
    ),
    BadCase(
        "raw_negative_shape",
        frozenset({422}),
        lambda m, _: _raw(m, _row(m), ",".join(map(str, (-1, *m.shape)))),
    ),
    BadCase(
        "raw_too_many_rows",
        frozenset({413, 422}),
        lambda m, _: _raw_rows(m, m.max_batch + 1),
    ),
    # native .npy
    BadCase("npy_garbage", frozenset({422}), lambda m, _: _npy(m, NPY_GARBAGE)),
    BadCase("npy_truncated", frozenset({422}), lambda m, _: _npy(m, npy(_row(m))[:-7])),
    BadCase(
        "npy_pickled_objects",
        frozenset({422}),
        lambda m, _: _npy(m, npy(np.array([{"x": 1}, None], dtype=object), allow_pickle=True)),
    ),
    BadCase(
        "npy_wrong_dtype",
        frozenset({422}),
        lambda m, _: _npy(m, npy(np.full(m.shape, "x"))),
    ),
    BadCase("npy_wrong_shape", frozenset({422}), lambda m, _: _npy(m, npy(_short(m)))),
    BadCase(
        "npy_overflow",
        frozenset({422}),
        lambda m, _: _npy(m, npy(_overflowing(m))),
        _overflows,
    ),
    BadCase(
        "npy_too_many_rows",
        frozenset({413, 422}),
        lambda m, _: _npy(m, npy(_rows(m, m.max_batch + 1))),
    ),
    # V2 JSON
    BadCase("v2_invalid_json", frozenset({400}), lambda m, _: _post(_v2(m), b'{"inputs": [')),
    BadCase(
        "v2_missing_inputs",
        frozenset({422}),
        lambda m, _: _json(_v2(m), {"id": V2_ID, "outputs": []}),
    ),
    BadCase(
        "v2_wrong_datatype",
        frozenset({422}),
        lambda m, _: _v2_json(m, _row(m)[np.newaxis], datatype=_other_datatype(m)),
    ),
    BadCase(
        "v2_wrong_shape",
        frozenset({422}),
        lambda m, _: _v2_json(m, _short(m)[np.newaxis]),
    ),
    BadCase(
        "v2_shape_data_mismatch",
        frozenset({422}),
        lambda m, _: _v2_json(m, _row(m)[np.newaxis], data=_short(m).tolist()),
    ),
    BadCase(
        "v2_parameters_not_an_object",
        frozenset({400, 422}),
        lambda m, _: _v2_json(m, _row(m)[np.newaxis], parameters=["binary_data_size"]),
    ),
    BadCase(
        "v2_outputs_not_objects",
        frozenset({400, 422}),
        lambda m, _: _json(
            _v2(m), orjson.loads(_v2_json(m, _row(m)[np.newaxis]).body) | {"outputs": ["output"]}
        ),
    ),
    BadCase(
        "v2_overflow",
        frozenset({422}),
        lambda m, _: _v2_json(m, _row(m)[np.newaxis], data=_overflowing(m).reshape(-1).tolist()),
        _overflows,
    ),
    BadCase(
        "v2_too_many_rows",
        frozenset({413, 422}),
        lambda m, _: _v2_json(m, _rows(m, m.max_batch + 1)),
    ),
    BadCase(
        "v2_unknown_model",
        frozenset({404}),
        lambda m, _: replace(
            _v2_json(m, _row(m)[np.newaxis]), path="/v2/models/no-such-model/infer"
        ),
    ),
    BadCase(
        "v2_unknown_version",
        frozenset({404}),
        lambda m, _: replace(_v2_json(m, _row(m)[np.newaxis]), path=_v2(m, "no-such-version")),
    ),
    BadCase(
        "v2_oversized_body", frozenset({413}), lambda m, limit: _post(_v2(m), _oversized(limit))
    ),
    # V2 binary tensor extension
    BadCase("v2_binary_short", frozenset({400, 422}), lambda m, _: _v2_binary(m, tail=-1)),
    BadCase("v2_binary_trailing_bytes", frozenset({400, 422}), lambda m, _: _v2_binary(m, tail=8)),
    BadCase(
        "v2_binary_header_past_body", frozenset({400, 422}), lambda m, _: _v2_binary(m, head=4096)
    ),
    BadCase(
        "v2_binary_header_not_a_number",
        frozenset({400, 422}),
        lambda m, _: _v2_binary(m, head="twelve"),
    ),
    BadCase("v2_binary_negative_size", frozenset({400, 422}), lambda m, _: _v2_binary(m, size=-4)),
)
