"""Nothing in a weight file or a manifest runs code: crafted files, callables, swapped bytes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch

from registry import pt2
from registry.cli import main
from registry.errors import (
    RegistryError,
    UnsafeArchitecture,
    UnsafeWeights,
    WeightsNotFound,
    WeightsOutsideRoot,
)
from registry.loaders import load_version, redact_paths
from registry.manifest import ModelSpec, parse_manifest
from registry.pt2 import check_exported_archive
from registry.pt2_graph import check_graph, is_shape_expression
from registry.weightfiles import WeightDigests, confined_file, file_sha256, open_confined
from tests.factories import (
    FEATURES,
    Affine,
    affine_outputs,
    model_entry,
    state_dict_version,
    write_exported,
    write_manifest,
    write_state_dict,
)
from tests.hostile_weights import (
    HOSTILE_FILES,
    exported_oversized_sample_input,
    hostile_version,
)

EXPORTED = [name for name, (fmt, _, _) in HOSTILE_FILES.items() if fmt == "exported"]


def spec_of(entry: dict[str, object]) -> ModelSpec:
    return parse_manifest({"models": [entry]}).models[0]


def load(weights: Path, version: dict[str, object], **settings: object) -> object:
    spec = spec_of(model_entry("m", [version]))
    return load_version(spec, spec.versions[0], weights, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_a_crafted_file_never_runs_code_when_loaded(
    weights: Path, tmp_path: Path, name: str
) -> None:
    marker = tmp_path / "marker"
    version = hostile_version(weights, name, marker)
    with pytest.raises(RegistryError):
        load(weights, version)
    assert not marker.exists()


@pytest.mark.parametrize("name", [n for n in EXPORTED if n != "exported-shared-library"])
def test_the_crafted_archives_are_live(weights: Path, tmp_path: Path, name: str) -> None:
    """Without the check, torch.export.load runs the payload: the tests above are not idle."""
    marker = tmp_path / "marker"
    version = hostile_version(weights, name, marker)
    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")
        torch.export.load(weights / str(version["path"]))  # NOTE: may or may not fail after
    assert marker.exists()


@pytest.mark.parametrize("name", EXPORTED)
def test_the_archive_check_names_what_it_refuses(weights: Path, tmp_path: Path, name: str) -> None:
    version = hostile_version(weights, name, tmp_path / "marker")
    with pytest.raises(
        UnsafeWeights, match=r"pickled|never unpickled|unexpected record|shape expression"
    ):
        check_exported_archive((weights / str(version["path"])).read_bytes())


def test_a_plain_exported_archive_passes_the_check(weights: Path) -> None:
    write_exported(weights, "m/1/model.pt2", Affine(seed=1))
    check_exported_archive((weights / "m/1/model.pt2").read_bytes())
    shipped = Path(__file__).parents[2] / "weights/digits-cnn/1/model.pt2"
    check_exported_archive(shipped.read_bytes())


@pytest.mark.parametrize(
    "target",
    [
        "torch.serialization.os.system",
        "torch.ops.aten.__class__",
        "builtins.eval",
        "#custom.op",
        "torch.ops.aten.linear.default.__call__",
    ],
)
def test_a_graph_that_calls_anything_but_torch_ops_is_refused(target: str) -> None:
    """Torch resolves a node's target by ``getattr`` and calls it when the model runs."""
    node = {"target": target, "inputs": [], "outputs": [], "metadata": {}}
    with pytest.raises(UnsafeWeights, match="not a torch op"):
        check_graph({"graph_module": {"graph": {"nodes": [node]}}}, "models/model.json")


@pytest.mark.parametrize(
    ("expression", "safe"),
    [
        ("Symbol('s77', positive=True, integer=True)", True),
        ("FloorDiv(s0, 2) + Max(1, s1) - 3*s2", True),
        ("Eq(Mod(s0, 8), 0)", True),
        ("s0.__class__", False),
        ("__import__('os').system('id')", False),
        ("open('x')", False),
        ("Symbol('s0')**2**99", False),
        ("(lambda: 1)()", False),
        ("s0[0]", False),
        ("'a' + 'b'", False),
    ],
)
def test_only_shape_expressions_reach_sympify(expression: str, safe: bool) -> None:
    assert is_shape_expression(expression) is safe


@pytest.mark.parametrize(
    "data",
    [b"", b"not a zip", b"PK\x03\x04garbage"],
    ids=["empty", "text", "broken-zip"],
)
def test_an_unreadable_archive_is_refused(data: bytes) -> None:
    with pytest.raises(UnsafeWeights, match=r"not a readable torch\.export archive"):
        check_exported_archive(data)


