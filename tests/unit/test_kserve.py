"""``deploy/kserve``: the objects fit KServe's SDK models and name each other consistently."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.kserve_pod import KSERVE, MODEL_DIR, claim_name, documents, predictor_pod

ROOT = Path(__file__).parents[2]
BROKEN = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: broken}
spec:
  predictor:
    minReplica: 1
    maxReplicas: "4"
    model:
      storageURI: pvc://models/
      readinessProbe: {httpGet: {path: /readyz}}
"""


def option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_kserve_objects_fit_the_sdk_models_field_by_field(tmp_path: Path) -> None:
    """Ours pass; a misspelt field, a string count, a probe without a port and a model
    without a format do not."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN, encoding="utf-8")
    # NOTE: the README's claim: the runtime works cluster-wide with its kind changed alone
    cluster_wide = tmp_path / "cluster.yaml"
    cluster_wide.write_text(
        yaml.safe_dump(dict(documents()["ServingRuntime"], kind="ClusterServingRuntime")),
        encoding="utf-8",
    )
    files = [str(path) for path in sorted(KSERVE.glob("*.yaml"))]
    done = subprocess.run(
        [sys.executable, "-m", "tests.kserve_schema", *files, str(broken), str(cluster_wide)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    assert sorted(report["checked"]) == [
        "broken.yaml:InferenceService/broken",
        "cluster.yaml:ClusterServingRuntime/registry",
        "inferenceservice.yaml:InferenceService/registry",
        "servingruntime.yaml:ServingRuntime/registry",
    ]
    problems = [p.split(": ", 1) for p in report["problems"]]
    assert all(where.startswith("broken.yaml:") for where, _ in problems), problems
    assert [
        where.removeprefix("broken.yaml:InferenceService/broken.") for where, _ in problems
    ] == [
        "spec.predictor.minReplica",
        "spec.predictor.maxReplicas",
        "spec.predictor.model.storageURI",
        "spec.predictor.model.readinessProbe.httpGet",
        "spec.predictor.model",
    ]
    assert "port" in problems[3][1]
    assert "model_format" in problems[4][1]


def test_the_inference_service_names_a_runtime_format_and_claim_that_exist() -> None:
    found = documents()
    runtime, service = found["ServingRuntime"], found["InferenceService"]
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [
        {"name": f["name"], "version": f["version"]}
        for f in runtime["spec"]["supportedModelFormats"]
    ]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    # NOTE: two more of KServe's admission rules: a DNS-1035 name, no `name` in the model
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", service["metadata"]["name"])
    assert "name" not in model
    annotations = service["metadata"]["annotations"]
    # NOTE: both ports need a plain Deployment and Service (Knative allows one port), and
    # KServe's admission webhook accepts a CPU scale metric only with the HPA class there.
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    if service["spec"]["predictor"].get("scaleMetric") in ("cpu", "memory"):
        assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
        assert 1 <= service["spec"]["predictor"]["scaleTarget"] <= 100
    claim = claim_name(model["storageUri"])
    assert found["PersistentVolumeClaim"]["metadata"]["name"] == claim
    seed = found["Job"]["spec"]["template"]["spec"]
    (volume,) = seed["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    (mount,) = seed["containers"][0]["volumeMounts"]
    assert (mount["name"], mount["mountPath"]) == (volume["name"], MODEL_DIR)
    assert seed["containers"][0]["image"] == runtime["spec"]["containers"][0]["image"]


def test_the_predictor_serves_both_ports_probes_readyz_and_drains_within_its_grace() -> None:
    spec = predictor_pod()["spec"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"  # NOTE: the name KServe looks for
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["ports"][0]["name"] == "http"  # NOTE: KServe's Service port 80 goes here
    assert int(option(container["args"], "--port")) == ports["http"]
    assert int(option(container["args"], "--grpc-port")) == ports["grpc"]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/readyz", "port": ports["http"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": ports["http"]}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    env = {e["name"]: e for e in container["env"]}
    assert env["REGISTRY_MANIFEST"]["value"] == f"{MODEL_DIR}/models.yaml"
    assert env["REGISTRY_WEIGHTS_DIR"]["value"] == MODEL_DIR
    assert "secretKeyRef" in env["REGISTRY_ADMIN_TOKEN"]["valueFrom"]
    assert spec["terminationGracePeriodSeconds"] > float(env["REGISTRY_DRAIN_TIMEOUT_S"]["value"])
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsNonRoot"] is True
