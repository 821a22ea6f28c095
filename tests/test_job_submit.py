"""`ray job submit` against a real local Ray head (dashboard on 127.0.0.1), then a resubmission that
skips every finished stage; the head is stopped without touching other Ray instances."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
OVERRIDES = ["--set", "matrix.targets=[{model: mlp, dataset: digits}]", "--set", "matrix.methods=[snip]",
             "--set", "matrix.variants=[shuffle]"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path: Path):
    """`ray start --head --block` in its own process group; SIGTERM stops exactly this head."""
    gcs, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats",
         f"--temp-dir={tmp_path / 'ray'}"],
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


def submit(address: str, env: dict, workspace: Path) -> subprocess.CompletedProcess:
    command = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
               sys.executable, "-m", "autosparse.cli", "run", "smoke", "--workspace", str(workspace),
               "--no-progress", *OVERRIDES]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)


def test_submit_smoke_then_resubmit(ray_head, tmp_path: Path) -> None:
    address, env = ray_head
    workspace = tmp_path / "ws"
    first = submit(address, env, workspace)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    assert "SUCCEEDED" in first.stdout + first.stderr
    assert "### mlp/digits" in first.stdout
    cells = [p for p in (workspace / "cell").iterdir()]
    assert len(list((workspace / "irp").iterdir())) == 2 and len(list((workspace / "scorer").iterdir())) == 2
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("autosparse-smoke")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'cell'", max_results=1000)
    assert {r.data.tags["stage.hash"] for r in runs} == {p.name for p in cells}

    second = submit(address, env, workspace)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert "stages run this time: irp: 0, scorer: 0, cell: 0" in second.stdout
