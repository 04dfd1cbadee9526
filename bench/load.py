"""Closed-loop load: wrk where Debian's package is installed, else a bundled asyncio client.

Both keep ``concurrency`` keep-alive connections, each sending the next request as soon as
the last answer arrived, and report requests per second and latency percentiles. A POST of
one body, JSON unless ``headers`` say otherwise.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

JSON = {"Content-Type": "application/json"}
# NOTE: the body is read from a file, so that it may be bytes of any value (V2's binary
# extension), not only text.
LUA = """wrk.method = "POST"
{headers}
local source = io.open("{body}", "rb")
wrk.body = source:read("*a")
source:close()
done = function(summary, latency, requests)
  local f = io.open("{out}", "w")
  local e = summary.errors
  f:write(string.format(
    '{{"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "non2xx": %d, "errors": %d}}',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, e.status, e.connect + e.read + e.write + e.timeout))
  f:close()
end
"""


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    errors: int
    tool: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"rps": round(self.rps, 1)}


def run(
    url: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    headers: Mapping[str, str] = JSON,
) -> Result:
    if shutil.which("wrk"):
        return _wrk(url, body, concurrency, seconds, headers)
    return asyncio.run(_bundled(url, body, concurrency, seconds, headers))


def summarize(
    latencies: list[float], seconds: float, non2xx: int, errors: int, tool: str
) -> Result:
    """A client's figures: ``latencies`` in seconds, one per answer, over ``seconds``."""
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Result(len(latencies), seconds, cuts[49] * 1e3, cuts[98] * 1e3, non2xx, errors, tool)


def _wrk(
    url: str, body: bytes, concurrency: int, seconds: float, headers: Mapping[str, str]
) -> Result:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "summary.json"
        script = Path(scratch) / "post.lua"
        source = Path(scratch) / "body"
        source.write_bytes(body)
        # NOTE: a JSON string is a Lua string literal too (ASCII header names and values).
        lines = [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
        script.write_text(LUA.format(headers="\n".join(lines), body=source, out=out))
        command = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=seconds + 30)
        summary = json.loads(out.read_text())
    return Result(tool="wrk", **summary)


async def _bundled(
    url: str, body: bytes, concurrency: int, seconds: float, headers: Mapping[str, str]
) -> Result:
    parts = urlsplit(url)
    fields = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"{fields}Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    failures = [0, 0]  # non-2xx, transport errors
    stop_at = time.perf_counter() + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                writer.write(head + body)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not status_line.split(b" ")[1].startswith(b"2"):
                    failures[0] += 1
        except (OSError, asyncio.IncompleteReadError):
            failures[1] += 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return summarize(latencies, elapsed, failures[0], failures[1], "bundled asyncio client")
