"""``make soak`` (``python -m bench.soak``): a bounded mixed workload against a real server.

Starts ``python -m registry serve`` on a free loopback port, serving a temporary copy of
``models.yaml`` and ``weights/`` (so reloads can edit the manifest), and for a set time:

- a paced mix of good requests (every model; default, version and alias routes; native
  and V2; JSON, raw tensor, ``.npy`` and the V2 binary extension, see ``soak_cases``),
  each 200 checked against torch in this process;
- bad requests of every kind (``soak_cases.BAD_CASES``), each of which must get a 4xx;
- a reload every ``--reload-every`` seconds that swaps every version (``warmup`` toggled:
  a new fingerprint, the same answers) and moves the ``soak`` alias between two versions;
- a few slow clients trickling a body a byte at a time (a 408 or a closed connection is
  fine; a 5xx is not).

It reports requests, statuses by kind, p50/p99 of good requests per protocol, each reload's
latency and outcome, and the server's RSS at start and end, and fails (exit 1) on any 5xx,
wrong answer, bad request not refused with a 4xx, good request without an answer, failed
reload, slow client held past ``slow_deadline`` without an answer, version left draining,
or server crash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson
import yaml

from bench.soak_cases import (
    BAD_CASES,
    SOAK_ALIAS,
    Combination,
    ModelCase,
    Request,
    check_answer,
    good_combinations,
    good_request,
    load_reference,
    v2_body,
)
from bench.soak_report import ReloadOutcome, Report, SlowOutcome, Tally, build_report, render
from tests.integration.server import Server, rss_bytes, start

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "models.yaml"
LOG_TAIL = 40


@dataclass(frozen=True)
class Options:
    seconds: float = 300.0
    concurrency: int = 32
    rate: float = 200.0  # requests per second over all workers; 0: as fast as answers come
    reload_every: float = 10.0
    slow_clients: int = 3
    slow_byte_every: float = 0.5
    # NOTE: twice the server's default body deadline (REGISTRY_BODY_TIMEOUT_S, 10 s).
    slow_deadline: float = 20.0  # a slow client held longer without an answer fails the soak
    bad_fraction: float = 0.25
    max_body_bytes: int = 64 * 1024  # the server's limit: keeps oversized bodies cheap
    seed: int = 0


def run(
    options: Options,
    *,
    manifest: Path = MANIFEST,
    work: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Stage, serve, soak, stop; the report says whether it passed."""
    if work is None:
        with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
            return run(options, manifest=manifest, work=Path(scratch), progress=progress)
    say = progress or (lambda _: None)
    staged = stage(manifest, work)
    say(f"soak: computing expected outputs in-process from {staged}")
    models = load_reference(staged, work / "weights")
    token = secrets.token_hex(16)
    env = {"REGISTRY_ADMIN_TOKEN": token, "REGISTRY_MAX_BODY_BYTES": str(options.max_body_bytes)}
    server = start(work, ["--manifest", str(staged)], env)
    tally = Tally()
    crashed: str | None = None
    seconds = 0.0
    try:
        wait_ready(server, timeout_s=120)
        say(f"soak: serving on {server.url}, running {options.seconds:.0f} s")
        soak = Soak(server, models, options, ManifestEditor(staged), token, tally, say)
        seconds, crashed = asyncio.run(soak.run())
    finally:
        exit_code, stop_problem = _stop(server)
    report = build_report(
        tally, seconds, exit_code, crashed or stop_problem, slow_deadline=options.slow_deadline
    )
    if not report.passed:
        report.server_log_tail = server.output().splitlines()[-LOG_TAIL:]
    return report


def wait_ready(server: Server, timeout_s: float) -> None:
    """``Server.wait_ready`` with one client for every poll.

    NOTE: a new httpx client per poll loads the CA bundle each time (~0.2 s of CPU), which
    on a small machine takes the core the server needs to start.
    """
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.url, timeout=1) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited {server.process.returncode}:\n{server.output()}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/readyz").status_code == 200:
                    return
            time.sleep(0.1)
    raise TimeoutError(f"server not ready after {timeout_s} s:\n{server.output()}")


