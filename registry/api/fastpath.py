"""The predict routes without FastAPI's per-request machinery, yet through their own code.

FastAPI's per-request work (trying each route in turn, solving the dependency tree anew,
an exit stack per request) costs several times a small model's forward pass. This
middleware finds the routes of ``predict.ENDPOINTS`` in the application's router and
compiles, once per route, the plan that FastAPI's solver would work out per request:
which dependency callables to call (``app.dependency_overrides`` included), in what order,
with which arguments, and which generator dependencies to leave once the endpoint has
returned. A POST that such a route matches (its own ``path_regex`` and convertors, as the
router matches it) is then served by calling those very dependencies and the route's own
endpoint; an exception is answered by the application's own handler for it, as
FastAPI's ``ExceptionMiddleware`` would, and one with no handler propagates as it would.

So nothing here predicts, reads a body or renders an error: the route and its
dependencies do, and the body limit and deadline are ``BodySizeLimit``'s, around both
doors. A route whose dependencies need more than such a plan does (query, header, cookie
or body parameters, sync callables, request-scoped generators, security scopes, a path
parameter to validate) is left to FastAPI, which serves the same code, and a warning says
so once. Everything else passes through.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import AsyncGenerator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, cast, get_type_hints

from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.routing import RouteContext, iter_route_contexts
from starlette.convertors import Convertor, StringConvertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from registry.api.asgi import FromRoutes, get_route_path
from registry.api.errors import answer_error

log = logging.getLogger(__name__)

Call = Callable[..., Any]
_REQUEST = 0  # the slot of the request among a plan's values; path parameters follow


class Unsupported(Exception):
    """Something in a route's dependencies that only FastAPI's solver does as FastAPI does."""


@dataclass(frozen=True, slots=True)
class Step:
    """One call: a dependency, or the endpoint (the last step)."""

    call: Call
    arguments: tuple[tuple[str, int], ...]  # (keyword, slot of the value)
    generator: bool  # an async generator (``scope="function"``): left once the endpoint returns
    # NOTE: the values in the order the parameters come, when each can take its value by
    # position: no keyword dict per call (None: by keyword).
    positional: Callable[[list[Any]], Sequence[Any]] | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "positional", _by_position(self.call, self.arguments))


def _by_position(
    call: Call, arguments: tuple[tuple[str, int], ...]
) -> Callable[[list[Any]], Sequence[Any]] | None:
    """Fetches the values in parameter order, when FastAPI supplies every parameter and
    each may come by position; else None (then by keyword)."""
    slots = dict(arguments)
    # NOTE: the callable's own parameters, not those of what it may wrap and forward to.
    parameters = list(inspect.signature(call, follow_wrapped=False).parameters.values())
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if (
        len(slots) != len(arguments)
        or sorted(p.name for p in parameters) != sorted(slots)
        or any(p.kind not in kinds for p in parameters)
    ):
        return None
    ordered = [slots[p.name] for p in parameters]
    if len(ordered) >= 2:
        return itemgetter(*ordered)
    if ordered:
        return itemgetter(slice(ordered[0], ordered[0] + 1))
    return itemgetter(slice(0, 0))


@dataclass(frozen=True, slots=True)
class Plan:
    """What FastAPI would solve for one route, compiled: slot 0 is the request, then the
    path parameters in ``path_params`` order, then each step's value in turn."""

    path_params: tuple[str, ...]
    steps: tuple[Step, ...]

    async def respond(self, request: Request, path_params: Mapping[str, Any]) -> Response:
        values: list[Any] = [request]
        for name in self.path_params:
            values.append(path_params[name])
        entered: list[AsyncGenerator[Any, None]] = []
        try:
            for step in self.steps:
                if step.positional is not None:
                    called = step.call(*step.positional(values))
                else:
                    called = step.call(
                        **{keyword: values[slot] for keyword, slot in step.arguments}
                    )
                if step.generator:
                    # NOTE: what asynccontextmanager does, without an object per request.
                    try:
                        values.append(await called.__anext__())
                    except StopAsyncIteration:
                        raise RuntimeError("generator didn't yield") from None
                    entered.append(called)
                else:
                    values.append(await called)
        except BaseException as exc:
            if entered:
                await _leave(entered, exc)
            raise
        if entered:
            await _leave(entered, None)
        response: Response = values[-1]
        return response


