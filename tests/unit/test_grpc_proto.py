"""The gRPC modules are what grpcio-tools makes of the committed .proto, and that .proto
speaks the Open Inference Protocol as its clients compile it (``tritonclient.grpc``).

NOTE: each side is read in a process of its own: both put their messages into protobuf's
process-wide pool under the protocol's names, and refuse to share it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.generate_grpc import PROTO, ROOT, generate

DESCRIBE = """
import json, sys
from google.protobuf import descriptor_pb2
module = __import__(sys.argv[1], fromlist=["DESCRIPTOR"])
proto = descriptor_pb2.FileDescriptorProto()
module.DESCRIPTOR.CopyToProto(proto)
messages = {}
def walk(message, prefix):
    name = prefix + message.name
    messages[name] = {
        str(f.number): [f.name, f.type, f.label, f.type_name.split(".")[-1]]
        for f in message.field
    }
    for nested in message.nested_type:
        walk(nested, name + ".")
for message in proto.message_type:
    walk(message, "")
services = {
    s.name: {m.name: [m.input_type.split(".")[-1], m.output_type.split(".")[-1]] for m in s.method}
    for s in proto.service
}
print(json.dumps({"package": proto.package, "messages": messages, "services": services}))
"""


def describe(module: str) -> dict[str, Any]:
    """Every message's fields (number: name, type, label, type name) and every method,
    as ``module``'s compiled descriptor has them."""
    done = subprocess.run(
        [sys.executable, "-c", DESCRIBE, module],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0 and "No module named" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr
    described: dict[str, Any] = json.loads(done.stdout)
    return described


def test_the_committed_modules_are_what_the_proto_generates(tmp_path: Path) -> None:
    generate(tmp_path)

    committed = ROOT / PROTO.parent
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == [
        "open_inference_pb2.py",
        "open_inference_pb2.pyi",
        "open_inference_pb2_grpc.py",
    ]
    for name in names:
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), (
            f"{name} differs from what scripts/generate_grpc.py makes: regenerate it"
        )


def test_every_message_and_method_is_the_protocols_as_tritonclient_compiles_it() -> None:
    ours = describe("registry.grpc_api.open_inference_pb2")
    theirs = describe("tritonclient.grpc.service_pb2")

    assert ours["package"] == theirs["package"] == "inference"
    for name, fields in ours["messages"].items():
        assert name in theirs["messages"], f"{name} is not a message of the protocol"
        assert fields == theirs["messages"][name], name
    methods = ours["services"]["GRPCInferenceService"]
    assert sorted(methods) == [
        "ModelInfer",
        "ModelMetadata",
        "ModelReady",
        "ServerLive",
        "ServerMetadata",
        "ServerReady",
    ]
    for method, types in methods.items():
        assert types == theirs["services"]["GRPCInferenceService"][method], method
