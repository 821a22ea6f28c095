"""The README's main command on the smoke config, end to end with real Ray and real MLflow: killed
mid-matrix, resumed (only missing cells run), re-run with everything skipped; then the MLflow view a user
compares methods in (the README's recipe), including after the workspace was moved."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from autosparse.config import DEFAULT_INIT, load_config
from autosparse.orchestration.irp_stage import SPARSITIES_TAG
from autosparse.orchestration.pipeline import Pipeline
from autosparse.orchestration.stage import STAGES
from autosparse.orchestration.store import StageStore

from conftest import REPO, run_cli
from helpers import free_port

pytestmark = pytest.mark.slow
REQUIRED_TAGS = ("target", "target.model", "target.dataset", "method", "variant", "sparsity", "seed", "stage.hash")


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
    assert "### mlp/digits" in resumed.stdout and "| irp |" in resumed.stdout
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
    assert len(client.search_runs([experiment], "tags.stage = 'irp' and tags.role != 'reference_point'")) == 4
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
            for key in ("target.model", "target.dataset", "sparsity", "seed", "init"):
                assert tags[key] == params[key], key
            assert tags["init"] == DEFAULT_INIT  # smoke sets no init: the protocol's default
            assert run.data.metrics["init_logit_std"] >= 0 and run.data.metrics["init_grad_norm"] >= 0
            assert run.info.end_time > run.info.start_time  # real times, not the time of logging
            assert [a.path for a in client.list_artifacts(run.info.run_id)] in (
                ["layer_densities.tsv", "mask.pt"], [])  # dense cells have no mask
    starts = {r.info.start_time for r in runs if r.data.tags.get("stage") == "cell"}
    assert max(starts) - min(starts) > 1000  # cells ran over time, they were not all logged in one second

    # scorer runs: curves and the chosen epoch
    scorers = {r.info.run_id: r for r in client.search_runs([experiment], "tags.stage = 'scorer'")}
    for scorer in scorers.values():
        assert "best_within_layer_iou" in scorer.data.metrics or "best_loss" in scorer.data.metrics
        one_shot = scorer.data.params["target"] == "survival"
        assert scorer.data.params["prune.steps"] == ("1" if one_shot else "3")  # smoke.yaml: steps 3
        assert scorer.data.params["prune.step_batch_size"] == ("all" if one_shot else "64")
        curves = [k for k in scorer.data.metrics if k.startswith("val_")]
        assert "val_loss" in curves
        history = client.get_metric_history(scorer.info.run_id, "val_loss")
        assert [m.step for m in history] == list(range(len(history)))

    irp = client.search_runs([experiment], "tags.stage = 'irp' and tags.role != 'reference_point'")
    assert all("survival.parquet" in [a.path for a in client.list_artifacts(r.info.run_id)] for r in irp)
    assert all("test_accuracy" not in r.data.metrics and "final_test_accuracy" in r.data.metrics for r in irp)
    assert "report.md" in [a.path for a in client.list_artifacts(parent_of(client, experiment).info.run_id)]
    assert "compare methods" in client.get_experiment(experiment).tags["mlflow.note.content"].lower()


def parent_of(client: MlflowClient, experiment: str):
    (parent,) = client.search_runs([experiment], "tags.`autosparse.kind` = 'pipeline'")
    return parent


def test_runs_sharing_a_method_tag_are_one_arm(smoke_run) -> None:
    client, experiment = client_for(smoke_run[0])
    cells = client.search_runs([experiment], "tags.stage = 'cell'", max_results=1000)
    arms: dict[tuple, list] = {}
    for run in cells:
        tags = run.data.tags
        arms.setdefault((tags["target"], tags["sparsity"], tags["method"]), []).append(run)
        assert run.info.run_name.startswith(tags["method"] + " ")  # the method first: a narrow column shows it
        if tags["variant"] == "none":
            assert tags["method"] == run.data.params["method"]  # a plain cell's arm is its method
        else:
            assert tags["method"] == f"{run.data.params['method']}+{tags['variant']}"
    for runs in arms.values():  # one run per seed, all of one variant
        assert len({r.data.tags["seed"] for r in runs}) == len(runs) == 1  # smoke: one seed
        assert len({r.data.tags["variant"] for r in runs}) == 1
    shuffled = client.search_runs([experiment], "tags.variant = 'shuffle'", max_results=1000)
    plain = client.search_runs([experiment], "tags.stage = 'cell' and tags.variant = 'none'", max_results=1000)
    assert len(shuffled) == 4 and len(plain) == 20  # smoke: 2 AutoS methods x 2 targets; 2 x (dense + 9 methods)
    assert all(r.data.tags["method"].endswith("+shuffle") for r in shuffled)


def test_irp_references_sit_beside_the_cells_at_each_sparsity(smoke_run) -> None:
    workspace = smoke_run[0]
    client, experiment = client_for(workspace)
    point = client.search_runs([experiment], "tags.target = 'mlp/digits' and tags.sparsity = '0.9'",
                               max_results=1000)
    (irp,) = [r for r in point if r.data.tags["method"] == "irp"]
    assert len(point) == 1 + 9 + 2 * 3  # the IRP reference, 9 methods, 2 AutoS methods x 3 variants
    assert irp.info.run_name == "irp 90% seed0 mlp/digits" and irp.data.tags["variant"] == "none"
    (chain,) = client.search_runs([experiment], "tags.stage = 'irp' and tags.role = 'reference' and "
                                                "tags.`target.dataset` = 'digits'")
    rounds = client.get_metric_history(chain.info.run_id, "round_density")
    accuracies = client.get_metric_history(chain.info.run_id, "round_test_accuracy")
    # smoke: 3 rounds at prune fraction 0.5: densities 1, 0.5, 0.25, 0.125; 0.125 is closest to 0.1 in log space
    assert [m.value for m in sorted(rounds, key=lambda m: m.step)] == [1.0, 0.5, 0.25, 0.125]
    assert irp.data.metrics["sparsity"] == 0.875 and irp.data.metrics["density"] == 0.125
    assert irp.data.metrics["test_accuracy"] == max(accuracies, key=lambda m: m.step).value  # that round's accuracy
    assert irp.data.tags["irp.run_id"] == chain.info.run_id and chain.info.run_id in irp.data.tags["mlflow.note.content"]
    assert len(client.search_runs([experiment], "tags.method = 'irp'")) == 2  # per target, per matrix sparsity

    # at a sparsity whose closest round is not the last one, the point is that round, not the chain's end
    job = next(j for j in Pipeline(load_config("smoke"), workspace).jobs["irp"] if j.tags.get("target.dataset") == "digits")
    job = dataclasses.replace(job, tags={**job.tags, SPARSITIES_TAG: [0.5, 0.9]})
    store = StageStore(workspace)
    _, half, _ = STAGES.get("irp").track(job, store.record("irp", job.digest), store)
    round_one = sorted(accuracies, key=lambda m: m.step)[1].value
    assert half.metrics == {"test_accuracy": round_one, "sparsity": 0.5, "density": 0.5}
    assert half.name == "irp 50% seed0 mlp/digits" and half.part == "sparsity 0.5"


def test_the_parent_run_is_named_after_the_config_and_points_to_the_answer(smoke_run) -> None:
    workspace = smoke_run[0]
    client, experiment = client_for(workspace)
    parent = parent_of(client, experiment)
    assert parent.info.run_name == "smoke"
    description = parent.data.tags["mlflow.note.content"]
    report = next((workspace / "report").iterdir())
    assert f"`{report / 'report.md'}`" in description and "### mlp/digits" in description  # the table itself

    metrics = parent.data.metrics  # found from a label: `@` written ` at `, `+` ` plus `
    shuffled = client.search_runs([experiment], "tags.method = 'autos:conditional@alloc:learned+shuffle' and "
                                                "tags.target = 'mlp/digits'")
    assert metrics["mean.mlp/digits.autos:conditional at alloc:learned plus shuffle.0.9"] == \
        shuffled[0].data.metrics["test_accuracy"]
    assert "mean.mlp/digits.irp.0.9" in metrics and "mean.mlp/digits.dense.0" in metrics
    assert "autos_minus_best_control.mlp/digits.autos:conditional at alloc:learned.0.9" in metrics
    assert {key.split(".")[0] for key in metrics} == {"mean", "autos_minus_best_control", "autos_minus_irp"}


def test_autosparse_ui_links_into_the_runs_table_with_one_light_worker(smoke_run) -> None:
    import psutil

    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "autosparse.cli", "ui", "--workspace", str(smoke_run[0]), "--port",
                           str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
                          start_new_session=True)
    started = time.monotonic()
    try:
        lines = [ui.stdout.readline(), ui.stdout.readline()]
        link = lines[1].split(": ", 1)[1].strip()
        assert lines[1].startswith("autosparse-smoke, runs by test accuracy: ")
        assert link.startswith(f"http://127.0.0.1:{port}/#/experiments/") and "/runs?workflowType=machine_learning&" \
            "orderByKey=metrics.%60test_accuracy%60&orderByAsc=false" in link
        while True:
            try:
                page = urllib.request.urlopen(link, timeout=5).read().decode()
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() - started < 60, "the UI did not answer"
                time.sleep(0.2)
        # 5-11 s to answer on 2 busy cores (4 workers: 50-75 s); here a margin for a loaded CI machine
        assert time.monotonic() - started < 30 and "<title>MLflow</title>" in page
        experiment = link.split("/experiments/")[1].split("/")[0]
        body = json.dumps({"experiment_ids": [experiment], "order_by": ["metrics.`test_accuracy` DESC"],
                           "max_results": 5}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search", body,
                                         {"Content-Type": "application/json"})
        best = json.load(urllib.request.urlopen(request, timeout=30))["runs"][0]
        assert "test_accuracy" in {m["key"] for m in best["data"]["metrics"]}  # what the link's table shows first
        tree = [psutil.Process(ui.pid), *psutil.Process(ui.pid).children(recursive=True)]
        assert len(tree) == 2  # the `mlflow ui` process and one uvicorn worker (autosparse itself exec'ed)
        assert sum(p.memory_info().rss for p in tree) < 2**30
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


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
