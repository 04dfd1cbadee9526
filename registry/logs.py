"""Process-wide logging: text or one JSON object a line, each with the request id.

The request id lives in a context variable set by the observing middleware, so any log
call made while serving a request carries it without being handed it.

Settings govern the server's own lines too: uvicorn's loggers lose the handlers its default
``--log-config`` gives them and go through the root logger, in the same format and level,
and its access log (a second line per request, without the request id) is off:
``REGISTRY_ACCESS_LOG`` turns on the application's own.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

from registry.settings import Settings

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # NOTE: uvicorn's message again, with terminal colour codes
}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """``{"timestamp", "level", "logger", "message", ...extras}`` on one line.

    Everything the standard formatter prints has a key: ``exception`` for a traceback,
    ``stack`` for ``stack_info``; extras passed with ``extra=`` are keys of their own.
    """

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document |= {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(document, default=str).decode()


_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.asgi", "uvicorn.access")


def configure_logging(settings: Settings) -> None:
    """Log to stderr in ``REGISTRY_LOG_FORMAT`` from ``REGISTRY_LOG_LEVEL`` up, replacing any
    configuration there was."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)  # NOTE: library warnings become log lines, JSON included
    for name in _UVICORN:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    # NOTE: uvicorn's access lines are info; above that they cost one level check each.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def configure_logging_once(settings: Settings) -> bool:
    """``configure_logging`` unless the root logger has a handler already; whether it did.

    ``registry serve`` configures logging before it builds the app; ``uvicorn ...
    --factory`` configures only its own loggers, so the app does the rest here. A root
    handler means someone (a ``--log-config`` of the operator's, a test runner) decided.
    """
    if logging.getLogger().handlers:
        return False
    configure_logging(settings)
    return True
