"""Static checks of the deployment files under clusters/ and scripts/ (no cluster is started).

Cluster-launcher configs are validated exactly as `ray up` does before it contacts a cloud:
`prepare_config` (merge with the provider defaults shipped in the ray package) followed by
`validate_config` (Ray's own `ray-schema.json` plus its cross-field checks).
"""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
KUBERAY = CLUSTERS / "kuberay"
SCRIPTS = ROOT / "scripts"
LAUNCHER_CONFIGS = sorted(p for p in CLUSTERS.glob("*.yaml") if p.name != "runtime_env.yaml")
RAYJOBS = sorted(KUBERAY.glob("rayjob-*.yaml"))
SCRIPT_FILES = sorted(SCRIPTS.glob("*.sh"))
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.I)


def load(path: Path):
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def ray_schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def ray_up_validate(config: dict) -> None:
    """What `ray up` checks offline: defaults merged in, then Ray's schema and cross-field rules."""
    validate_config(prepare_config(copy.deepcopy(config)))


# --------------------------------------------------------------------------- launcher configs


def test_expected_files_exist():
    for rel in ["clusters/runtime_env.yaml", "clusters/aws-gpu.yaml", "clusters/README.md",
                "clusters/kuberay/raycluster.yaml", "clusters/kuberay/mlflow-server.yaml",
                "clusters/kuberay/rayjob-irp.yaml", "clusters/kuberay/rayjob-matrix.yaml",
                "clusters/kuberay/rayjob-tune.yaml", "scripts/local-cluster-up.sh",
                "scripts/local-cluster-down.sh", "scripts/submit.sh", "scripts/logs.sh"]:
        assert (ROOT / rel).is_file(), rel
    assert LAUNCHER_CONFIGS


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_validates_against_ray_schema(path):
    config = load(path)
    jsonschema.validate(config, ray_schema())  # the file as written
    ray_up_validate(config)  # the file as `ray up` sees it


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_content(path):
    config = load(path)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu_workers = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_workers, "needs an autoscaling GPU worker type"
    for worker in gpu_workers:
        assert worker.get("min_workers", 0) == 0
        assert 0 < worker["max_workers"] <= config["max_workers"]
    setup = " ".join(config["setup_commands"])
    assert "torch==2.14.1" in setup and "torchvision==0.29.1" in setup
    assert "/home/ray/autosparse" in setup and config["file_mounts"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in head_start
    assert "ray start --head" in head_start
    assert "$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])


def _broken_copies(config: dict):
    unknown_key = copy.deepcopy(config)
    unknown_key["max_wrokers"] = 3
    yield "unknown top-level key", unknown_key
    no_resources = copy.deepcopy(config)
    del next(iter(no_resources["available_node_types"].values()))["resources"]
    yield "node type without resources", no_resources
    string_gpu = copy.deepcopy(config)
    for node_type in string_gpu["available_node_types"].values():
        node_type["resources"] = {"GPU": "1"}
    yield "non-integer resource", string_gpu
    bad_command = copy.deepcopy(config)
    bad_command["setup_commands"] = "pip install ."
    yield "commands not a list", bad_command


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_broken_launcher_config_fails_validation(path):
    config = load(path)
    schema = ray_schema()
    for what, broken in _broken_copies(config):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
            pytest.fail(f"{path.name}: {what} passed the schema")
        with pytest.raises((jsonschema.ValidationError, TypeError)):  # `ray up` rejects it too
            ray_up_validate(broken)
            pytest.fail(f"{path.name}: {what} was accepted by ray up's validation")
    wrong_head = copy.deepcopy(config)
    wrong_head["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError):
        ray_up_validate(wrong_head)


# --------------------------------------------------------------------------- runtime env


def test_runtime_env():
    env = load(CLUSTERS / "runtime_env.yaml")
    assert env["working_dir"] == "."
    RuntimeEnv(**env)  # Ray's own type checks (env_vars: Dict[str, str], excludes: List[str])
    for key in ("MLFLOW_TRACKING_URI", "AUTOSPARSE_WORKSPACE", "RAY_USAGE_STATS_ENABLED",
                "MLFLOW_DISABLE_TELEMETRY"):
        assert isinstance(env["env_vars"][key], str)
    assert {".git/", ".venv/", "autosparse-workspace/"} <= set(env["excludes"])
    for req in env.get("pip", []) or []:
        assert not req.startswith("-e"), "runtime_env pip cannot install editable packages"


def test_runtime_env_variables_are_exported_by_every_cluster():
    """The ${VAR}s that Ray expands must be set where each cluster runs `ray start`."""
    env = load(CLUSTERS / "runtime_env.yaml")
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)\}", " ".join(env["env_vars"].values())))
    assert referenced
    sources = {p.name: p.read_text() for p in LAUNCHER_CONFIGS}
    sources["local-cluster-up.sh"] = (SCRIPTS / "local-cluster-up.sh").read_text()
    sources["raycluster.yaml"] = (KUBERAY / "raycluster.yaml").read_text()
    for name, text in sources.items():
        for var in referenced:
            assert re.search(rf"\b{var}=|name: {var}\b", text), f"{name} does not set {var}"


