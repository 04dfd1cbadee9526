"""``bench.launch``: a server started for a bench never outlives the bench, even one
stopped by SIGTERM (``timeout``, CI, ``kill``), which by default ends Python without
running any ``finally``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BENCH = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from bench.launch import free_port, launch

    port = free_port()
    command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    log = Path(sys.argv[1])
    ready = f"http://127.0.0.1:{port}/"
    with launch("server", command, dict(os.environ), log.parent, log, ready) as group:
        print(group, flush=True)
        time.sleep(600)
    """
)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_bench_stopped_by_sigterm_stops_its_server(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    bench = subprocess.Popen(
        [sys.executable, "-c", BENCH, str(tmp_path / "server.log")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    server = 0
    try:
        assert bench.stdout is not None
        server = int(bench.stdout.readline())  # the server answered: it runs
        assert _alive(server)  # its own group: the launcher's start_new_session
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) != 0
        assert not _alive(server)  # NOTE: the launcher waited for it before exiting
    finally:
        bench.kill()
        bench.communicate()
        if server and _alive(server):
            os.killpg(server, signal.SIGKILL)
