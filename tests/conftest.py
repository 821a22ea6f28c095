"""Shared fixtures: environment for local Ray/MLflow, a CLI runner, an in-process Ray session, a local S3
endpoint, an MLflow tracking server, small file systems mounted for faults."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from autosparse.orchestration.runtime import set_local_defaults

from helpers import free_port

set_local_defaults()
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
REPO = Path(__file__).resolve().parents[1]
BUCKET = "autosparse-test"


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


@pytest.fixture(scope="module")
def s3_env():
    """A local S3 endpoint with one bucket; the AWS variables that point pyarrow (and boto3) at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield env
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class MlflowServer:
    """`mlflow server` on 127.0.0.1 in its own process group, over a SQLite store that outlives restarts."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                   "--artifacts-destination", str(self.folder / "artifacts")]
        self.process = subprocess.Popen(command, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                assert self.process.poll() is None, "mlflow server exited during start-up"
                assert time.monotonic() < deadline, "mlflow server not healthy in time"
                time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the server and its workers: the server is lost, not shut down."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    if server.process.poll() is None:
        server.kill()


@contextmanager
def mounted_tmpfs(folder: Path, size: int, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of `size` bytes at `folder` (skips the test where this machine cannot mount one); a
    `read_only` one holds what `folder` held before."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder.with_name(folder.name + ".contents")
    if read_only:
        shutil.move(folder, staged)
        folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        if read_only:
            shutil.copytree(staged, folder, dirs_exist_ok=True)
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)