# --------------------------------------------------------------------------- KubeRay


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def _check_pod_template(template: dict, *, gpu: bool) -> dict:
    containers = template["spec"]["containers"]
    assert containers
    container = containers[0]
    assert container["image"]
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), f"{kind} must set cpu and memory"
    if gpu:
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    return container


def _check_ray_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams are strings"
    assert "dashboard-host" in head["rayStartParams"]
    head_container = _check_pod_template(head["template"], gpu=False)
    workers = spec["workerGroupSpecs"]
    assert workers
    for group in workers:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        _check_pod_template(group["template"], gpu=True)
    env = _env(head_container)
    mlflow_services = {d["metadata"]["name"]: d for d in load_all(KUBERAY / "mlflow-server.yaml")
                       if d["kind"] == "Service"}
    uri = env["MLFLOW_TRACKING_URI"]["value"]
    host, port = re.fullmatch(r"http://([a-z0-9.-]+):(\d+)", uri).groups()
    service = mlflow_services[host.split(".")[0]]
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    assert env["AUTOSPARSE_WORKSPACE"]["value"]


def test_raycluster_manifest():
    (doc,) = load_all(KUBERAY / "raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["metadata"]["name"]
    _check_ray_cluster_spec(doc["spec"])


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_manifest(path):
    (doc,) = load_all(path)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    assert spec["entrypoint"].startswith("autosparse ")
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    _check_ray_cluster_spec(spec["rayClusterSpec"])


def test_rayjob_entrypoints():
    entry = {p.stem: load(p)["spec"]["entrypoint"].split() for p in RAYJOBS}
    assert entry["rayjob-irp"][:2] == ["autosparse", "irp"]
    assert entry["rayjob-matrix"][:3] == ["autosparse", "run", "cifar10_resnet18"]
    assert entry["rayjob-tune"][:2] == ["autosparse", "tune"] and "--base" in entry["rayjob-tune"]


def test_mlflow_manifest():
    docs = load_all(KUBERAY / "mlflow-server.yaml")
    kinds = [d["kind"] for d in docs]
    assert "Deployment" in kinds and "Service" in kinds
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    server = deployments["mlflow"]["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(server.get("command", []) + server.get("args", []))
    assert "mlflow server" in command
    env = _env(server)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith(("postgresql://", "mysql"))
    assert "--artifacts-destination" in command
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        assert any(selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                   for d in deployments.values()), f"service {service['metadata']['name']} selects nothing"


def _walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_kuberay_manifests_have_no_plaintext_credentials_and_valid_claims():
    claims = {d["metadata"]["name"] for p in KUBERAY.glob("*.yaml") for d in load_all(p)
              if d["kind"] == "PersistentVolumeClaim"}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in load_all(path):
            assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"]["name"], path
            assert doc["kind"] != "Secret", f"{path.name}: create Secrets out of band"
            for node in _walk(doc):
                if "name" in node and "value" in node and SECRETISH.search(str(node["name"])):
                    pytest.fail(f"{path.name}: {node['name']} has a literal value; use a Secret")
                if "persistentVolumeClaim" in node:
                    assert node["persistentVolumeClaim"]["claimName"] in claims, path.name


# --------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("path", SCRIPT_FILES, ids=lambda p: p.name)
def test_script_syntax(path):
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(path, os.X_OK), f"{path.name} is not executable"
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_local_cluster_pins_every_ray_port_that_the_readme_closes():
    """Ray binds its services to the network address: each port `ray start` can open is pinned (or is
    the loopback dashboard), and the README's firewall rule covers the defaults."""
    from ray.scripts.scripts import start

    up = (SCRIPTS / "local-cluster-up.sh").read_text()
    ports = {o for p in start.params for o in p.opts if o.endswith("-port")} - {"--dashboard-port"}
    assert ports and all(f"{option}=" in up for option in ports), sorted(o for o in ports if f"{o}=" not in up)
    assert "--dports 6379:6384,10001,10002:10999,52365 -j DROP" in (CLUSTERS / "README.md").read_text()


def test_local_cluster_scripts_bind_to_loopback():
    up = (SCRIPTS / "local-cluster-up.sh").read_text()
    assert "--dashboard-host=127.0.0.1" in up and "--host 127.0.0.1" in up
    assert "setsid" in up and "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in up
    down = (SCRIPTS / "local-cluster-down.sh").read_text()
    assert 'kill -TERM -- "-$pgid"' in down and "ray stop" in down
