"""deploy/kuberay/, checked offline: Kubernetes' own API schemas, KubeRay's CRD schemas, secrets, and the RayJob's sweep.

No Kubernetes cluster runs here. The core objects (StatefulSet, Deployment, Service, PVC, ConfigMap) are validated
strictly by ``kubernetes-validate`` (the Kubernetes OpenAPI schemas it ships); RayCluster and RayJob against the
``openAPIV3Schema`` of KubeRay's published CRDs (``shared/reference/kuberay-crds``, found beside the checkout or
in ``GHM_KUBERAY_CRDS``; skipped without them unless ``GHM_REQUIRE_KUBERAY_CRDS=1``), with unknown fields refused
as ``kubectl apply --validate=strict`` refuses them (an API server would silently drop them).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from omegaconf import OmegaConf, open_dict

from ghm.config import validate
from tests.conftest import ROOT, compose_full

MANIFESTS = sorted((ROOT / "deploy" / "kuberay").glob("*.yaml"))
KUBERNETES_VERSION = "1.30.0"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
SECRET_NAMES = ("PASSWORD", "TOKEN", "SECRET")


def crd_folder() -> Path | None:
    """KubeRay's CRDs: ``GHM_KUBERAY_CRDS``, else ``shared/reference/kuberay-crds`` beside the checkout or a folder above it
    (a worktree in /work, CI's clone with shared/ beside it)."""
    if os.environ.get("GHM_KUBERAY_CRDS"):
        return Path(os.environ["GHM_KUBERAY_CRDS"])
    for parent in ROOT.parents:
        if (candidate := parent / "shared" / "reference" / "kuberay-crds").is_dir():
            return candidate
    return None


def documents() -> list[dict[str, Any]]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def crd_schemas() -> dict[str, dict[str, Any]]:
    folder = crd_folder()
    if folder is None or not all((folder / f).is_file() for f in CRD_FILES.values()):
        message = f"KubeRay's CRDs not found (shared/reference/kuberay-crds above {ROOT}, or GHM_KUBERAY_CRDS)"
        if os.environ.get("GHM_REQUIRE_KUBERAY_CRDS") == "1":
            pytest.fail(f"GHM_REQUIRE_KUBERAY_CRDS=1: {message}")
        pytest.skip(message)
    schemas = {}
    for kind, name in CRD_FILES.items():
        crd = yaml.safe_load((folder / name).read_text())
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schemas[kind] = served["schema"]["openAPIV3Schema"]
    return schemas


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the schema does not declare (an API server prunes them, `kubectl --validate=strict` refuses them)."""
    found = []
    if isinstance(value, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        for key, item in value.items():
            if key in schema["properties"]:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties"):
                found.append(f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def test_the_manifests_hold_the_whole_cluster() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in documents())
    assert kinds == [("ConfigMap", "ghm-postgres-init"), ("Deployment", "ghm-mlflow"), ("PersistentVolumeClaim", "ghm-mlflow-artifacts"),
                     ("PersistentVolumeClaim", "ghm-shared"), ("RayCluster", "ghm"), ("RayJob", "ghm-vs-focal"),
                     ("Service", "ghm-mlflow"), ("Service", "ghm-postgres"), ("StatefulSet", "ghm-postgres")]


@pytest.mark.parametrize("document", [d for d in documents() if not d["apiVersion"].startswith("ray.io/")],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_core_objects_validate_against_the_kubernetes_api_schemas(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("document", [d for d in documents() if d["apiVersion"].startswith("ray.io/")],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_kuberay_objects_validate_against_kuberays_crds(document: dict[str, Any], crd_schemas: dict[str, dict[str, Any]]) -> None:
    assert document["apiVersion"] == "ray.io/v1"
    schema = crd_schemas[document["kind"]]
    jsonschema.validate(document, schema)
    assert unknown_fields(document, schema) == []


def test_a_misspelt_field_is_refused(crd_schemas: dict[str, dict[str, Any]]) -> None:
    (cluster,) = [d for d in documents() if d["kind"] == "RayCluster"]
    cluster["spec"]["workerGroupSpecs"][0]["replica"] = 3  # `replicas`, misspelt
    assert unknown_fields(cluster, crd_schemas["RayCluster"]) == [".spec.workerGroupSpecs[0].replica"]
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cluster, crd_schemas["RayCluster"])


def containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.extend(node.get("containers", []))
            for key, value in node.items():
                if key != "containers":
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(document)
    return found


def test_every_secret_comes_from_the_kubernetes_secret_and_ray_has_its_token_everywhere() -> None:
    ray_containers = [c for d in documents() if d["apiVersion"].startswith("ray.io/") for c in containers(d)]
    assert len(ray_containers) == 4  # head, CPU and GPU workers, the RayJob's submitter
    for container in [c for d in documents() for c in containers(d)]:
        for variable in container.get("env", []):
            if any(word in variable["name"] for word in SECRET_NAMES):
                assert variable["valueFrom"]["secretKeyRef"]["name"] == "ghm-secrets", (container["name"], variable["name"])
    for container in ray_containers:
        env = {v["name"]: v for v in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "RAY_AUTH_TOKEN" in env, container["name"]


def test_the_rayjob_runs_a_sweep_the_project_accepts_on_the_raycluster(tmp_path: Path) -> None:
    (job,) = [d for d in documents() if d["kind"] == "RayJob"]
    (cluster,) = [d for d in documents() if d["kind"] == "RayCluster"]
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    program, script, mode, *overrides = shlex.split(job["spec"]["entrypoint"])
    assert (program, script, mode) == ("python", "launch.py", "--multirun") and (ROOT / script).is_file()
    config = compose_full(overrides)  # Hydra's compose API over the project's config: an unknown key fails here
    settings = OmegaConf.to_object(config.hydra.sweeper)
    settings.check()
    assert settings.ray.gpus_per_trial == 1 and settings.params == {"loss": "focal,ghm", "seed": "0,1,2"}
    mounts = {m["mountPath"] for c in containers(cluster) for m in c.get("volumeMounts", [])}
    for shared in (settings.ray.storage_path, config.hydra.sweep.dir, config.paths.cache_dir):  # on the volume every Ray pod mounts
        assert Path(shared).is_relative_to("/shared") and "/shared" in mounts, shared
    with open_dict(config):
        del config["hydra"]
    validate(config)  # the task's typed config, as launch.py checks it before any work
