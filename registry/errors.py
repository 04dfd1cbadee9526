"""Every error a client can see, as one tree.

Domain code raises these; ``registry.api.errors`` renders them as
``{"error": {"code": ..., "message": ..., **details}}`` with ``status_code``. Nothing
here imports FastAPI, so the loaders and the registry stay usable without a web stack.

An error that carries facts (which model, which limit) takes them as typed arguments and
writes its own message and details from them, so every place that raises it says the
same thing the same way. Errors whose message is the fact (what is wrong with an input or
a manifest) take the message.

    RegistryError                      500 internal
    ├── ManifestError                  422 invalid_manifest
    │   └── UnsafeArchitecture         422 unsafe_architecture (not an nn.Module subclass)
    ├── WeightsError                   422 invalid_weights
    │   ├── WeightsNotFound            422 weights_not_found
    │   ├── WeightsOutsideRoot         422 weights_outside_root
    │   ├── ChecksumMismatch           422 checksum_mismatch
    │   └── UnsafeWeights              422 unsafe_weights   (would run code if loaded)
    ├── ModelLoadFailed                500 model_load_failed
    ├── ReloadFailed                   422 reload_failed    (nothing was changed)
    │   └── RemovesEveryModel          422 removes_every_model
    ├── NotFound                       404 not_found
    │   ├── ModelNotFound              404 model_not_found
    │   └── VersionNotFound            404 version_not_found
    ├── Unauthorized                   401 unauthorized     (WWW-Authenticate: Bearer)
    ├── AdminDisabled                  403 admin_disabled
    ├── BadRequest                     400 bad_request
    │   └── InvalidJSON                400 invalid_json
    ├── InvalidInput                   422 invalid_input
    ├── UnsupportedMediaType           415 unsupported_media_type
    ├── PayloadTooLarge                413 payload_too_large
    │   ├── TooManyRows                413 payload_too_large (more rows than max_batch_size)
    │   └── ImageTooLarge              413 image_too_large  (more pixels than ImageLimits)
    ├── RequestTimeout                 408 request_timeout  (the body came too slowly)
    ├── ClientClosedRequest            499 client_closed_request (never sent: metrics, logs)
    ├── Unavailable                    503 unavailable      (carries Retry-After)
    │   ├── NotReady                   503 not_ready
    │   ├── ModelLoading               503 model_loading
    │   │   └── NotLoaded              503 model_loading    (a request may load it)
    │   ├── ModelUnavailable           503 model_unavailable
    │   ├── ModelUnloaded              503 model_unloaded   (an operator unloaded it)
    │   ├── MemoryBudgetExceeded       503 memory_budget_exceeded
    │   ├── QueueFull                  503 queue_full
    │   └── ShuttingDown               503 shutting_down
    ├── InferenceTimeout               504 inference_timeout
    └── ModelFailed                    500 model_failed
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from registry.keys import VersionKey


class RegistryError(Exception):
    """Base of every error a client can see; ``api/errors.py`` renders it."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ManifestError(RegistryError):
    status_code, code = 422, "invalid_manifest"


class UnsafeArchitecture(ManifestError):
    """An ``architecture`` that is not an ``nn.Module`` subclass nor an allowed factory."""

    code = "unsafe_architecture"


class WeightsError(RegistryError):
    status_code, code = 422, "invalid_weights"


class WeightsNotFound(WeightsError):
    code = "weights_not_found"

    def __init__(self, path: str, cause: str | None = None) -> None:
        if cause is None:
            super().__init__(f"no weight file {path!r}", path=path)
        else:
            super().__init__(f"cannot open weight file {path!r}: {cause}", path=path)


class WeightsOutsideRoot(WeightsError):
    code = "weights_outside_root"

    def __init__(self, path: str) -> None:
        super().__init__(f"{path!r} resolves outside the weights root", path=path)


class ChecksumMismatch(WeightsError):
    code = "checksum_mismatch"

    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(f"sha256 of {path!r} is {actual}, the manifest says {expected}", path=path)


class UnsafeWeights(WeightsError):
    """The file holds something (a pickle, a shared library) that loading would execute."""

    code = "unsafe_weights"


