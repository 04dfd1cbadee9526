"""``make bench``'s ``protocols`` section: one model through each of this project's front
doors, and what tracing costs.

The ``medium`` MLP of the main section, one sample per request, at each concurrency:

- **V2 JSON**: ``POST /v2/models/medium/infer``, the sample as a JSON tensor (shape
  ``[1, 512]``, ``FP32``, flat ``data``), the answer in JSON;
- **V2 binary**: the same route with Triton's binary extension: the JSON header, then the
  sample's 2,048 little-endian bytes (``Inference-Header-Content-Length``), the answer asked
  in binary too (``binary_data_output``), as ``tritonclient`` does by default;
- **gRPC**: ``inference.GRPCInferenceService/ModelInfer`` with the sample in
  ``raw_input_contents``, from this process: ``concurrency`` asyncio tasks on one
  ``grpc.aio`` channel (one HTTP/2 connection), each sending the next call when the last
  answered, with the generated stubs of ``registry.grpc_api`` (not ``tritonclient.grpc``:
  both compile the protocol into protobuf's process-wide pool, so they are imported only
  when a run needs them).

All three run against ONE server (``registry serve --grpc-port``), their cells interleaved
(for each concurrency: JSON, binary, gRPC), so drift touches all three alike. REST load
comes from wrk (or bench/load.py's client), gRPC load from a Python client in this
process: each cell records the CPU of the server, of the load generator and of everything
else, since on a small machine the client's share decides much of the ratio.

Tracing: a second server, the same command with ``REGISTRY_OTEL_ENDPOINT`` pointing at
``Sink`` (a stand-in OTLP/HTTP collector in a thread of this process: 200 to every
``POST /v1/traces``, counting posts, bytes and spans), runs the V2 JSON cells again; the
first server's V2 JSON cells are the tracing-off side. Neither server gets the caller's
``REGISTRY_*`` or ``OTEL_*`` settings. Each protocol's answer to the sample is checked
against the model's output computed in-process before anything is timed.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from bench import load
from bench.launch import free_port, launch, registry_serve
from bench.peers.run import cores, measure_call

NAME = "protocols"
MODEL = "medium"
INPUT, OUTPUT = "input", "output"  # the names the manifest's one input and output take
PROTOCOLS = ("v2-json", "v2-binary", "grpc")
ATOL = 1e-4
CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Options:
    """What ``python -m bench`` passes on (see its ``--help``)."""

    concurrencies: list[int]
    duration: float = 5.0
    warmup: float = 2.0


# ---- requests and answers -----------------------------------------------------------------


def v2_json(sample: np.ndarray) -> bytes:
    """The V2 JSON request for ``sample`` (a batch: ``[rows, features]``)."""
    tensor = {
        "name": INPUT,
        "shape": list(sample.shape),
        "datatype": "FP32",
        "data": sample.reshape(-1).tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


def v2_binary(sample: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The binary-extension request for ``sample`` and its headers: the answer asked in
    binary too."""
    raw = sample.astype("<f4").tobytes()
    tensor = {
        "name": INPUT,
        "shape": list(sample.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(raw)},
    }
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return head + raw, headers


def read_v2_json(body: bytes) -> np.ndarray:
    (tensor,) = json.loads(body)["outputs"]
    return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])


def read_v2_binary(body: bytes, header_length: str | None) -> np.ndarray:
    """The one output of a binary-extension answer (its JSON header, then its bytes)."""
    if header_length is None:
        raise ValueError("the answer has no Inference-Header-Content-Length: not binary")
    length = int(header_length)
    (tensor,) = json.loads(body[:length])["outputs"]
    raw = body[length:]
    if tensor["parameters"]["binary_data_size"] != len(raw):
        raise ValueError(f"binary_data_size {tensor['parameters']} for {len(raw)} bytes")
    return np.frombuffer(raw, dtype="<f4").reshape(tensor["shape"])


def grpc_request(sample: np.ndarray) -> Any:
    """``ModelInferRequest`` for ``sample``, raw contents."""
    from registry.grpc_api import open_inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name=INPUT, datatype="FP32", shape=list(sample.shape))
    request.raw_input_contents.append(sample.astype("<f4").tobytes())
    return request


