"""``python -m bench.reload_memory``: what many reloads leave behind in the process's RSS.

The repository's manifest is copied to a scratch folder and served in-process; each reload
flips every model's ``warmup``, which changes every version's fingerprint (so each one is
loaded again and the old one released) but no answer. ``--trim`` runs ``gc.collect()`` and
glibc's ``malloc_trim(0)`` after each reload, which tells memory the allocator merely keeps
from memory still referenced.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from fastapi.testclient import TestClient
from pydantic import SecretStr

from registry.app import create_app
from registry.settings import Settings

REPOSITORY = Path(__file__).parents[1]
AUTH = {"Authorization": "Bearer bench"}


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reload_memory", description=__doc__)
    parser.add_argument("--reloads", type=int, default=120)
    parser.add_argument("--every", type=int, default=20, help="print RSS every N reloads")
    parser.add_argument("--trim", action="store_true", help="gc.collect + malloc_trim(0)")
    args = parser.parse_args()
    libc = ctypes.CDLL("libc.so.6") if args.trim else None
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        shutil.copytree(REPOSITORY / "weights", root / "weights")
        document = yaml.safe_load((REPOSITORY / "models.yaml").read_text(encoding="utf-8"))
        manifest = root / "models.yaml"

        def write(warmup: bool) -> None:
            for model in document["models"]:
                model["warmup"] = warmup
            manifest.write_text(yaml.safe_dump(document), encoding="utf-8")

        write(True)
        settings = Settings(manifest=manifest, admin_token=SecretStr("bench"), torch_threads=1)
        with TestClient(create_app(settings)) as client:
            while client.get("/readyz").status_code != 200:
                time.sleep(0.05)
            start = rss_mib()
            print(f"start: {start:.1f} MiB")
            for reload in range(1, args.reloads + 1):
                write(reload % 2 == 0)
                answer = client.post("/admin/reload", headers=AUTH)
                answer.raise_for_status()
                if libc is not None:
                    gc.collect()
                    libc.malloc_trim(0)
                if reload % args.every == 0:
                    print(f"{reload:5} reloads: {rss_mib():.1f} MiB ({rss_mib() - start:+.1f})")


if __name__ == "__main__":
    main()
