"""One Ray Train run per IRP chain: the training function loops over every round and checkpoints each."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..config import DataConfig, IRPChainConfig
from ..data import load_dataset
from ..irp import IRPState, chain_features, check_schedule, run_irp, survival_metadata
from ..masks import Mask
from ..schema import from_dict, to_dict
from ..survival import write_survival
from ..training import Shard
from .stages import StageStore, stage_hash

STATE_FILE = "irp_state.pt"
SURVIVAL_FILE = "survival.parquet"


@dataclass
class ChainJob:
    """An IRP chain stage: its config, hash, and where Ray Train keeps its checkpoints."""

    chain: IRPChainConfig
    digest: str

    @classmethod
    def of(cls, chain: IRPChainConfig) -> "ChainJob":
        return cls(chain, stage_hash("irp", chain))

    @property
    def run_name(self) -> str:
        return f"irp-{self.digest}"

    @property
    def label(self) -> str:
        return f"{self.chain.model}/{self.chain.dataset}/seed{self.chain.seed}"


def _broadcast_mask(mask: Mask) -> Mask:
    """All ranks adopt rank 0's mask (they agree already when training is in sync; this guarantees it)."""
    import torch.distributed as dist

    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    synced = {}
    for name, kept in mask.items():
        tensor = kept.to(device=device, dtype=torch.uint8)
        dist.broadcast(tensor, src=0)
        synced[name] = tensor.bool().cpu()
    return Mask(synced)


def irp_train_loop(loop_config: dict) -> None:
    """Ray Train worker function: resume from the latest checkpoint, run the remaining rounds."""
    import ray.train
    import ray.train.torch

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
                   "train_loss": record.train_loss, "seconds": record.seconds}
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                payload = {"state": state.to_tensors(), "weights": {k: v.cpu() for k, v in model.state_dict().items()},
                           "optimizer": optimizer.state_dict()}
                torch.save(payload, Path(folder) / STATE_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
            else:
                ray.train.report(metrics)

    wrap = ray.train.torch.prepare_model if world > 1 else (lambda model: model)
    run_irp(chain, dataset, state=state, score_batch_size=data.score_batch_size, device=device,
            shard=Shard(rank, world), wrap=wrap, agree=_broadcast_mask if world > 1 else (lambda m: m),
            on_round=on_round)


def read_checkpoint(checkpoint) -> IRPState:
    """The IRP state in a Ray Train checkpoint (local or on shared storage)."""
    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    return IRPState.from_tensors(saved["state"])


def latest_checkpoint(store: StageStore, job: ChainJob) -> Optional[tuple[str, IRPState]]:
    """The newest readable round checkpoint any earlier run of this chain left behind (its path on store.fs)."""
    from ray.train import Checkpoint

    for path in reversed(store.list_dirs(f"ray/{job.run_name}", "checkpoint_")):
        try:
            return path, read_checkpoint(Checkpoint(path, store.fs))
        except (OSError, RuntimeError, KeyError, EOFError):
            continue  # a checkpoint cut short by a crash: fall back to the one before
    return None


def fit_chain(job: ChainJob, data: DataConfig, store: StageStore, max_failures: int = 3) -> IRPState:
    """Run (or resume) the chain as one TorchTrainer run; returns the final state.

    Worker deaths are retried by Ray Train from the last round checkpoint (`max_failures`); a new
    driver continues from the newest checkpoint an interrupted run left in the workspace.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    irp = job.chain.irp
    previous = latest_checkpoint(store, job)
    if previous is not None and previous[1].completed > irp.rounds:
        return previous[1]
    trainer = TorchTrainer(
        irp_train_loop,
        train_loop_config={"chain": to_dict(job.chain), "data": to_dict(data), "workspace": store.location,
                           "resume_from": previous[0] if previous else None},
        scaling_config=ScalingConfig(num_workers=irp.num_workers, use_gpu=irp.use_gpu,
                                     resources_per_worker={"CPU": irp.cpus_per_worker, **({"GPU": 1} if irp.use_gpu else {})}),
        run_config=RunConfig(name=job.run_name, storage_path=store.path("ray"), storage_filesystem=store.fs,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"IRP chain {job.label} finished without a checkpoint")
    return read_checkpoint(result.checkpoint)


def survival_path(store: StageStore, digest: str) -> Path:
    """A finished chain's survival dataset on this node (fetched from a shared workspace if needed)."""
    return store.output("irp", digest) / SURVIVAL_FILE


def finalize_chain(job: ChainJob, state: IRPState, data: DataConfig, store: StageStore) -> Path:
    """Compute init features and write the survival dataset as a finished stage."""
    check_schedule(state, job.chain)
    dataset = load_dataset(job.chain.dataset, data.data_root, data.download)
    features = chain_features(job.chain, dataset, state, data.score_batch_size)
    metadata = survival_metadata(job.chain, state, job.digest)
    record = {"label": job.label, "config": to_dict(job.chain), "history": metadata["history"]}
    with store.writing("irp", job.digest, record) as folder:
        write_survival(folder / SURVIVAL_FILE, features, list(job.chain.irp.features), state.survival, metadata)
    return survival_path(store, job.digest)
