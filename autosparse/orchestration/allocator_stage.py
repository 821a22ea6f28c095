"""The learned layer allocation as a stage: one Ray task per set of IRP sources (leave-target-out, as
for scorers), for the targets whose methods use `@alloc:learned`."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..config import AllocatorConfig, DataConfig, ModelOnData, PipelineConfig
from ..learned_allocation import FIT_VERSION, fit_allocator
from ..methods import Method
from ..survival import read_survival
from .irp_stage import chains_for, survival_path
from .scorer_stage import learned_from
from .stage import Job, Stage, register_stage
from .store import StageStore
from .tracking import TrackedRun, params_of

ALLOCATOR_FILE = "allocator.safetensors"


def allocator_for(config: PipelineConfig, target: ModelOnData) -> Job:
    """The allocator job a target's `@alloc:learned` cells use."""
    chains = chains_for(config, target)
    return Job("allocator", config.allocator, tuple(c.digest for c in chains),
               f"allocator@{'+'.join(c.config.pair for c in chains)}", {"fit_version": FIT_VERSION},
               learned_from(chains))


def uses_learned_allocation(config: PipelineConfig) -> bool:
    return any(Method.parse(m).learned_allocation for m in config.matrix.methods)


@register_stage("allocator", AllocatorConfig, needs=("irp",), verb="fit-allocator",
                outputs=(ALLOCATOR_FILE,),
                help="fit the learned layer allocation for the targets that use `@alloc:learned`")
class AllocatorStage(Stage):
    """Learned layer allocations (layer context and global density -> layer density)."""


    def plan(self, config: PipelineConfig, planned: Mapping[str, list[Job]]) -> list[Job]:
        if not uses_learned_allocation(config):
            return []
        jobs = {job.digest: job for job in (allocator_for(config, t) for t in config.matrix.targets)}
        return list(jobs.values())

    def execute(self, job: Job, folder: Path, store: StageStore, data: DataConfig) -> dict:
        datasets = [read_survival(survival_path(store, digest)) for digest in job.inputs]
        allocator, metrics = fit_allocator(datasets, job.config)
        allocator.save(folder / ALLOCATOR_FILE)
        return {"metrics": metrics, "sources": [d.label for d in datasets]}

    def summary(self, job: Job, record: dict) -> str:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(record["metrics"].items()))
        return f"allocator {job.label}: {metrics or 'no IRP round near 5/2/1% density to score'}"

    def track(self, job: Job, record: dict, store: StageStore) -> list[TrackedRun]:
        return [TrackedRun(name=job.label, tags={"stage": "allocator", **job.tags}, params=params_of(job.config),
                           metrics=record["metrics"], artifacts=[store.output("allocator", job.digest) / ALLOCATOR_FILE])]
