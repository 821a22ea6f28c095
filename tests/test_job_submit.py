"""`ray job submit` against a real local Ray head (dashboard on 127.0.0.1), then a resubmission that
skips every finished stage; the head is stopped without touching other Ray instances."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from helpers import free_port

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
OVERRIDES = ["--set", "matrix.sparsities=[0.95]", "--set", "matrix.methods=[snip, synflow, autos:paper]"]


@pytest.fixture
def ray_head():
    """`ray start --head --block` in its own process group; SIGTERM stops exactly this head."""
    gcs, dashboard, agent = free_port(), free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths are limited
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}", "--disable-usage-stats",
         f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            assert head.poll() is None, "ray start failed"
            assert time.monotonic() < deadline, "the Ray dashboard did not come up"
            time.sleep(1)
    yield address, env
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
    shutil.rmtree(temp_dir, ignore_errors=True)


def submit(address: str, env: dict, workspace: Path) -> tuple[str, str]:
    """`ray job submit --no-wait ...`, then wait through the job SDK; returns (final status, driver logs)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    command = [RAY, "job", "submit", "--no-wait", "--address", address, "--working-dir", str(REPO), "--",
               sys.executable, "-m", "autosparse.cli", "run", "smoke", "--workspace", str(workspace),
               "--no-progress", *OVERRIDES]
    deadline = time.monotonic() + 180
    while True:  # the dashboard answers before its job agent is ready; Ray says to retry
        submitted = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
        if "No available agent" not in submitted.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr).group(0)
    client = JobSubmissionClient(address)
    deadline = time.monotonic() + 900
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                             JobStatus.STOPPED):
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(2)
    return status, client.get_job_logs(job_id)


def test_submit_smoke_then_resubmit(ray_head, smoke_workspace_copy: Path) -> None:
    """New matrix cells run under the job (IRP chains and scorers come from the finished smoke run)."""
    address, env = ray_head
    workspace = smoke_workspace_copy
    before = {p.name for p in (workspace / "cell").iterdir()}
    status, logs = submit(address, env, workspace)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "### mlp/digits" in logs
    cells = [p for p in (workspace / "cell").iterdir()]
    ran = int(re.search(r"stages run this time: irp: 0, scorer: 0, allocator: 0, cell: (\d+)", logs).group(1))
    assert ran == len(cells) - len(before) == 12  # per target: snip, synflow, autos:paper and its 3 variants
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("autosparse-smoke")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'cell'", max_results=1000)
    assert {r.data.tags["stage.hash"] for r in runs} == {p.name for p in cells}

    status, logs = submit(address, env, workspace)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "stages run this time: irp: 0, scorer: 0, allocator: 0, cell: 0, report: 0" in logs