def stage(manifest: Path, work: Path) -> Path:
    """A copy of the manifest and its weights in ``work``, with the ``soak`` alias added."""
    shutil.copytree(manifest.parent / "weights", work / "weights")
    document = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    for model in document["models"]:
        versions = [str(v["version"]) for v in model["versions"]]
        if len(versions) >= 2:
            model.setdefault("aliases", {})[SOAK_ALIAS] = versions[0]
    staged = work / "models.yaml"
    staged.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return staged


class ManifestEditor:
    """Edits the staged manifest as an operator's deploy tool would: a copy, renamed over."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        self.pairs = {
            m["name"]: (str(m["versions"][0]["version"]), str(m["versions"][1]["version"]))
            for m in self.document["models"]
            if SOAK_ALIAS in m.get("aliases", {})
        }

    @property
    def versions(self) -> list[str]:
        return sorted(
            f"{m['name']}:{v['version']}" for m in self.document["models"] for v in m["versions"]
        )

    def targets(self) -> dict[str, str]:
        return {
            m["name"]: str(m["aliases"][SOAK_ALIAS])
            for m in self.document["models"]
            if m["name"] in self.pairs
        }

    def toggle(self) -> dict[str, str]:
        """Flip every model's ``warmup`` and move each ``soak`` alias; the new targets."""
        for model in self.document["models"]:
            model["warmup"] = not model.get("warmup", True)
            if model["name"] in self.pairs:
                first, second = self.pairs[model["name"]]
                now = model["aliases"][SOAK_ALIAS]
                model["aliases"][SOAK_ALIAS] = second if now == first else first
        staging = self.path.with_suffix(".staging")
        staging.write_text(yaml.safe_dump(self.document, sort_keys=False), encoding="utf-8")
        os.replace(staging, self.path)
        return self.targets()


@dataclass
class Aliases:
    """Where each ``soak`` alias points; ``epoch`` is odd while a reload is in flight."""

    targets: dict[str, str | None]
    pairs: dict[str, tuple[str, str]]
    epoch: int = 0

    def allowed(self, model: ModelCase, target: str | None, since: int) -> frozenset[str]:
        """The versions a request that began at epoch ``since`` may have been served by."""
        if target != SOAK_ALIAS:
            return frozenset({model.resolve(target)})
        current = self.targets.get(model.name)
        if since == self.epoch and since % 2 == 0 and current is not None:
            return frozenset({current})
        return frozenset(self.pairs[model.name])


@dataclass
class Mix:
    """The next request: bad ones round-robin over every case and model, good ones over
    every route, encoding and answer form, rows drawn at random."""

    models: list[ModelCase]
    options: Options
    rng: np.random.Generator = field(init=False)
    good: list[Combination] = field(init=False)
    built: list[Request] = field(init=False)
    turns: list[int] = field(default_factory=lambda: [0, 0])

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.options.seed)
        good = good_combinations(self.models)
        self.good = [good[i] for i in self.rng.permutation(len(good))]
        bad = [(c, m) for c in BAD_CASES for m in self.models if c.eligible(m)]
        self.built = [case.request(model, self.options.max_body_bytes) for case, model in bad]
        self.built = [self.built[i] for i in self.rng.permutation(len(bad))]

    def next(self) -> Request:
        if self.rng.random() < self.options.bad_fraction:
            turn = self.turns[1] % len(self.built)
            self.turns[1] += 1
            return self.built[turn]
        turn = self.turns[0] % len(self.good)
        self.turns[0] += 1
        return good_request(self.good[turn], self.rng)


class Pacer:
    """Hands out send times ``1/rate`` apart, so the client never pegs a shared machine."""

    def __init__(self, rate: float) -> None:
        self.interval = 1 / rate if rate > 0 else 0.0
        self.next_at = 0.0

    async def wait(self) -> float:
        now = asyncio.get_running_loop().time()
        slot = max(now, self.next_at)
        self.next_at = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)
        return slot


