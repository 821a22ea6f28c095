"""Ray Tune over scorer designs with real Ray Tune and real MLflow, on the smoke survival datasets."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from autosparse.config import ScorerConfig, load_config, load_space
from autosparse.schema import ConfigError, from_dict

from conftest import REPO, run_cli

SPACE = REPO / "tuning" / "smoke_space.yaml"


def test_packaged_spaces_validate() -> None:
    for path in (REPO / "tuning").glob("*.yaml"):
        space = load_space(path)
        assert space.num_samples > 0
        assert isinstance(space.resolve({}), ScorerConfig)


def test_space_rejects_non_scorer_fields(tmp_path: Path) -> None:
    bad = tmp_path / "space.yaml"
    bad.write_text("space:\n  learning_rate: {loguniform: [0.001, 0.01]}\n")
    with pytest.raises(ConfigError, match="learning_rate.*not a scorer field"):
        load_space(bad)
    bad.write_text("space:\n  loss: {choice: [bce, hinge]}\n")
    with pytest.raises(ConfigError, match="hinge"):
        load_space(bad)


def test_feature_groups_expand() -> None:
    space = load_space(REPO / "tuning" / "scorer_space.yaml")
    assert space.resolve({"features": "paper"}).features == ["w0", "g0"]


def test_a_space_reading_features_the_base_chains_lack_fails_before_any_trial() -> None:
    space = load_space(REPO / "tuning" / "scorer_space.yaml")
    quickstart = load_config("quickstart")
    space.check_features(quickstart.irp.features, "quickstart")
    space.space["features"].choice.append("all")
    with pytest.raises(ConfigError, match=r"candidates read .*grasp.*IRP chains of 'quickstart'"):
        space.check_features(quickstart.irp.features, "quickstart")


@pytest.mark.slow
def test_tiny_search_tracks_every_trial_and_exports_best(smoke_workspace_copy: Path) -> None:
    workspace = smoke_workspace_copy
    result = run_cli("tune", str(SPACE), "--base", "smoke", "--workspace", str(workspace), "--no-progress")
    assert result.returncode == 0, result.stderr[-4000:]
    folder = next((workspace / "tune").glob("tune-*"))
    best = yaml.safe_load((folder / "best_scorer.yaml").read_text())
    config = from_dict(ScorerConfig, best)
    assert config.epochs == 3 and config.loss == "bce" and config.target in ("survival", "next_round")
    assert (folder / "best_scorer.safetensors").stat().st_size > 0
    table = (folder / "results.md").read_text()
    assert table.count("\n| ") >= 4

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("autosparse-tune-smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("autosparse.kind") == "pipeline"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(trials) == 4
    assert all("heldout_within_layer_iou" in r.data.metrics for r in trials)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"best_scorer.yaml", "results.md", "best_scorer.safetensors"} <= artifacts

    again = run_cli("tune", str(SPACE), "--base", "smoke", "--workspace", str(workspace), "--no-progress")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resuming" in again.stdout
