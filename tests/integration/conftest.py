"""One server of the repository's own ``models.yaml`` for the whole session.

Starting it loads every example (MiniLM included): seconds of CPU that each module that
only reads from it would otherwise spend again. Modules that change what a server serves
(reloads, signals, settings) start their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from registry.examples import minilm_files
from tests.integration.server import REPOSITORY, Server, free_port, serving

MANIFEST = REPOSITORY / "models.yaml"
WEIGHTS = REPOSITORY / "weights"


@dataclass(frozen=True)
class Examples:
    """The examples' server process and the address of its gRPC port."""

    server: Server
    grpc: str


@pytest.fixture(scope="session")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Examples]:
    # NOTE: MiniLM's files are built at set-up, not committed: build them on a fresh clone.
    target = WEIGHTS / minilm_files.TARGET
    if not all((target / name).is_file() for name in minilm_files.FILES):
        assert minilm_files.main([str(WEIGHTS)]) == 0
    port = free_port()
    args = ["--manifest", str(MANIFEST), "--weights-dir", str(WEIGHTS), "--grpc-port", str(port)]
    with serving(tmp_path_factory.mktemp("examples"), args) as server:
        yield Examples(server, f"127.0.0.1:{port}")