class ModelLoadFailed(RegistryError):
    """Loading, building or warming up a version failed; the cause is in the message."""

    code = "model_load_failed"

    def __init__(self, reason: str, key: VersionKey | None = None, stage: str = "") -> None:
        if key is None:
            super().__init__(reason)
        else:
            message = f"{key} failed during {stage}: {reason}"
            super().__init__(message, model=key.model, version=key.version)


class ReloadFailed(RegistryError):
    """A reload was refused as a whole; ``report`` says which version failed and why."""

    status_code, code = 422, "reload_failed"

    def __init__(self, report: Mapping[str, Any]) -> None:
        reasons = "; ".join(f"{f['version']}: {f['reason']}" for f in report["failed"])
        RegistryError.__init__(
            self, f"reload refused, nothing changed: {reasons}", report=dict(report)
        )


class RemovesEveryModel(ReloadFailed):
    """Refused unless asked for explicitly: a reload whose manifest keeps no served model."""

    code = "removes_every_model"

    def __init__(self, served: Sequence[str], report: Mapping[str, Any]) -> None:
        RegistryError.__init__(
            self,
            "reload refused, nothing changed: the manifest keeps none of the models served "
            f"now ({', '.join(sorted(served))}); ask for it explicitly with "
            "allow_remove_all=true",
            report=dict(report),
        )


class NotFound(RegistryError):
    status_code, code = 404, "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, name: str, available: Sequence[str]) -> None:
        super().__init__(f"no model {name!r}", available=list(available))


class VersionNotFound(NotFound):
    code = "version_not_found"

    def __init__(
        self,
        model: str,
        requested: str | None,
        available: Sequence[str],
        aliases: Mapping[str, str],
    ) -> None:
        super().__init__(
            f"model {model!r} has no version or alias {requested!r}",
            model=model,
            available=list(available),
            aliases=dict(aliases),
        )


class Unauthorized(RegistryError):
    status_code, code = 401, "unauthorized"

    def __init__(self) -> None:
        super().__init__("a valid 'Authorization: Bearer <token>' header is required")


class AdminDisabled(RegistryError):
    status_code, code = 403, "admin_disabled"

    def __init__(self) -> None:
        super().__init__("the admin API is off: set REGISTRY_ADMIN_TOKEN to enable it")


class BadRequest(RegistryError):
    status_code, code = 400, "bad_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class InvalidInput(RegistryError):
    status_code, code = 422, "invalid_input"


class UnsupportedMediaType(RegistryError):
    status_code, code = 415, "unsupported_media_type"

    def __init__(self, media: str, supported: Sequence[str], hint: str = "") -> None:
        named = f"{', '.join(supported[:-1])} or {supported[-1]}" if supported[1:] else supported[0]
        super().__init__(f"cannot read {media!r}; send {named}{hint}", supported=list(supported))


class PayloadTooLarge(RegistryError):
    status_code, code = 413, "payload_too_large"

    def __init__(self, max_body_bytes: int) -> None:
        message = f"the request body exceeds {max_body_bytes} bytes"
        super().__init__(message, max_body_bytes=max_body_bytes)


class TooManyRows(PayloadTooLarge):
    """More instances than one forward pass takes: one request never outgrows a batch."""

    def __init__(self, rows: int, max_rows: int) -> None:
        RegistryError.__init__(
            self,
            f"the request holds {rows} instances; this model takes at most {max_rows} "
            "per request (its batching.max_batch_size)",
            max_batch_size=max_rows,
            received_rows=rows,
        )


class ImageTooLarge(PayloadTooLarge):
    """An image whose header claims more pixels than the model takes; refused undecoded."""

    code = "image_too_large"

    def __init__(self, width: int, height: int, max_pixels: int) -> None:
        RegistryError.__init__(
            self,
            f"the image is {width}x{height} pixels; this model takes at most {max_pixels} pixels",
            max_pixels=max_pixels,
            width=width,
            height=height,
        )


