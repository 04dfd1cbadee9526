"""``make bench-peers``'s own logic, without any peer venv: the manifest it writes for this
project serves the peers' exact model, and the report's medians and limit rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.peers import PEERS
from bench.peers import models as peer_models
from bench.peers.__main__ import parse
from bench.peers.install import parse_java_version
from bench.peers.report import cells, read, render
from bench.peers.run import body_v2, flat, out_v2, registry_manifest
from registry.loaders import load_version
from registry.manifest import load_manifest
from registry.settings import Settings
from registry.validation import validate_manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench-models")
    peer_models.build(folder)
    return folder


def test_registry_manifest_validates_against_the_built_weights(built: Path) -> None:
    manifest = built / "models.yaml"
    manifest.write_text(registry_manifest(["tiny", "medium"], 16))
    settings = Settings(manifest=manifest, weights_dir=built)
    assert validate_manifest(settings, load=True) == []
    spec = load_manifest(manifest)
    assert [m.name for m in spec.models] == ["tiny", "medium"]
    assert all(m.batching.max_batch_size == 16 for m in spec.models)


@pytest.mark.parametrize("name", ["tiny", "medium"])
def test_registry_loads_the_peers_model_and_answers_the_sample(built: Path, name: str) -> None:
    """What the harness checks over HTTP first: this project's loader, given the peers'
    state dict, reproduces the in-process output stored with the sample."""
    manifest = built / f"{name}.yaml"
    manifest.write_text(registry_manifest([name], 16))
    spec = load_manifest(manifest).models[0]
    loaded = load_version(spec, spec.versions[0], built)
    sample = json.loads((built / f"{name}.sample.json").read_text())
    with torch.inference_mode():
        got = loaded.module(torch.tensor(sample["inputs"]))
    assert isinstance(got, torch.Tensor)
    assert torch.allclose(got, torch.tensor(sample["outputs"]), atol=1e-6)


def test_the_models_are_deterministic(built: Path) -> None:
    again = peer_models.make("tiny").state_dict()
    saved = torch.load(built / "tiny.state.pt", weights_only=True)
    assert all(torch.equal(again[k], saved[k]) for k in saved)


def test_v2_body_round_trips() -> None:
    x = [[0.5, -1.0, 2.0]]
    body = json.loads(body_v2(x))
    assert body["inputs"][0]["shape"] == [1, 3]
    assert out_v2({"outputs": [{"data": body["inputs"][0]["data"]}]}) == flat(x)


def _http(peer: str, model: str, conc: int, rnd: int, rps: float, p99: float) -> dict[str, Any]:
    return {
        "kind": "http",
        "peer": peer,
        "model": model,
        "conc": conc,
        "round": rnd,
        "rps": rps,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "requests": int(rps * 10),
        "wall_s": 10.0,
        "non2xx": 0,
        "errors": 0,
        "server_cpu_s": 10.0,
        "load_cpu_s": 1.0,
        "other_cpu_s": 0.5,
        "tool": "wrk",
    }


@pytest.fixture
def results(tmp_path: Path) -> Path:
    records = [
        {"kind": "meta", "peers": PEERS},
        *(
            _http("registry", "tiny", 1, r, rps, p99)
            for r, (rps, p99) in enumerate([(3000, 0.5), (1000, 9.0), (2000, 0.7)])
        ),
        *(_http("naive", "tiny", 1, r, 1500, 1.0) for r in range(3)),
        _http("limit", "tiny", 1, 0, 9000, 0.2),
        {"kind": "forward", "model": "tiny", "loader": "state", "batch": 1, "sps": 5000.0},
        {"kind": "forward", "model": "tiny", "loader": "state", "batch": 1, "sps": 7000.0},
        {"kind": "error", "peer": "torchserve", "model": "tiny", "round": 0, "error": "boom"},
        {"kind": "skipped", "peer": "torchserve", "error": "no java found"},
    ]
    path = tmp_path / "peers-1.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_cells_are_medians_over_rounds(results: Path) -> None:
    cell = cells(read([results]))[("registry", "tiny", 1)]
    assert (cell.rps, cell.p99_ms, cell.n) == (2000, 0.7, 3)
    assert (cell.lo, cell.hi) == (1000, 3000)
    assert cell.server_cores == 1.0


def test_report_table_rows(results: Path) -> None:
    text = render(read([results]))
    lines = text.splitlines()
    assert "| peer | tiny c=1 |" in lines
    assert "| FastAPI, sync `def` | 1500 / 1.0 |" in lines
    assert "| **registry** | **2000 / 0.7** |" in lines
    # the forward limit is the median of its runs; the limit row the smaller of the two
    assert "| limit: forward, samples/s (eager, batch min(c, 16)) | 6000 |" in lines
    assert "| limit (bare HTTP, or forward) | 6000 |" in lines
    assert lines.index("| FastAPI, sync `def` | 1500 / 1.0 |") < lines.index(
        "| **registry** | **2000 / 0.7** |"
    )
    assert "- error: round 0: torchserve/tiny: boom" in lines
    assert "- skipped: torchserve: no java found" in lines


def test_disturbed_runs_can_be_dropped(results: Path) -> None:
    assert cells(read([results]), max_other=0.01) == {}


@pytest.mark.parametrize(
    ("shown", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("command not found", None),
    ],
)
def test_java_version(shown: str, major: int | None) -> None:
    assert parse_java_version(shown) == major


def test_unknown_peers_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse([]).peers == PEERS
    with pytest.raises(SystemExit):
        parse(["lightserve"])
    assert "unknown peer(s) lightserve" in capsys.readouterr().err
