"""The Stage protocol and its registry.

A stage kind plans its jobs from the pipeline config, executes one job (writing its files and a record),
runs its pending jobs (by default as Ray tasks), and describes a finished job to MLflow. `STAGES` holds
them in dependency order and drives the pipeline, `--force` and the CLI verbs: adding a stage is one
module with one `@register_stage(...)` class (imported in `orchestration/__init__.py`).
"""
from __future__ import annotations

import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional

from ..config import DataConfig, PipelineConfig
from ..registry import Registry
from ..schema import content_hash, from_dict, non_default, to_dict
from .store import StageStore
from .tracking import TrackedRun, Tracker


def stage_hash(kind: str, config: Any, inputs: tuple[str, ...] = (), extras: Optional[Mapping] = None) -> str:
    """Hash of the stage kind, its config's non-default fields, its inputs' hashes and `extras` (values
    outside the config that change the output: feature versions, criterion constants)."""
    material = {"kind": kind, "config": non_default(config), "inputs": sorted(inputs)}
    if extras:
        material["extras"] = to_dict(dict(extras))
    return content_hash(material)


@dataclass(frozen=True)
class Job:
    """One unit of a stage: its typed config, the jobs it reads, and a label for people."""

    kind: str
    config: Any
    inputs: tuple[str, ...] = ()
    label: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, Any] = field(default_factory=dict, compare=False)  # for MLflow only, never hashed

    @cached_property
    def digest(self) -> str:
        return stage_hash(self.kind, self.config, self.inputs, self.extras)

    def to_data(self) -> dict:
        """Plain data for a Ray task (see `Stage.job_from`)."""
        return {"kind": self.kind, "config": to_dict(self.config), "inputs": list(self.inputs),
                "label": self.label, "extras": to_dict(dict(self.extras)), "tags": dict(self.tags)}


@dataclass
class Runner:
    """What a stage needs to run its pending jobs: the store, data settings, Ray and output."""

    store: StageStore
    data: DataConfig
    config: PipelineConfig
    ensure_ray: Callable[[], None]
    echo: Callable[[str], None] = print
    progress: bool = True
    tracker: Optional[Tracker] = None


class Stage:
    """Base class of a stage kind. Subclasses set the class attributes and implement `plan` and
    `execute`, and are described and registered with `@register_stage(...)`; `run` (Ray tasks), `track` and
    `summary` have defaults."""

    kind: ClassVar[str]
    config_type: ClassVar[type]
    needs: ClassVar[tuple[str, ...]] = ()
    verb: ClassVar[Optional[str]] = None
    help: ClassVar[str] = ""
    outputs: ClassVar[tuple[str, ...]] = ()
    task_cpus: ClassVar[float] = 1.0

    def plan(self, config: PipelineConfig, planned: Mapping[str, list[Job]]) -> list[Job]:
        raise NotImplementedError

    def execute(self, job: Job, folder: Path, store: StageStore, data: DataConfig) -> dict:
        """Do the work of one job: write `outputs` into `folder`, return the record (JSON-able)."""
        raise NotImplementedError

    def run(self, jobs: list[Job], runner: Runner) -> None:
        """Run pending jobs; by default one Ray task each, `task_cpus` CPUs, retried on worker death."""
        runner.ensure_ray()
        import ray

        runner.echo(f"{self.kind}: {len(jobs)} job(s) to run")
        task = ray.remote(execute_job).options(num_cpus=self.task_cpus, max_retries=2)
        gather([task.remote(job.to_data(), runner.store.location, to_dict(runner.data), int(self.task_cpus))
                for job in jobs])

    def track(self, job: Job, record: dict, store: StageStore) -> list[TrackedRun]:
        """The job's MLflow child runs: its own run, then any runs of its parts (none: no child run)."""
        return []

    def parent_logging(self, job: Job, record: dict, store: StageStore) -> Optional[TrackedRun]:
        """Metrics and artifacts the job adds to the pipeline's parent run (None: nothing)."""
        return None

    def summary(self, job: Job, record: dict) -> str:
        """A line (or table) printed for a finished job; empty for none."""
        return ""

    def job_from(self, data: dict) -> Job:
        return Job(data["kind"], from_dict(self.config_type, data["config"]), tuple(data["inputs"]), data["label"],
                   data.get("extras") or {}, data.get("tags") or {})


