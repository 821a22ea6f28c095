"""Shared fixtures: environment for local Ray/MLflow, a CLI runner, an in-process Ray session."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autosparse.orchestration.runtime import set_local_defaults

set_local_defaults()
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 600, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `autosparse ARGS` in a fresh interpreter, capturing output."""
    return subprocess.run([sys.executable, "-m", "autosparse.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd or REPO)


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """Tiny models: one intra-op thread is fastest and steady on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    from autosparse.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the in-process integration tests (2 CPUs, no dashboard)."""
    import ray

    from autosparse.orchestration.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def finished_cells(workspace: Path) -> int:
    from autosparse.orchestration.store import MARKER

    folder = workspace / "cell"
    return sum(1 for p in folder.iterdir() if (p / MARKER).is_file()) if folder.is_dir() else 0


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the driver and everything it started (its local Ray included): a hard crash."""
    import psutil

    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for proc in tree:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)
    psutil.wait_procs(tree, timeout=30)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The README's main command on the smoke config, killed mid-matrix and re-run to completion.

    Yields (workspace, total cells, cells finished before the kill, the resumed run's CompletedProcess).
    Later tests copy this finished workspace instead of recomputing its IRP chains.
    """
    from autosparse.config import load_config
    from autosparse.orchestration.pipeline import Pipeline

    workspace = tmp_path_factory.mktemp("smoke") / "ws"
    total = len(Pipeline(load_config("smoke"), workspace).jobs["cell"])
    driver = subprocess.Popen([sys.executable, "-m", "autosparse.cli", "run", "smoke", "--workspace", str(workspace),
                               "--no-progress"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 400
    while finished_cells(workspace) < 3:
        assert driver.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "no matrix cell finished in time"
        time.sleep(0.5)
    kill_tree(driver)
    done_before = finished_cells(workspace)
    resumed = run_cli("run", "smoke", "--workspace", str(workspace), "--no-progress")
    yield workspace, total, done_before, resumed


@pytest.fixture
def smoke_workspace_copy(smoke_run, tmp_path):
    """A private copy of the finished smoke workspace (IRP chains and scorers already done)."""
    import shutil

    workspace, _, _, resumed = smoke_run
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    copy = tmp_path / "ws"
    shutil.copytree(workspace, copy, ignore=shutil.ignore_patterns("ray"))
    return copy
