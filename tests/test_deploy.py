"""deploy/: what CI can check without a container engine or a cluster."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
JSON_FILES = sorted(DEPLOY.rglob("*.json"))
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def _documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def test_the_deploy_tree_has_every_piece() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    for wanted in ("Dockerfile", "compose.yaml", "prometheus/prometheus.yml",
                   "grafana/ffrtmp-dashboard.json", "kubernetes/controller.yaml",
                   "kubernetes/worker.yaml", "kubernetes/service.yaml", "kubernetes/configmap.yaml",
                   "kubernetes/secret.yaml", "systemd/ffrtmp-controller.service",
                   "systemd/ffrtmp-worker@.service", "profiles/production.yaml",
                   "profiles/development.yaml"):
        assert wanted in names, wanted


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_file_parses(path: Path) -> None:
    assert _documents(path), f"{path} declares nothing"


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_json_file_parses(path: Path) -> None:
    assert json.loads(path.read_text(encoding="utf-8"))


def _config_files() -> list[Path]:
    found = []
    for path in YAML_FILES:
        if any(isinstance(d, dict) and d.get("kind") == "ControllerConfig" for d in _documents(path)):
            found.append(path)
    return found


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_config_files_load(path: Path) -> None:
    config = load_config(path, env={})
    assert config.kind == "ControllerConfig"


def test_the_profiles_are_the_seed_s() -> None:
    dev = load_config(DEPLOY / "profiles" / "development.yaml", env={})
    prod = load_config(DEPLOY / "profiles" / "production.yaml", env={})
    ft = dev.fault_tolerance
    assert (ft.node_timeout_seconds, ft.max_retries, ft.check_interval_seconds, dev.auth.enabled) == (120, 5, 30, False)
    ft = prod.fault_tolerance
    assert (ft.node_timeout_seconds, ft.max_retries, ft.check_interval_seconds) == (60, 3, 10)
    assert (prod.auth.enabled, prod.auth.token_expiry_minutes, prod.auth.rate_limit_per_minute) == (True, 30, 100)


def test_the_kubernetes_config_map_holds_a_valid_config(tmp_path: Path) -> None:
    (config_map,) = _documents(DEPLOY / "kubernetes" / "configmap.yaml")
    path = tmp_path / "controller.yaml"
    path.write_text(config_map["data"]["controller.yaml"])
    config = load_config(path, env={})
    assert config.leader_election.lease_duration_seconds == 15 and config.auth.enabled


def _k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in _documents(path):
            out.append((f"{path.name}/{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return out


@pytest.mark.parametrize("obj", [o for _, o in _k8s_objects()], ids=[n for n, _ in _k8s_objects()])
def test_kubernetes_objects_are_well_formed(obj: dict[str, Any]) -> None:
    assert isinstance(obj.get("apiVersion"), str) and isinstance(obj.get("kind"), str)
    if obj["kind"] != "Kustomization":
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])


def test_the_kubernetes_controller_runs_two_replicas_with_git_sync_config_and_secret() -> None:
    objects = {(o["kind"], o.get("metadata", {}).get("name")): o for _, o in _k8s_objects()}
    deployment = objects[("Deployment", "ffrtmp-controller")]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"controller", "git-sync"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    env = {e["name"]: e for e in containers["controller"]["env"]}
    assert env["FFRTMP_DATABASE__URL"]["valueFrom"]["secretKeyRef"]["name"] in {
        n for k, n in objects if k == "Secret"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] in {n for k, n in objects if k == "ConfigMap"}
    mounts = {m["name"] for c in containers.values() for m in c["volumeMounts"]}
    assert mounts <= set(volumes)
    # git-sync's link is where the controller looks for manifests.
    config = yaml.safe_load(objects[("ConfigMap", "ffrtmp-controller-config")]["data"]["controller.yaml"])
    link = next(a.split("=", 1)[1] for a in containers["git-sync"]["args"] if a.startswith("--link="))
    root = next(a.split("=", 1)[1] for a in containers["git-sync"]["args"] if a.startswith("--root="))
    assert config["manifests"]["dir"].startswith(f"{root}/{link}")
    service = objects[("Service", "ffrtmp-controller")]
    assert service["spec"]["selector"].items() <= labels.items()
    workers = [o for (k, n), o in objects.items() if n == "ffrtmp-worker" and k in ("Deployment", "StatefulSet")]
    assert workers, "a worker workload"
    kustomization = objects[("Kustomization", None)]
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}


def test_compose_references_only_services_and_files_it_has() -> None:
    (compose,) = _documents(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert {"postgres", "controller-a", "controller-b", "prometheus"} <= set(services)
    assert sum(1 for s in services.values() if "worker" in str(s.get("image", ""))) >= 2
    for name, service in services.items():
        depends = service.get("depends_on", [])
        for dependency in depends if isinstance(depends, list) else depends.keys():
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose.get("volumes", {}), f"{name} mounts unknown volume {source}"
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    (prometheus,) = _documents(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {t.split(":")[0] for job in prometheus["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"controller-a", "controller-b"}


def test_the_dockerfile_runs_as_a_non_root_user_with_a_health_check() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK\s+.*CMD", text, flags=re.MULTILINE | re.DOTALL)
    assert re.search(r"^FROM\s+python:\$\{PYTHON_VERSION\}-slim", text, flags=re.MULTILINE)
    final = text.split("\nFROM ")[-1]
    assert "HEALTHCHECK" in final and "USER 10001" in final and "/healthz" in final


def test_the_dashboard_queries_only_metrics_the_controller_exposes() -> None:
    from controller.observability.metrics import Metrics

    exposed = Metrics().exposition().decode()
    names = set(re.findall(r"^(ffrtmp_master_\w+)", exposed, flags=re.MULTILINE))
    dashboard = json.loads((DEPLOY / "grafana" / "ffrtmp-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"]
            for m in re.findall(r"ffrtmp_master_\w+", t["expr"])}
    assert used and used <= names, used - names
    assert "ffrtmp_master_leader" in used


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_units_verify(unit: Path, tmp_path: Path) -> None:
    # `verify` insists that ExecStart's binary exists: point it at this interpreter.
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/ffrtmp/bin/ffrtmp", sys.executable))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)],
                          capture_output=True, text=True, timeout=60, check=False)
    # Unknown keys are only warnings (exit 0): any output is a failure.
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr
