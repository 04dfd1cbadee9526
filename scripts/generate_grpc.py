"""Generate the gRPC modules from ``registry/grpc_api/open_inference.proto``.

``python scripts/generate_grpc.py [OUT]`` runs grpcio-tools' protoc (a build-time tool:
the ``dev`` extra) and writes ``open_inference_pb2.py``, ``.pyi`` and ``_pb2_grpc.py``
into ``OUT`` (default: beside the ``.proto``), importable as ``registry.grpc_api.*``.
The generated files are committed so that serving needs only ``grpcio`` and ``protobuf``;
``tests/unit/test_grpc_proto.py`` regenerates them and requires the same bytes, so they
are never edited by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO = Path("registry/grpc_api/open_inference.proto")


def generate(out: Path) -> None:
    """Write the three modules into ``out``/registry/grpc_api (protoc keeps the package
    path), then move them to ``out`` itself."""
    out.mkdir(parents=True, exist_ok=True)
    arguments = [
        "protoc",
        f"--proto_path={ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO),
    ]
    if protoc.main(arguments) != 0:
        raise SystemExit("protoc failed")
    generated = out / PROTO.parent
    for path in generated.glob("open_inference_pb2*"):
        path.replace(out / path.name)
    for folder in (generated, generated.parent):
        folder.rmdir()


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / PROTO.parent)
