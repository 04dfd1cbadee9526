"""What a ``torch.export`` archive (``.pt2``) may hold before torch is allowed to read it.

``torch.export.load`` unpickles with ``weights_only=False`` in several places: weights
and constants saved with ``use_pickle``, "opaque" constants (plain ``pickle.loads``),
sample inputs whose safe load fails (it retries unsafely), and the whole legacy archive
layout; it also loads AOTInductor shared libraries found in the archive. Any of these runs
code chosen by whoever wrote the file. So the archive is checked against an allow-list
first: only JSON, raw tensor bytes and sample inputs whose pickle names nothing but
tensor rebuilding pass, which leaves torch nothing to unpickle unsafely; and the graph
may name only torch's own ops and shape expressions (``registry.pt2_graph``). The check reads
the archive without running any of it, and without importing torch.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import zipfile
import zlib
from collections.abc import Mapping

from registry.errors import UnsafeWeights
from registry.pt2_graph import check_graph

_FIXED = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
    }
)
_MODEL = re.compile(r"models/(?P<name>[\w.-]+)\.json")
_SAMPLE_INPUTS = re.compile(r"data/sample_inputs/(?P<name>[\w.-]+)\.pt")
_CONFIG = re.compile(r"data/(?P<kind>weights|constants)/(?P<name>[\w.-]+)_(?P=kind)_config\.json")
_PAYLOAD = re.compile(r"data/(?P<kind>weights|constants)/(?P<file>[\w.-]+)")
_EXTRA = re.compile(r"extra/.+")
_TENSOR_FILE = {"weights": "weight_", "constants": "tensor_"}
_LARGEST_READ = 256 * 1024 * 1024
"""The most the check unpacks of one record it reads (graph, configs, sample inputs)."""

# NOTE: what a pickle of tensors in tuples, lists and dicts may name (a small part of what
# torch.load(weights_only=True) allows); an opcode that names its callable any other way
# is refused outright.
_NAMED_CALLS = frozenset({"GLOBAL", "INST"})
_UNNAMED_CALLS = frozenset({"STACK_GLOBAL", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"})
_STORAGES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
_SAMPLE_GLOBALS = frozenset(
    {
        "collections OrderedDict",
        "torch._utils _rebuild_tensor_v2",
        "torch._utils _rebuild_parameter",
        "torch Size",
        "torch device",
        *(f"torch {kind}Storage" for kind in _STORAGES),
    }
)


def check_exported_archive(data: bytes) -> None:
    """Raise ``UnsafeWeights`` unless ``data`` is a ``.pt2`` torch can load without pickle."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = {info.filename: info for info in archive.infolist() if not info.is_dir()}
            _check(archive, _strip_root(list(entries)))
    except (zipfile.BadZipFile, KeyError, ValueError, RecursionError, zlib.error) as exc:
        raise UnsafeWeights(f"not a readable torch.export archive: {exc}") from exc


def _strip_root(names: list[str]) -> dict[str, str]:
    """``{"data/weights/weight_0": "model/data/weights/weight_0", ...}``: one root folder."""
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise UnsafeWeights("a .pt2 archive keeps every record under one root folder")
    return {name.split("/", 1)[1]: name for name in names}


def _check(archive: zipfile.ZipFile, records: Mapping[str, str]) -> None:
    if "archive_format" not in records or not any(_MODEL.fullmatch(r) for r in records):
        raise UnsafeWeights(
            "the legacy torch.export layout is refused (it is unpickled); "
            "save it again with torch.export.save"
        )
    referenced: set[str] = set()
    for record, full_name in records.items():
        if record in _FIXED or _EXTRA.fullmatch(record):
            continue
        if _MODEL.fullmatch(record):
            check_graph(json.loads(_read(archive, full_name)), record)
            continue
        if _SAMPLE_INPUTS.fullmatch(record):
            _check_sample_inputs(_read(archive, full_name), record)
        elif match := _CONFIG.fullmatch(record):
            config = json.loads(_read(archive, full_name))
            referenced |= _check_payload_config(config, match["kind"], record)
        elif not _PAYLOAD.fullmatch(record):
            raise UnsafeWeights(f"unexpected record {record!r} in the archive (not loaded)")
    for record in records:
        match = _PAYLOAD.fullmatch(record)
        if match and not _CONFIG.fullmatch(record) and record not in referenced:
            raise UnsafeWeights(f"record {record!r} is not a plain tensor of the archive")


def _read(archive: zipfile.ZipFile, name: str) -> bytes:
    """A record the check reads whole, if its size is one a model's graph or configs
    could have: a small file that unpacks to gigabytes never gets that far."""
    size = archive.getinfo(name).file_size
    if size > _LARGEST_READ:
        raise UnsafeWeights(
            f"record {name!r} unpacks to {size} bytes; the check reads at most {_LARGEST_READ}"
        )
    return archive.read(name)


def _check_payload_config(config: object, kind: str, record: str) -> set[str]:
    """Every entry is a raw tensor file: no ``use_pickle``, no custom or opaque objects."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise UnsafeWeights(f"{record} is not a payload config")
    referenced = set()
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise UnsafeWeights(f"{record}: entry {name!r} is not an object")
        path_name = entry.get("path_name")
        if entry.get("use_pickle") is not False or entry.get("tensor_meta") is None:
            raise UnsafeWeights(f"{kind} {name!r} is stored pickled, which is never loaded")
        if not isinstance(path_name, str) or not path_name.startswith(_TENSOR_FILE[kind]):
            raise UnsafeWeights(f"{kind} {name!r} is not a plain tensor ({path_name!r})")
        referenced.add(f"data/{kind}/{path_name}")
    return referenced


def _check_sample_inputs(data: bytes, record: str) -> None:
    """Sample inputs whose pickle can call nothing but tensor rebuilding, read without
    running it (so torch's unsafe retry never has anything to run, and no torch import).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as saved:
            pickles = [name for name in saved.namelist() if name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise UnsafeWeights(f"{record} is not one torch.save archive")
            opcodes = list(pickletools.genops(saved.read(pickles[0])))
    except zipfile.BadZipFile:
        raise UnsafeWeights(f"{record} is not a torch.save archive, so never unpickled") from None
    for opcode, argument, _ in opcodes:
        if opcode.name in _NAMED_CALLS and argument not in _SAMPLE_GLOBALS:
            raise UnsafeWeights(f"{record} names {argument!r}, which is never unpickled")
        if opcode.name in _UNNAMED_CALLS:
            raise UnsafeWeights(f"{record} uses {opcode.name}, which is never unpickled")
