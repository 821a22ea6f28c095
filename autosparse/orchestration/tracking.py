"""MLflow tracking from the driver: one experiment per pipeline config, a parent run, a child run per job."""
from __future__ import annotations

import functools
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional
from urllib.parse import urlsplit

from ..errors import UserError
from ..schema import flatten
from ..storage import storage_error

ARTIFACTS_FOLDER = "mlflow-artifacts"
DESCRIPTION_TAG = "mlflow.note.content"  # a run's or experiment's description in the UI (Markdown)
NO_VARIANT = "none"  # the `variant` tag of a run that is no sanity check
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
PARAM_LIMIT = 6000
TAG_LIMIT = 8000  # characters of a tag value (a description included)


@dataclass
class TrackedRun:
    """What MLflow shows for a finished job: one child run of the pipeline's parent run, or with `part` set,
    one of several (the IRP reference chain's point at each matrix sparsity)."""

    name: str
    tags: dict[str, Any]
    params: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    start_ms: Optional[int] = None
    end_ms: Optional[int] = None
    part: str = ""


class TrackingUnavailableError(UserError):
    """The MLflow tracking URI cannot be reached or used."""


def reachable(uri: str, timeout: float = 5.0) -> bool:
    """Whether the host and port of an http(s) URI accept a TCP connection."""
    parts = urlsplit(uri)
    try:
        with socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def tracking_problem(uri: str, error: BaseException) -> Optional[UserError]:
    """The user error behind a failed tracking call: the server gone, or the SQLite store's disk full or
    read-only (None: a bug)."""
    if isinstance(error, UserError):
        return None
    if uri.startswith("sqlite:///"):
        return storage_error(error, uri[len("sqlite:///"):])
    if uri.startswith(("http://", "https://")) and not reachable(uri):
        return TrackingUnavailableError(
            f"lost the MLflow server at {uri!r} ({str(error).splitlines()[0][:200]}); finished stage outputs are "
            "kept: rerun the same command once the server is back, and tracking catches up")
    return None


def guarded(method: Callable) -> Callable:
    """Raise a tracking call's failure as the user error behind it, when there is one."""
    @functools.wraps(method)
    def call(self: "Tracker", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as error:
            problem = tracking_problem(self.uri, error)
            if problem is None:
                raise
            raise problem from None

    return call


def default_tracking_uri(workspace: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace / 'mlflow.db'}"


def relocate_artifacts(uri: str, root: str) -> int:
    """Point experiments whose artifacts live in a workspace's `mlflow-artifacts` folder at `root`.

    A SQLite store keeps absolute artifact locations; after a workspace was moved or copied, this rewrites
    them (experiments and runs) to the workspace's own folder. Returns how many experiments moved.
    """
    import sqlite3

    if not uri.startswith("sqlite:///") or not os.path.isfile(uri[len("sqlite:///"):]):
        return 0
    connection = sqlite3.connect(uri[len("sqlite:///"):])
    moved = 0
    try:
        with connection:
            for experiment_id, location in connection.execute(
                    "SELECT experiment_id, artifact_location FROM experiments").fetchall():
                old = (location or "").rstrip("/")
                if not old.endswith("/" + ARTIFACTS_FOLDER) or old == root.rstrip("/"):
                    continue
                connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                                   (root, experiment_id))
                connection.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                                   "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                                   (root.rstrip("/"), len(old) + 1, experiment_id, len(old), old))
                moved += 1
    except sqlite3.DatabaseError:
        return 0  # not an MLflow store (yet): nothing to move
    finally:
        connection.close()
    return moved


def runs_table_links(uri: str, address: str) -> dict[str, str]:
    """Per autosparse experiment of a SQLite store, a link into its runs table in the UI at `address`: the
    machine-learning view (MLflow 3 opens an experiment on its GenAI pages), best test accuracy first."""
    import sqlite3
    from urllib.parse import urlencode

    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    if not os.path.isfile(path):
        return {}
    view = urlencode({"workflowType": "machine_learning", "orderByKey": "metrics.`test_accuracy`", "orderByAsc": "false"})
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active' "
                                  "AND name LIKE 'autosparse-%' ORDER BY experiment_id").fetchall()
    except sqlite3.DatabaseError:
        return {}  # not an MLflow store (yet)
    finally:
        connection.close()
    return {name: f"{address}/#/experiments/{experiment_id}/runs?{view}" for experiment_id, name in rows}


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def params_of(config: Any) -> dict[str, str]:
    """Flattened config as MLflow params (values stringified and capped at MLflow's limit; None left out)."""
    return {key: str(value)[:PARAM_LIMIT] for key, value in flatten(config).items() if value is not None}


def point_name(label: str, sparsity: float, seed: int, target: str) -> str:
    """The run name of one method's point: `snip/iter20@alloc:synflow 98% seed1 mlp/digits` (the method first:
    the UI's narrow name column cuts the end)."""
    return f"{label} {100 * sparsity:g}% seed{seed} {target}"