def test_validate_reports_every_crafted_file_and_runs_none(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    models = [model_entry(name, [hostile_version(weights, name, marker)]) for name in HOSTILE_FILES]
    manifest = write_manifest(tmp_path, models)
    assert main(["validate", str(manifest)]) == 1
    plain = capsys.readouterr().err
    for name in EXPORTED:  # NOTE: found without loading: the archive is inspected
        assert f"{name}:1: " in plain
    assert main(["validate", str(manifest), "--load"]) == 1
    loaded = capsys.readouterr().err
    assert all(f"{name}:1: " in loaded for name in HOSTILE_FILES)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("architecture", "args"),
    [("os:system", {"command": "touch {marker}"}), ("builtins:open", {"file": "{marker}"})],
)
def test_an_architecture_that_is_not_a_module_class_is_never_called(
    weights: Path, tmp_path: Path, architecture: str, args: dict[str, str]
) -> None:
    marker = tmp_path / "marker"
    write_state_dict(weights, "m/1/model.pt", Affine())
    version: dict[str, object] = {
        "version": "1",
        "format": "state_dict",
        "path": "m/1/model.pt",
        "architecture": architecture,
        "architecture_args": {k: v.format(marker=marker) for k, v in args.items()},
    }
    with pytest.raises(UnsafeArchitecture, match=r"not an nn\.Module subclass"):
        load(weights, version)
    manifest = write_manifest(tmp_path, [model_entry("m", [version])])
    assert main(["validate", str(manifest), "--load"]) == 1
    assert not marker.exists()


def test_a_factory_is_called_only_when_the_operator_allows_it(weights: Path) -> None:
    digest = write_state_dict(weights, "m/1/model.safetensors", Affine(seed=1))
    # NOTE: the factory builds Affine(seed=2); the file's weights (seed 1) must replace its own
    version = state_dict_version("1", "m/1/model.safetensors", "build_affine", digest, seed=2)
    with pytest.raises(UnsafeArchitecture, match="REGISTRY_ARCHITECTURE_FACTORIES"):
        load(weights, version)
    model = load(weights, version, factories={"tests.factories:build_affine"})
    inputs = np.ones((2, FEATURES), dtype=np.float32)
    np.testing.assert_allclose(
        model.forward_blocking(inputs),  # type: ignore[attr-defined]
        affine_outputs(inputs, 1),
        rtol=1e-6,
    )


def test_an_architecture_that_cannot_be_imported_is_named(weights: Path) -> None:
    write_state_dict(weights, "m/1/model.pt", Affine())
    version = state_dict_version("1", "m/1/model.pt", "Missing")
    with pytest.raises(UnsafeArchitecture, match=r"cannot be imported.*Missing"):
        load(weights, version)


def test_the_digest_cache_sees_an_overwrite_that_restores_mtime(weights: Path) -> None:
    """Same size, mtime put back: the ctime in the stamp still moves."""
    path = weights / "model.bin"
    path.write_bytes(b"a" * 64)
    digests = WeightDigests()
    before = digests.digest(path, "m.pt")
    status = path.stat()
    with path.open("r+b") as file:
        file.write(b"b" * 64)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert path.stat().st_size == status.st_size
    assert path.stat().st_mtime_ns == status.st_mtime_ns
    assert digests.digest(path, "m.pt") == file_sha256(path) != before


