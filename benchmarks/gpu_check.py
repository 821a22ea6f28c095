"""GPU verification of autosparse's CUDA paths on one GPU; prints a Markdown table and saves it (plus JSON).

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu] [--repeats 3]

Checks, each recorded even when another fails:
1. masked training of ResNet-18 on CIFAR-10-sized data on CUDA (SNIP at 98% on the GPU; pruned weights
   must stay exactly zero; seconds per 50,000-image epoch vs images/s on the CPU);
2. one matrix cell through the Ray-task body (`execute_cell` with a GPU), CUDA vs CPU;
3. Ray Train with one GPU worker: which device the worker gets, then an IRP chain as a TorchTrainer run
   with `use_gpu: true` and its survival dataset;
4. AutoS inference on ResNet-18 on the GPU (the rows of `speed.py`).
The images are random uint8 tensors of CIFAR-10's shape: timing does not depend on their content.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import torch

from autosparse import apply_mask, build_model, prune, prunable_parameters
from autosparse.config import DataConfig, IRPChainConfig, IRPConfig, ModelOnData, TrainConfig
from autosparse.data import Dataset, Split
from autosparse.data.vision import _TORCHVISION
from autosparse.matrix_cell import CellSpec
from autosparse.schema import to_dict
from autosparse.storage import atomic_write
from autosparse.training import train
from speed import inference_rows, markdown_table, speedup_row

CUDA = torch.device("cuda")


def cifar_sized(train_size: int, test_size: int, device: torch.device) -> Dataset:
    spec = _TORCHVISION["cifar10"]
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
                     torch.randint(0, 10, (n,), generator=generator))

    return Dataset("cifar10-sized", split(train_size), split(test_size), 10, spec.mean, spec.std,
                   spec.augment).to(device)


def masked_training(device: torch.device, train_size: int, epochs: int) -> dict:
    """SNIP at 98% then SGD; returns images/s of the last epoch and whether pruned weights stayed zero."""
    dataset = cifar_sized(train_size, 2_000, device)
    model = build_model("resnet18", (3, 32, 32), 10, seed=0).to(device)
    mask = prune(model, 0.98, "snip", dataset.sample_batch(256, 0))
    apply_mask(model, mask.to(device))
    stamps = [time.perf_counter()]
    history = train(model, dataset, TrainConfig(epochs=epochs, batch_size=128, lr=0.05), seed=0,
                    on_epoch=lambda *_: stamps.append(time.perf_counter()))
    pruned_nonzero = sum(int(p.detach()[~mask[name].to(device)].count_nonzero())
                         for name, p in prunable_parameters(model).items())
    last_epoch = stamps[-1] - stamps[-2]
    return {"images_per_s": train_size / last_epoch, "pruned_nonzero": pruned_nonzero,
            "final_loss": history.train_loss[-1], "density": mask.density()}


def check_training() -> list[dict]:
    gpu = masked_training(CUDA, 50_000, 2)
    cpu = masked_training(torch.device("cpu"), 1_280, 1)
    ok = gpu["pruned_nonzero"] == 0 and torch.isfinite(torch.tensor(gpu["final_loss"])).item()
    return [
        {"check": "ResNet-18, 98% SNIP mask, SGD on CUDA: s per 50,000-image epoch (2nd epoch)",
         "result": f"{50_000 / gpu['images_per_s']:.1f} s ({gpu['images_per_s']:,.0f} images/s); pruned weights "
                   f"non-zero after training: {gpu['pruned_nonzero']}; loss {gpu['final_loss']:.3f}", "ok": ok},
        {"check": f"same on the CPU ({torch.get_num_threads()} threads, 1,280 images)",
         "result": f"{cpu['images_per_s']:,.0f} images/s; GPU/CPU {gpu['images_per_s'] / cpu['images_per_s']:.0f}x",
         "ok": cpu["pruned_nonzero"] == 0},
    ]


def check_matrix_cell() -> list[dict]:
    from autosparse.orchestration.cell_stage import cell_job
    from autosparse.orchestration.stage import execute_job

    spec = CellSpec(ModelOnData("resnet20", "digits"), "snip", 0.98, 0, TrainConfig(epochs=5, batch_size=64))
    rows = []
    for gpus in (1, 0):
        with tempfile.TemporaryDirectory() as workspace:
            data = cell_job(spec, (), {}).to_data()
            data["tags"]["gpus"] = gpus  # what the cell stage hands its Ray tasks
            started = time.perf_counter()
            result = execute_job(data, workspace, to_dict(DataConfig()), os.cpu_count() or 1)["result"]
            seconds = time.perf_counter() - started
            written = any(Path(workspace).rglob("result.json"))
        rows.append({"check": f"matrix cell resnet20/digits snip 98%, 5 epochs, {'CUDA' if gpus else 'CPU'}",
                     "result": f"{seconds:.1f} s, accuracy {result['test_accuracy']:.3f}, density "
                               f"{result['density']:.4f}, result.json written: {written}",
                     "ok": written and abs(result["density"] - 0.02) < 1e-3})
    return rows


def probe_loop(config: dict) -> None:
    """Report the worker's device in a checkpoint (Ray Train keeps the metrics of checkpoints only)."""
    import ray.train
    import ray.train.torch

    device = ray.train.torch.get_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "device.json").write_text(json.dumps({"device": str(device), "name": name}))
        ray.train.report({}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def check_ray_train() -> list[dict]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from autosparse.orchestration.irp_stage import chain_job, fit_chain, latest_checkpoint, survival_path
    from autosparse.orchestration.runtime import init_ray
    from autosparse.orchestration.stage import execute_job
    from autosparse.orchestration.store import StageStore

    rows = []
    init_ray(num_cpus=8)
    with tempfile.TemporaryDirectory() as workspace:
        probe = TorchTrainer(probe_loop, scaling_config=ScalingConfig(num_workers=1, use_gpu=True),
                             run_config=RunConfig(name="gpu-probe", storage_path=workspace)).fit()
        with probe.checkpoint.as_directory() as folder:
            seen = json.loads((Path(folder) / "device.json").read_text())
        rows.append({"check": "Ray Train, 1 worker with use_gpu=True: the worker's device",
                     "result": f"{seen['device']} ({seen['name']}); cluster GPUs: "
                               f"{ray.cluster_resources().get('GPU', 0)}", "ok": seen["device"].startswith("cuda")})
        irp = IRPConfig(rounds=4, prune_fraction=0.5, use_gpu=True, cpus_per_worker=4)
        chain = IRPChainConfig("conv", "digits", 0, irp, TrainConfig(epochs=4, batch_size=64))
        store = StageStore(workspace)
        job = chain_job(chain, {})
        started = time.perf_counter()
        fit_chain(job, DataConfig(), store)
        fit_seconds = time.perf_counter() - started
        state = latest_checkpoint(store, job)[1]
        execute_job(job.to_data(), store.location, to_dict(DataConfig()))
        survival = survival_path(store, job.digest)
        accuracies = ", ".join(f"{r.test_accuracy:.3f}" for r in state.history)
        rows.append({"check": "IRP conv/digits, 5 trainings x 4 epochs, one Ray Train run on the GPU",
                     "result": f"{fit_seconds:.1f} s; rounds completed {state.completed}; final density "
                               f"{state.mask.density():.4f}; accuracy per round {accuracies}; survival file "
                               f"{survival.stat().st_size:,} bytes",
                     "ok": state.completed == irp.rounds + 1 and abs(state.mask.density() - 0.5 ** 4) < 1e-3})
    ray.shutdown()
    return rows


def check_inference(repeats: int) -> list[dict]:
    """The inference rows of speed.py on the GPU (the CPU rows come from running speed.py on a CPU machine)."""
    rows = inference_rows(repeats, 2_000_000, CUDA)
    return rows + [speedup_row(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.exit(2, "error: no CUDA device is visible; run this on a GPU machine\n")
    torch.set_num_threads(os.cpu_count() or 1)
    out = Path(args.out)
    header = (f"Measured {time.strftime('%Y-%m-%d')} on {torch.cuda.get_device_name()} with "
              f"{os.cpu_count()} CPU cores, torch {torch.__version__}.")
    checks, timings = [], []

    def save() -> None:
        lines = [header, "", "| check | result | ok |", "|---|---|---|"]
        lines += [f"| {c['check']} | {c['result']} | {'yes' if c['ok'] else 'NO'} |" for c in checks]
        lines += ["", f"AutoS inference on ResNet-18 on the GPU (median of {args.repeats}):", "",
                  *markdown_table(timings)]
        text = "\n".join(lines) + "\n"
        atomic_write(out / "gpu_check.md", lambda tmp: Path(tmp).write_text(text))
        atomic_write(out / "gpu_check.json", lambda tmp: Path(tmp).write_text(
            json.dumps({"header": header, "checks": checks, "inference": timings}, indent=2)))
        print(text, flush=True)

    for name, run in (("training", check_training), ("matrix cell", check_matrix_cell),
                      ("Ray Train", check_ray_train), ("inference", lambda: check_inference(args.repeats))):
        started = time.perf_counter()
        try:
            (timings if name == "inference" else checks).extend(run())
        except Exception as error:  # recorded, so one broken path does not hide the others
            traceback.print_exc()
            checks.append({"check": name, "result": f"FAILED: {type(error).__name__}: {error}".replace("\n", " "),
                           "ok": False})
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
        save()
    raise SystemExit(0 if all(c["ok"] for c in checks) else 1)


if __name__ == "__main__":
    main()
