"""The Dockerfile, compose file and Kubernetes manifests say what operators rely on."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.kserve_pod import documents, predictor_pod

ROOT = Path(__file__).parents[2]
# NOTE: the oldest Kubernetes KServe supports, and the newest the schemas know
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and line[0] != "#")
    ]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def compose_service() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    service: dict[str, Any] = document["services"]["registry"]
    return service


def test_dockerfile_is_multi_stage_slim_non_root_with_a_readiness_healthcheck() -> None:
    stages = [args for word, args in dockerfile() if word == "FROM"]
    assert len(stages) >= 2
    assert all("-slim" in stage for stage in stages)
    final = final_stage()
    copies = sorted(args for word, args in final if word == "COPY")
    assert copies == [  # NOTE: the built venv, the manifest and weights; no source tree
        "--from=build /opt/venv /opt/venv",
        "--from=build /opt/weights/minilm ./weights/minilm",  # NOTE: built, not committed
        "models.yaml ./models.yaml",
        "weights ./weights",
    ]
    assert not any(w == "RUN" and ("pip install" in a or "apt-get" in a) for w, a in final)
    user = [args for word, args in final if word == "USER"]
    assert user
    assert user[-1].split(":")[0] not in ("root", "0")
    assert ("EXPOSE", "8000") in final
    assert ("EXPOSE", "8001") in final
    (healthcheck,) = [args for word, args in final if word == "HEALTHCHECK"]
    assert "/readyz" in healthcheck
    assert "curl" not in healthcheck
    assert "wget" not in healthcheck
    (cmd,) = [json.loads(args) for word, args in final if word == "CMD"]
    assert cmd[:2] == ["registry", "serve"]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--grpc-port") + 1] == "8001"


def test_dockerfile_defaults_to_cpu_torch_with_a_build_argument() -> None:
    args = [a for word, a in dockerfile() if word == "ARG"]
    assert any(a.startswith("TORCH_INDEX_URL=") and a.endswith("/cpu") for a in args)
    installs = [a for word, a in dockerfile() if word == "RUN" and "torch==" in a]
    assert installs
    assert "${TORCH_INDEX_URL}" in installs[0]


def docker_ignores(path: str) -> bool:
    """Whether ``.dockerignore`` keeps ``path`` out of the build context.

    Docker's rule: patterns are matched in order, the last match wins, ``!`` re-includes,
    and a pattern that matches a directory matches everything below it.
    """
    ignored = False
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        include = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes) or (
            pattern.startswith("**/") and fnmatch.fnmatchcase(parts[-1], pattern[3:])
        ):
            ignored = not include
    return ignored


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "bench/results/x.json",
        "registry/__pycache__/app.cpython-311.pyc",
        "scripts/train_examples.py",
    ],
)
def test_dockerignore_keeps_secrets_the_venv_and_tests_out(path: str) -> None:
    assert docker_ignores(path)


@pytest.mark.parametrize(
    "path",
    ["pyproject.toml", "README.md", "registry/app.py", "models.yaml", "weights/digits/1/model.pt"],
)
def test_dockerignore_lets_in_what_the_image_copies(path: str) -> None:
    assert not docker_ignores(path)


def test_compose_mounts_read_only_publishes_loopback_and_keeps_no_secret() -> None:
    service = compose_service()
    assert service["build"] == "."
    volumes = service["volumes"]
    assert volumes
    assert all(volume.endswith(":ro") for volume in volumes)
    # NOTE: not ./weights: on a fresh clone it lacks the minilm files the image bakes in
    assert {v.split(":")[1] for v in volumes} == {"/app/models.yaml"}
    assert service["ports"]
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    assert service["environment"]["REGISTRY_ADMIN_TOKEN"].startswith("${")
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    literal = re.compile(r"^\s*-?\s*REGISTRY_ADMIN_TOKEN\s*[:=][ \t]*(?!\$\{)\S", re.MULTILINE)
    assert not literal.search(text), "a literal secret"
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert service["restart"] == "unless-stopped"
    grace = int(service["stop_grace_period"].rstrip("s"))
    assert grace > float(service["environment"]["REGISTRY_DRAIN_TIMEOUT_S"])


def kubernetes() -> dict[str, dict[str, Any]]:
    return documents(ROOT / "deploy" / "kubernetes")


def test_kubernetes_deployment_probes_resources_and_security() -> None:
    objects = kubernetes()
    assert {"Deployment", "Service", "ConfigMap", "Kustomization"} <= set(objects)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["REGISTRY_ADMIN_TOKEN"]["valueFrom"]
    assert pod["terminationGracePeriodSeconds"] > float(env["REGISTRY_DRAIN_TIMEOUT_S"]["value"])
    manifest = yaml.safe_load(objects["ConfigMap"]["data"]["models.yaml"])
    assert manifest["models"][0]["name"] == "digits"


def test_the_autoscaler_scales_the_deployment_that_exists() -> None:
    objects = kubernetes()
    autoscaler, deployment = objects["HorizontalPodAutoscaler"], objects["Deployment"]
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    assert 1 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
    # NOTE: CPU utilization is a share of the requests: without them it means nothing
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"]
    kustomization = objects["Kustomization"]
    assert "hpa.yaml" in kustomization["resources"]


def core_objects() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes API object under ``deploy/`` (not KServe's, not kustomize's), and
    the pod KServe builds for the InferenceService."""
    found = [("kserve predictor pod", predictor_pod())]
    for path in sorted((ROOT / "deploy").glob("*/*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            group = document["apiVersion"].rpartition("/")[0]
            if not group.endswith(("serving.kserve.io", "kustomize.config.k8s.io")):
                found.append((f"{path.parent.name}/{path.name} {document['kind']}", document))
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_objects_validate_strictly_against_the_api_schemas(version: str) -> None:
    objects = core_objects()
    assert {name.split()[-1] for name, _ in objects} >= {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Service",
        "Job",
        "PersistentVolumeClaim",
        "pod",
    }
    for name, document in objects:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {error.message} at {list(error.absolute_path)}")
    # NOTE: strict: an unknown field fails, it is not dropped
    deployment = dict(kubernetes()["Deployment"], replica=2)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)