def read_grpc(response: Any) -> np.ndarray:
    (tensor,) = response.outputs
    (raw,) = response.raw_output_contents
    return np.frombuffer(raw, dtype="<f4").reshape(list(tensor.shape))


# ---- the stand-in collector ---------------------------------------------------------------


class Sink:
    """An OTLP/HTTP collector: 200 to every ``POST /v1/traces``, counting the posts, their
    bytes (as sent) and the spans in them; with ``keep``, the spans too (for tests)."""

    def __init__(self, keep: bool = False) -> None:
        self.posts = self.bytes = self.spans = self.refused = 0
        self.kept: list[Any] = []
        """Every span received (``opentelemetry.proto`` ``Span``), where ``keep``."""
        self._keep = keep
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces":
                    sink.count(0, 0, refused=True)
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                raw = (
                    gzip.decompress(body)
                    if self.headers.get("Content-Encoding") == "gzip"
                    else body
                )
                exported = ExportTraceServiceRequest.FromString(raw)
                spans = [
                    span
                    for resource in exported.resource_spans
                    for scope in resource.scope_spans
                    for span in scope.spans
                ]
                sink.count(len(body), len(spans))
                if sink._keep:
                    with sink._lock:
                        sink.kept.extend(spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")  # an empty ExportTraceServiceResponse
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def count(self, size: int, spans: int, refused: bool = False) -> None:
        with self._lock:
            if refused:
                self.refused += 1
            else:
                self.posts, self.bytes, self.spans = (
                    self.posts + 1,
                    self.bytes + size,
                    self.spans + spans,
                )

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "posts": self.posts,
                "bytes": self.bytes,
                "spans": self.spans,
                "refused": self.refused,
            }

    def __enter__(self) -> Sink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


# ---- gRPC load ----------------------------------------------------------------------------


def grpc_load(target: str, request: Any, concurrency: int, seconds: float) -> load.Result:
    """Closed-loop ``ModelInfer`` calls, ``concurrency`` in flight on one channel, for
    ``seconds``: non-OK statuses count as ``non2xx``, calls that failed otherwise as
    ``errors``."""
    return asyncio.run(_grpc_load(target, request, concurrency, seconds))


async def _grpc_load(target: str, request: Any, concurrency: int, seconds: float) -> load.Result:
    import grpc

    from registry.grpc_api import open_inference_pb2_grpc as pb_grpc

    latencies: list[float] = []
    failures = [0, 0]  # non-OK statuses, other failures
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), CALL_TIMEOUT_S)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stop_at = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    await stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError:
                    failures[0] += 1
                except OSError:
                    failures[1] += 1
                    return
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return load.summarize(latencies, elapsed, failures[0], failures[1], "grpc.aio, in process")


# ---- the servers --------------------------------------------------------------------------


@dataclass
class Server:
    """One running server: its REST base, its gRPC target and its process group."""

    url: str
    grpc: str
    pgid: int

    def cells(self, sample: np.ndarray) -> dict[str, Callable[[int, float], load.Result]]:
        """Each protocol's closed-loop load of ``sample``: (concurrency, seconds) -> figures."""
        target = f"{self.url}/v2/models/{MODEL}/infer"
        json_body = v2_json(sample)
        binary_body, headers = v2_binary(sample)
        request = grpc_request(sample)
        return {
            "v2-json": lambda c, s: load.run(target, json_body, c, s),
            "v2-binary": lambda c, s: load.run(target, binary_body, c, s, headers),
            "grpc": lambda c, s: grpc_load(self.grpc, request, c, s),
        }

    def check(self, sample: np.ndarray, expected: np.ndarray, protocols: tuple[str, ...]) -> None:
        """Each protocol's answer to ``sample`` must be the in-process output."""
        import grpc

        from registry.grpc_api import open_inference_pb2_grpc as pb_grpc

        target = f"{self.url}/v2/models/{MODEL}/infer"
        answers: dict[str, Callable[[], np.ndarray]] = {
            "v2-json": lambda: read_v2_json(_post(target, v2_json(sample), load.JSON).content),
            "v2-binary": lambda: _binary_answer(target, sample),
        }
        with grpc.insecure_channel(self.grpc) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            answers["grpc"] = lambda: read_grpc(
                stub.ModelInfer(grpc_request(sample), timeout=CALL_TIMEOUT_S)
            )
            for protocol in protocols:
                got = answers[protocol]()
                if got.shape != expected.shape or not np.allclose(got, expected, atol=ATOL):
                    raise SystemExit(f"{protocol} answered {got}, torch says {expected}")


