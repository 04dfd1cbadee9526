from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from registry.cli import main
from registry.errors import (
    ChecksumMismatch,
    ModelLoadFailed,
    WeightsNotFound,
    WeightsOutsideRoot,
)
from registry.loaders import load_version
from registry.manifest import ModelSpec, parse_manifest
from tests.factories import (
    FEATURES,
    Affine,
    affine_outputs,
    echo_model,
    model_entry,
    state_dict_version,
    write_exported,
    write_manifest,
    write_state_dict,
    write_torchscript,
)

PACKAGE = Path(__file__).parents[2] / "registry"


def spec_of(entry: dict[str, object]) -> ModelSpec:
    return parse_manifest({"models": [entry]}).models[0]


INPUTS = np.random.default_rng(0).standard_normal((7, FEATURES)).astype(np.float32)


@pytest.mark.parametrize(
    ("fmt", "relative"),
    [
        ("torchscript", "m/1/model.pt"),
        ("exported", "m/1/model.pt2"),
        ("state_dict", "m/1/model.safetensors"),
        ("state_dict", "m/1/model.pt"),
    ],
)
def test_each_format_loads_warms_up_and_predicts(weights: Path, fmt: str, relative: str) -> None:
    writer = {"torchscript": write_torchscript, "exported": write_exported}.get(
        fmt, write_state_dict
    )
    digest = writer(weights, relative, Affine(seed=1))
    version: dict[str, object] = {"version": "1", "format": fmt, "path": relative, "sha256": digest}
    if fmt == "state_dict":
        version |= {"architecture": "tests.factories:Affine", "architecture_args": {"seed": 5}}
    model = load_version(
        spec_of(model_entry("m", [version])),
        spec_of(model_entry("m", [version])).versions[0],
        weights,
    )

    assert model.device == torch.device("cpu")
    assert model.memory_bytes == (FEATURES * 3 + 3) * 4
    assert model.load_ms > 0
    assert model.warmup_ms > 0
    np.testing.assert_allclose(model.forward_blocking(INPUTS), affine_outputs(INPUTS, 1), rtol=1e-6)
    np.testing.assert_allclose(
        model.forward_blocking(INPUTS[:1]), affine_outputs(INPUTS[:1], 1), rtol=1e-6
    )


def load_single(weights: Path, version: dict[str, object], **model: Any) -> None:
    spec = spec_of(model_entry("m", [version], **model))
    load_version(spec, spec.versions[0], weights)


def affine_version(weights: Path, **changes: object) -> dict[str, object]:
    digest = write_state_dict(weights, "m/1/model.safetensors", Affine(seed=1))
    return state_dict_version("1", "m/1/model.safetensors", "Affine", digest) | changes


def test_checksum_mismatch_is_refused_before_loading(weights: Path) -> None:
    with pytest.raises(ChecksumMismatch, match="the manifest says 0000") as caught:
        load_single(weights, affine_version(weights, sha256="0" * 64))
    assert caught.value.details == {"path": "m/1/model.safetensors", "model": "m", "version": "1"}


def test_missing_weights(weights: Path) -> None:
    with pytest.raises(WeightsNotFound):
        load_single(weights, affine_version(weights, path="m/9/model.safetensors", sha256=None))


def test_symlink_out_of_the_weights_root_is_refused(tmp_path: Path, weights: Path) -> None:
    outside = tmp_path / "outside"
    write_state_dict(outside, "model.safetensors", Affine(seed=1))
    (weights / "escape.safetensors").symlink_to(outside / "model.safetensors")
    with pytest.raises(WeightsOutsideRoot):
        load_single(weights, affine_version(weights, path="escape.safetensors", sha256=None))


