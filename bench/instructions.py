"""Instructions per prediction, counted by callgrind: a figure the machine's noise can't move.

``python -m bench.instructions --model tiny --requests 1000 [--stub] [--concurrency N]
[--tree DIR]`` runs itself under ``valgrind --tool=callgrind`` (Debian's ``valgrind``
package), builds the bench's weights, starts the application in process, sends
``--requests`` predictions through the whole ASGI app (every middleware, no uvicorn) after
300 warm-up ones, and counts only those: the counters are zeroed before them and dumped
after. They go one at a time, or ``--concurrency`` at once (awaited together, round after
round), which takes the batcher's path of queued passes instead of the lone request's.
``--stub`` replaces ``Batcher.submit`` with a slice, leaving the app's own work;
``--tree`` measures another checkout (a ``git worktree`` of an older commit) with this
driver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

WARMUP = 300


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--model", default="tiny", choices=["tiny", "medium"])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--stub", action="store_true", help="no model: the app's own work")
    parser.add_argument("--concurrency", type=int, default=1, help="predictions at once")
    parser.add_argument("--tree", type=Path, default=None, help="checkout to measure")
    parser.add_argument("--inside", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.concurrency < 1 or args.requests % args.concurrency:
        parser.error("--requests must be a multiple of --concurrency (at least 1)")
    if args.inside is not None:
        sys.path[:0] = [str(args.inside), str(Path(__file__).resolve().parents[1])]
        work = Path(tempfile.mkdtemp())
        asyncio.run(drive(args.model, args.requests, args.stub, work, args.concurrency))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    tree = (args.tree or Path(__file__).resolve().parents[1]).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--model", args.model, "--requests", str(args.requests),
            "--concurrency", str(args.concurrency), "--inside", str(tree),
            *(["--stub"] if args.stub else []),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, cwd=scratch)
        (dump,) = Path(scratch).glob("callgrind.out.*")
        total = next(int(line.split()[1]) for line in dump.open() if line.startswith("totals:"))
    kind = "app only (stub)" if args.stub else "real model"
    print(
        f"{tree.name} {args.model} {kind}, {args.concurrency} at once: "
        f"{total // args.requests:,} instructions/request"
    )


def _callgrind(*command: str) -> None:
    """Tell the callgrind running this process to zero (``-z``) or dump (``-d``) its counts."""
    control = shutil.which("callgrind_control") or "callgrind_control"
    subprocess.run([control, *command, str(os.getpid())], check=True, capture_output=True)


def _ok(status: int) -> None:
    if status != 200:
        raise RuntimeError(f"a prediction answered {status}")


async def drive(name: str, requests: int, stub: bool, work: Path, concurrency: int = 1) -> None:
    """In the measured process (the tree to measure first on the path): the app in
    process, ``requests`` predictions counted, ``concurrency`` at a time."""
    from bench.__main__ import build
    from registry.app import create_app
    from registry.batching import Batcher
    from registry.settings import Settings

    if stub:

        async def sliced(_: Any, inputs: Any, *__: Any) -> Any:
            if isinstance(inputs, dict):  # NOTE: named inputs, from issue 11 on
                return {"output": next(iter(inputs.values()))[:, :10]}
            return inputs[:, :10]

        setattr(Batcher, "submit", sliced)  # noqa: B010 - any tree's Batcher
    sample = build(work, [name])[name]
    body = json.dumps({"inputs": sample[0].tolist()}).encode()
    app = create_app(Settings(manifest=work / "models.yaml", torch_threads=1))
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
    life = asyncio.create_task(app(lifespan, inbox.get, outbox.put))
    if (await outbox.get())["type"] != "lifespan.startup.complete":
        raise RuntimeError("start-up failed")
    path = f"/models/{name}/predict"
    headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip

    async def predict() -> int:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": b"", "headers": headers,
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": state.copy(),
        }  # fmt: skip
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status = 0

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        return status

    for _ in range(1200):  # NOTE: start-up loading, at most a minute
        if await predict() == 200:
            break
        await asyncio.sleep(0.05)
    for _ in range(WARMUP):
        _ok(await predict())
    _callgrind("-z")
    for _ in range(requests // concurrency):
        for status in await asyncio.gather(*(predict() for _ in range(concurrency))):
            _ok(status)
    _callgrind("-d", "measured")
    await inbox.put({"type": "lifespan.shutdown"})
    await life


if __name__ == "__main__":
    main()
