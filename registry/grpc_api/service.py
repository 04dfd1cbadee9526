"""``InferenceService``: the Open Inference Protocol over gRPC, on the HTTP server's registry.

The same registry, leases, batchers, loads on demand and timeouts as the REST routes, so
a reload drains gRPC requests exactly as it drains HTTP ones. Every ``RegistryError``
becomes the gRPC status of its class (``STATUS``), with its message as the details; a
client's deadline bounds the wait for the answer as ``REGISTRY_REQUEST_TIMEOUT_S`` does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NoReturn

import grpc
from opentelemetry import trace

from registry import __version__, tracing
from registry.api.routes.v2 import metadata
from registry.core import ModelRegistry
from registry.errors import RegistryError, Unavailable
from registry.grpc_api import open_inference_pb2 as pb
from registry.grpc_api import open_inference_pb2_grpc as pb_grpc
from registry.grpc_api.codec import decode_request, encode_response
from registry.metrics import UNKNOWN, Metrics
from registry.repository.demand import OnDemand
from registry.settings import Settings

log = logging.getLogger(__name__)

STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
"""The gRPC status for each HTTP status an error class has; anything else is INTERNAL."""

Context = Any  # NOTE: grpc.aio.ServicerContext; grpc ships no annotations


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, registry: ModelRegistry, on_demand: OnDemand, settings: Settings, metrics: Metrics
    ) -> None:
        self._registry = registry
        self._on_demand = on_demand
        self._settings = settings
        self._metrics = metrics

    async def ServerLive(self, _request: pb.ServerLiveRequest, _context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, _request: pb.ServerReadyRequest, _context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self._registry.status().ready)

    async def ServerMetadata(self, _request: pb.ServerMetadataRequest, _context: Context) -> Any:
        return pb.ServerMetadataResponse(name="registry", version=__version__)

    async def ModelReady(self, request: pb.ModelReadyRequest, _context: Context) -> Any:
        """Ready when the version (or the default) serves now. Not ready, as Triton
        answers, for what the manifest lacks too: a client polling for a model that is
        not there yet gets False, as over HTTP, not an error. A readiness call never
        loads a lazy version."""
        try:
            self._registry.status().serving(request.name, request.version or None)
        except RegistryError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        try:
            lease = await self._on_demand.lease(request.name, request.version or None)
        except RegistryError as exc:
            await _abort(context, exc)
        with lease as model:
            described = metadata(model)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=described.name,
            versions=described.versions,
            platform=described.platform,
            inputs=[
                tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in described.inputs
            ],
            outputs=[
                tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in described.outputs
            ],
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> Any:
        tracer = tracing.TRACER
        if tracer is None:
            return await self._infer(request, context, None)
        carrier = {
            item.key: item.value
            for item in context.invocation_metadata() or ()
            if item.key in tracing.CARRIED
        }
        span = tracing.server_span(
            tracer,
            "inference.GRPCInferenceService/ModelInfer",
            carrier,
            {
                "rpc.system": "grpc",
                "rpc.service": "inference.GRPCInferenceService",
                "rpc.method": "ModelInfer",
            },
        )
        with trace.use_span(span, end_on_exit=True, record_exception=False):
            return await self._infer(request, context, span)

    async def _infer(
        self, request: pb.ModelInferRequest, context: Context, span: trace.Span | None
    ) -> Any:
        """The call, counted in the request metrics and, when traced, described on
        ``span`` as an HTTP request's span is: who answered, and with what status."""
        started = time.perf_counter()
        served, status = (UNKNOWN, UNKNOWN), 200
        try:
            with await self._on_demand.lease(
                request.model_name, request.model_version or None
            ) as model:
                served = (model.name, model.version)
                spec = model.spec
                document, decoded = tracing.step(
                    "decode",
                    decode_request,
                    request,
                    spec.inputs,
                    spec.outputs,
                    spec.batching.max_batch_size,
                )
                outputs = await model.infer_tensors(decoded.tensors, self._timeout_s(context))
                return tracing.step(
                    "encode",
                    encode_response,
                    model.name,
                    model.version,
                    document,
                    outputs,
                    decoded.batched,
                    spec.outputs,
                )
        except RegistryError as exc:
            status = exc.status_code
            await _abort(context, exc)
        except asyncio.CancelledError:
            # NOTE: gRPC cancels the call when the client gives up or its deadline passes:
            # nobody gets an answer, as nginx's 499 (or a 504) says for HTTP.
            left = context.time_remaining()
            status = 504 if left is not None and left <= 0 else 499
            raise
        except Exception:
            status = 500
            log.exception("gRPC ModelInfer for %s failed", request.model_name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise  # NOTE: abort raises; this line only tells the type checker
        finally:
            self._metrics.observe(*served, status, time.perf_counter() - started)
            if span is not None:
                _describe(span, served, status)

    def _timeout_s(self, context: Context) -> float:
        """``REGISTRY_REQUEST_TIMEOUT_S``, or what is left of the client's deadline."""
        left = context.time_remaining()
        timeout = self._settings.request_timeout_s
        return timeout if left is None else max(0.0, min(timeout, left))


def _describe(span: trace.Span, served: tuple[str, str], status: int) -> None:
    code = grpc.StatusCode.OK if status == 200 else STATUS.get(status, grpc.StatusCode.INTERNAL)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    span.set_attribute("registry.status", status)  # NOTE: the HTTP status it stands for
    tracing.request_ended(span, None if served == (UNKNOWN, UNKNOWN) else served, status)


async def _abort(context: Context, error: RegistryError) -> NoReturn:
    """End the call with ``error``'s status; a 503's ``Retry-After`` goes as trailing
    metadata (``retry-after``, seconds), as an HTTP client would get it as a header."""
    if isinstance(error, Unavailable):
        context.set_trailing_metadata((("retry-after", str(error.retry_after_s)),))
    await context.abort(STATUS.get(error.status_code, grpc.StatusCode.INTERNAL), error.message)
    raise AssertionError("unreachable: abort raises")