class Payload:
    """Anything that is not a tensor: ``weights_only=True`` must refuse to build it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_pickled_objects_are_never_unpickled(
    weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = weights / "m/1/model.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps({"linear.weight": Payload()}, protocol=2))
    with pytest.raises(ModelLoadFailed, match=r"Weights only load failed|UnpicklingError"):
        load_single(weights, state_dict_version("1", "m/1/model.pt", "Affine"))
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("architecture", "args", "reason"),
    [
        ("Affine", {"features": 9}, "size mismatch"),
        ("Affine", {"unknown": 1}, "unexpected keyword argument"),
    ],
)
def test_architecture_errors_name_model_and_cause(
    weights: Path, architecture: str, args: dict[str, object], reason: str
) -> None:
    version = affine_version(weights) | {
        "architecture": f"tests.factories:{architecture}",
        "architecture_args": args,
    }
    with pytest.raises(ModelLoadFailed, match=reason) as caught:
        load_single(weights, version)
    assert caught.value.message.startswith("m:1 failed during loading")


def test_warmup_refuses_outputs_without_a_batch_axis(weights: Path) -> None:
    entry = echo_model(weights, "m", "NoBatchAxis")
    with pytest.raises(ModelLoadFailed, match=r"warm-up.*lacks the batch axis"):
        load_single(weights, entry["versions"][0])


def test_warmup_refuses_an_output_dtype_no_answer_could_carry(weights: Path) -> None:
    entry = echo_model(weights, "m", "ComplexOut")
    with pytest.raises(ModelLoadFailed, match=r"warm-up.*complex64 has no place"):
        load_single(weights, entry["versions"][0])


def test_warmup_refuses_a_label_count_that_does_not_match(weights: Path) -> None:
    with pytest.raises(ModelLoadFailed, match="does not match 2 labels"):
        load_single(weights, affine_version(weights), output={"labels": ["a", "b"]})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_without_cuda_is_a_load_error(weights: Path) -> None:
    with pytest.raises(ModelLoadFailed, match="CUDA is not available"):
        load_single(weights, affine_version(weights), device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_auto_device_falls_back_to_cpu_without_cuda(weights: Path) -> None:
    spec = spec_of(model_entry("m", [affine_version(weights)], device="auto"))
    model = load_version(spec, spec.versions[0], weights)
    assert model.device == torch.device("cpu")
    np.testing.assert_allclose(model.forward_blocking(INPUTS), affine_outputs(INPUTS, 1), rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_auto_device_takes_the_gpu_and_answers_as_the_cpu_does(weights: Path) -> None:
    spec = spec_of(model_entry("m", [affine_version(weights)], device="auto"))
    model = load_version(spec, spec.versions[0], weights)
    assert model.device.type == "cuda"
    np.testing.assert_allclose(
        model.forward_blocking(INPUTS), affine_outputs(INPUTS, 1), rtol=1e-5, atol=1e-6
    )


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(name):
                found.append((path, node))
    return found


def test_every_torch_load_passes_weights_only_true() -> None:
    calls = _calls("torch.load")
    assert calls, "the scan found no torch.load call at all"
    for path, call in calls:
        keywords = {k.arg: k.value for k in call.keywords}
        weights_only = keywords.get("weights_only")
        assert isinstance(weights_only, ast.Constant), path
        assert weights_only.value is True, path


def test_no_unsafe_deserialisers_in_the_package() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py"))
    # NOTE: pickletools only reads opcodes (registry.pt2); it never builds an object
    assert not re.search(r"\bimport (pickle|dill|cloudpickle|joblib)\b(?!tools)", source)
    assert not _calls("pickle.loads")
    assert not _calls("pickle.load")
    assert not _calls("yaml.load")
    assert not _calls("yaml.unsafe_load")


class TestValidateCommand:
    def test_valid_manifest_exits_zero(self, tmp_path: Path, weights: Path) -> None:
        write_manifest(tmp_path, [model_entry("m", [affine_version(weights)])])
        assert main(["validate", str(tmp_path / "models.yaml")]) == 0

    def test_checksum_mismatch_exits_non_zero(
        self, tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write_manifest(tmp_path, [model_entry("m", [affine_version(weights, sha256="1" * 64)])])
        assert main(["validate", str(tmp_path / "models.yaml")]) == 1
        assert "m:1: sha256 of 'm/1/model.safetensors'" in capsys.readouterr().err

    def test_schema_error_names_model_and_key(
        self, tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write_manifest(tmp_path, [model_entry("m", [affine_version(weights)], device="tpu")])
        assert main(["validate", str(tmp_path / "models.yaml")]) == 1
        assert "error: m: device:" in capsys.readouterr().err

    def test_load_flag_catches_what_only_loading_finds(
        self, tmp_path: Path, weights: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        version = affine_version(weights) | {"architecture_args": {"features": 9}}
        write_manifest(tmp_path, [model_entry("m", [version])])
        assert main(["validate", str(tmp_path / "models.yaml")]) == 0
        assert main(["validate", str(tmp_path / "models.yaml"), "--load"]) == 1
        assert "size mismatch" in capsys.readouterr().err

    def test_a_setting_that_does_not_hold_is_one_line_not_a_traceback(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("REGISTRY_MAX_BODY_BYTES", "abc")
        assert main(["serve", "--manifest", str(tmp_path / "models.yaml"), "--port", "70000"]) == 1
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 2, lines
        assert lines[0].startswith("error: setting REGISTRY_PORT: ")
        assert lines[0].endswith("(got 70000)")
        assert lines[1].startswith("error: setting REGISTRY_MAX_BODY_BYTES: ")

    def test_repository_manifest_and_weights_are_valid(self) -> None:
        assert main(["validate", str(PACKAGE.parent / "models.yaml"), "--load"]) == 0
