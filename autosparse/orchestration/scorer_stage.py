"""Fitting AutoS scorers as stages (a Ray task each), from finished IRP survival datasets."""
from __future__ import annotations

import json

import torch

from ..config import ScorerConfig
from ..schema import from_dict, to_dict
from ..scorer import fit_scorer, scorer_from_fit
from ..survival import read_survival
from .irp_stage import survival_path
from .matrix_stage import SCORER_FILE
from .stages import StageStore, stage_hash

HISTORY_FILE = "history.json"


def scorer_digest(config: ScorerConfig, source_hashes: list[str]) -> str:
    return stage_hash("scorer", config, source_hashes)


def execute_fit(config_data: dict, source_hashes: list[str], workspace: str, threads: int = 1,
                progress: bool = False) -> dict:
    """Fit one scorer on the survival datasets of the given IRP stages and write it as a finished stage."""
    torch.set_num_threads(max(1, threads))
    config = from_dict(ScorerConfig, config_data)
    store = StageStore(workspace)
    digest = scorer_digest(config, source_hashes)
    if store.done("scorer", digest):
        return store.record("scorer", digest)
    datasets = [read_survival(survival_path(store, h)) for h in source_hashes]
    result = fit_scorer(datasets, config, progress=progress)
    sources = [{"stage_hash": h, "model": d.metadata["model"], "dataset": d.metadata["dataset"],
                "seed": d.metadata["seed"], "config_hash": d.metadata["config_hash"]}
               for h, d in zip(source_hashes, datasets)]
    scorer = scorer_from_fit(result, config.network, config.hidden, config.features,
                             {"config": to_dict(config), "sources": sources})
    record = {"name": config.name, "config": to_dict(config), "sources": sources, "metrics": result.best,
              "train_rows": result.train_rows, "validation_rows": result.validation_rows}
    with store.writing("scorer", digest, record) as folder:
        scorer.save(folder / SCORER_FILE)
        (folder / HISTORY_FILE).write_text(json.dumps(result.history, indent=2))
    return store.record("scorer", digest)

