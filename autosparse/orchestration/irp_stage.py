"""IRP chains as a stage: one Ray Train run per chain (the training function loops over every round and
checkpoints each), then a Ray task computing the per-round features and writing the survival dataset."""
from __future__ import annotations

import dataclasses
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..config import DataConfig, IRPChainConfig, ModelOnData, PipelineConfig
from ..criteria import CRITERIA
from ..data import load_dataset
from ..errors import UserError
from ..features import feature_versions
from ..irp import IRPState, chain_features, check_schedule, run_irp, survival_metadata
from ..masks import broadcast_mask
from ..models import build_model
from ..recipes import train_config
from ..report import IRP_LABEL, irp_reference_records
from ..schema import ConfigError, from_dict, to_dict
from ..survival import write_survival
from ..training import Shard
from .stage import STAGES, Job, Runner, Stage, execute_job, node_id, register_stage
from .store import StageStore
from .tracking import NO_VARIANT, TrackedRun, params_of, point_name

STATE_FILE = "irp_state.pt"
CLUSTER_POLL_SECONDS = 2.0  # how often the IRP stage re-reads the cluster's CPUs for chains still waiting
CHAIN_TAG = "chain"  # when (start and end of its training run) and where a chain trained, for its feature task
SURVIVAL_FILE = "survival.parquet"
SPARSITIES_TAG = "reference.sparsities"  # a reference chain's matrix sparsities: one MLflow point run each
ARTIFACT_LIMIT = 50 * 2**20


def chain_job(chain: IRPChainConfig, tags: Mapping[str, str]) -> Job:
    extras = {"features": feature_versions(chain.irp.features),
              "criterion": CRITERIA.get(chain.irp.trained_criterion).constants or {}}
    return Job("irp", chain, (), f"{chain.model}/{chain.dataset}/seed{chain.seed}", extras, dict(tags))


def source_chains(config: PipelineConfig) -> list[Job]:
    """The IRP chains of the config's sources (recipe of each pair plus `irp.train`)."""
    return [chain_job(IRPChainConfig(s.model, s.dataset, s.seed, config.irp,
                                     train_config(s.dataset, s.model, config.irp.train, "irp.train"),
                                     config.data.score_batch_size),
                      {"role": "source", "source.model": s.model, "source.dataset": s.dataset})
            for s in config.sources]


def chains_for(config: PipelineConfig, target: ModelOnData) -> list[Job]:
    """Leave-target-out: the source chains a scorer or allocator applied to `target` may learn from."""
    chains = [job for job in source_chains(config) if job.config.pair != target.pair]
    if not chains:
        raise ConfigError(f"matrix.targets: {target.pair} has no source of another (model, dataset) pair to learn "
                          f"from (sources: {', '.join(s.pair for s in config.sources)}); a learned method never "
                          "sees IRP data of its target's pair")
    return chains


def reference_chains(config: PipelineConfig) -> list[Job]:
    """Each target's own IRP chain (first matrix seed), trained exactly like the target's cells (their recipe
    and sparse init)."""
    matrix = config.matrix
    if not matrix.irp_reference:
        return []
    irp = dataclasses.replace(config.irp, init=matrix.init)
    return [chain_job(IRPChainConfig(t.model, t.dataset, matrix.seeds[0], irp,
                                     train_config(t.dataset, t.model, matrix.train, "matrix.train"),
                                     config.data.score_batch_size),
                      {"role": "reference", "target.model": t.model, "target.dataset": t.dataset,
                       SPARSITIES_TAG: list(matrix.sparsities)})
            for t in matrix.targets]


def merge_jobs(jobs: list[Job]) -> list[Job]:
    """One job per digest; a chain that is both a source and a reference carries both roles' tags."""
    merged: dict[str, Job] = {}
    for job in jobs:
        if job.digest in merged:
            previous = merged[job.digest]
            roles = "+".join(sorted({*previous.tags["role"].split("+"), job.tags["role"]}))
            job = Job(job.kind, job.config, job.inputs, job.label, job.extras, {**previous.tags, **job.tags, "role": roles})
        merged[job.digest] = job
    return list(merged.values())


