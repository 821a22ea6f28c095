"""Workspaces on an object store: a real S3 API (moto's server on 127.0.0.1) through pyarrow's S3 filesystem."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pytest

from autosparse import UserError
from autosparse.orchestration.store import MARKER, StageStore

from conftest import BUCKET, REPO, kill_tree, run_cli


def remote_files(store: StageStore, relative: str) -> set[str]:
    base = store.path(relative) + "/"
    infos = store.fs.get_file_info(pafs.FileSelector(store.path(relative), allow_not_found=True, recursive=True))
    return {i.path[len(base):] for i in infos if i.type == pafs.FileType.File}


def test_stage_is_published_marker_last_and_read_by_another_node(s3_env, tmp_path):
    writer = StageStore(f"s3://{BUCKET}/publish", cache=tmp_path / "node-a")
    assert writer.remote and not writer.done("cell", "abc")
    with writer.writing("cell", "abc") as (folder, record):
        record["label"] = "x"
        (folder / "result.json").write_text('{"test_accuracy": 0.5}')
        (folder / "sub").mkdir()
        (folder / "sub" / "curve.txt").write_text("1\n2\n")
        assert remote_files(writer, "cell/abc") == set()  # nothing is visible before the stage finishes
    assert remote_files(writer, "cell/abc") == {"result.json", "sub/curve.txt", MARKER}

    reader = StageStore(f"s3://{BUCKET}/publish", cache=tmp_path / "node-b")
    assert reader.done("cell", "abc") and reader.finished("cell") == ["abc"]
    folder = reader.output("cell", "abc")
    assert folder.parent.parent == tmp_path / "node-b"
    assert (folder / "result.json").read_text() == '{"test_accuracy": 0.5}'
    assert (folder / "sub" / "curve.txt").read_text() == "1\n2\n"
    assert reader.record("cell", "abc")["label"] == "x"


def test_failed_or_unmarked_stage_is_not_finished(s3_env, tmp_path):
    store = StageStore(f"s3://{BUCKET}/partial", cache=tmp_path / "cache")
    with pytest.raises(RuntimeError, match="boom"):
        with store.writing("irp", "bad") as (folder, _):
            (folder / "survival.parquet").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert remote_files(store, "irp") == set() and list((tmp_path / "cache" / "irp").iterdir()) == []
    # files uploaded by a writer that died before its marker: present, but not a finished stage
    with store.fs.open_output_stream(store.path("irp", "cut", "survival.parquet")) as stream:
        stream.write(b"half")
    assert not store.done("irp", "cut") and store.finished("irp") == []
    assert not (store.output("irp", "cut") / "survival.parquet").exists()


def test_remove_push_and_pull(s3_env, tmp_path):
    store = StageStore(f"s3://{BUCKET}/ops", cache=tmp_path / "a")
    other = StageStore(f"s3://{BUCKET}/ops", cache=tmp_path / "b")
    for digest in ("one", "two"):
        with store.writing("scorer", digest) as (folder, _):
            (folder / "history.json").write_text("[]")
    assert (other.output("scorer", "one") / "history.json").is_file()  # now in node b's cache
    assert store.remove("scorer") == 2
    assert store.finished("scorer") == [] and not store.done("scorer", "one")
    assert not other.done("scorer", "one"), "the shared workspace decides, not a node's cache"

    report = store.local / "reports" / "r1"
    report.mkdir(parents=True)
    (report / "report.md").write_text("# table\n")
    store.push("reports/r1")
    assert (other.pull("reports") / "r1" / "report.md").read_text() == "# table\n"


def test_file_uri_is_a_local_workspace(tmp_path):
    store = StageStore(f"file://{tmp_path}/ws")
    assert not store.remote and store.local == tmp_path / "ws"
    with store.writing("cell", "d1") as (folder, _):
        (folder / "result.json").write_text("{}")
    assert (tmp_path / "ws" / "cell" / "d1" / MARKER).is_file() and store.finished("cell") == ["d1"]


def test_unknown_scheme_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="nosuchfs://bucket/ws") as error:
        StageStore("nosuchfs://bucket/ws")
    assert "\n" not in str(error.value)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pipeline_on_s3_killed_and_resubmitted_from_another_node(s3_env, tmp_path):
    """The smoke job with its workspace on S3 (Ray Train checkpoints included): a driver killed during IRP,
    a second driver with an empty cache that resumes the chain from its S3 checkpoint and finishes, and a
    third that finds every stage done."""
    from autosparse.config import load_config
    from autosparse.orchestration.irp_stage import latest_checkpoint, source_chains

    workspace = f"s3://{BUCKET}/pipeline"
    overrides = ["matrix.targets=[{model: mlp, dataset: digits}]", "matrix.methods=[snip, autos:c]",
                 "matrix.irp_reference=false", "irp.train.epochs=3",
                 "scorers=[{name: c, epochs: 2, rows_per_epoch: 5000, patience: 2, steps: 2}]"]
    args = ["run", "smoke", "--workspace", workspace, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--no-progress", *[item for o in overrides for item in ("--set", o)]]
    job = source_chains(load_config("smoke", overrides))[0]
    assert job.label == "conv/digits/seed0"
    store = StageStore(workspace, cache=tmp_path / "inspect")

    driver = subprocess.Popen([sys.executable, "-m", "autosparse.cli", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "AUTOSPARSE_CACHE": str(tmp_path / "a")})
    deadline = time.monotonic() + 300
    while latest_checkpoint(store, job) is None:
        assert driver.poll() is None and time.monotonic() < deadline, "no IRP checkpoint reached S3 in time"
        time.sleep(0.2)
    kill_tree(driver)
    before = latest_checkpoint(store, job)[1]  # the newest readable one (the kill may cut an upload short)
    assert 1 <= before.completed <= job.config.irp.rounds and not store.done("irp", job.digest)

    second = run_cli(*args, env={"AUTOSPARSE_CACHE": str(tmp_path / "b")})
    assert second.returncode == 0, second.stderr[-3000:]
    history = store.record("irp", job.digest)["history"]
    assert len(history) == job.config.irp.rounds + 1
    assert [r["seconds"] for r in history[:before.completed]] == [r.seconds for r in before.history]
    assert len(store.finished("scorer")) == 1 and len(store.finished("cell")) == 6  # dense, snip, autos x 4
    assert any(name.endswith("report.md") for name in remote_files(store, "report"))

    third = run_cli(*args, env={"AUTOSPARSE_CACHE": str(tmp_path / "c")})
    assert third.returncode == 0, third.stderr[-3000:]
    assert "stages run this time: irp: 0, scorer: 0, allocator: 0, cell: 0, report: 0" in third.stdout

    report = run_cli("report", workspace, env={"AUTOSPARSE_CACHE": str(tmp_path / "d")})
    assert report.returncode == 0, report.stderr[-3000:]
    assert "snip" in report.stdout and str(tmp_path / "d") in report.stdout  # re-rendered from the S3 records
