"""Every deployment file is checked here: the sample compose files are what deploy/compose.py
generates, pass ``docker-compose config`` (PyPI docker-compose 1.29.2) and follow the rules of
docs/deploy.md (health checks, start order by health, guest devices); every kustomize overlay
renders with ``kubectl kustomize`` and validates strictly against the Kubernetes 1.32 schemas
(``kubernetes-validate``)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))
import compose  # noqa: E402 (deploy/compose.py, the generator)

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("sim", "tdx", "csv", "postgresql", "replicas")
KUBERNETES_VERSION = "1.32.0"
COMPOSE_FILES = sorted(compose.compose_files())
DOCKER_COMPOSE = os.environ.get("TRUSTFLOW_DOCKER_COMPOSE") or shutil.which("docker-compose")


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT / "examples"))


def test_compose_files_are_generated_by_deploy_compose_py() -> None:
    for path, text in compose.compose_files().items():
        assert path.read_text() == text, f"{path} is stale: run python deploy/compose.py"


@pytest.mark.skipif(
    DOCKER_COMPOSE is None, reason="docker-compose is not installed (tox -e containers)"
)
@pytest.mark.parametrize("path", COMPOSE_FILES, ids=_id)
def test_compose_file_passes_docker_compose_config(path: Path) -> None:
    done = subprocess.run(
        [
            str(DOCKER_COMPOSE),
            "-f",
            path.name,
            "--profile",
            "s3",
            "--profile",
            "client",
            "--profile",
            "result",
            "config",
            "-q",
        ],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("TF_")},
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(
    DOCKER_COMPOSE is None, reason="docker-compose is not installed (tox -e containers)"
)
def test_docker_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "examples/online/docker-compose-sim.yml").read_text())
    data["services"]["keys"]["depends_on"] = {"nowhere": {"condition": "service_healthy"}}
    broken = tmp_path / "docker-compose-sim.yml"
    broken.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        [str(DOCKER_COMPOSE), "-f", str(broken), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "nowhere" in done.stderr


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=_id)
def test_compose_services_are_health_checked_and_ordered_by_health(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    services = data["services"]
    mode = path.stem.rsplit("-", 1)[1]
    for name, spec in services.items():
        oneshot = spec["restart"] == "no"
        assert oneshot or spec["healthcheck"]["test"][:2] == ["CMD", "trustflow-healthcheck"], name
        assert spec["network_mode"] == "host", name
        for dep, condition in spec.get("depends_on", {}).items():
            wanted = "service_completed_successfully"
            if services[dep]["restart"] != "no":
                wanted = "service_healthy"
                assert "healthcheck" in services[dep], (name, dep)
            assert condition == {"condition": wanted}, (name, dep)
        command = " ".join(spec["command"])
        for volume in spec["volumes"]:
            source = volume.split(":")[0]
            assert source.startswith("./") or source in data["volumes"], (name, volume)
            if source.startswith("./"):
                assert (path.parent / source).is_file(), (name, source)
        if mode != "sim" and f"--plat {mode}" in command:
            assert spec["devices"] == compose.DEVICES[mode], name
        if mode == "sim":
            assert "devices" not in spec or not spec["devices"], name


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] not in ("Deployment", "StatefulSet"):
        return []
    return list(doc["spec"]["template"]["spec"]["containers"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay: str) -> None:
    import kubernetes_validate

    docs = render(overlay)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for wanted in [
        ("Deployment", "capsule-manager"),
        ("Deployment", "teeapp"),
        ("Service", "capsule-manager"),
        ("Service", "teeapp"),
        ("NetworkPolicy", "trustflow-default-deny-ingress"),
    ]:
        assert wanted in kinds
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        for container in _containers(doc):
            assert "readinessProbe" in container and "livenessProbe" in container, container
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]
            assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
            assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "trustflow"
    teeapp = next(
        d for d in docs if d["metadata"]["name"] == "teeapp" and d["kind"] == "Deployment"
    )
    names = [c["name"] for c in _containers(teeapp)]
    assert sorted(names) == ["app", "data-capsule-proxy", "gateway", "ra-proxy"]
    mode = next(
        d for d in docs if d["kind"] == "ConfigMap" and "trustflow-mode" in d["metadata"]["name"]
    )
    assert mode["data"]["plat"] == ("sim" if overlay in ("postgresql", "replicas") else overlay)
    if overlay in ("tdx", "csv"):
        device = compose.DEVICES[overlay][0].split(":")[0]
        for container in _containers(teeapp):
            if container["name"] not in ("ra-proxy", "data-capsule-proxy"):
                continue
            assert device in [m["mountPath"] for m in container["volumeMounts"]]


def test_replicas_overlay_runs_three_cms_on_postgresql_ready_when_joined() -> None:
    """Three CM pods (the founder and two joiners), all on the PostgreSQL URL of the Secret,
    ready on /-/readyz ("joined and database reachable"); joiners --join the headless peers
    Service, which selects every replica; the replicas may reach each other's gRPC port."""
    docs = render("replicas")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    founder = by[("Deployment", "capsule-manager")]
    joiners = by[("Deployment", "capsule-manager-replica")]
    assert founder["spec"]["replicas"] + joiners["spec"]["replicas"] == 3
    selectors = [d["spec"]["selector"]["matchLabels"] for d in (founder, joiners)]
    assert selectors[0] != selectors[1]  # two Deployments never adopt each other's pods
    for deployment in (founder, joiners):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "capsule-manager"
        assert labels["trustflow.io/postgresql-client"] == "true"
        assert labels["app.kubernetes.io/part-of"] == "trustflow"  # under default-deny
        (cm,) = _containers(deployment)
        assert cm["readinessProbe"]["httpGet"] == {"path": "/-/readyz", "port": "admin"}
        assert "grpc" not in cm["readinessProbe"]
        env = {e["name"]: e for e in cm["env"]}
        assert "secretKeyRef" in env["TF_CM_STORAGE_URL"]["valueFrom"]
        assert cm["args"][1:3] == ["-c", "/etc/trustflow/cm/cm.yaml"]
    (joiner,) = _containers(joiners)
    peers = by[("Service", "capsule-manager-peers")]
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["selector"] == {"app.kubernetes.io/name": "capsule-manager"}
    joins = [b for a, b in zip(joiner["args"], joiner["args"][1:], strict=False) if a == "--join"]
    assert joins == ["capsule-manager-peers:8888"]
    assert "--join" not in _containers(founder)[0]["args"]  # the founder creates the identity
    settings = next(d for d in docs if d["metadata"]["name"].startswith("capsule-manager-replicas"))
    assert yaml.safe_load(settings["data"]["cm.yaml"]) == {"replicas": {}}
    policy = by[("NetworkPolicy", "capsule-manager-peers")]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8888}]
    assert by[("PodDisruptionBudget", "capsule-manager")]["spec"]["minAvailable"] == 2
    assert "sqlite" not in yaml.safe_dump_all(docs)


def test_network_policies_expose_only_the_gateway_the_cm_and_the_metrics() -> None:
    docs = render("postgresql")
    open_ports = {}
    for doc in docs:
        if doc["kind"] != "NetworkPolicy":
            continue
        for rule in doc["spec"].get("ingress", []):
            peers = "anyone" if "from" not in rule else "selected pods"
            for port in rule["ports"]:
                open_ports[port["port"]] = peers
    admin = dict.fromkeys((9888, 9901, 9010, 9011), "selected pods")
    assert open_ports == {50001: "anyone", 8888: "selected pods", 5432: "selected pods", **admin}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert [p["port"] for p in services["teeapp"]["spec"]["ports"]] == [50001]


def test_schema_validation_rejects_a_misspelt_field() -> None:
    import kubernetes_validate

    teeapp = next(d for d in render("sim") if d["kind"] == "Deployment")
    broken = copy.deepcopy(teeapp)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
