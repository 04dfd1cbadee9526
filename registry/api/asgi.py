"""Small helpers for the pure ASGI layers (request ids, fast path, body limit)."""

from __future__ import annotations

from starlette.types import Scope


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (``name`` lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def match_predict(path: str) -> tuple[str, str | None] | None:
    """``(name, version or None)`` for the two native predict paths, else None."""
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "models" and parts[3] == "predict" and parts[2]:
        return parts[2], None
    if (
        len(parts) == 6
        and parts[1] == "models"
        and parts[3] == "versions"
        and parts[5] == "predict"
        and parts[2]
        and parts[4]
    ):
        return parts[2], parts[4]
    return None


def is_prediction(path: str) -> bool:
    """A native predict or a V2 infer path: what the request metrics count."""
    v2_infer = path.startswith("/v2/models/") and path.endswith("/infer")
    return v2_infer or match_predict(path) is not None
