"""MLflow tracking from the driver: one experiment per pipeline config, a parent run, a child run per stage."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from ..schema import flatten

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
PARAM_LIMIT = 6000


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking URI cannot be reached or used."""


def default_tracking_uri(workspace: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace / 'mlflow.db'}"


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def params_of(config: Any) -> dict[str, str]:
    """Flattened config as MLflow params (values stringified and capped at MLflow's limit)."""
    return {key: str(value)[:PARAM_LIMIT] for key, value in flatten(config).items()}


class Tracker:
    """Logs stages as child runs of one parent run per pipeline hash; idempotent across re-runs."""

    def __init__(self, uri: str, experiment: str, pipeline_hash: str, params: dict[str, str], tags: dict[str, str]):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        except Exception as error:  # every backend raises its own connection error type
            raise TrackingUnavailableError(f"cannot use MLflow at {uri!r}: {str(error).splitlines()[0][:200]}") from None
        existing = self._search(f"tags.`pipeline.hash` = '{pipeline_hash}' and tags.`autosparse.kind` = 'pipeline'")
        if existing:
            self.parent_id = existing[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=f"pipeline-{pipeline_hash[:8]}",
                                         tags={"pipeline.hash": pipeline_hash, "autosparse.kind": "pipeline", **tags})
            self.parent_id = run.info.run_id
            self._log_params(self.parent_id, params)
        self._logged = set()
        for run in self._search("tags.`autosparse.kind` = 'stage'"):
            if run.info.status == "FINISHED":
                self._logged.add(run.data.tags["stage.hash"])
            else:  # half-logged by a driver that was killed: log the stage again from scratch
                self.client.delete_run(run.info.run_id)

    def _search(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=50_000)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        for chunk in _chunks([Param(k, v) for k, v in params.items()], MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk)

    def has_stage(self, digest: str) -> bool:
        return digest in self._logged

    def log_stage(self, digest: str, name: str, tags: dict[str, Any], params: dict[str, str],
                  metrics: dict[str, float], curves: Optional[dict[str, list[float]]] = None,
                  artifacts: Iterable[Path] = (), texts: Optional[dict[str, str]] = None) -> str:
        """A finished child run: tags, params, final metrics, per-step curves (batched) and artifacts."""
        from mlflow.entities import Metric
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        all_tags = {MLFLOW_PARENT_RUN_ID: self.parent_id, "autosparse.kind": "stage", "stage.hash": digest,
                    **{k: str(v) for k, v in tags.items() if v is not None}}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id = run.info.run_id
        self._log_params(run_id, params)
        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for key, values in (curves or {}).items():
            entries += [Metric(key, float(v), now, step) for step, v in enumerate(values)]
        for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk)
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        for file_name, text in (texts or {}).items():
            self.client.log_text(run_id, text, file_name)
        self.client.set_terminated(run_id)
        self._logged.add(digest)
        return run_id

    def log_parent_artifacts(self, paths: Iterable[Path], metrics: Optional[dict[str, float]] = None) -> None:
        for path in paths:
            self.client.log_artifact(self.parent_id, str(path))
        if metrics:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status=status)
