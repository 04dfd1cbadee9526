"""The JSON log line carries everything the standard formatter would print."""

from __future__ import annotations

import logging

import orjson

from registry.logs import JsonFormatter


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def record_of(**kwargs: object) -> logging.LogRecord:
    """A real record from a real logger call, captured by a handler."""
    handler = Keep()
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("the cause")
        except ValueError:
            logger.error("failed %s", "loudly", **kwargs)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
    return handler.records[0]


def test_message_traceback_stack_and_extras_all_reach_the_json_line() -> None:
    record = record_of(exc_info=True, stack_info=True, extra={"model": "digits"})
    standard = logging.Formatter("%(message)s").format(record)
    line = JsonFormatter().format(record)
    document = orjson.loads(line)
    assert "\n" not in line
    assert document["message"] == "failed loudly"
    assert document["model"] == "digits"
    rendered = "\n".join(str(document[k]) for k in ("message", "exception", "stack"))
    for text in standard.splitlines():
        assert text in rendered, text


def test_a_plain_line_has_no_empty_keys() -> None:
    document = orjson.loads(JsonFormatter().format(record_of()))
    assert "exception" not in document
    assert "stack" not in document
