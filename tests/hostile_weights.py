"""Weight files crafted to run code when unpickled: each one creates a marker file.

Each writer starts from a real, loadable file and changes one thing an attacker would,
so a test can show both that the file is live (plain unpickling creates the marker) and
that the registry never lets it run.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

from tests.factories import Affine, write_exported, write_state_dict, write_torchscript


class Marker:
    """Unpickles to ``os.mkdir(path)``: the marker appearing proves code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def marker_pickle(marker: Path) -> bytes:
    return pickle.dumps(Marker(marker), protocol=2)


def _rewrite_zip(path: Path, change: Callable[[dict[str, bytes]], None]) -> None:
    buffer = io.BytesIO(path.read_bytes())
    _rewrite_zip_in(buffer, change)
    path.write_bytes(buffer.getvalue())


def _rewrite_zip_in(buffer: io.BytesIO, change: Callable[[dict[str, bytes]], None]) -> None:
    """Rewrite the zip archive held in ``buffer`` with ``change`` applied to its records."""
    with zipfile.ZipFile(buffer) as archive:
        records = {name: archive.read(name) for name in archive.namelist()}
    change(records)
    buffer.seek(0)
    buffer.truncate()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in records.items():
            archive.writestr(name, data)


def _exported(root: Path, relative: str, change: Callable[[dict[str, bytes]], None]) -> Path:
    write_exported(root, relative, Affine(seed=1))
    path = root / relative
    _rewrite_zip(path, change)
    return path


def exported_pickled_weight(root: Path, relative: str, marker: Path) -> Path:
    """A weight saved with ``use_pickle``: ``torch.load(weights_only=False)`` on load."""

    def change(records: dict[str, bytes]) -> None:
        config_name = next(n for n in records if n.endswith("_weights_config.json"))
        config = json.loads(records[config_name])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        folder = config_name.rsplit("/", 1)[0]
        records[f"{folder}/{entry['path_name']}"] = marker_pickle(marker)
        records[config_name] = json.dumps(config).encode()

    return _exported(root, relative, change)


def exported_sample_inputs(root: Path, relative: str, marker: Path) -> Path:
    """Sample inputs that fail the safe load, so torch retries with ``weights_only=False``."""

    def change(records: dict[str, bytes]) -> None:
        name = next(n for n in records if "/data/sample_inputs/" in n)
        records[name] = marker_pickle(marker)

    return _exported(root, relative, change)


def exported_sample_inputs_archive(root: Path, relative: str, marker: Path) -> Path:
    """Sample inputs kept a real torch.save archive, its ``data.pkl`` swapped for a payload."""
    return _exported_sample_inputs(root, relative, lambda inner: _swap_data_pkl(inner, marker))


def exported_oversized_sample_input(root: Path, relative: str, elements: int) -> Path:
    """Sample inputs whose storage claims ``elements`` floats but whose record holds a few:
    a loader that trusted the claim would allocate it."""
    return _exported_sample_inputs(root, relative, lambda inner: _claim_elements(inner, elements))


def _exported_sample_inputs(
    root: Path, relative: str, change_saved: Callable[[dict[str, bytes]], None]
) -> Path:
    """An exported archive whose sample inputs (a torch.save archive of their own) have
    ``change_saved`` applied to their records."""

    def change(records: dict[str, bytes]) -> None:
        name = next(n for n in records if "/data/sample_inputs/" in n)
        saved = io.BytesIO(records[name])
        _rewrite_zip_in(saved, change_saved)
        records[name] = saved.getvalue()

    return _exported(root, relative, change)


def _claim_elements(records: dict[str, bytes], elements: int) -> None:
    """Rewrite the element count of the first storage in ``data.pkl`` (the last item of
    the persistent id tuple, just before its ``TUPLE``) as a 4-byte ``BININT``."""
    name = next(n for n in records if n.endswith("/data.pkl"))
    data = records[name]
    ops = list(pickletools.genops(data))
    closing = next(i for i, (op, _, _) in enumerate(ops) if op.name == "TUPLE")
    _, _, start = ops[closing - 1]
    _, _, end = ops[closing]
    records[name] = data[:start] + b"J" + struct.pack("<i", elements) + data[end:]