async def _leave(entered: list[AsyncGenerator[Any, None]], exc: BaseException | None) -> None:
    """Finish generator dependencies innermost first, throwing in what was raised, as
    FastAPI's exit stack of ``asynccontextmanager``s does; re-raising ``exc`` is the
    caller's."""
    pending = exc
    while entered:
        generator = entered.pop()
        try:
            if pending is None:
                await generator.__anext__()
            else:
                await generator.athrow(pending)
        except StopAsyncIteration:
            if pending is not None:
                pending = None  # NOTE: the generator swallowed it
            continue
        except BaseException as raised:
            pending = raised
            continue
        pending = RuntimeError("generator didn't stop")
    if pending is not None and pending is not exc:
        raise pending
    if exc is not None and pending is None:
        # NOTE: FastAPI has no response then either, and fails the request.
        raise RuntimeError("a dependency with yield swallowed the endpoint's exception") from exc


class _Compiler:
    """Walks a route's dependency tree in the order ``solve_dependencies`` does."""

    def __init__(self, route: RouteContext, overrides: Mapping[Call, Call]) -> None:
        self.route = route
        self.overrides = overrides
        self.path_params: tuple[str, ...] = tuple(route.param_convertors)
        self.steps: list[Step] = []
        self.cache: dict[tuple[Call, str], int] = {}

    def plan(self) -> Plan:
        endpoint: Dependant = self.route.dependant
        call = endpoint.call
        if not inspect.iscoroutinefunction(call):
            raise Unsupported("the endpoint is not an async function")
        try:
            returns = get_type_hints(call).get("return")
        except Exception:
            returns = None
        if not (isinstance(returns, type) and issubclass(returns, Response)):
            raise Unsupported("the endpoint is not annotated to return a Response")
        self.steps.append(Step(call, self.arguments(endpoint), generator=False))
        return Plan(self.path_params, tuple(self.steps))

    def arguments(self, dependant: Dependant) -> tuple[tuple[str, int], ...]:
        """Sub-dependencies first (each called here), then path parameters and the request."""
        if dependant.own_oauth_scopes or dependant.concurrency is not None:
            raise Unsupported(f"{_name(dependant)} has security scopes or a concurrency limit")
        arguments = []
        for sub in dependant.dependencies:
            slot = self.dependency(sub)
            if sub.name is not None:
                arguments.append((sub.name, slot))
        for param in dependant.path_params:
            if param.field_info.annotation is not str or param.field_info.metadata:
                raise Unsupported(f"path parameter {param.name!r} needs validating")
            if param.alias not in self.path_params:
                raise Unsupported(f"path parameter {param.alias!r} is not in the path")
            arguments.append((param.name, 1 + self.path_params.index(param.alias)))
        others = (
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.body_params,
            dependant.websocket_param_name,
            dependant.response_param_name,
            dependant.background_tasks_param_name,
            dependant.security_scopes_param_name,
        )
        if any(others):
            raise Unsupported(f"{_name(dependant)} takes more than the request and the path")
        for name in (dependant.request_param_name, dependant.http_connection_param_name):
            if name is not None:
                arguments.append((name, _REQUEST))
        return tuple(arguments)

    def dependency(self, sub: Dependant) -> int:
        """The slot of ``sub``'s value: called once per request unless FastAPI's cache would
        hand an earlier value (keyed by the callable overridden and its scope)."""
        original = sub.call
        if original is None:
            raise Unsupported("a dependency without a callable")
        call = self.overrides.get(original, original)
        used = sub
        if call is not original:
            used = get_dependant(
                path=sub.path or "",
                call=call,
                name=sub.name,
                parent_oauth_scopes=[
                    *(sub.parent_oauth_scopes or []),
                    *(sub.own_oauth_scopes or []),
                ],
                scope=sub.scope,
                concurrency=sub.concurrency,
            )
        arguments = self.arguments(used)  # NOTE: solved even when cached, as FastAPI does
        generator = inspect.isasyncgenfunction(original) or inspect.isgeneratorfunction(original)
        key = (original, sub.scope or ("request" if generator else ""))
        if sub.use_cache and key in self.cache:
            return self.cache[key]
        if inspect.isasyncgenfunction(call):
            if sub.scope != "function":
                raise Unsupported(f"{_name(used)} is a generator left after the response")
            step = Step(call, arguments, generator=True)
        elif inspect.iscoroutinefunction(call):
            step = Step(call, arguments, generator=False)
        else:
            raise Unsupported(f"{_name(used)} is not an async function (FastAPI threads it)")
        slot = 1 + len(self.path_params) + len(self.steps)
        self.steps.append(step)
        self.cache.setdefault(key, slot)
        return slot


def _name(dependant: Dependant) -> str:
    return getattr(dependant.call, "__qualname__", repr(dependant.call))