STAGES: Registry[Stage] = Registry("stage")


def register_stage(kind: str, config_type: type, *, outputs: tuple[str, ...], help: str,
                   needs: tuple[str, ...] = (), verb: Optional[str] = None) -> Callable[[type[Stage]], type[Stage]]:
    """Class decorator: describe a Stage subclass and register one instance of it under `kind`."""
    def register(cls: type[Stage]) -> type[Stage]:
        cls.kind, cls.config_type, cls.outputs, cls.help, cls.needs, cls.verb = \
            kind, config_type, outputs, help, needs, verb
        STAGES.register(kind)(cls())
        return cls

    return register


def ordered_stages() -> list[Stage]:
    """Every registered stage, each after the stages it needs."""
    done: dict[str, Stage] = {}

    def visit(stage: Stage, path: tuple[str, ...]) -> None:
        if stage.kind in done:
            return
        if stage.kind in path:
            raise RuntimeError(f"stages depend on each other in a cycle: {' -> '.join(path + (stage.kind,))}")
        for need in stage.needs:
            visit(STAGES.get(need), path + (stage.kind,))
        done[stage.kind] = stage

    for name in STAGES.registered():
        visit(STAGES.get(name), ())
    return list(done.values())


def gather(refs: list, on_result: Callable[[Any], None] = lambda result: None) -> None:
    """Wait for Ray tasks, calling `on_result` as each finishes. On the first failure, cancel the others
    and read them all (so that Ray reports no unhandled errors), then raise that failure."""
    import ray

    while refs:
        ready, refs = ray.wait(refs, num_returns=1)
        try:
            result = ray.get(ready[0])
        except BaseException:
            for ref in refs:
                ray.cancel(ref)
            for ref in refs:
                with suppress(Exception):
                    ray.get(ref)
            raise
        on_result(result)


def node_id() -> Optional[str]:
    """The Ray node this process runs on (None outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def execute_job(job_data: dict, workspace: str, data_config: dict, threads: int = 1) -> dict:
    """Ray task body (and in-process runner): execute one job unless it is finished; returns its record."""
    import torch

    torch.set_num_threads(max(1, threads))
    stage = STAGES.get(job_data["kind"])
    job = stage.job_from(job_data)
    store = StageStore(workspace)
    if store.done(job.kind, job.digest):
        return store.record(job.kind, job.digest)
    started = time.time()
    with store.writing(job.kind, job.digest) as (folder, record):
        record.update({"label": job.label, "config": to_dict(job.config), "inputs": list(job.inputs), "node": node_id(),
                       **stage.execute(job, folder, store, from_dict(DataConfig, data_config)),
                       "started": started, "finished": time.time()})
    return store.record(job.kind, job.digest)


class LineProgress:
    """Progress for logs (`--no-progress`, `ray job logs`): one line each time another tenth is finished."""

    def __init__(self, total: int, description: str, echo: Callable[[str], None]):
        self.total, self.description, self.echo = total, description, echo
        self.done = self.reported = 0

    def update(self) -> None:
        self.done += 1
        if self.done == self.total or 10 * self.done // self.total > 10 * self.reported // self.total:
            self.reported = self.done
            self.echo(f"{self.description}: {self.done}/{self.total} finished")

    def close(self) -> None:
        """Nothing to release (the same interface as a tqdm bar)."""


def progress_bar(total: int, description: str, runner: Runner):
    """A tqdm bar, or with progress bars off, a line per finished tenth."""
    if not runner.progress:
        return LineProgress(total, description, runner.echo)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="job", mininterval=0.2 if sys.stderr.isatty() else 30.0)
