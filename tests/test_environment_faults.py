"""Faults of the environment are user errors, not bugs: a full or read-only disk, the MLflow server lost,
the object store lost mid-upload. Each is one line and exit 2 (no traceback), keeps every finished output
and leaves nothing half-written; a plain rerun once the fault is gone catches up."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from autosparse import Mask, build_model
from autosparse.orchestration.store import MARKER, StageStore, WorkspaceError
from autosparse.storage import StorageError

from conftest import BUCKET, REPO, finished_cells, mounted_tmpfs, run_cli
from helpers import free_port

# Five cells the finished smoke workspace does not hold (seed 1), and no chain or scorer to run.
NEW_CELLS = ["--set", "matrix.seeds=[1]", "--set", "matrix.irp_reference=false",
             "--set", "matrix.targets=[{model: mlp, dataset: digits}]",
             "--set", "matrix.methods=[random, magnitude, snip, synflow]", "--set", "matrix.variants=[]",
             "--set", "matrix.variant_methods=[snip]"]


def new_cells(workspace: Path) -> list[str]:
    from autosparse.config import load_config
    from autosparse.orchestration.pipeline import Pipeline

    overrides = [item for item in NEW_CELLS if item != "--set"]
    return [job.digest for job in Pipeline(load_config("smoke", overrides), workspace).jobs["cell"]]


def one_error_line(result: subprocess.CompletedProcess) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2, err[-3000:]
    assert len(err.splitlines()) == 1 and err.startswith("autosparse: error: "), err[-3000:]
    return err


def assert_nothing_half_written(workspace: Path) -> None:
    for kind in ("cell", "report"):
        folder = workspace / kind
        entries = list(folder.iterdir()) if folder.is_dir() else []
        assert not [p.name for p in entries if p.name.startswith(".tmp-")]
        assert all((p / MARKER).is_file() for p in entries)


def test_a_full_disk_in_a_stage_write_names_the_stage(tmp_path: Path) -> None:
    """torch.save fails without an errno on a full disk ("unexpected pos"); the error still says why."""
    with mounted_tmpfs(tmp_path / "disk", 256 * 1024) as disk:
        store = StageStore(disk / "ws")
        mask = Mask.dense(build_model("mlp", (3, 32, 32), 10))  # about 1 MB of flags
        with pytest.raises(StorageError, match="no space left on device") as error:
            with store.writing("cell", "abc") as (folder, _):
                mask.save(folder / "mask.pt")
        assert str(disk / "ws" / "cell" / "abc") in str(error.value)
        assert list((disk / "ws" / "cell").iterdir()) == [] and not store.done("cell", "abc")


def test_a_read_only_workspace_names_the_stage(tmp_path: Path) -> None:
    (tmp_path / "ws" / "cell").mkdir(parents=True)
    with mounted_tmpfs(tmp_path / "ws", 1 << 20, read_only=True) as workspace:
        store = StageStore(workspace)
        with pytest.raises(StorageError, match="read-only file system") as error:
            with store.writing("cell", "abc"):
                pass
        assert str(workspace / "cell") in str(error.value)


def test_the_object_store_lost_mid_upload(s3_env, monkeypatch, tmp_path: Path) -> None:
    """The S3 endpoint stops while a stage uploads: one error naming the workspace, no finished stage;
    once the endpoint is back, the same stage is written."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # moto keeps the bucket across restarts
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    store = StageStore(f"s3://{BUCKET}/lost", cache=tmp_path / "cache")
    with pytest.raises(WorkspaceError, match=f"lost the workspace 's3://{BUCKET}/lost' while uploading cell/abc"):
        with store.writing("cell", "abc") as (folder, _):
            (folder / "result.json").write_text("{}")
            server.stop()
    assert list((tmp_path / "cache" / "cell").iterdir()) == []
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        assert not store.done("cell", "abc")
        with store.writing("cell", "abc") as (folder, _):
            (folder / "result.json").write_text("{}")
        assert store.done("cell", "abc")
    finally:
        server.stop()


@pytest.mark.slow
def test_a_disk_filling_up_mid_matrix(smoke_workspace_copy: Path, tmp_path: Path) -> None:
    """The workspace (and its SQLite MLflow store) on a disk that fills up after a few new cells."""
    with mounted_tmpfs(tmp_path / "disk", 256 << 20) as disk:
        workspace = disk / "ws"
        shutil.copytree(smoke_workspace_copy, workspace)
        subprocess.run(["mount", "-o", f"remount,size={shutil.disk_usage(disk).used + (160 << 10)}", str(disk)],
                       check=True)
        before = finished_cells(workspace)
        result = run_cli("matrix", "smoke", "--workspace", str(workspace), "--no-progress", *NEW_CELLS)
        err = one_error_line(result)
        assert "no space left on device" in err and str(workspace) in err
        assert_nothing_half_written(workspace)
        assert finished_cells(workspace) < before + len(new_cells(workspace))


@pytest.mark.slow
def test_the_tracking_server_lost_mid_matrix(mlflow_server, smoke_workspace_copy: Path) -> None:
    """The server is SIGKILLed while new cells run: exit 2 saying to rerun, every cell kept; after a
    restart, a rerun logs each cell exactly once."""
    workspace = smoke_workspace_copy
    args = ["matrix", "smoke", "--workspace", str(workspace), "--tracking-uri", mlflow_server.uri, "--no-progress",
            *NEW_CELLS]
    before = finished_cells(workspace)
    driver = subprocess.Popen([sys.executable, "-m", "autosparse.cli", *args], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while finished_cells(workspace) == before:
        assert driver.poll() is None and time.monotonic() < deadline, "no new cell finished in time"
        time.sleep(0.2)
    mlflow_server.kill()
    out, err = driver.communicate(timeout=300)
    err = one_error_line(subprocess.CompletedProcess(args, driver.returncode, out, err))
    assert f"lost the MLflow server at '{mlflow_server.uri}'" in err and "rerun the same command" in err
    assert all((workspace / "cell" / digest / MARKER).is_file() for digest in new_cells(workspace))
    assert_nothing_half_written(workspace)

    mlflow_server.start()
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "cell: 0" in rerun.stdout
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("autosparse-smoke").experiment_id
    for digest in new_cells(workspace):
        runs = client.search_runs([experiment], f"tags.`stage.hash` = '{digest}'")
        assert [run.info.status for run in runs] == ["FINISHED"]