class RequestTimeout(RegistryError):
    """The body did not arrive within ``REGISTRY_BODY_TIMEOUT_S``; the connection is closed."""

    status_code, code = 408, "request_timeout"

    def __init__(self, body_timeout_s: float) -> None:
        message = f"the request body did not arrive within {body_timeout_s:g} s"
        super().__init__(message, body_timeout_s=body_timeout_s)


class ClientClosedRequest(RegistryError):
    """The client hung up before its body arrived: its doing, not a server fault.

    Recorded as nginx's 499 in metrics and the access log; the answer reaches nobody.
    """

    status_code, code = 499, "client_closed_request"

    def __init__(self) -> None:
        super().__init__("the client closed the connection before its body arrived")


class Unavailable(RegistryError):
    """Temporarily unable to answer; clients should retry after ``retry_after_s``."""

    status_code, code = 503, "unavailable"
    retry_after_s: int = 1


class NotReady(Unavailable):
    code = "not_ready"

    def __init__(self, pending: Sequence[str], failed: Sequence[str]) -> None:
        super().__init__("models are still loading", pending=list(pending), failed=list(failed))


class ModelLoading(Unavailable):
    code = "model_loading"

    def __init__(self, key: VersionKey) -> None:
        super().__init__(f"{key} is still loading", model=key.model, version=key.version)


class NotLoaded(ModelLoading):
    """Not in memory, and a request may load it (lazy, or evicted): the model dependency
    loads it and leases again; a client sees this only if the load outlasts the wait."""

    def __init__(self, key: VersionKey) -> None:
        super().__init__(key)
        self.key = key


class ModelUnavailable(Unavailable):
    """The version failed to load; a reload (or, for a lazy version, a request after the
    back-off in ``retry_after_s``) tries again."""

    code = "model_unavailable"
    retry_after_s = 30

    def __init__(self, key: VersionKey, reason: str | None, retry_after_s: int = 30) -> None:
        super().__init__(
            f"{key} failed to load", model=key.model, version=key.version, reason=reason
        )
        self.retry_after_s = retry_after_s


class ModelUnloaded(Unavailable):
    """Not in memory. A prediction sees this only where no request may load it (an operator
    unloaded an eager version); a readiness route also for a lazy one."""

    code = "model_unloaded"
    retry_after_s = 30

    def __init__(self, key: VersionKey, *, on_demand: bool = False) -> None:
        how = "its next request loads it" if on_demand else "load it through the management API"
        super().__init__(
            f"{key} is not loaded; {how}",
            model=key.model,
            version=key.version,
            loads_on_demand=on_demand,
        )


class MemoryBudgetExceeded(Unavailable):
    """Loading would exceed the memory budget and every version that could make room is
    busy or resident: it may fit once a request ends."""

    code = "memory_budget_exceeded"

    def __init__(self, key: VersionKey, device: str, needed: int, free: int) -> None:
        super().__init__(
            f"{key} needs {needed} bytes on {device}; {free} are free and nothing idle can "
            "be evicted",
            model=key.model,
            version=key.version,
            device=device,
            needed_bytes=needed,
            free_bytes=free,
        )


class QueueFull(Unavailable):
    code = "queue_full"

    def __init__(self, key: VersionKey, queued: int, max_queue: int) -> None:
        super().__init__(f"{key} has {queued} requests queued", max_queue=max_queue)


class ShuttingDown(Unavailable):
    """The server, or one version's batcher (``key``), is closing."""

    code = "shutting_down"

    def __init__(self, key: VersionKey | None = None) -> None:
        super().__init__(
            "the server is shutting down" if key is None else f"{key} is shutting down"
        )


class InferenceTimeout(RegistryError):
    status_code, code = 504, "inference_timeout"

    def __init__(self, key: VersionKey, timeout_s: float) -> None:
        super().__init__(
            f"{key} did not answer within {timeout_s} s", model=key.model, version=key.version
        )


class ModelFailed(RegistryError):
    """The model raised during inference; the traceback is in the server log only."""

    code = "model_failed"

    def __init__(self, key: VersionKey) -> None:
        super().__init__("the model raised during inference", model=str(key))
