"""``make bench``'s protocols section, without servers: each protocol's request is the
sample as the server's own decoder reads it, each answer reads back as the server's own
encoder writes it, and the stand-in collector counts what an OTLP exporter sends.

NOTE: the gRPC half runs in a process of its own: ``registry.grpc_api`` and
``tritonclient.grpc`` (imported by the integration tests) cannot share one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from bench.__main__ import build
from bench.protocols import (
    MODEL,
    Sink,
    ratios,
    read_v2_binary,
    read_v2_json,
    tables,
    v2_binary,
    v2_json,
)
from registry.manifest import ModelSpec, load_manifest
from registry.v2 import decode_infer, encode_infer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, np.ndarray]:
    """The model entry the section serves and its sample, as ``python -m bench`` builds them."""
    work = tmp_path_factory.mktemp("bench-protocols")
    samples = build(work, [MODEL])
    (spec,) = load_manifest(work / "models.yaml").models
    return spec, samples[MODEL]


def decode(spec: ModelSpec, body: bytes, header: str | None) -> tuple[dict[str, Any], np.ndarray]:
    document, decoded = decode_infer(
        body, header, spec.inputs, spec.outputs, spec.batching.max_batch_size
    )
    (array,) = decoded.tensors.values()
    assert decoded.batched
    return document, np.asarray(array)


def test_v2_json_and_binary_requests_carry_the_sample(served: tuple[ModelSpec, np.ndarray]) -> None:
    spec, sample = served
    _, got = decode(spec, v2_json(sample), None)
    assert got.dtype == np.float32
    assert np.array_equal(got, sample)
    body, headers = v2_binary(sample)
    document, got = decode(spec, body, headers["Inference-Header-Content-Length"])
    assert np.array_equal(got, sample)
    assert len(body) - int(headers["Inference-Header-Content-Length"]) == sample.size * 4
    assert document["parameters"] == {"binary_data_output": True}


def test_answers_read_back_as_the_server_writes_them(served: tuple[ModelSpec, np.ndarray]) -> None:
    spec, sample = served
    outputs = {"output": np.arange(2 * 512, dtype=np.float32).reshape(2, 512)[:1]}
    document, _ = decode(spec, v2_json(sample), None)
    body, length = encode_infer(MODEL, "1", document, outputs, True, spec.outputs)
    assert length is None
    assert np.array_equal(read_v2_json(body), outputs["output"])
    binary, headers = v2_binary(sample)
    document, _ = decode(spec, binary, headers["Inference-Header-Content-Length"])
    body, length = encode_infer(MODEL, "1", document, outputs, True, spec.outputs)
    assert length is not None
    assert np.array_equal(read_v2_binary(body, str(length)), outputs["output"])
    with pytest.raises(ValueError, match="not binary"):
        read_v2_binary(body, None)


GRPC_ROUND_TRIP = """
import sys
from pathlib import Path
import numpy as np
from bench import protocols
assert "registry.grpc_api.open_inference_pb2" not in sys.modules, "imported up front"
from registry.grpc_api.codec import decode_request, encode_response
from registry.manifest import load_manifest
(spec,) = load_manifest(Path(sys.argv[1])).models
sample = np.random.default_rng(0).standard_normal((1, 512), dtype=np.float32)
request = protocols.grpc_request(sample)
document, decoded = decode_request(request, spec.inputs, spec.outputs, 16)
assert request.model_name == protocols.MODEL and decoded.batched
assert np.array_equal(decoded.tensors["input"], sample)
outputs = {"output": sample[:, ::-1].copy()}
response = encode_response("medium", "1", document, outputs, True, spec.outputs)
assert np.array_equal(protocols.read_grpc(response), outputs["output"])
print("ok")
"""


def test_grpc_request_and_answer_round_trip_in_a_process_of_their_own(tmp_path: Path) -> None:
    build(tmp_path, [MODEL])
    done = subprocess.run(
        [sys.executable, "-c", GRPC_ROUND_TRIP, str(tmp_path / "models.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_sink_counts_what_an_otlp_exporter_sends(compression: Compression) -> None:
    with Sink() as sink:
        exporter = OTLPSpanExporter(endpoint=f"{sink.url}/v1/traces", compression=compression)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        for _ in range(3):
            with tracer.start_as_current_span("request"), tracer.start_as_current_span("step"):
                pass
        provider.shutdown()
        counts = sink.counts()
    assert counts["spans"] == 6
    assert counts["posts"] == 6  # one export per span with SimpleSpanProcessor
    assert counts["bytes"] > 0
    assert counts["refused"] == 0


def row(protocol: str, tracing: bool, conc: int, rps: float) -> dict[str, Any]:
    return {
        "protocol": protocol,
        "tracing": tracing,
        "conc": conc,
        "rps": rps,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "requests": int(rps * 5),
        "server_cpu_s": 5.0,
        "server_cores": 1.0,
        "load_cores": 0.1,
        "other_cores": 0.0,
        "tool": "wrk",
    }


def test_ratios_and_tables_pair_the_right_cells() -> None:
    results = [
        row(protocol, tracing, conc, rps * conc)
        for conc in (1, 8)
        for protocol, tracing, rps in (
            ("v2-json", False, 100.0),
            ("v2-binary", False, 120.0),
            ("grpc", False, 150.0),
            ("v2-json", True, 80.0),
        )
    ]
    found = ratios(results, [1, 8])
    assert found == {
        "grpc/v2-json": {"1": 1.5, "8": 1.5},
        "v2-binary/v2-json": {"1": 1.2, "8": 1.2},
        "traced/untraced": {"1": 0.8, "8": 0.8},
    }
    exported = {
        "spans": 10,
        "posts": 2,
        "bytes": 2000,
        "requests_sent": 4,
        "spans_per_request": 2.5,
    }
    text = tables({"results": results, "ratios": found, "exported": exported}, [1, 8])
    assert "| medium | 8 | 800.0 | 1.00 | 2.00 | 960.0 |" in text
    assert "| 1.20x | 1.50x |" in text
    assert "| 0.80x |" in text
    assert "10 spans exported in 2 OTLP posts" in text
