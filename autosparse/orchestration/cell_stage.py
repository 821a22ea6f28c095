"""Matrix cells as a stage: a Ray task per cell (with CPU/GPU requests), or a Ray Train run when a cell
spans several workers. Each cell writes its own stage output, so an interrupted matrix resumes per cell."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..config import DataConfig, ModelOnData, PipelineConfig
from ..criteria import CRITERIA
from ..data import load_dataset
from ..masks import Mask, broadcast_mask
from ..matrix_cell import DENSE, CellSpec, run_cell
from ..methods import Method
from ..recipes import train_config
from ..schema import from_dict, to_dict
from ..training import Shard
from .allocator_stage import ALLOCATOR_FILE, allocator_for
from .scorer_stage import SCORER_FILE, scorer_for
from .stage import Job, Runner, Stage, execute_job, gather, progress_bar, register_stage
from .store import StageStore
from .tracking import NO_VARIANT, TrackedRun, params_of, point_name

RESULT_FILE = "result.json"
MASK_FILE = "mask.pt"


def criterion_facts(name: str) -> dict:
    """What about a registered criterion changes a cell's output beyond its name (steps, constants)."""
    if name not in CRITERIA:
        return {}
    criterion = CRITERIA.get(name)
    return {"default_steps": criterion.default_steps, **({"constants": criterion.constants} if criterion.constants else {})}


def method_facts(method: Method) -> dict:
    facts = {"criterion": criterion_facts(method.scores), "allocation": criterion_facts(method.allocation)}
    return {k: v for k, v in facts.items() if v}


def cell_job(spec: CellSpec, inputs: tuple[str, ...], extras: dict) -> Job:
    method = spec.pruning
    tags = {"target": spec.target.pair, "target.model": spec.target.model, "target.dataset": spec.target.dataset,
            "method": spec.label, "variant": spec.variant or NO_VARIANT,
            "criterion": method.criterion if method else DENSE,
            "scorer.name": method.scorer_name if method else None, "allocation": method.allocation if method else None,
            "init": spec.init, "sparsity": spec.sparsity, "seed": spec.seed}
    return Job("cell", spec, inputs, point_name(spec.label, spec.sparsity, spec.seed, spec.target.pair), extras, tags)


def target_cells(config: PipelineConfig, target: ModelOnData) -> list[Job]:
    """Every cell of one target: its dense reference and each method x (variant or compared init) x sparsity,
    per seed."""
    matrix = config.matrix
    train = train_config(target.dataset, target.model, matrix.train, "matrix.train")
    jobs = []
    for seed in matrix.seeds:
        common = dict(target=target, seed=seed, train=train, score_batch_size=config.data.score_batch_size)
        if matrix.dense_reference:
            jobs.append(cell_job(CellSpec(method=DENSE, sparsity=0.0, init=matrix.init, **common), (), {}))
        for text in matrix.methods:
            method = Method.parse(text)
            scorer = scorer_for(config, method.scorer_name, target) if method.is_autos else None
            allocator = allocator_for(config, target) if method.learned_allocation else None
            inputs = tuple(job.digest for job in (scorer, allocator) if job is not None)
            refs = dict(scorer=scorer.digest if scorer else None, allocator=allocator.digest if allocator else None)
            variants = [method.variant] if method.variant else \
                [None] + (list(matrix.variants) if method.selected_by(matrix.variant_methods) else [])
            inits = list(matrix.compare_inits) if method.selected_by(matrix.compare_init_methods) else []
            for variant, init in [(v, matrix.init) for v in variants] + [(method.variant, i) for i in inits]:
                for sparsity in matrix.sparsities:
                    spec = CellSpec(method=method.plain.label, sparsity=sparsity, variant=variant, init=init, **refs,
                                    **common)
                    jobs.append(cell_job(spec, inputs, method_facts(method)))
    return jobs


def device_for(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def input_files(spec: CellSpec, store: StageStore) -> tuple[Optional[Path], Optional[Path]]:
    """The cell's scorer and allocator files on this node (fetched from a shared workspace if needed)."""
    scorer = store.output("scorer", spec.scorer) / SCORER_FILE if spec.scorer else None
    allocator = store.output("allocator", spec.allocator) / ALLOCATOR_FILE if spec.allocator else None
    return scorer, allocator


def cell_train_loop(loop_config: dict) -> None:
    """Ray Train worker function for a cell spanning several workers (DDP); rank 0 reports the result."""
    import ray.train
    import ray.train.torch

    spec, data = from_dict(CellSpec, loop_config["spec"]), from_dict(DataConfig, loop_config["data"])
    context = ray.train.get_context()
    dataset = load_dataset(spec.target.dataset, data.data_root, data.download).to(ray.train.torch.get_device())
    result = run_cell(spec, dataset, *input_files(spec, StageStore(loop_config["workspace"])),
                      shard=Shard(context.get_world_rank(), context.get_world_size()),
                      wrap=ray.train.torch.prepare_model, agree=broadcast_mask)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if context.get_world_rank() == 0:
            CellStage.write(result, Path(folder))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"test_accuracy": result["test_accuracy"]}, checkpoint=checkpoint)


