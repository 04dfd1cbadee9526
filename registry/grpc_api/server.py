"""The gRPC server's lifecycle: started beside uvicorn, in the same event loop and
process, when ``REGISTRY_GRPC_PORT`` is set, and stopped gracefully at shutdown."""

from __future__ import annotations

import asyncio
import logging

import grpc

from registry.grpc_api import open_inference_pb2_grpc as pb_grpc
from registry.grpc_api.service import InferenceService
from registry.settings import Settings

log = logging.getLogger(__name__)


class GrpcServer:
    def __init__(self, settings: Settings, service: InferenceService) -> None:
        self._settings = settings
        # NOTE: the body limit of HTTP bounds a gRPC message too (gRPC's default is 4 MiB).
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, self._server)
        self.port = 0
        self._stopping: asyncio.Task[None] | None = None

    async def start(self, port: int) -> None:
        host = self._settings.host
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"gRPC cannot listen on {address}")
        await self._server.start()
        log.info("gRPC (Open Inference Protocol) on %s:%d", host, self.port)

    def begin_stop(self) -> asyncio.Task[None]:
        """Refuse new calls from now on; those in flight get ``REGISTRY_DRAIN_TIMEOUT_S``.

        NOTE: ``registry serve`` calls this as soon as shutdown begins, while HTTP drains
        beside it: the lifespan's shutdown, which awaits the end, comes only after.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stopped())
        return self._stopping

    async def _stopped(self) -> None:
        await self._server.stop(self._settings.drain_timeout_s)
        log.info("gRPC stopped")

    async def stop(self) -> None:
        await self.begin_stop()
