"""Many nodes on one machine with real Ray (`ray.cluster_utils.Cluster`): a 0-CPU head and two 1-CPU worker
nodes, each with its own workspace cache. IRP chains spread over nodes that join mid-stage, with the
workspace on S3 and tracking on a server on 127.0.0.1; matrix cells spread over the nodes, and a worker
node lost mid-matrix costs nothing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from mlflow.tracking import MlflowClient

from autosparse.config import load_config
from autosparse.orchestration.pipeline import Pipeline
from autosparse.orchestration.store import CACHE_ENV, MARKER, StageStore

from conftest import BUCKET, REPO
from helpers import free_port

pytestmark = pytest.mark.slow


def sets(*overrides: str) -> list[str]:
    return [item for override in overrides for item in ("--set", override)]


class LocalCluster:
    """A 0-CPU head; `grow` adds 1-CPU worker nodes, each with its own cache of a URI workspace."""

    def __init__(self, caches: Path):
        from ray.cluster_utils import Cluster

        self.caches, self.workers = caches, []
        self.ray = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "dashboard_agent_listen_port": free_port()})

    def grow(self, nodes: int = 2) -> None:
        while len(self.workers) < nodes:
            with mock.patch.dict("os.environ", {CACHE_ENV: str(self.caches / f"node{len(self.workers)}")}):
                self.workers.append(self.ray.add_node(num_cpus=1))  # its workers inherit the variable


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_env):
    """Its nodes inherit the S3 endpoint's variables, as a real cluster's `ray start` environment would."""
    cluster = LocalCluster(tmp_path_factory.mktemp("node-caches"))
    yield cluster
    cluster.ray.shutdown()


def test_chains_spread_over_nodes_joining_mid_stage(cluster, mlflow_server, tmp_path: Path) -> None:
    """The workspace on S3, tracking on a server on 127.0.0.1, and the worker nodes joining only once the
    IRP stage has started (as an autoscaler adds them): the two chains still train side by side."""
    workspace = f"s3://{BUCKET}/multinode"
    driver = subprocess.Popen(
        [sys.executable, "-m", "autosparse.cli", "irp", "smoke", "--workspace", workspace, "--ray-address",
         cluster.ray.address, "--tracking-uri", mlflow_server.uri, "--no-progress", *sets("matrix.irp_reference=false")],
        cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, CACHE_ENV: str(tmp_path / "driver"), "PYTHONUNBUFFERED": "1"})
    for line in driver.stdout:
        if "IRP: 2 chain(s) to run" in line:
            break
    cluster.grow()
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err[-3000:]

    store = StageStore(workspace, cache=tmp_path / "inspect")
    chains = {digest: store.record("irp", digest) for digest in store.finished("irp")}
    assert len(chains) == 2
    assert {record["node"] for record in chains.values()} == {node.node_id for node in cluster.workers}
    first, second = sorted((r["chain"] for r in chains.values()), key=lambda chain: chain["started"])
    assert second["started"] < first["finished"], "the chains trained one after the other"

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("autosparse-smoke").experiment_id
    for digest, record in chains.items():
        (run,) = client.search_runs([experiment], f"tags.`stage.hash` = '{digest}'")
        chain = record["chain"]
        assert run.info.start_time == int(chain["started"] * 1000) and run.info.end_time == int(chain["finished"] * 1000)
        assert chain["finished"] - chain["started"] >= sum(r["seconds"] for r in record["history"])
        assert run.data.tags["ray.node_id"] == record["node"]


def finished(workspace: Path, digests: list[str]) -> list[dict]:
    markers = [workspace / "cell" / digest / MARKER for digest in digests]
    return [json.loads(marker.read_text()) for marker in markers if marker.is_file()]


def cell_outcome(folder: Path) -> dict:
    result = json.loads((folder / "result.json").read_text())
    return {key: result[key] for key in ("test_accuracy_per_epoch", "train_loss_per_epoch", "layer_densities")}


def test_a_worker_node_lost_mid_matrix(cluster, smoke_workspace_copy: Path, tmp_path: Path) -> None:
    """Cells spread over both nodes; one node (raylet, agents, workers) killed while cells run: Ray retries
    its cell on the other node, and every cell equals the single-node run's, with one FINISHED MLflow run each."""
    cluster.grow()
    workspace = smoke_workspace_copy
    overrides = sets("matrix.irp_reference=false",  # 16 cells: both targets, dense and 7 methods
                     "matrix.methods=[random, magnitude, snip, grasp, synflow, random@alloc:erk, snip/iter3@alloc:synflow]",
                     "matrix.variants=[]",
                     "matrix.variant_methods=[snip]")
    digests = [job.digest for job in Pipeline(load_config("smoke", overrides[1::2]), workspace).jobs["cell"]]
    expected = {digest: cell_outcome(workspace / "cell" / digest) for digest in digests}
    for digest in digests:
        shutil.rmtree(workspace / "cell" / digest)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = subprocess.Popen(
        [sys.executable, "-m", "autosparse.cli", "matrix", "smoke", "--workspace", str(workspace),
         "--ray-address", cluster.ray.address, "--tracking-uri", tracking, "--no-progress", *overrides],
        cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len({record["node"] for record in finished(workspace, digests)}) < 2:  # both nodes ran a cell
        assert driver.poll() is None and time.monotonic() < deadline, "the cells did not spread over both nodes"
        time.sleep(0.2)
    cluster.ray.remove_node(cluster.workers.pop(), allow_graceful=False)
    assert len(finished(workspace, digests)) < len(digests), "the matrix ended before the node was lost"
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err[-3000:]

    assert {digest: cell_outcome(workspace / "cell" / digest) for digest in digests} == expected
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("autosparse-smoke").experiment_id
    runs = client.search_runs([experiment], "tags.stage = 'cell'", max_results=1000)
    assert sorted(run.data.tags["stage.hash"] for run in runs) == sorted(digests)
    assert all(run.info.status == "FINISHED" for run in runs)
