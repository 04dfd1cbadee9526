"""Every error a client can see, as one tree.

Domain code raises these; ``registry.api.errors`` renders them as
``{"error": {"code": ..., "message": ..., **details}}`` with ``status_code``. Nothing
here imports FastAPI, so the loaders and the registry stay usable without a web stack.

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
    ├── RequestTimeout                 408 request_timeout  (the body came too slowly)
    ├── ClientClosedRequest            499 client_closed_request (never sent: metrics, logs)
    ├── Unavailable                    503 unavailable      (carries Retry-After)
    │   ├── NotReady                   503 not_ready
    │   ├── ModelLoading               503 model_loading
    │   ├── ModelUnavailable           503 model_unavailable
    │   ├── QueueFull                  503 queue_full
    │   └── ShuttingDown               503 shutting_down
    ├── InferenceTimeout               504 inference_timeout
    └── ModelFailed                    500 model_failed
"""

from __future__ import annotations

from typing import ClassVar


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


class WeightsOutsideRoot(WeightsError):
    code = "weights_outside_root"


class ChecksumMismatch(WeightsError):
    code = "checksum_mismatch"


class UnsafeWeights(WeightsError):
    """The file holds something (a pickle, a shared library) that loading would execute."""

    code = "unsafe_weights"


class ModelLoadFailed(RegistryError):
    """Loading, building or warming up a version failed; the cause is in the message."""

    code = "model_load_failed"


class ReloadFailed(RegistryError):
    """A reload was refused as a whole; ``report`` says which version failed and why."""

    status_code, code = 422, "reload_failed"


class RemovesEveryModel(ReloadFailed):
    """Refused unless asked for explicitly: a reload whose manifest keeps no served model."""

    code = "removes_every_model"


class NotFound(RegistryError):
    status_code, code = 404, "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class Unauthorized(RegistryError):
    status_code, code = 401, "unauthorized"


class AdminDisabled(RegistryError):
    status_code, code = 403, "admin_disabled"


class BadRequest(RegistryError):
    status_code, code = 400, "bad_request"


class InvalidJSON(BadRequest):
    code = "invalid_json"


class InvalidInput(RegistryError):
    status_code, code = 422, "invalid_input"


class UnsupportedMediaType(RegistryError):
    status_code, code = 415, "unsupported_media_type"


class PayloadTooLarge(RegistryError):
    status_code, code = 413, "payload_too_large"


class RequestTimeout(RegistryError):
    """The body did not arrive within ``REGISTRY_BODY_TIMEOUT_S``; the connection is closed."""

    status_code, code = 408, "request_timeout"


class ClientClosedRequest(RegistryError):
    """The client hung up before its body arrived: its doing, not a server fault.

    Recorded as nginx's 499 in metrics and the access log; the answer reaches nobody.
    """

    status_code, code = 499, "client_closed_request"


class Unavailable(RegistryError):
    """Temporarily unable to answer; clients should retry after ``retry_after_s``."""

    status_code, code = 503, "unavailable"
    retry_after_s: ClassVar[int] = 1


class NotReady(Unavailable):
    code = "not_ready"


class ModelLoading(Unavailable):
    code = "model_loading"


class ModelUnavailable(Unavailable):
    """The version failed to load (non-strict start-up); retrying later may find it fixed."""

    code = "model_unavailable"
    retry_after_s = 30


class QueueFull(Unavailable):
    code = "queue_full"


class ShuttingDown(Unavailable):
    code = "shutting_down"


class InferenceTimeout(RegistryError):
    status_code, code = 504, "inference_timeout"


class ModelFailed(RegistryError):
    """The model raised during inference; the traceback is in the server log only."""

    code = "model_failed"
