"""The README's main command on the smoke config, end to end with real Ray and real MLflow:
killed mid-matrix, resumed (only missing cells run), then re-run with everything skipped."""
from __future__ import annotations

import re
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli

pytestmark = pytest.mark.slow
REQUIRED_TAGS = ("target.model", "target.dataset", "method", "sparsity", "seed", "stage.hash")


def cells_run(output: str) -> int:
    return int(re.search(r"stages run this time: .*cell: (\d+)", output).group(1))


def test_smoke_run_killed_resumed_and_skipped(smoke_run) -> None:
    workspace, total, done_before, resumed = smoke_run
    assert 3 <= done_before < total
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert cells_run(resumed.stdout) == total - done_before
    assert "### mlp/digits" in resumed.stdout and "irp (reference)" in resumed.stdout
    assert not list((workspace / "cell").glob(".tmp-*"))

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("autosparse-smoke")
    parents = client.search_runs([experiment.experiment_id], "tags.`autosparse.kind` = 'pipeline'")
    assert len(parents) == 1
    cells = client.search_runs([experiment.experiment_id], "tags.stage = 'cell'", max_results=1000)
    assert len(cells) == total
    assert {r.data.tags["stage.hash"] for r in cells} == {p.name for p in (workspace / "cell").iterdir()}
    for run in cells:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert all(tag in run.data.tags for tag in REQUIRED_TAGS)
        assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    autos = [r for r in cells if r.data.tags["method"].startswith("autos:")]
    assert autos and all(r.data.tags["source.model"] == "conv" for r in autos)
    assert len(client.search_runs([experiment.experiment_id], "tags.stage = 'irp'")) == 3
    assert len(client.search_runs([experiment.experiment_id], "tags.stage = 'scorer'")) == 2

    report = next((workspace / "reports").iterdir())
    for name in ("report.md", "results.csv", "accuracy_vs_sparsity.png", "layer_densities.png",
                 "autos_gap_heatmap.png"):
        assert (report / name).stat().st_size > 0

    started = time.monotonic()
    again = run_cli("run", "smoke", "--workspace", str(workspace), "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert "stages run this time: irp: 0, scorer: 0, cell: 0" in again.stdout
    assert "### conv1d/mnist1d" in again.stdout

    regenerated = run_cli("report", str(workspace))
    assert regenerated.returncode == 0 and "### mlp/digits" in regenerated.stdout
