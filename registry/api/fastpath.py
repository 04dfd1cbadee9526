"""The two predict routes as a pure ASGI app in front of FastAPI.

FastAPI's per-request machinery (routing, dependency solving, exception middleware) costs
several times a small model's forward pass. This serves exactly
``POST /models/{name}/predict`` and ``POST /models/{name}/versions/{version}/predict``
with the same lease, the same ``serving.predict``, the same body limit and deadline and
the same error envelope as the FastAPI routes, which stay as the documented contract and
serve these paths when the fast path is off (``REGISTRY_FAST_PATH=false``). Everything
else passes through.

As there, the whole body is read before the model is leased: a client still sending (or
trickling on purpose) holds a connection, never a version that a reload retired. So every
body error (413, 408, 499) comes before a lookup error (404, 503), through either door.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from registry.api.asgi import header, match_predict
from registry.api.errors import error_response, render_registry_error
from registry.api.limits import Deadlines, client_gone, declared_length, too_large
from registry.core import ModelRegistry
from registry.errors import RegistryError
from registry.serving import predict
from registry.settings import Settings

log = logging.getLogger(__name__)


class PredictFastPath:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.deadlines = Deadlines()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = None
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            target = match_predict(path)
        if target is None:
            await self.app(scope, receive, send)
            return
        state = scope["state"]
        registry: ModelRegistry = state["registry"]
        settings: Settings = state["settings"]
        try:
            received = await self._read_body(receive, scope, settings.body_timeout_s)
            with registry.lease(*target) as model:
                state["served"] = (model.name, model.version)
                answer = await predict(
                    model,
                    received,
                    timeout_s=settings.request_timeout_s,
                    content_type=header(scope, b"content-type"),
                    shape=header(scope, b"x-shape"),
                    accept=header(scope, b"accept"),
                )
        except RegistryError as exc:
            await render_registry_error(exc, "POST", path)(scope, receive, send)
            return
        except Exception:
            # NOTE: a bug here must cost one request, never the connection or the process.
            log.exception("prediction failed unexpectedly")
            response = error_response(500, "internal", "internal server error", path=path)
            await response(scope, receive, send)
            return
        # NOTE: a declared length, as the FastAPI door sends: no chunked framing to parse.
        raw_headers = [
            (b"content-length", str(len(answer.body)).encode()),
            (b"content-type", answer.media_type.encode()),
        ]
        raw_headers += [(k.encode(), v.encode()) for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _read_body(self, receive: Receive, scope: Scope, timeout_s: float) -> bytes:
        """The whole body: 413 past the limit before more than that is buffered, 408 past
        the deadline, 499 when the client hangs up first."""
        limit = self.max_body_bytes
        if (declared := declared_length(scope)) is not None and declared > limit:
            raise too_large(limit)
        deadlines = self.deadlines
        deadline = deadlines.after(timeout_s)
        chunks, size = [], 0
        while True:
            message = await deadlines.receive(receive, deadline, timeout_s)
            if message["type"] == "http.disconnect":
                raise client_gone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