def compile_plan(route: RouteContext, overrides: Mapping[Call, Call] | None = None) -> Plan:
    """The call plan for ``route`` as served (prefix and router dependencies included);
    ``Unsupported`` when only FastAPI can serve it alike."""
    return _Compiler(route, overrides or {}).plan()


@dataclass(slots=True)
class Fronted:
    """A route this serves: how the router matches it, and its plans."""

    route: RouteContext
    match: Callable[[str], re.Match[str] | None]
    convertors: tuple[tuple[str, Convertor[Any]], ...]  # empty when all are plain strings
    shadows: tuple[RouteContext, ...]  # earlier routes that might take the same POST
    plan: Plan | None  # None: FastAPI serves it
    # NOTE: RouteContext's attributes are properties; these are read on every request.
    endpoint: Call = field(init=False)
    original: BaseRoute = field(init=False)
    provider: Any = field(init=False)  # whose ``dependency_overrides`` apply
    with_overrides: dict[tuple[tuple[Call, Call], ...], Plan | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.endpoint = cast(Call, self.route.endpoint)
        self.original = self.route.original_route
        self.provider = self.route.dependency_overrides_provider

    def plan_for(self, overrides: Mapping[Call, Call]) -> Plan | None:
        """The plan under these (non-empty) ``dependency_overrides``, compiled once."""
        key = tuple(overrides.items())
        try:
            return self.with_overrides[key]
        except KeyError:
            plan = _try_compile(self.route, overrides)
            self.with_overrides[key] = plan
            return plan

    def shadowed(self, path: str, scope: Scope) -> bool:
        """Whether an earlier route takes this request, as the router would find."""
        for shadow in self.shadows:
            regex = getattr(shadow, "path_regex", None)
            if shadow.methods and regex is not None:
                if regex.match(path):
                    return True
            elif shadow.matches(scope)[0] is Match.FULL:
                return True
        return False


def _try_compile(route: RouteContext, overrides: Mapping[Call, Call] | None) -> Plan | None:
    try:
        return compile_plan(route, overrides)
    except Unsupported as exc:
        log.warning("POST %s is served through FastAPI, not the fast path: %s", route.path, exc)
        return None


def fronted_routes(app: Any, endpoints: Collection[Call]) -> tuple[Fronted, ...]:
    """The app's POST routes to ``endpoints`` as served (included routers flattened, in
    the router's order), each with the routes before it that might take the same POST."""
    fronted: list[Fronted] = []
    shadows: list[RouteContext] = []
    for route in iter_route_contexts(app.router.routes):
        methods = route.methods
        if route.endpoint in endpoints and methods and "POST" in methods:
            convertors = tuple(
                (name, convertor)
                for name, convertor in route.param_convertors.items()
                if not isinstance(convertor, StringConvertor)
            )
            plan = _try_compile(route, None)
            fronted.append(Fronted(route, route.path_regex.match, convertors, tuple(shadows), plan))
        elif not isinstance(route.original_route, WebSocketRoute) and (
            not methods or "POST" in methods
        ):
            shadows.append(route)
    return tuple(fronted)


class PredictFastPath:
    """Pure ASGI middleware: serves the routes of ``endpoints`` along their plans."""

    def __init__(self, app: ASGIApp, *, endpoints: Collection[Call]) -> None:
        self.app = app
        self.endpoints = frozenset(endpoints)
        self._fronted = FromRoutes(lambda served: fronted_routes(served, self.endpoints))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and (table := self._fronted(scope))
        ):
            path = get_route_path(scope)
            for fronted in table:
                found = fronted.match(path)
                if found is not None:
                    await self._serve(fronted, found, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, fronted: Fronted, found: re.Match[str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        overrides = getattr(fronted.provider, "dependency_overrides", None)
        plan = fronted.plan_for(overrides) if overrides else fronted.plan
        if plan is None or (fronted.shadows and fronted.shadowed(found.string, scope)):
            await self.app(scope, receive, send)
            return
        # NOTE: what the router puts in the scope for this route, so no one can tell.
        params: dict[str, Any] = found.groupdict()
        for name, convertor in fronted.convertors:
            params[name] = convertor.convert(params[name])
        if parent := scope.get("path_params"):
            params = {**parent, **params}
        scope["endpoint"], scope["path_params"], scope["route"] = (
            fronted.endpoint,
            params,
            fronted.original,
        )
        if "router" not in scope:
            scope["router"] = scope["app"].router
        request = Request(scope, receive, send)
        try:
            response = await plan.respond(request, params)
        except Exception as exc:
            if not await answer_error(exc, scope, receive, send, request=request):
                raise
            return
        await response(scope, receive, send)
