"""IRP on real Ray Train: a killed worker is replaced and the chain resumes from its last round; a failed
run resumed by a new driver continues from the checkpoint; both equal an uninterrupted run bit for bit."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from autosparse.config import DataConfig, IRPChainConfig, IRPConfig, TrainConfig
from autosparse.data import load_dataset
from autosparse.irp import IRPState, run_irp
from autosparse.orchestration.irp_stage import (STATE_FILE, chain_job, fit_chain, latest_checkpoint, run_name,
                                                survival_path)
from autosparse.orchestration.stage import Job, execute_job
from autosparse.orchestration.store import StageStore
from autosparse.schema import to_dict
from autosparse.survival import read_survival

pytestmark = pytest.mark.slow


def chain(rounds: int = 4) -> IRPChainConfig:
    return IRPChainConfig("mlp", "digits", 3, IRPConfig(rounds=rounds, prune_fraction=0.4, features=["w0", "g0"]),
                          TrainConfig(epochs=3, batch_size=64))


def checkpoints(store: StageStore, job: Job) -> list[Path]:
    return sorted(p for p in (store.local / "ray" / run_name(job)).glob("checkpoint_*") if p.is_dir())


def final_state(store: StageStore, job: Job) -> IRPState:
    return latest_checkpoint(store, job)[1]


def command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # exited meanwhile
        return ""


def kill_worker_after(store: StageStore, job: Job, reported_rounds: int, timeout: float = 300) -> int:
    """Wait until `reported_rounds` round checkpoints exist, then SIGKILL the Ray Train worker."""
    deadline = time.monotonic() + timeout
    while len(checkpoints(store, job)) < reported_rounds:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    ours = psutil.Process().children(recursive=True)  # this test's local Ray, not another one on the machine
    workers = [p for p in ours if "RayTrainWorker" in command_line(p)]
    assert len(workers) == 1, workers
    workers[0].kill()
    return workers[0].pid


def reference_survival(config: IRPChainConfig) -> IRPState:
    torch.set_num_threads(1)
    return run_irp(config, load_dataset(config.dataset))


def assert_same_chain(state: IRPState, reference: IRPState) -> None:
    assert state.completed == reference.completed
    for name in reference.survival:
        assert torch.equal(state.survival[name], reference.survival[name]), name
        assert torch.equal(state.mask[name], reference.mask[name]), name
    assert [r.test_accuracy for r in state.history] == [r.test_accuracy for r in reference.history]


def test_worker_killed_in_round_two_recovers_identically(tmp_path: Path, ray_session) -> None:
    config = chain(rounds=4)
    store, job = StageStore(tmp_path), chain_job(config, {})
    runner = threading.Thread(target=lambda: fit_chain(job, DataConfig(), store, max_failures=2))
    runner.start()
    killed = kill_worker_after(store, job, reported_rounds=2)
    runner.join(timeout=600)
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    assert_same_chain(final_state(store, job), reference_survival(config))

    execute_job(job.to_data(), store.location, to_dict(DataConfig()))  # the survival dataset, from the checkpoint
    survival = read_survival(survival_path(store, job.digest))
    assert survival.metadata["rounds"] == 4 and survival.metadata["config_hash"] == job.digest
    assert len(survival.metadata["history"]) == 5
    for key in ("model", "dataset", "seed", "prune_fraction", "rewind_step", "trained_criterion", "feature_names",
                "feature_versions", "library_version"):
        assert key in survival.metadata


def test_failed_run_resumed_by_a_new_driver_from_its_checkpoint(tmp_path: Path, ray_session) -> None:
    from ray.train import TrainingFailedError

    config = chain(rounds=3)
    store, job = StageStore(tmp_path), chain_job(config, {})
    failure: dict = {}

    def first_driver() -> None:
        try:
            fit_chain(job, DataConfig(), store, max_failures=0)
        except TrainingFailedError as error:
            failure["error"] = error

    runner = threading.Thread(target=first_driver)
    runner.start()
    kill_worker_after(store, job, reported_rounds=2)
    runner.join(timeout=600)
    assert "error" in failure
    saved = torch.load(checkpoints(store, job)[-1] / STATE_FILE, weights_only=True)
    before = IRPState.from_tensors(saved["state"])
    assert 2 <= before.completed < 4

    fit_chain(job, DataConfig(), store)
    resumed = final_state(store, job)
    assert [r.seconds for r in resumed.history[:before.completed]] == [r.seconds for r in before.history]
    assert_same_chain(resumed, reference_survival(config))
