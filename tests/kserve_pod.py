"""The pod KServe builds from ``deploy/kserve``: the runtime's container with the
InferenceService's model fields merged over it, and the model repository mounted at
``/mnt/models``.

KServe merges the two containers the way ``kubectl patch --type strategic`` does: maps
merge key by key, and ``env``, ``ports`` and ``volumeMounts`` merge item by item on their
keys. Tests validate this pod against the Kubernetes schema and run its command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

KSERVE = Path(__file__).resolve().parents[1] / "deploy" / "kserve"
MODEL_DIR = "/mnt/models"
LIST_KEYS = {
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumes": "name",
}
# NOTE: what a ModelSpec adds to a container, and a PredictorSpec to a pod spec; an
# unknown field left in fails the strict schema check, so a new one cannot slip by.
MODEL_ONLY = {"runtime", "modelFormat", "protocolVersion", "storageUri", "storage"}
PREDICTOR_ONLY = {"model", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}
RUNTIME_POD_FIELDS = {"containers", "volumes", "nodeSelector", "tolerations", "affinity"}


def documents(folder: Path = KSERVE) -> dict[str, dict[str, Any]]:
    """Every object in the YAML files of ``folder`` (``deploy/kserve``), by kind."""
    found = {}
    for path in sorted(folder.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            found[document["kind"]] = document
    return found


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        elif key in LIST_KEYS and isinstance(out.get(key), list):
            field = LIST_KEYS[key]
            items = {item[field]: item for item in out[key]}
            for item in value:
                items[item[field]] = merged(items.get(item[field], {}), item)
            out[key] = list(items.values())
        else:
            out[key] = value
    return out


def claim_name(storage_uri: str) -> str:
    scheme, _, rest = storage_uri.partition("://")
    if scheme != "pvc":
        raise ValueError(f"only pvc:// is mapped here, not {storage_uri}")
    return rest.split("/")[0]


def predictor_pod() -> dict[str, Any]:
    """The predictor's pod, as a ``v1/Pod`` object."""
    found = documents()
    runtime = found["ServingRuntime"]["spec"]
    predictor = found["InferenceService"]["spec"]["predictor"]
    model = predictor["model"]
    (container,) = runtime["containers"]
    container = merged(container, {k: v for k, v in model.items() if k not in MODEL_ONLY})
    container = merged(
        container, {"volumeMounts": [{"name": "model", "mountPath": MODEL_DIR, "readOnly": True}]}
    )
    spec = {k: v for k, v in runtime.items() if k in RUNTIME_POD_FIELDS}
    spec = merged(spec, {k: v for k, v in predictor.items() if k not in PREDICTOR_ONLY})
    spec["containers"] = [container]
    claim = {"claimName": claim_name(model["storageUri"]), "readOnly": True}
    spec["volumes"] = [*spec.get("volumes", []), {"name": "model", "persistentVolumeClaim": claim}]
    name = found["InferenceService"]["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-predictor"},
        "spec": spec,
    }
