"""Matrix cells on Ray: a task per cell (with CPU/GPU requests), or a Ray Train run when a cell spans
several workers. Each cell writes its own stage output, so an interrupted matrix resumes per cell."""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import DataConfig, MatrixConfig
from ..data import load_dataset
from ..experiment import AUTOS, CellSpec, run_cell
from ..schema import from_dict, to_dict
from ..training import Shard
from .stages import StageStore, stage_hash

RESULT_FILE = "result.json"
SCORER_FILE = "scorer.safetensors"


@dataclass
class CellJob:
    spec: CellSpec
    digest: str

    @classmethod
    def of(cls, spec: CellSpec) -> "CellJob":
        return cls(spec, stage_hash("cell", spec, [spec.scorer] if spec.scorer else []))


def scorer_path(store: StageStore, spec: CellSpec) -> Optional[Path]:
    """The cell's scorer file on this node (fetched from a shared workspace if needed)."""
    return store.output("scorer", spec.scorer) / SCORER_FILE if spec.method == AUTOS else None


def device_for(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def execute_cell(spec_data: dict, data_config: dict, workspace: str, gpus: float, threads: int) -> dict:
    """Ray task body: run one cell and write its stage output; returns the result."""
    torch.set_num_threads(max(1, threads))
    spec, data = from_dict(CellSpec, spec_data), from_dict(DataConfig, data_config)
    store = StageStore(workspace)
    job = CellJob.of(spec)
    if store.done("cell", job.digest):
        return json.loads((store.output("cell", job.digest) / RESULT_FILE).read_text())
    dataset = load_dataset(spec.target.dataset, data.data_root, data.download).to(device_for(gpus))
    result = run_cell(spec, dataset, scorer_path(store, spec))
    with store.writing("cell", job.digest, {"label": spec.label, "spec": to_dict(spec)}) as folder:
        (folder / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result


def cell_train_loop(loop_config: dict) -> None:
    """Ray Train worker function for a cell spanning several workers (DDP); rank 0 reports the result."""
    import ray.train
    import ray.train.torch

    from .irp_stage import _broadcast_mask

    spec, data = from_dict(CellSpec, loop_config["spec"]), from_dict(DataConfig, loop_config["data"])
    context = ray.train.get_context()
    dataset = load_dataset(spec.target.dataset, data.data_root, data.download).to(ray.train.torch.get_device())
    result = run_cell(spec, dataset, scorer_path(StageStore(loop_config["workspace"]), spec),
                      shard=Shard(context.get_world_rank(), context.get_world_size()),
                      wrap=ray.train.torch.prepare_model, agree=_broadcast_mask)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if context.get_world_rank() == 0:
            (Path(folder) / RESULT_FILE).write_text(json.dumps(result))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"test_accuracy": result["test_accuracy"]}, checkpoint=checkpoint)


def execute_cell_distributed(job: CellJob, data: DataConfig, store: StageStore, matrix: MatrixConfig) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = matrix.gpus_per_cell > 0
    trainer = TorchTrainer(
        cell_train_loop,
        train_loop_config={"spec": to_dict(job.spec), "data": to_dict(data), "workspace": store.location},
        scaling_config=ScalingConfig(num_workers=matrix.workers_per_run, use_gpu=use_gpu),
        run_config=RunConfig(name=f"cell-{job.digest}", storage_path=store.path("ray"), storage_filesystem=store.fs),
    )
    with trainer.fit().checkpoint.as_directory() as folder:
        result = json.loads((Path(folder) / RESULT_FILE).read_text())
    with store.writing("cell", job.digest, {"label": job.spec.label, "spec": to_dict(job.spec)}) as folder:
        (folder / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result


def run_cells(jobs: list[CellJob], data: DataConfig, store: StageStore, matrix: MatrixConfig,
              on_result: Callable[[CellJob, dict], None], progress: bool = True) -> None:
    """Run every unfinished cell on Ray (retrying on worker death) and hand each result to `on_result`."""
    import ray
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="matrix cells", unit="cell", disable=not progress,
               mininterval=0.2 if sys.stderr.isatty() else 30.0)
    pending = []
    for job in jobs:
        if store.done("cell", job.digest):
            on_result(job, json.loads((store.output("cell", job.digest) / RESULT_FILE).read_text()))
            bar.update()
        else:
            pending.append(job)
    if matrix.workers_per_run > 1:
        for job in pending:
            on_result(job, execute_cell_distributed(job, data, store, matrix))
            bar.update()
        bar.close()
        return
    task = ray.remote(execute_cell).options(num_cpus=matrix.cpus_per_cell, num_gpus=matrix.gpus_per_cell,
                                            max_retries=3)
    threads = max(1, int(matrix.cpus_per_cell))
    refs = {task.remote(to_dict(job.spec), to_dict(data), store.location, matrix.gpus_per_cell, threads): job
            for job in pending}
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        job = refs.pop(ready[0])
        on_result(job, ray.get(ready[0]))
        bar.update()
    bar.close()