def run_key(digest: str, part: str) -> str:
    """A logged run's identity: its job's hash, and the part of the job it shows (if any)."""
    return f"{digest}/{part}" if part else digest


def now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """Logs jobs as child runs of one parent run per pipeline hash; idempotent across re-runs. A tracking
    store lost at any call is a `UserError` (see `tracking_problem`)."""

    @guarded
    def __init__(self, uri: str, experiment: str, pipeline_hash: str, params: dict[str, str], tags: dict[str, str],
                 artifact_root: Optional[str] = None, description: str = "", run_name: Optional[str] = None):
        self.uri = uri
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from sqlalchemy.exc import SQLAlchemyError

        if artifact_root:
            relocate_artifacts(uri, artifact_root)
        self.client = MlflowClient(tracking_uri=uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(
                experiment, artifact_location=artifact_root)
        except (MlflowException, OSError, SQLAlchemyError) as error:  # the REST, file and SQL stores' failures
            full = storage_error(error, uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
            raise full or TrackingUnavailableError(f"cannot use MLflow at {uri!r}: {str(error).splitlines()[0][:200]}") from None
        if description:
            self.client.set_experiment_tag(self.experiment_id, DESCRIPTION_TAG, description)
        run_name = run_name or f"pipeline-{pipeline_hash[:8]}"
        existing = self._search(f"tags.`pipeline.hash` = '{pipeline_hash}' and tags.`autosparse.kind` = 'pipeline'")
        if existing:
            self.parent_id = existing[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING", name=run_name)
        else:
            run = self.client.create_run(self.experiment_id, run_name=run_name,
                                         tags={"pipeline.hash": pipeline_hash, "autosparse.kind": "pipeline", **tags})
            self.parent_id = run.info.run_id
            self._log_params(self.parent_id, params)
        self._logged: dict[str, str] = {}
        for run in self._search("tags.`autosparse.kind` = 'stage'"):
            if run.info.status == "FINISHED":
                self._logged[run_key(run.data.tags["stage.hash"], run.data.tags.get("stage.part", ""))] = run.info.run_id
            else:  # half-logged by a driver that was killed: log the stage again from scratch
                self.client.delete_run(run.info.run_id)

    def _search(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=50_000)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        for chunk in _chunks([Param(k, v) for k, v in params.items()], MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk)

    def _log_metrics(self, run_id: str, metrics: dict[str, float], curves: dict[str, list[float]], at: int) -> None:
        from mlflow.entities import Metric

        entries = [Metric(k, float(v), at, 0) for k, v in metrics.items()]
        for key, values in curves.items():
            entries += [Metric(key, float(v), at, step) for step, v in enumerate(values)]
        for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk)

    def has_stage(self, digest: str, part: str = "") -> bool:
        return run_key(digest, part) in self._logged

    def link(self, run_id: str) -> str:
        """A Markdown link target to a run, relative to the UI's address (it opens in a new tab)."""
        return f"#/experiments/{self.experiment_id}/runs/{run_id}"

    @guarded
    def log_stage(self, digest: str, tracked: TrackedRun) -> str:
        """A finished child run: tags, params, metrics, per-step curves (batched), artifacts, real times."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags = {MLFLOW_PARENT_RUN_ID: self.parent_id, "autosparse.kind": "stage", "stage.hash": digest,
                **({"stage.part": tracked.part} if tracked.part else {}),
                **{k: str(v) for k, v in tracked.tags.items() if v is not None}}
        start = tracked.start_ms or now_ms()
        run_id = self.client.create_run(self.experiment_id, run_name=tracked.name, tags=tags, start_time=start).info.run_id
        self._log_params(run_id, tracked.params)
        self._log_metrics(run_id, tracked.metrics, tracked.curves, tracked.end_ms or start)
        for path in tracked.artifacts:
            self.client.log_artifact(run_id, str(path))
        for file_name, text in tracked.texts.items():
            self.client.log_text(run_id, text, file_name)
        self.client.set_terminated(run_id, end_time=tracked.end_ms or now_ms())
        self._logged[run_key(digest, tracked.part)] = run_id
        return run_id

    def run_id_of(self, digest: str) -> Optional[str]:
        """The child run of a logged job."""
        return self._logged.get(digest)

    @guarded
    def log_parent(self, tracked: TrackedRun) -> None:
        """Tags, artifacts and metrics of the pipeline's parent run (a summary logged again replaces the last)."""
        for key, value in tracked.tags.items():
            self.client.set_tag(self.parent_id, key, str(value))
        for path in tracked.artifacts:
            self.client.log_artifact(self.parent_id, str(path))
        self._log_metrics(self.parent_id, tracked.metrics, tracked.curves, now_ms())

    @guarded
    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status=status)
