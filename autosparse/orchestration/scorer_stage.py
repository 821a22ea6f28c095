"""AutoS scorers as a stage: one Ray task per (scorer config, set of IRP sources).

Leave-target-out: the scorer a target's cells use is fitted on every source chain except those of the
target's own (model, dataset) pair, so the planner fits one scorer per distinct source set.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from ..config import DataConfig, PipelineConfig, ScorerConfig
from ..features import feature_versions
from ..methods import Method
from ..schema import ConfigError, to_dict
from ..scorer import fit_scorer, scorer_from_fit
from ..scorer.fit import FIT_VERSION
from ..survival import read_survival
from .irp_stage import chains_for, source_chains, survival_path
from .stage import Job, Stage, register_stage
from .store import StageStore
from .tracking import TrackedRun, params_of

SCORER_FILE = "scorer.safetensors"
HISTORY_FILE = "history.json"


def learned_from(chains: list[Job]) -> dict[str, str]:
    """MLflow tags naming the IRP chains a learned stage saw."""
    return {"source.model": "+".join(c.config.model for c in chains),
            "source.dataset": "+".join(c.config.dataset for c in chains),
            "sources": ",".join(c.label for c in chains)}


def scorer_job(scorer: ScorerConfig, chains: list[Job]) -> Job:
    if scorer.validation == "sources" and len(chains) < 2:
        raise ConfigError(f"scorers[{scorer.name}].validation: 'sources' needs two source chains to learn from, "
                          f"got {len(chains)} ({', '.join(c.label for c in chains)})")
    return Job("scorer", scorer, tuple(c.digest for c in chains),
               f"{scorer.name}@{'+'.join(c.config.pair for c in chains)}",
               {"features": feature_versions(scorer.features), "fit_version": FIT_VERSION},
               {"scorer.name": scorer.name, **learned_from(chains)})


def scorer_for(config: PipelineConfig, name: str, target) -> Job:
    """The scorer job a target's `autos:<name>` cells use."""
    scorer = next(s for s in config.scorers if s.name == name)
    return scorer_job(scorer, chains_for(config, target))


def autos_targets(config: PipelineConfig, name: str) -> list:
    used = any(Method.parse(m).scorer_name == name for m in config.matrix.methods)
    return list(config.matrix.targets) if used else []


def application_params(config: ScorerConfig) -> dict[str, str]:
    """How `prune` applies the scorer unless told otherwise (defaults resolved, so the UI shows them)."""
    batch = config.prune_step_batch_size
    return {"prune.steps": str(config.prune_steps), "prune.step_batch_size": str(batch) if batch else "all"}


@register_stage("scorer", ScorerConfig, needs=("irp",), verb="fit-scorer",
                outputs=(SCORER_FILE, HISTORY_FILE),
                help="fit the config's AutoS scorers (runs the IRP chains they need first)")
class ScorerStage(Stage):
    """AutoS scorers fitted on survival datasets (validation chooses the epochs; the saved scorer sees every row)."""


    def plan(self, config: PipelineConfig, planned: Mapping[str, list[Job]]) -> list[Job]:
        jobs: dict[str, Job] = {}
        for scorer in config.scorers:
            targets = autos_targets(config, scorer.name)
            for job in [scorer_for(config, scorer.name, t) for t in targets] or [scorer_job(scorer, source_chains(config))]:
                jobs.setdefault(job.digest, job)
        return list(jobs.values())

    def execute(self, job: Job, folder: Path, store: StageStore, data: DataConfig) -> dict:
        config: ScorerConfig = job.config
        datasets = [read_survival(survival_path(store, digest)) for digest in job.inputs]
        result = fit_scorer(datasets, config)
        sources = [{"stage_hash": h, "model": d.metadata["model"], "dataset": d.metadata["dataset"],
                    "seed": d.metadata["seed"]} for h, d in zip(job.inputs, datasets)]
        scorer_from_fit(result, config, {"config": to_dict(config), "sources": sources}).save(folder / SCORER_FILE)
        (folder / HISTORY_FILE).write_text(json.dumps(result.history, indent=2))
        return {"name": config.name, "sources": sources, "metrics": result.best, "epochs": result.epochs,
                "train_rows": result.train_rows, "validation_rows": result.validation_rows}

    def summary(self, job: Job, record: dict) -> str:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in record["metrics"].items() if k != "epoch")
        return f"AutoS scorer {job.label}: {record['epochs']} epochs; validation {metrics}"

    def track(self, job: Job, record: dict, store: StageStore) -> list[TrackedRun]:
        history = json.loads((store.output("scorer", job.digest) / HISTORY_FILE).read_text())
        keys = sorted({k for epoch in history for k in epoch})
        return [TrackedRun(
            name=f"scorer {job.label}", tags={"stage": "scorer", **job.tags},
            params=params_of(job.config) | application_params(job.config),
            metrics={f"best_{k}": v for k, v in record["metrics"].items()} | {"epochs": record["epochs"]},
            curves={f"val_{k}": [e[k] for e in history if k in e] for k in keys},
            artifacts=[store.output("scorer", job.digest) / SCORER_FILE],
        )]
