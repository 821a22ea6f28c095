"""The README's main command on the smoke config, end to end with real Ray and real MLflow: killed
mid-matrix, resumed (only missing cells run), re-run with everything skipped; then the MLflow view a user
compares methods in (the README's recipe), including after the workspace was moved."""
from __future__ import annotations

import re
import shutil
import time

import pytest
from mlflow.tracking import MlflowClient

from autosparse.config import DEFAULT_INIT

from conftest import run_cli

pytestmark = pytest.mark.slow
REQUIRED_TAGS = ("target.model", "target.dataset", "method", "label", "sparsity", "seed", "stage.hash")


def cells_run(output: str) -> int:
    return int(re.search(r"stages run this time: .*cell: (\d+)", output).group(1))


def client_for(workspace) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    return client, client.get_experiment_by_name("autosparse-smoke").experiment_id


def test_smoke_run_killed_resumed_and_skipped(smoke_run) -> None:
    workspace, total, done_before, resumed = smoke_run
    assert 3 <= done_before < total
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert cells_run(resumed.stdout) == total - done_before
    assert "### mlp/digits" in resumed.stdout and "irp (reference)" in resumed.stdout
    assert "AutoS method" in resumed.stdout  # the margin table
    assert not list((workspace / "cell").glob(".tmp-*"))

    client, experiment = client_for(workspace)
    parents = client.search_runs([experiment], "tags.`autosparse.kind` = 'pipeline'")
    assert len(parents) == 1
    cells = client.search_runs([experiment], "tags.stage = 'cell'", max_results=1000)
    assert len(cells) == total
    assert {r.data.tags["stage.hash"] for r in cells} == {p.name for p in (workspace / "cell").iterdir()}
    for run in cells:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert all(tag in run.data.tags for tag in REQUIRED_TAGS)
        assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0
    autos = [r for r in cells if r.data.tags["criterion"] == "autos"]
    assert autos and all(r.data.tags["source.model"] == "conv+mlp" for r in
                         client.search_runs([experiment], "tags.stage = 'scorer'"))
    assert len(client.search_runs([experiment], "tags.stage = 'irp'")) == 4  # two sources, two references
    assert len(client.search_runs([experiment], "tags.stage = 'scorer'")) == 2
    assert len(client.search_runs([experiment], "tags.stage = 'allocator'")) == 1

    report = next((workspace / "report").iterdir())
    for name in ("report.md", "results.csv", "accuracy_vs_sparsity.png", "layer_densities.png",
                 "autos_margin_heatmap.png"):
        assert (report / name).stat().st_size > 0
    text = (report / "report.md").read_text()
    assert "## Recipes" in text and "| mlp/digits | 1 | 128 |" in text  # the smoke budget, stated
    assert "Did not train" in text  # one epoch: flagged, apart from collapsed layers

    started = time.monotonic()  # the matrix verb needs every stage: all finished, so all skipped
    again = run_cli("matrix", "smoke", "--workspace", str(workspace), "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert "stages run this time: irp: 0, scorer: 0, allocator: 0, cell: 0, report: 0" in again.stdout
    assert "### conv1d/mnist1d" in again.stdout  # the verb prints the table

    regenerated = run_cli("report", str(workspace))
    assert regenerated.returncode == 0 and "### mlp/digits" in regenerated.stdout


def test_the_mlflow_view_compares_methods(smoke_run) -> None:
    workspace = smoke_run[0]
    client, experiment = client_for(workspace)

    # numeric sparsity: the README's filter, with a comparison
    sparse = client.search_runs([experiment], "tags.stage = 'cell' and metrics.sparsity > 0.5", max_results=1000)
    dense = client.search_runs([experiment], "tags.stage = 'cell' and tags.method = 'dense'")
    assert sparse and len(dense) == 2
    assert all(r.data.metrics["sparsity"] == 0.0 for r in dense)
    snip = client.search_runs([experiment], "tags.stage = 'cell' and tags.method = 'snip' and "
                                            "tags.`target.dataset` = 'digits'")
    assert len(snip) == 1 and snip[0].data.metrics["test_accuracy"] >= 0

    runs = client.search_runs([experiment], "", max_results=1000)
    for run in runs:
        for key, value in {**run.data.tags, **run.data.params}.items():
            assert value != "None", (run.info.run_name, key)
        if run.data.tags.get("stage") == "cell":
            tags, params = run.data.tags, run.data.params
            assert tags["method"] == params["method"]  # the tag is the param
            assert tags["label"].startswith(tags["method"])
            for key in ("target.model", "target.dataset", "sparsity", "seed", "init"):
                assert tags[key] == params[key], key
            assert tags["init"] == DEFAULT_INIT  # smoke sets no init: the protocol's default
            assert run.data.metrics["init_logit_std"] >= 0 and run.data.metrics["init_grad_norm"] >= 0
            assert run.info.end_time > run.info.start_time  # real times, not the time of logging
            assert [a.path for a in client.list_artifacts(run.info.run_id)] in (
                ["layer_densities.tsv", "mask.pt"], [])  # dense cells have no mask
    starts = {r.info.start_time for r in runs if r.data.tags.get("stage") == "cell"}
    assert max(starts) - min(starts) > 1000  # cells ran over time, they were not all logged in one second

    # AutoS cells link the scorer run they used
    scorers = {r.info.run_id: r for r in client.search_runs([experiment], "tags.stage = 'scorer'")}
    autos = client.search_runs([experiment], "tags.stage = 'cell' and tags.criterion = 'autos'")
    assert autos and all(r.data.tags["scorer.run_id"] in scorers for r in autos)
    for scorer in scorers.values():
        assert "best_within_layer_iou" in scorer.data.metrics or "best_loss" in scorer.data.metrics
        one_shot = scorer.data.params["target"] == "survival"
        assert scorer.data.params["prune.steps"] == ("1" if one_shot else "3")  # smoke.yaml: steps 3
        assert scorer.data.params["prune.step_batch_size"] == ("all" if one_shot else "64")
        curves = [k for k in scorer.data.metrics if k.startswith("val_")]
        assert "val_loss" in curves
        history = client.get_metric_history(scorer.info.run_id, "val_loss")
        assert [m.step for m in history] == list(range(len(history)))

    # references in the same view as the methods
    references = client.search_runs([experiment], "tags.stage = 'irp' and tags.role = 'reference'")
    assert {(r.data.tags["target.model"], r.data.tags["target.dataset"]) for r in references} == \
        {("mlp", "digits"), ("conv1d", "mnist1d")}
    assert all("final_density" in r.data.metrics for r in references)
    irp = client.search_runs([experiment], "tags.stage = 'irp'")
    assert all("survival.parquet" in [a.path for a in client.list_artifacts(r.info.run_id)] for r in irp)

    # the parent run carries the summary and the report
    parent = client.search_runs([experiment], "tags.`autosparse.kind` = 'pipeline'")[0]
    assert "mean.mlp/digits.snip.0.9" in parent.data.metrics and "mean.mlp/digits.dense.0" in parent.data.metrics
    assert any(key.startswith("autos_minus_best_control.") for key in parent.data.metrics)
    assert "report.md" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "compare methods" in client.get_experiment(experiment).tags["mlflow.note.content"].lower()


def test_a_moved_workspace_keeps_its_artifacts(smoke_run, tmp_path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(smoke_run[0], moved, ignore=shutil.ignore_patterns("ray"))
    client, experiment = client_for(moved)
    assert str(smoke_run[0]) in client.get_experiment(experiment).artifact_location  # still the old place

    again = run_cli("run", "smoke", "--workspace", str(moved), "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    client, experiment = client_for(moved)
    assert client.get_experiment(experiment).artifact_location == str(moved / "mlflow-artifacts")
    cell = client.search_runs([experiment], "tags.stage = 'cell' and tags.method = 'snip'")[0]
    path = client.download_artifacts(cell.info.run_id, "mask.pt", str(tmp_path))
    from autosparse import Mask

    assert 0 < Mask.load(path).density() < 1
    assert str(moved) in cell.info.artifact_uri