@register_stage("cell", CellSpec, needs=("irp", "scorer", "allocator"),
                outputs=(RESULT_FILE, MASK_FILE),
                help="matrix cells")
class CellStage(Stage):
    """Generalization-matrix cells: prune a target at init with one method, train it, evaluate it."""


    def plan(self, config: PipelineConfig, planned: Mapping[str, list[Job]]) -> list[Job]:
        return [job for target in config.matrix.targets for job in target_cells(config, target)]

    def execute(self, job: Job, folder: Path, store: StageStore, data: DataConfig) -> dict:
        spec: CellSpec = job.config
        gpus = float(job.tags.get("gpus", 0.0))
        dataset = load_dataset(spec.target.dataset, data.data_root, data.download).to(device_for(gpus))
        result = run_cell(spec, dataset, *input_files(spec, store))
        return self.write(result, folder)

    @staticmethod
    def write(result: dict, folder: Path) -> dict:
        """The result as JSON and the mask (small) beside it; returns the record."""
        mask = result.pop("mask", None)
        if mask is not None:
            mask.save(folder / MASK_FILE)
        (folder / RESULT_FILE).write_text(json.dumps(result, indent=2))
        return {"result": result}

    def run(self, jobs: list[Job], runner: Runner) -> None:
        runner.ensure_ray()
        import ray

        matrix = runner.config.matrix
        bar = progress_bar(len(jobs), "matrix cells", runner)
        if matrix.workers_per_run > 1:
            for job in jobs:
                self.run_distributed(job, runner)
                bar.update()
            bar.close()
            return
        task = ray.remote(execute_job).options(num_cpus=matrix.cpus_per_cell, num_gpus=matrix.gpus_per_cell,
                                               max_retries=3)
        threads = max(1, int(matrix.cpus_per_cell))
        refs = []
        for job in jobs:
            data = job.to_data()
            data["tags"]["gpus"] = matrix.gpus_per_cell
            refs.append(task.remote(data, runner.store.location, to_dict(runner.data), threads))
        gather(refs, lambda record: bar.update())
        bar.close()

    def run_distributed(self, job: Job, runner: Runner) -> None:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        matrix, store = runner.config.matrix, runner.store
        trainer = TorchTrainer(
            cell_train_loop,
            train_loop_config={"spec": to_dict(job.config), "data": to_dict(runner.data), "workspace": store.location},
            scaling_config=ScalingConfig(num_workers=matrix.workers_per_run, use_gpu=matrix.gpus_per_cell > 0),
            run_config=RunConfig(name=f"cell-{job.digest}", storage_path=store.path("ray"), storage_filesystem=store.fs),
        )
        with trainer.fit().checkpoint.as_directory() as checkpoint:
            result = json.loads((Path(checkpoint) / RESULT_FILE).read_text())
            with store.writing("cell", job.digest) as (folder, record):
                if (Path(checkpoint) / MASK_FILE).is_file():
                    result["mask"] = Mask.load(Path(checkpoint) / MASK_FILE)
                record.update({"label": job.label, "config": to_dict(job.config), "inputs": list(job.inputs),
                               **self.write(result, folder)})

    def track(self, job: Job, record: dict, store: StageStore) -> list[TrackedRun]:
        spec: CellSpec = job.config
        result = record["result"]
        folder = store.output("cell", job.digest)
        densities = "\n".join(f"{name}\t{d:.6f}" for name, d in result["layer_densities"].items())
        return [TrackedRun(
            name=job.label,
            tags={"stage": "cell", **{k: v for k, v in job.tags.items() if k != "gpus"}},
            params=params_of(spec),
            metrics={"test_accuracy": result["test_accuracy"], "density": result["density"],
                     "sparsity": spec.sparsity, "collapsed_layers": len(result["collapsed_layers"]),
                     "initial_loss": result["initial_loss"], "final_train_loss": result["train_loss_per_epoch"][-1],
                     **{key: result[key] for key in ("init_logit_std", "init_grad_norm") if key in result},
                     "seconds": result["seconds"], "prune_seconds": result["prune_seconds"]},
            curves={"epoch_test_accuracy": result["test_accuracy_per_epoch"],
                    "epoch_train_loss": result["train_loss_per_epoch"]},
            artifacts=[folder / MASK_FILE] if (folder / MASK_FILE).is_file() else [],
            texts={"layer_densities.tsv": f"layer\tdensity\n{densities}\n"} if densities else {},
            start_ms=int(result["started"] * 1000), end_ms=int(result["finished"] * 1000),
        )]