class Soak:
    def __init__(
        self,
        server: Server,
        models: list[ModelCase],
        options: Options,
        editor: ManifestEditor,
        token: str,
        tally: Tally,
        say: Callable[[str], None],
    ) -> None:
        self.server, self.models, self.options = server, models, options
        self.editor, self.token, self.tally, self.say = editor, token, tally, say
        targets: dict[str, str | None] = dict(editor.targets())
        self.aliases = Aliases(targets, editor.pairs)
        self.mix = Mix(models, options)
        self.pacer = Pacer(options.rate)
        self.started = self.stop_at = 0.0

    async def run(self) -> tuple[float, str | None]:
        """(seconds the load ran, why the server failed or None)."""
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        self.stop_at = self.started + self.options.seconds
        await self._sample_rss()
        cpu = (time.process_time(), cpu_seconds(self.server.process.pid))
        tls = httpx.create_ssl_context()  # NOTE: loaded once, not once per worker's client
        async with httpx.AsyncClient(base_url=self.server.url, timeout=60, verify=tls) as admin:
            async with asyncio.TaskGroup() as tasks:
                for _ in range(self.options.concurrency):
                    tasks.create_task(self._worker(tls))
                tasks.create_task(self._reloader(admin))
                for index in range(self.options.slow_clients):
                    tasks.create_task(self._slow_client(index))
            seconds = loop.time() - self.started
            server_cpu = cpu_seconds(self.server.process.pid)
            self.tally.cpu["client"] = time.process_time() - cpu[0]
            if server_cpu is not None and cpu[1] is not None:
                self.tally.cpu["server"] = server_cpu - cpu[1]
            problem = await self._after(admin)
        await self._sample_rss()
        return seconds, problem

    async def _worker(self, tls: ssl.SSLContext) -> None:
        # NOTE: a client (one keep-alive connection) per worker: httpcore's pool scans every
        # connection on each request, which at a few dozen cost the client most of a core.
        # Idle connections expire before uvicorn's 5 s keep-alive closes them, so a request
        # never races the server's close of the connection it was given.
        limits = httpx.Limits(max_connections=1, keepalive_expiry=2.0)
        async with httpx.AsyncClient(
            base_url=self.server.url, timeout=15, limits=limits, verify=tls
        ) as client:
            await self._send_until_the_end(client)

    async def _send_until_the_end(self, client: httpx.AsyncClient) -> None:
        while await self.pacer.wait() < self.stop_at:
            request = self.mix.next()
            since = self.aliases.epoch
            began = time.perf_counter()
            began_s = asyncio.get_running_loop().time() - self.started
            try:
                response = await client.request(
                    request.method,
                    request.path,
                    headers=request.headers,
                    content=_chunks(request.body) if request.chunked else request.body,
                )
            except httpx.HTTPError as exc:
                self.tally.transport_error(request.kind, request.path, exc)
                continue
            elapsed = time.perf_counter() - began
            self.tally.count(request.kind, response.status_code)
            if request.expect is not None:
                self.tally.answered.append((began_s, elapsed))
                self._judge_good(request, response, since, elapsed)
            else:
                self._judge_bad(request, response)

    def _judge_good(
        self, request: Request, response: httpx.Response, since: int, elapsed: float
    ) -> None:
        expect = request.expect
        assert expect is not None  # noqa: S101 (only good requests get here)
        if response.status_code >= 500:
            return  # counted as a 5xx already
        allowed = self.aliases.allowed(expect.model, expect.target, since)
        problem = check_answer(
            expect, response.status_code, response.headers, response.content, allowed
        )
        if problem is None:
            self.tally.latencies[request.kind.removeprefix("good/")].append(elapsed)
        else:
            self.tally.wrong_answer(request.kind, request.path, problem)

    def _judge_bad(self, request: Request, response: httpx.Response) -> None:
        status = response.status_code
        if not 400 <= status < 500:
            return  # counted; the report lists every bad kind that got anything but a 4xx
        if status not in request.named:
            self.tally.off_contract[request.kind][str(status)] += 1
        if not _is_error_envelope(response.content, v2=request.v2):
            self.tally.off_contract[request.kind][f"{status}, not the error envelope"] += 1

    async def _reloader(self, admin: httpx.AsyncClient) -> None:
        loop = asyncio.get_running_loop()
        cycle = 0
        while (at := self.started + (cycle + 1) * self.options.reload_every) < self.stop_at:
            cycle += 1
            await asyncio.sleep(max(0.0, at - loop.time()))
            targets = await asyncio.to_thread(self.editor.toggle)
            self.aliases.epoch += 1
            began = time.perf_counter()
            status: int | str
            try:
                response = await admin.post(
                    "/admin/reload", headers={"Authorization": f"Bearer {self.token}"}
                )
                status, document = response.status_code, _json_or_none(response.content)
            except httpx.HTTPError as exc:
                status, document = f"error:{type(exc).__name__}", None
            latency_ms = (time.perf_counter() - began) * 1e3
            problem = self._judge_reload(status, document, targets)
            self.aliases.targets = (
                dict(targets) if problem is None else dict.fromkeys(self.aliases.targets)
            )
            self.aliases.epoch += 1
            document = document or {}
            outcome = ReloadOutcome(
                at_s=round(loop.time() - self.started, 1),
                status=status,
                latency_ms=round(latency_ms, 1),
                server_ms=document.get("duration_ms"),
                reloaded=list(document.get("reloaded", [])),
                alias_moves=[
                    f"{m['model']}/{m['alias']}:{m['before']}->{m['after']}"
                    for m in document.get("alias_moves", [])
                ],
                problem=problem,
            )
            self.tally.reloads.append(outcome)
            self.tally.count("reload", status)
            await self._sample_rss()
            requests = sum(
                sum(c.values()) for k, c in self.tally.statuses.items() if k[:4] in ("good", "bad/")
            )
            self.say(
                f"  {outcome.at_s:6.1f} s: {requests} requests, reload {status} in "
                f"{latency_ms:.0f} ms{'' if problem is None else ' FAILED: ' + problem}"
            )

    def _judge_reload(
        self, status: int | str, document: dict[str, Any] | None, targets: dict[str, str]
    ) -> str | None:
        if status != 200 or document is None:
            return f"status {status}: {document}"
        if not document.get("applied") or document.get("failed"):
            return f"not applied: failed {document.get('failed')}"
        if sorted(document.get("reloaded", [])) != self.editor.versions:
            return f"reloaded {document.get('reloaded')}, expected {self.editor.versions}"
        moved = {(m["model"], m["alias"], m["after"]) for m in document.get("alias_moves", [])}
        missing = {(name, SOAK_ALIAS, to) for name, to in targets.items()} - moved
        return f"alias moves {sorted(missing)} missing" if missing else None

    async def _slow_client(self, index: int) -> None:
        """Trickle valid bodies, to the native route and the V2 one by turns, until the end."""
        loop = asyncio.get_running_loop()
        model = self.models[index % len(self.models)]
        x = model.inputs[:1]
        kind = f"slow/{'v2' if index % 2 else 'native'}-trickled-body"
        if index % 2:
            path = f"/v2/models/{model.name}/infer"
            document = v2_body(x, model, binary_input=False)[0]
        else:
            path = f"/models/{model.name}/predict"
            document = orjson.dumps({"inputs": x.tolist()})
        # NOTE: padded (still valid JSON) so that, a byte at a time, it never ends in a soak.
        body = b" " * 8192 + document
        parts = urlsplit(self.server.url)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        while loop.time() < self.stop_at:
            began = loop.time()
            outcome = await self._trickle(str(parts.hostname), int(parts.port or 80), head, body)
            self.tally.slow.append(SlowOutcome(outcome, loop.time() - began))
            self.tally.count(kind, outcome)

    async def _trickle(self, host: str, port: int, head: bytes, body: bytes) -> str:
        """What the server did with a body sent a byte at a time: a status, closed, or not."""
        loop = asyncio.get_running_loop()
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            return f"error:{type(exc).__name__}"
        answer = asyncio.ensure_future(reader.readline())
        try:
            writer.write(head)
            await writer.drain()
            for offset in range(len(body)):
                remaining = self.stop_at - loop.time()
                wait = max(0.0, min(self.options.slow_byte_every, remaining))
                if (await asyncio.wait({answer}, timeout=wait))[0]:
                    return _status_line(answer)
                if remaining <= 0:
                    return "unanswered"
                writer.write(body[offset : offset + 1])
                await writer.drain()
            remaining = max(0.0, self.stop_at - loop.time())
            await asyncio.wait({answer}, timeout=remaining)
            return _status_line(answer) if answer.done() else "unanswered"
        except OSError:
            # NOTE: the server may answer and close while a byte is on its way: read it.
            await asyncio.wait({answer}, timeout=1.0)
            return _status_line(answer) if answer.done() else "closed"
        finally:
            answer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await answer
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _after(self, admin: httpx.AsyncClient) -> str | None:
        """The server must still serve and release every retired version."""
        if (code := self.server.process.poll()) is not None:
            return f"the server exited {code} during the soak"
        deadline = time.monotonic() + 10
        try:
            async with asyncio.timeout(20):
                if (health := await admin.get("/healthz")).status_code != 200:
                    return f"/healthz answered {health.status_code} after the soak"
                while draining := (await admin.get("/models")).json()["draining"]:
                    if time.monotonic() > deadline:
                        return f"still draining 10 s after the load stopped: {draining}"
                    await asyncio.sleep(0.2)
        except (httpx.HTTPError, TimeoutError) as exc:
            return f"the server stopped answering after the soak: {exc!r}"
        return None

    async def _sample_rss(self) -> None:
        rss = await asyncio.to_thread(rss_bytes, self.server.process.pid)
        if rss is not None:
            self.tally.rss.append(rss)


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of a process from ``/proc`` (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # NOTE: utime and stime are the 14th and 15th fields; the split starts at the 3rd.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _chunks(body: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    """The body as a stream: httpx sends it chunked, with no Content-Length to refuse early."""
    for offset in range(0, len(body), size):
        yield body[offset : offset + size]


def _status_line(answer: asyncio.Future[bytes]) -> str:
    try:
        line = answer.result()
    except (OSError, ValueError, asyncio.IncompleteReadError):
        return "closed"
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/"):
        return parts[1].decode("ascii", "replace")
    return "closed" if not line else "garbled"


def _json_or_none(body: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _is_error_envelope(body: bytes, *, v2: bool) -> bool:
    """``{"error": "..."}`` on V2 routes, ``{"error": {"code", "message"}}`` elsewhere."""
    error = (_json_or_none(body) or {}).get("error")
    if v2:
        return isinstance(error, str)
    return isinstance(error, dict) and {"code", "message"} <= error.keys()


def _stop(server: Server) -> tuple[int | None, str | None]:
    crashed = server.process.poll()
    try:
        code = server.stop()
    except Exception as exc:  # NOTE: reported; never hides the soak's own result
        return None, f"the server did not stop on SIGTERM: {exc!r}"
    if crashed is not None:
        return code, f"the server exited {crashed} before the soak ended"
    return code, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Options()
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="req/s, 0: unpaced")
    parser.add_argument("--reload-every", type=float, default=defaults.reload_every)
    parser.add_argument("--slow-clients", type=int, default=defaults.slow_clients)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # NOTE: only the reference runs torch here; leave the cores be
    options = Options(
        seconds=args.seconds,
        concurrency=args.concurrency,
        rate=args.rate,
        reload_every=args.reload_every,
        slow_clients=args.slow_clients,
        seed=args.seed,
    )
    report = run(options, manifest=args.manifest.resolve(), progress=print)
    print(render(report))
    if not report.passed and report.server_log_tail:
        print("\nserver log (last lines):\n" + "\n".join(report.server_log_tail))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.as_dict(), indent=2))
        print(f"JSON: {args.json}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
