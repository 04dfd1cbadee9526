"""Schemathesis against the app's own OpenAPI document, in-process, on the example models.

Every operation is fed schema-shaped and schema-breaking requests (bounded so it fits the
suite); not one may end in a 5xx, and every answer must match what the document says:
its status, its content type and its body schema.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from pydantic import SecretStr
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.generation.modes import GenerationMode
from schemathesis.python.asgi import get_client
from schemathesis.schemas import APIOperation
from starlette.types import ASGIApp

from registry.app import create_app
from registry.settings import Settings

REPOSITORY = Path(__file__).parents[2]
# NOTE: bounded for CI; FUZZ_EXAMPLES=1000 make test (or pytest tests/api/test_fuzz.py) digs deeper
EXAMPLES_PER_OPERATION = int(os.environ.get("FUZZ_EXAMPLES", "40"))
EXAMPLE_MODELS = {"digits": "1", "digits-cnn": "1", "diabetes": "1"}  # name: a version
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_app() -> ASGIApp:
    """The repository's manifest served in-process, with the admin API on."""
    settings = Settings(
        manifest=REPOSITORY / "models.yaml",
        admin_token=SecretStr("fuzz"),
        torch_threads=1,
        max_body_bytes=1 << 20,
    )
    return create_app(settings)


@pytest.fixture
def api_schema(fuzzed_app: ASGIApp) -> schemathesis.BaseSchema:
    """The schema, once the models are loaded.

    NOTE: schemathesis' pytest plugin ends an ASGI app's lifespan after every test, so
    each test starts it anew and waits for readiness here.
    """
    with get_client(cast(Any, fuzzed_app)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the example models did not load"
            time.sleep(0.05)
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
def test_no_server_error_and_every_answer_as_documented(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    """Every operation with generated paths, queries and bodies (mostly unknown names)."""
    runs = [(operation.label, operation.as_strategy(mode)) for operation in _operations(api_schema)]
    _fuzz(runs, f"{mode}, any names", minimum_operations=15 if mode == "positive" else 3)


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
def test_real_models_answer_generated_bodies_as_documented(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode
) -> None:
    """The operations on one model, aimed at each example model, so bodies reach decoding."""
    runs = []
    for operation in _operations(api_schema):
        names = {p.name for p in operation.path_parameters}
        # NOTE: an unload would leave the operations after it a 503 to answer; unloading is
        # tested in test_management.py.
        if "name" not in names or operation.path.endswith("/unload"):
            continue
        for model, version in EXAMPLE_MODELS.items():
            fixed = {"name": model} | ({"version": version} if "version" in names else {})
            strategy = operation.as_strategy(mode, path_parameters=fixed)
            runs.append((f"{operation.label} [{model}]", strategy))
    _fuzz(runs, f"{mode}, example models", minimum_operations=6)


def _operations(api_schema: schemathesis.BaseSchema) -> list[APIOperation[Any, Any, Any, Any]]:
    return [result.ok() for result in api_schema.get_all_operations() if isinstance(result, Ok)]


def _fuzz(
    runs: list[tuple[str, SearchStrategy[schemathesis.Case[Any]]]],
    title: str,
    minimum_operations: int,
) -> None:
    """Run each strategy; failures are gathered so that one run names all of them."""
    failures: dict[str, str] = {}
    cases: Counter[str] = Counter()
    for label, strategy in runs:
        try:
            _run(strategy, lambda label=label: cases.update([label]))  # type: ignore[misc]
        except Unsatisfiable:
            continue  # NOTE: nothing to break: an operation with no body or query to mangle
        except (Exception, FailureGroup) as exc:  # NOTE: FailureGroup is a BaseException
            failures[label] = _describe(exc)
    print(f"\nfuzzing ({title}): {sum(cases.values())} cases over {len(cases)} operations")  # noqa: T201
    assert len(cases) >= minimum_operations, sorted(cases)
    assert not failures, "\n\n".join(f"{label}: {why}" for label, why in failures.items())


def _run(strategy: SearchStrategy[schemathesis.Case[Any]], counted: Callable[[], None]) -> None:
    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def check(case: schemathesis.Case[Any]) -> None:
        counted()
        response = case.call(headers={"Authorization": "Bearer fuzz"})
        if response.status_code >= 500:  # NOTE: the request itself, to reproduce by hand
            raise AssertionError(
                f"{response.status_code} {response.text[:300]} for {case.method} "
                f"{case.formatted_path} {case.media_type} {case.headers} {case.body!r:.300}"
            )
        case.validate_response(response, checks=CHECKS)

    check()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"