def _post(target: str, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
    answer = httpx.post(target, content=body, headers=dict(headers), timeout=CALL_TIMEOUT_S)
    answer.raise_for_status()
    return answer


def _binary_answer(target: str, sample: np.ndarray) -> np.ndarray:
    body, headers = v2_binary(sample)
    answer = _post(target, body, headers)
    return read_v2_binary(answer.content, answer.headers.get("inference-header-content-length"))


@contextmanager
def serving(work: Path, tag: str, otel: str | None = None) -> Iterator[Server]:
    """``registry serve --grpc-port`` on the main section's manifest; with ``otel``, traced
    to that OTLP/HTTP endpoint."""
    port = free_port()
    while (grpc_port := free_port()) == port:
        pass
    command, env = registry_serve(work / "models.yaml", port, "--grpc-port", str(grpc_port))
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    if otel is not None:
        env["REGISTRY_OTEL_ENDPOINT"] = otel
    url = f"http://127.0.0.1:{port}"
    log = work / f"registry-{NAME}-{tag}.log"
    with launch(f"registry ({tag})", command, env, work, log, f"{url}/readyz") as pgid:
        yield Server(url, f"127.0.0.1:{grpc_port}", pgid)


# ---- the section --------------------------------------------------------------------------


def run(work: Path, sample: np.ndarray, expected: np.ndarray, opts: Options) -> dict[str, Any]:
    """Every protocol on one server, then V2 JSON again on a traced one.

    ``work`` holds the main section's manifest and weights (``build``), ``expected`` the
    model's output for ``sample`` in-process. Returns the result rows (``protocol``,
    ``tracing``, ``conc``, load and CPU figures), the ratios, the collector's counts and
    the settings, for the JSON and the report.
    """
    results: list[dict[str, Any]] = []

    def cells(server: Server, protocols: tuple[str, ...], tracing: bool) -> int:
        """Check, warm up, time every cell; the requests sent (for spans per request)."""
        server.check(sample, expected, protocols)
        loads = server.cells(sample)
        sent = len(protocols)
        for protocol in protocols:
            sent += loads[protocol](8, opts.warmup).requests
        for conc in opts.concurrencies:
            for protocol in protocols:
                r = measure_call(partial(loads[protocol], conc, opts.duration), server.pgid)
                sent += int(r["requests"])
                r |= {"rps": round(float(r["rps"]), 1)} | cores(r)
                results.append(
                    {"model": MODEL, "protocol": protocol, "tracing": tracing, "conc": conc} | r
                )
                print(
                    f"  {protocol:9} {'traced' if tracing else '':6} c={conc:<3} "
                    f"{r['rps']:9.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                    f"p99 {r['p99_ms']:7.2f} ms  non-OK {r['non2xx']}  errors {r['errors']}  "
                    f"cores: server {r['server_cores']:.2f} load {r['load_cores']:.2f} "
                    f"other {r['other_cores']:.2f}",
                    flush=True,
                )
        return sent

    with serving(work, "untraced") as server:
        cells(server, PROTOCOLS, tracing=False)
    with Sink() as sink, serving(work, "traced", sink.url) as server:
        sent = cells(server, ("v2-json",), tracing=True)
    # NOTE: read after the server stopped: its shutdown sends the spans still batched.
    exported: dict[str, float] = {**sink.counts(), "requests_sent": sent}
    exported["spans_per_request"] = round(exported["spans"] / max(sent, 1), 2)
    if not exported["spans"]:
        raise SystemExit(f"the traced server exported no spans to {sink.url}: {exported}")
    section: dict[str, Any] = {
        "results": results,
        "ratios": ratios(results, opts.concurrencies),
        "exported": exported,
        "settings": {
            "model": MODEL,
            "sample_shape": list(sample.shape),
            "duration_s": opts.duration,
            "warmup_s": opts.warmup,
            "v2-binary": "input and output as binary (binary_data_output)",
            "grpc": "raw_input_contents; grpc.aio client in the bench process, one channel",
            "tracing": "REGISTRY_OTEL_ENDPOINT to a local OTLP/HTTP sink; BatchSpanProcessor "
            "defaults",
        },
    }
    return section


def ratios(results: list[dict[str, Any]], concurrencies: list[int]) -> dict[str, dict[str, float]]:
    """req/s of gRPC and of V2 binary over V2 JSON, and of traced over untraced V2 JSON,
    by concurrency."""
    rps = {(r["protocol"], r["tracing"], r["conc"]): float(r["rps"]) for r in results}
    pairs = {
        "grpc/v2-json": (("grpc", False), ("v2-json", False)),
        "v2-binary/v2-json": (("v2-binary", False), ("v2-json", False)),
        "traced/untraced": (("v2-json", True), ("v2-json", False)),
    }
    found: dict[str, dict[str, float]] = {}
    for name, (top, bottom) in pairs.items():
        found[name] = {
            str(c): round(rps[(*top, c)] / max(rps[(*bottom, c)], 1e-9), 3)
            for c in concurrencies
            if (*top, c) in rps and (*bottom, c) in rps
        }
    return found


def tables(section: Mapping[str, Any], concurrencies: list[int]) -> str:
    """The section's markdown: protocols side by side, tracing on and off, CPU per cell."""
    cell = {(r["protocol"], r["tracing"], r["conc"]): r for r in section["results"]}
    ratio = section["ratios"]

    def figures(r: Mapping[str, Any]) -> str:
        return f"{r['rps']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f}"

    lines = [
        "| model | c | V2 JSON req/s | p50 ms | p99 ms | V2 binary req/s | p50 ms | p99 ms "
        "| gRPC req/s | p50 ms | p99 ms | binary ÷ JSON | gRPC ÷ JSON |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in concurrencies:
        shown = " | ".join(figures(cell[(p, False, c)]) for p in PROTOCOLS)
        lines.append(
            f"| {MODEL} | {c} | {shown} | {ratio['v2-binary/v2-json'][str(c)]:.2f}x "
            f"| {ratio['grpc/v2-json'][str(c)]:.2f}x |"
        )
    lines += [
        "",
        "| model | c | untraced req/s | p50 ms | p99 ms | traced req/s | p50 ms | p99 ms "
        "| traced ÷ untraced |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in concurrencies:
        off, on = cell[("v2-json", False, c)], cell[("v2-json", True, c)]
        lines.append(
            f"| {MODEL} | {c} | {figures(off)} | {figures(on)} "
            f"| {ratio['traced/untraced'][str(c)]:.2f}x |"
        )
    e = section["exported"]
    lines += [
        "",
        f"traced (V2 JSON): {e['spans']} spans exported in {e['posts']} OTLP posts "
        f"({e['bytes'] / 1e6:.1f} MB) for ~{e['requests_sent']} requests "
        f"({e['spans_per_request']:.2f} spans per request)",
        "",
        "CPU per cell (cores busy; server ms of CPU per request; load = the bench process "
        "and the wrk it ran: the load generator, and the sink's thread when traced; "
        "other = foreign load):",
    ]
    for (protocol, tracing, c), r in sorted(cell.items(), key=lambda kv: kv[0][2]):
        per = float(r["server_cpu_s"]) * 1000 / max(int(r["requests"]), 1)
        lines.append(
            f"  {protocol:9} {'traced' if tracing else '':6} c={c:<3} "
            f"server {r['server_cores']:.2f}  {per:6.2f} ms/req  load {r['load_cores']:.2f}  "
            f"other {r['other_cores']:.2f}  ({r['tool']})"
        )
    return "\n".join(lines)