def test_the_bytes_checked_are_the_bytes_loaded(
    weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file swapped right after it was read and hashed changes nothing that is loaded."""
    relative = "m/1/model.safetensors"
    digest = write_state_dict(weights, relative, Affine(seed=1))
    version = state_dict_version("1", relative, "Affine", digest)
    import registry.loaders as loaders
    from registry.weightfiles import read_weights as read

    def read_then_swap(*args: object) -> object:
        weights_read = read(*args)  # type: ignore[arg-type]
        write_state_dict(weights, relative, Affine(seed=2))  # NOTE: the attacker's flip
        return weights_read

    monkeypatch.setattr(loaders, "read_weights", read_then_swap)
    model = load(weights, version)
    inputs = np.ones((2, FEATURES), dtype=np.float32)
    np.testing.assert_allclose(
        model.forward_blocking(inputs),  # type: ignore[attr-defined]
        affine_outputs(inputs, 1),
        rtol=1e-6,
    )
    assert model.weights_sha256 == digest  # type: ignore[attr-defined]


def test_load_errors_name_the_cause_without_server_paths(weights: Path, tmp_path: Path) -> None:
    write_state_dict(weights, "m/1/model.pt", torch.nn.Module())
    missing = tmp_path / "private" / "layout" / "config.json"
    version = state_dict_version("1", "m/1/model.pt", "NeedsFile", file=str(missing))
    with pytest.raises(RegistryError) as caught:
        load(weights, version)
    assert "config.json" in caught.value.message
    assert str(tmp_path) not in caught.value.message
    assert "private/layout" not in caught.value.message


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("No such file: '/srv/models/x/model.pt'", "No such file: 'model.pt'"),
        ("at /tmp/a/b.py:12 in f", "at b.py:12 in f"),
        ("ratio 3/4 and a/b/c stay", "ratio 3/4 and a/b/c stay"),
        ("see https://example.org/a/b", "see https://example.org/a/b"),
    ],
)
def test_redact_paths(text: str, redacted: str) -> None:
    assert redact_paths(text) == redacted


def test_validate_without_load_never_imports_torch() -> None:
    """Cheap enough for CI: the repository's manifest, checked in a fresh interpreter."""
    repository = Path(__file__).parents[2]
    script = (
        "import sys; from registry.cli import main; "
        f"code = main(['validate', {str(repository / 'models.yaml')!r}]); "
        "print(code, sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=repository,
        timeout=60,
    )
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout + done.stderr


@pytest.mark.parametrize(
    ("architecture", "reason"),
    [
        ("no_such_package.models:Net", "no module 'no_such_package.models'"),
        ("broken_package.models:Net", "cannot be found: RuntimeError: the package is broken"),
    ],
    ids=["missing", "package-raises"],
)
def test_validate_without_load_names_an_architecture_module_it_cannot_find(
    weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    architecture: str,
    reason: str,
) -> None:
    """Finding ``broken_package.models`` imports ``broken_package`` first, which raises."""
    package = tmp_path / "packages" / "broken_package"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('the package is broken')\n")
    (package / "models.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "packages"))
    write_state_dict(weights, "m/1/model.pt", Affine())
    version = state_dict_version("1", "m/1/model.pt", "Affine")
    version["architecture"] = architecture
    manifest = write_manifest(tmp_path, [model_entry("m", [version])])
    assert main(["validate", str(manifest)]) == 1
    assert reason in capsys.readouterr().err


def test_validate_without_load_names_a_missing_handler_module(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_state_dict(weights, "m/1/model.pt", Affine())
    version = state_dict_version("1", "m/1/model.pt", "Affine")
    entry = model_entry("m", [version], handler="no_such_package.handlers:Text")
    manifest = write_manifest(tmp_path, [entry])
    assert main(["validate", str(manifest)]) == 1
    assert "handler 'no_such_package.handlers:Text': no module" in capsys.readouterr().err


def test_a_folder_swapped_for_a_symlink_after_the_check_leads_nowhere(tmp_path: Path) -> None:
    """Between ``resolve_weights`` and the open, a folder on the way becomes a symlink
    out of the root: what was opened is checked, not the path."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "m").mkdir(parents=True)
    (outside / "m").mkdir(parents=True)
    (root / "m" / "model.pt").write_bytes(b"inside")
    (outside / "m" / "model.pt").write_bytes(b"outside")
    path = confined_file(root, PurePosixPath("m/model.pt"))
    (root / "m" / "model.pt").unlink()
    (root / "m").rmdir()
    (root / "m").symlink_to(outside / "m")
    with pytest.raises(WeightsOutsideRoot):
        open_confined(path, "m/model.pt")


def test_a_fifo_swapped_in_after_the_check_is_refused_not_waited_on(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"weights")
    path = confined_file(tmp_path, PurePosixPath("model.pt"))
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(WeightsNotFound, match="not a regular file"):
        open_confined(path, "model.pt")
    with pytest.raises(WeightsNotFound, match="not a regular file"):
        WeightDigests().digest(path, "model.pt")


def test_a_record_that_unpacks_beyond_what_the_check_reads_is_refused(
    weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few kilobytes of zeros can unpack to gigabytes: the size in the archive's
    directory is checked before anything is unpacked."""
    write_exported(weights, "m/1/model.pt2", Affine(seed=1))
    data = (weights / "m/1/model.pt2").read_bytes()
    monkeypatch.setattr(pt2, "_LARGEST_READ", 64)
    with pytest.raises(UnsafeWeights, match="unpacks to"):
        check_exported_archive(data)


def test_a_sample_input_that_claims_more_than_its_record_holds_is_refused(
    weights: Path,
) -> None:
    """The claim (a gigabyte) is not trusted: torch compares it with the record's size
    before allocating (torch >= 2.10), so the load fails at once; a torch that stopped
    comparing would allocate the claim and load this file."""
    exported_oversized_sample_input(weights, "m/1/model.pt2", elements=1 << 28)
    with pytest.raises(RegistryError, match="failed during loading"):
        load(weights, {"version": "1", "format": "exported", "path": "m/1/model.pt2"})
