"""Shared fixtures: environment for local Ray/MLflow, a CLI runner, an in-process Ray session."""
from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the in-process integration tests (2 CPUs, no dashboard)."""
    import ray

    from autosparse.orchestration.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
