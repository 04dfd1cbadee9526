"""The application's lifespan: what runs between start-up and shutdown, and who owns it.

Process-wide policy lives here, not in the registry: which threads run torch on several
threads (``registry.threads``), freezing the heap once start-up loading is done
(``registry.heap``), and the collection and CUDA cache release at shutdown. Every
background task is spawned on one ``Background`` that shutdown closes last.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, TypedDict

import torch
from fastapi import FastAPI

from registry import heap, tracing
from registry.budget import MemoryBudget
from registry.core import ModelRegistry
from registry.metrics import Metrics
from registry.repository import ModelRepository
from registry.repository.triggers import ReloadTriggers
from registry.settings import Settings
from registry.tasks import Background
from registry.threads import WideThreads, use_threads

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from registry.grpc_api.server import GrpcServer

log = logging.getLogger(__name__)

Fatal = Callable[[], None]


class AppState(TypedDict):
    registry: ModelRegistry
    repository: ModelRepository
    settings: Settings
    metrics: Metrics


def serving_lifespan(
    settings: Settings, fatal: Fatal, tracer_provider: TracerProvider | None = None
) -> Callable[[FastAPI], AbstractAsyncContextManager[AppState]]:
    """Start loading, reload triggers and the start-up supervisor; undo them on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[AppState]:
        # NOTE: the loop's inline passes and handler steps run on one thread, so that only
        # the threads holding a permit keep OpenMP workers
        use_threads(1)
        wide = WideThreads(settings.intra_op_threads)
        tracing.install(tracer_provider)
        background = Background()
        budget = MemoryBudget(settings.memory_budget_bytes)
        registry = ModelRegistry(background, budget, wide=wide, after_release=heap.trim)
        repository = ModelRepository(settings, registry, background)
        triggers = ReloadTriggers(repository, settings, background)
        metrics = Metrics(
            registry.status,
            repository.reload_outcomes,
            repository.loads,
            registry.evictions,
            manifest=lambda: repository.manifest_sha256,
        )
        grpc_server: GrpcServer | None = None
        try:
            await repository.start()  # an invalid manifest fails start-up here
            supervisor = _supervise(repository, settings, fatal)
            background.spawn(supervisor, name="start-up supervisor", forever=True)
            triggers.start()
            if settings.grpc_port is not None:
                grpc_server = _grpc_server(registry, repository, settings, metrics)
                await grpc_server.start(settings.grpc_port)
                app.state.grpc = grpc_server  # NOTE: for ``registry serve``'s shutdown
            yield {
                "registry": registry,
                "repository": repository,
                "settings": settings,
                "metrics": metrics,
            }
        finally:
            triggers.stop()
            if grpc_server is not None:
                await grpc_server.stop()  # NOTE: its calls drain before the models go
            await repository.close()
            await registry.close()
            await background.close()
            if settings.freeze_heap:
                heap.thaw()
            if tracer_provider is not None:
                tracing.install(None)
                tracer_provider.shutdown()  # NOTE: sends what is still batched
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()

    return lifespan


def _grpc_server(
    registry: ModelRegistry, repository: ModelRepository, settings: Settings, metrics: Metrics
) -> GrpcServer:
    """The gRPC server, imported only when it is asked for.

    NOTE: its messages go into protobuf's process-wide pool under the protocol's names
    (``inference.ModelInferRequest``...), where another compilation of the same protocol
    (``tritonclient.grpc``'s, in a client process) would clash with them.
    """
    from registry.grpc_api.server import GrpcServer
    from registry.grpc_api.service import InferenceService

    service = InferenceService(registry, repository.on_demand, settings, metrics)
    return GrpcServer(settings, service)


async def _supervise(repository: ModelRepository, settings: Settings, fatal: Fatal) -> None:
    failures = await repository.wait_loaded()
    if settings.freeze_heap:
        heap.freeze()
    if not failures:
        log.info("ready: every model loaded")
        return
    # NOTE: the repository has logged each failure with its reason as it happened.
    if settings.strict_startup:
        log.critical(
            "strict start-up: %d version(s) failed to load; shutting down "
            "(set REGISTRY_STRICT_STARTUP=false to serve the rest)",
            len(failures),
        )
        fatal()
    else:
        log.warning("serving without %d failed version(s)", len(failures))
