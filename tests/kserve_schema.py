"""Check KServe objects against the ``kserve`` SDK's models, strictly.

The SDK's own deserializer drops what it does not know, so a misspelt field would pass
unseen. This walks each document through the generated classes instead (``openapi_types``
and ``attribute_map``; Kubernetes types such as ``V1Container`` from the ``kubernetes``
client the SDK builds on) and reports every unknown field, every value of the wrong type
and every required field left out (the classes' own client-side validation).

Run it as ``python -m tests.kserve_schema FILE...``; it prints one JSON object. It runs
in a process of its own: importing ``kserve`` registers the Open Inference Protocol's
messages in protobuf's process-wide pool, where ``registry.grpc_api`` has its own copy.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

GROUP = "serving.kserve.io"
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "date": (str,),
    "datetime": (str,),
}


class Walker:
    """Builds SDK objects from plain data, collecting what does not fit."""

    def __init__(self, modules: list[ModuleType]) -> None:
        self.modules = modules
        self.problems: list[str] = []

    def kind(self, name: str) -> type:
        for module in self.modules:
            found = getattr(module, name, None)
            if isinstance(found, type):
                return found
        raise LookupError(f"no SDK class {name}")

    def build(self, data: Any, type_name: str, where: str) -> Any:
        if data is None:
            return None
        if match := re.fullmatch(r"[lL]ist\[(.*)\]", type_name):
            if not isinstance(data, list):
                return self.wrong(where, type_name, data)
            return [self.build(item, match[1], f"{where}[{i}]") for i, item in enumerate(data)]
        if match := re.fullmatch(r"dict\(str, (.*)\)|Dict\[str, (.*)\]", type_name):
            if not isinstance(data, dict):
                return self.wrong(where, type_name, data)
            value_type = match[1] or match[2]
            return {k: self.build(v, value_type, f"{where}.{k}") for k, v in data.items()}
        if type_name == "object":
            return data
        if type_name in PRIMITIVES:
            allowed = PRIMITIVES[type_name]
            if not isinstance(data, allowed) or (bool not in allowed and isinstance(data, bool)):
                return self.wrong(where, type_name, data)
            return data
        return self.model(data, self.kind(type_name), where)

    def model(self, data: Any, cls: type, where: str) -> Any:
        if not isinstance(data, dict):
            return self.wrong(where, cls.__name__, data)
        attributes = {key: attr for attr, key in cls.attribute_map.items()}  # type: ignore[attr-defined]
        values = {}
        for key, value in data.items():
            if key not in attributes:
                self.problems.append(f"{where}.{key}: not a field of {cls.__name__}")
                continue
            attr = attributes[key]
            values[attr] = self.build(value, cls.openapi_types[attr], f"{where}.{key}")  # type: ignore[attr-defined]
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:  # NOTE: pydantic's ValidationError too
            self.problems.append(f"{where}: {' '.join(str(error).splitlines()[:3])}")
            return None

    def wrong(self, where: str, expected: str, data: Any) -> None:
        self.problems.append(f"{where}: {type(data).__name__} where {expected} belongs")


def sdk_class(document: dict[str, Any]) -> str:
    """``serving.kserve.io/v1beta1`` + ``InferenceService`` → ``V1beta1InferenceService``."""
    version = str(document.get("apiVersion", "")).rpartition("/")[2]
    return version[:1].upper() + version[1:] + str(document.get("kind", ""))


def check(paths: list[Path]) -> dict[str, Any]:
    # NOTE: imported here: heavy, and never in a process that also holds registry.grpc_api
    import kserve.models
    import kubernetes.client.models

    checked, problems = [], []
    for path in paths:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not str(document.get("apiVersion", "")).startswith(f"{GROUP}/"):
                continue
            walker = Walker([kserve.models, kubernetes.client.models])
            name = f"{path.name}:{document.get('kind')}/{document.get('metadata', {}).get('name')}"
            try:
                walker.model(document, walker.kind(sdk_class(document)), name)
            except LookupError as error:
                walker.problems.append(f"{name}: {error}")
            checked.append(name)
            problems += walker.problems
    return {"checked": checked, "problems": problems}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(check([Path(arg) for arg in sys.argv[1:]])) + "\n")
