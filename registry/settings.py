"""Process configuration: ``REGISTRY_*`` environment variables or a ``.env`` file.

Never instantiated at import time: ``create_app`` and the command line build one, so each
test can hand its own ``Settings`` to a fresh application.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry.cores import available_cores


class Settings(BaseSettings):
    """Everything an operator may tune, with safe defaults (loopback, admin off)."""

    model_config = SettingsConfigDict(
        env_prefix="REGISTRY_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        use_attribute_docstrings=True,
    )

    manifest: Path = Path("models.yaml")
    """The manifest to serve."""

    weights_dir: Path | None = None
    """Root that every weight path resolves under; default: `weights/` beside the manifest."""

    host: str = "127.0.0.1"
    """Bind address. Loopback by default; containers set 0.0.0.0 explicitly."""

    port: int = Field(default=8000, ge=0, le=65535)
    """Bind port."""

    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Open Inference Protocol over gRPC, on the same host; unset: no gRPC."""

    otel_endpoint: str | None = None
    """OpenTelemetry collector (OTLP over HTTP, e.g. `http://collector:4318`) to send
    traces to; unset, the standard `OTEL_EXPORTER_OTLP_ENDPOINT` turns tracing on instead.
    Neither: tracing is off, and costs nothing."""

    admin_token: SecretStr | None = None
    """Bearer token for `/admin/*`. Unset: the admin API is off."""

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    """Largest request body accepted, enforced while the body streams (413 beyond)."""

    body_timeout_s: float = Field(default=10.0, gt=0)
    """Longest a request body may take to arrive, from the first read (408 beyond, and the
    connection is closed). The model is leased only once the body is in, so a slow client
    holds a connection, never a model version.

    10 s lets the largest body (16 MiB) through at 13 Mbit/s, and a typical one (a few KiB)
    at modem speed, yet it is a third of the drain: at SIGTERM a client still sending is
    answered (408) before the drain runs out."""

    max_connections: int = Field(default=512, ge=1)
    """Connections (or requests in progress) beyond which `registry serve` answers 503
    (uvicorn's `limit_concurrency`; idle keep-alive connections count).

    Below the usual 1024 open-file limit, so excess clients get a 503 rather than a failed
    `accept`, and well above what one process can usefully serve at once."""

    header_timeout_s: float = Field(default=10.0, gt=0)
    """Longest `registry serve` waits for a request's line and headers, from the connection
    opening or from the first byte of a later request; the connection is closed beyond.
    Without it, connections that never send a request would hold the connection limit."""

    keep_alive_timeout_s: int = Field(default=5, ge=1)
    """Seconds `registry serve` keeps an idle connection open for the client's next request
    (uvicorn's `timeout_keep_alive`). Behind a load balancer that reuses connections, set
    it above the balancer's idle timeout (60 s on AWS ALB)."""

    request_timeout_s: float = Field(default=30.0, gt=0)
    """Longest a prediction may wait for its result, queueing included (504 beyond)."""

    torch_threads: int | None = Field(default=None, ge=1)
    """Torch intra-op threads of a pass on a thread holding a permit (``registry.threads``);
    default: the cores this process may use (its affinity, within its CPU quota)."""

    load_workers: int | None = Field(default=None, ge=1, le=64)
    """Versions loaded at once, at start-up and on reload; default: the number of cores,
    at most 4. Loading is mostly reading, deserialising and warming up, each on its own
    thread; more at once than the cores can warm up only makes each take longer."""

    memory_budget_bytes: int | None = Field(default=None, ge=1)
    """Bytes of model memory (parameters and buffers) each device may hold; unset: no
    limit. A load that would exceed it evicts idle, non-resident versions, least recently
    used first; if nothing can go, the request gets 503 with `Retry-After`."""

    load_wait_s: float = Field(default=10.0, gt=0)
    """Longest a request waits for its version to load on demand (lazy or evicted) before
    it is answered 503 `model_loading` with `Retry-After`; the load goes on."""

    strict_startup: bool = True
    """Exit non-zero when any model fails to load, instead of serving a partial set."""

    drain_timeout_s: float = Field(default=30.0, ge=0)
    """How long shutdown waits for in-flight requests before closing connections."""

    log_format: Literal["text", "json"] = "text"
    """Log line format."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe level that is logged."""

    fast_path: bool = True
    """Serve the predict routes with a pure ASGI path in front of FastAPI (same contract).

    Turn off to run them through FastAPI's routing, e.g. for middleware of your own."""

    access_log: bool = False
    """Log every request (method, path, status, duration, model, version, request id).

    Off by default: at thousands of requests a second the log would cost more than the
    model. Requests that end in a 5xx are always logged."""

    freeze_heap: bool = True
    """Once start-up loading is done, collect once and freeze the heap (`gc.freeze`), so
    that no full garbage collection walks torch's and the models' objects while serving,
    and collect the young generation less often (`registry.heap`).

    Process-wide: turn it off when the application shares its process with other code,
    such as many applications started one after another in a test run, where each start
    and shutdown would otherwise collect the whole process's heap."""

    poll_interval_s: float = Field(default=0.0, ge=0)
    """Seconds between manifest polls for changes; 0 turns polling off."""

    architecture_factories: frozenset[str] = frozenset()
    """`module:function` references a manifest's `architecture` may name besides
    `nn.Module` subclasses, as a JSON list. Anything else named there is refused before it
    is called, so that write access to the manifest is not code execution."""

    @field_validator("admin_token", "otel_endpoint", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        # NOTE: compose's `${REGISTRY_ADMIN_TOKEN:-}` yields ""; that must not be a password,
        # nor an empty endpoint a collector at "/v1/traces".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def weights_root(self) -> Path:
        """Where weight paths resolve: the setting, else the manifest's `weights/`."""
        root = self.weights_dir or self.manifest.parent / "weights"
        return root.resolve()

    @property
    def intra_op_threads(self) -> int:
        return self.torch_threads or available_cores()

    @property
    def loaders(self) -> int:
        return self.load_workers or min(available_cores(), 4)