def _swap_data_pkl(records: dict[str, bytes], marker: Path) -> None:
    name = next(n for n in records if n.endswith("/data.pkl"))
    records[name] = marker_pickle(marker)


def exported_opaque_constant(root: Path, relative: str, marker: Path) -> Path:
    """An "opaque object" constant: plain ``pickle.loads`` on load."""

    def change(records: dict[str, bytes]) -> None:
        config_name = next(n for n in records if n.endswith("_constants_config.json"))
        folder = config_name.rsplit("/", 1)[0]
        entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}
        config = {"config": {"payload": entry | {"tensor_meta": None}}}
        records[config_name] = json.dumps(config).encode()
        records[f"{folder}/opaque_obj_0"] = marker_pickle(marker)

    return _exported(root, relative, change)


def exported_shape_expression(root: Path, relative: str, marker: Path) -> Path:
    """Python in a symbolic shape: torch's deserializer ``sympify``s it, which ``eval``s."""

    def change(records: dict[str, bytes]) -> None:
        graph_name = next(n for n in records if "/models/" in n and n.endswith(".json"))
        graph = records[graph_name].decode()
        symbol = re.search(r"Symbol\('\w+'[^)]*\)", graph)
        assert symbol is not None, "the exported graph has no symbolic batch size"
        payload = f"__import__('os').system('touch {marker}') * 0 + {symbol[0]}"
        records[graph_name] = graph.replace(symbol[0], payload, 1).encode()

    return _exported(root, relative, change)


def exported_shared_library(root: Path, relative: str, _: Path) -> Path:
    """An AOTInductor entry: torch would load a shared library from the archive."""

    def change(records: dict[str, bytes]) -> None:
        root_folder = next(iter(records)).split("/", 1)[0]
        records[f"{root_folder}/data/aotinductor/model/model.so"] = b"\x7fELF"

    return _exported(root, relative, change)


def torchscript_pickle(root: Path, relative: str, marker: Path) -> Path:
    """A TorchScript archive whose ``data.pkl`` names a Python callable."""
    write_torchscript(root, relative, Affine(seed=1))
    path = root / relative

    def change(records: dict[str, bytes]) -> None:
        name = next(n for n in records if n.endswith("/data.pkl"))
        records[name] = marker_pickle(marker)

    _rewrite_zip(path, change)
    return path


def state_dict_pickle(root: Path, relative: str, marker: Path) -> Path:
    """A ``.pt`` state dict holding an object instead of tensors."""
    write_state_dict(root, relative, Affine(seed=1))
    path = root / relative
    path.write_bytes(marker_pickle(marker))
    return path


def safetensors_pickle(root: Path, relative: str, marker: Path) -> Path:
    """A pickle renamed ``.safetensors``."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(marker_pickle(marker))
    return path


Crafter = Callable[[Path, str, Path], Path]

HOSTILE_FILES: dict[str, tuple[str, str, Crafter]] = {
    # name: (format, path suffix, writer)
    "exported-pickled-weight": ("exported", ".pt2", exported_pickled_weight),
    "exported-sample-inputs": ("exported", ".pt2", exported_sample_inputs),
    "exported-sample-inputs-archive": ("exported", ".pt2", exported_sample_inputs_archive),
    "exported-opaque-constant": ("exported", ".pt2", exported_opaque_constant),
    "exported-shared-library": ("exported", ".pt2", exported_shared_library),
    "exported-shape-expression": ("exported", ".pt2", exported_shape_expression),
    "torchscript-pickle": ("torchscript", ".pt", torchscript_pickle),
    "state-dict-pickle": ("state_dict", ".pt", state_dict_pickle),
    "safetensors-pickle": ("state_dict", ".safetensors", safetensors_pickle),
}
"""Every crafted file, by name; the exported ones are each a path torch.export.load unpickles."""


def hostile_version(root: Path, name: str, marker: Path, version: str = "1") -> dict[str, object]:
    """A manifest version entry for the crafted file ``name`` (under ``<name>/``)."""
    fmt, suffix, craft = HOSTILE_FILES[name]
    relative = f"{name}/{version}/model{suffix}"
    craft(root, relative, marker)
    entry: dict[str, object] = {"version": version, "format": fmt, "path": relative}
    if fmt == "state_dict":
        entry["architecture"] = "tests.factories:Affine"
    return entry