def irp_train_loop(loop_config: dict) -> None:
    """Ray Train worker function: resume from the latest checkpoint, run the remaining rounds."""
    import ray.train
    import ray.train.torch

    started = time.time()
    chain = from_dict(IRPChainConfig, loop_config["chain"])
    torch.set_num_threads(chain.irp.cpus_per_worker)
    data = from_dict(DataConfig, loop_config["data"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    dataset = load_dataset(chain.dataset, data.data_root, data.download).to(device)
    # Ray's checkpoint (a worker restart, or the run state Ray restored by name) and the newest one the
    # driver found in the workspace (a new driver continuing an interrupted run): continue from the later.
    checkpoints = [ray.train.get_checkpoint()]
    if loop_config["resume_from"]:
        checkpoints.append(ray.train.Checkpoint(loop_config["resume_from"], StageStore(loop_config["workspace"]).fs))
    states = [read_checkpoint(c) for c in checkpoints if c is not None]
    state = max(states, key=lambda s: s.completed) if states else None

    def on_round(state: IRPState, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        record = state.history[-1]
        metrics = {"round": record.round, "density": record.density, "test_accuracy": record.test_accuracy,
                   "train_loss": record.train_loss, "seconds": record.seconds,
                   "started": started, "finished": time.time(), "node": node_id()}
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                payload = {"state": state.to_tensors(), "weights": {k: v.cpu() for k, v in model.state_dict().items()},
                           "optimizer": optimizer.state_dict()}
                torch.save(payload, Path(folder) / STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
            else:
                ray.train.report(metrics)

    wrap = ray.train.torch.prepare_model if world > 1 else (lambda model: model)
    run_irp(chain, dataset, state=state, device=device, shard=Shard(rank, world), wrap=wrap,
            agree=broadcast_mask if world > 1 else (lambda m: m), on_round=on_round)


def read_checkpoint(checkpoint) -> IRPState:
    """The IRP state in a Ray Train checkpoint (local or on shared storage)."""
    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    return IRPState.from_tensors(saved["state"])


def run_name(job: Job) -> str:
    return f"irp-{job.digest}"


def latest_checkpoint(store: StageStore, job: Job) -> Optional[tuple[str, IRPState]]:
    """The newest readable round checkpoint any earlier run of this chain left behind (its path on store.fs)."""
    from ray.train import Checkpoint

    for path in reversed(store.list_dirs(f"ray/{run_name(job)}", "checkpoint_")):
        try:
            return path, read_checkpoint(Checkpoint(path, store.fs))
        except (OSError, RuntimeError, KeyError, EOFError):
            continue  # a checkpoint cut short by a crash: fall back to the one before
    return None


def fit_chain(job: Job, data: DataConfig, store: StageStore, max_failures: int = 3) -> Optional[dict]:
    """Run (or resume) the chain's rounds as one TorchTrainer run, unless its checkpoints hold all rounds;
    returns the last round's metrics (None when there was nothing left to run).

    Worker deaths are retried by Ray Train from the last round checkpoint (`max_failures`); a new
    driver continues from the newest checkpoint an interrupted run left in the workspace.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    irp = job.config.irp
    previous = latest_checkpoint(store, job)
    if previous is not None and previous[1].completed > irp.rounds:
        return None
    trainer = TorchTrainer(
        irp_train_loop,
        train_loop_config={"chain": to_dict(job.config), "data": to_dict(data), "workspace": store.location,
                           "resume_from": previous[0] if previous else None},
        scaling_config=ScalingConfig(num_workers=irp.num_workers, use_gpu=irp.use_gpu,
                                     resources_per_worker={"CPU": irp.cpus_per_worker, **({"GPU": 1} if irp.use_gpu else {})}),
        run_config=RunConfig(name=run_name(job), storage_path=store.path("ray"), storage_filesystem=store.fs,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"IRP chain {job.label} finished without a checkpoint")
    return result.metrics


def forward_macs(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one example's forward pass through the model's conv and linear layers (a
    conv weight is used at every output position, so parameters alone undercount conv nets)."""
    total = 0

    def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.weight[0].numel()

    layers = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, layers)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for hook in hooks:
        hook.remove()
    return total


def chain_cost(chain: IRPChainConfig, data: DataConfig) -> float:
    """A chain's compute, estimated from its recipe: trainings x epochs x training examples x forward
    multiply-accumulates per example (0 when its dataset is not on this machine)."""
    try:
        dataset = load_dataset(chain.dataset, data.data_root, download=False)
    except UserError:
        return 0.0
    model = build_model(chain.model, dataset.input_shape, dataset.num_classes, chain.seed)
    return (chain.irp.rounds + 1) * chain.train.epochs * len(dataset.train) * forward_macs(model, dataset.input_shape)


def survival_path(store: StageStore, digest: str) -> Path:
    """A finished chain's survival dataset on this node (fetched from a shared workspace if needed)."""
    return store.output("irp", digest) / SURVIVAL_FILE


def ensure_chains(jobs: list[Job], runner: Runner) -> int:
    """Run every unfinished chain of `jobs` (the public door for anything that needs survival data);
    returns how many ran."""
    stage = STAGES.get("irp")
    pending = [job for job in jobs if not runner.store.done("irp", job.digest)]
    if pending:
        stage.run(pending, runner)
    return len(pending)


@register_stage("irp", IRPChainConfig, verb="irp",
                outputs=(SURVIVAL_FILE,),
                help="run the config's IRP chains (survival datasets); prints a per-round table")
class IRPStage(Stage):
    """IRP chains of the sources and of each target (its reference curve) -> survival datasets."""


    def plan(self, config: PipelineConfig, planned: Mapping[str, list[Job]]) -> list[Job]:
        return merge_jobs(source_chains(config) + reference_chains(config))

    def run(self, jobs: list[Job], runner: Runner) -> None:
        """Start the chains longest first (one Ray Train run each), as many at a time as the cluster's CPUs
        hold, re-read whenever a chain finishes and every few seconds, so parallelism follows nodes as they
        join. While no node can take a chain yet (an autoscaling cluster at zero), every chain is submitted,
        so that the autoscaler sees the whole demand. Each chain's survival dataset is written in a Ray task
        as soon as the chain is done."""
        runner.ensure_ray()
        import ray

        jobs = sorted(jobs, key=lambda job: chain_cost(job.config, runner.data), reverse=True)
        runner.echo(f"IRP: {len(jobs)} chain(s) to run, the longest first, as many at a time as the cluster holds")
        per_chain = max(job.config.irp.num_workers * job.config.irp.cpus_per_worker for job in jobs)

        def slots() -> int:
            fit = int(ray.cluster_resources().get("CPU", 0) // per_chain)
            return fit if fit > 0 else len(jobs)
        gpu = {"num_gpus": 1} if any(job.config.irp.use_gpu for job in jobs) else {}
        task = ray.remote(execute_job).options(num_cpus=1, max_retries=2, **gpu)

        def run_chain(job: Job) -> None:
            metrics = fit_chain(job, runner.data, runner.store)
            data = job.to_data()
            if metrics is not None:  # when and where the chain trained, for MLflow (not its feature task's)
                data["tags"][CHAIN_TAG] = {key: metrics[key] for key in ("started", "finished", "node")}
            ray.get(task.remote(data, runner.store.location, to_dict(runner.data)))

        pending, running = list(jobs), set()
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            while pending or running:
                while pending and len(running) < slots():
                    running.add(pool.submit(run_chain, pending.pop(0)))
                done, running = wait(running, timeout=CLUSTER_POLL_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()

    def execute(self, job: Job, folder: Path, store: StageStore, data: DataConfig) -> dict:
        """Per-round features of the finished chain, written as its survival dataset."""
        found = latest_checkpoint(store, job)
        if found is None or found[1].completed <= job.config.irp.rounds:
            raise RuntimeError(f"IRP chain {job.label} has no finished checkpoint to write features from")
        state = found[1]
        check_schedule(state, job.config)
        dataset = load_dataset(job.config.dataset, data.data_root, data.download)
        metadata = survival_metadata(job.config, state, job.digest)
        write_survival(folder / SURVIVAL_FILE, chain_features(job.config, dataset, state), list(job.config.irp.features),
                       state.survival, metadata)
        chain = job.tags.get(CHAIN_TAG)
        return {"history": metadata["history"], **({"chain": chain, "node": chain["node"]} if chain else {})}

    def summary(self, job: Job, record: dict) -> str:
        lines = [f"IRP {job.label} ({job.digest})", f"{'round':>5} {'density':>9} {'test acc':>9} {'seconds':>8}"]
        lines += [f"{r['round']:>5} {r['density']:>9.4f} {r['test_accuracy']:>9.4f} {r['seconds']:>8.1f}"
                  for r in record["history"]]
        return "\n".join(lines)

    def track(self, job: Job, record: dict, store: StageStore) -> list[TrackedRun]:
        """The chain's run (its per-round curves), then for a reference chain one run per matrix sparsity: the
        round the report compares at that sparsity, beside the cells."""
        history, chain = record["history"], record.get("chain")
        survival = survival_path(store, job.digest)
        small = survival.stat().st_size <= ARTIFACT_LIMIT
        times = dict(start_ms=int(chain["started"] * 1000) if chain else None,
                     end_ms=int(chain["finished"] * 1000) if chain else None)
        tags = {k: v for k, v in job.tags.items() if k != SPARSITIES_TAG}
        runs = [TrackedRun(
            name=f"irp {job.label}",
            tags={"stage": "irp", "seed": job.config.seed, **tags},
            params=params_of(job.config),
            metrics={"final_density": history[-1]["density"], "final_test_accuracy": history[-1]["test_accuracy"]},
            curves={"round_test_accuracy": [r["test_accuracy"] for r in history],
                    "round_density": [r["density"] for r in history], "round_seconds": [r["seconds"] for r in history]},
            artifacts=[survival] if small else [],
            texts={"irp_rounds.txt": self.summary(job, record),
                   **({} if small else {"survival_location.txt": store.uri("irp", job.digest, SURVIVAL_FILE) + "\n"})},
            **times,
        )]
        target = job.config.pair
        for point in irp_reference_records(target, history, job.tags.get(SPARSITIES_TAG, []), job.config.seed):
            runs.append(TrackedRun(
                name=point_name(IRP_LABEL, point.sparsity, point.seed, target),
                tags={"stage": "irp", "role": "reference_point", "target": target, "target.model": job.config.model,
                      "target.dataset": job.config.dataset, "method": IRP_LABEL, "variant": NO_VARIANT,
                      "init": job.config.irp.init, "sparsity": point.sparsity, "seed": point.seed},
                params={},
                metrics={"test_accuracy": point.accuracy, "sparsity": 1 - point.irp_density, "density": point.irp_density},
                part=f"sparsity {point.sparsity}",
                **times,
            ))
        return runs
