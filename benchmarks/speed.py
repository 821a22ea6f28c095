"""Speed benchmark: pruning ResNet-18 end to end (one-shot SNIP, SynFlow's 100 steps, Iterative SNIP's
20, AutoS's 20 on 64 or on all 256 examples per step), scorer inference (compact vs the paper's MLP run the
paper's way), feature computation, IRP per-round overhead on Ray Train, matrix throughput at 1 vs 2 Ray
workers, and Ray / MLflow start-up costs. Prints a Markdown table and saves it (plus JSON) under
benchmarks/results/.

    .venv/bin/python benchmarks/speed.py [--repeats 3] [--paper-rows 500000] [--device cpu|cuda]
                                         [--sections pruning,inference,startup,ray] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from autosparse import build_model, prune
from autosparse.config import (CONDITIONAL_FEATURES, CONDITIONAL_STEP_BATCH, CONDITIONAL_STEPS,
                               TRANSFERABLE_FEATURES)
from autosparse.criteria import ScoringContext
from autosparse.features import compute_features
from autosparse.layer_allocation import SHAPE_ALLOCATIONS
from autosparse.masks import prunable_parameters
from autosparse.scorer.artifact import Scorer
from autosparse.scorer.fit import Normalization, predict
from autosparse.scorer.networks import SCORER_NETWORKS
from autosparse.storage import atomic_write

PAPER_BATCH = 8192
SPARSITY = 0.98
SECTIONS = ("pruning", "inference", "startup", "ray")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def untrained_scorer(network: str, features: list[str], hidden: list[int], steps: int = 1,
                     step_batch_size: int | None = None) -> Scorer:
    """Timing does not depend on the weights: a freshly initialized scorer of the right shape."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = SCORER_NETWORKS.get(network)(len(features), hidden).eval()
    norm = Normalization(torch.zeros(len(features)), torch.ones(len(features)))
    header = {"network": network, "hidden": hidden, "steps": steps, "step_batch_size": step_batch_size,
              "features": [{"name": f, "version": 1} for f in features]}
    return Scorer(net, norm, header)


def resnet18_and_batch(device: torch.device):
    model = build_model("resnet18", (3, 32, 32), 10, seed=0).to(device)
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(256, 3, 32, 32, generator=generator).to(device),
             torch.randint(0, 10, (256,), generator=generator).to(device))
    return model, batch, sum(p.numel() for p in prunable_parameters(model).values())


def pruning_rows(repeats: int, device: torch.device) -> list[dict]:
    """Whole `prune` calls on ResNet-18 (CIFAR-10 shape, a scoring batch of 256) at 98% sparsity: what a cell
    waits for. AutoS is the default conditional scorer (its features, 64-64, CONDITIONAL_STEPS steps, each on
    CONDITIONAL_STEP_BATCH examples), and the same scorer with every step on the whole batch, under a fixed
    allocation (a learned one costs a linear model per layer: nothing next to the steps)."""
    model, batch, weights = resnet18_and_batch(device)
    autos = untrained_scorer("compact_mlp", CONDITIONAL_FEATURES, [64, 64], CONDITIONAL_STEPS, CONDITIONAL_STEP_BATCH)
    autos.network.to(device)
    uniform = SHAPE_ALLOCATIONS.get("uniform").counts
    methods = {
        "SNIP, one shot (1 backward pass)": dict(method="snip"),
        "SynFlow, 100 steps (its own scoring)": dict(method="synflow"),
        "Iterative SNIP, 20 steps (1 backward pass on 256 examples each)": dict(method="snip", steps=20),
        f"AutoS conditional, {CONDITIONAL_STEPS} steps, features on all 256 examples each step":
            dict(method=autos, allocation=uniform, step_batch_size=len(batch[0])),
        f"AutoS conditional, {CONDITIONAL_STEPS} steps, features on {CONDITIONAL_STEP_BATCH} examples each step "
        "(the default)": dict(method=autos, allocation=uniform),
    }
    rows = []
    for what, kwargs in methods.items():
        seconds = median_time(lambda: prune(model, SPARSITY, data=batch, **kwargs), repeats)
        rows.append({"what": f"prune ResNet-18 at 98%: {what}", "weights": weights, "seconds": seconds})
    synflow = rows[1]["seconds"]
    rows.append({"what": "AutoS (the default) end to end / SynFlow (target: at most 2)", "weights": None,
                 "seconds": None, "rate": rows[4]["seconds"] / synflow, "ratio": True})
    rows.append({"what": "AutoS (whole batch each step) end to end / SynFlow", "weights": None, "seconds": None,
                 "rate": rows[3]["seconds"] / synflow, "ratio": True})
    rows.append({"what": "Iterative SNIP (20 steps) / one-shot SNIP", "weights": None, "seconds": None,
                 "rate": rows[2]["seconds"] / rows[0]["seconds"], "ratio": True})
    return rows


def paper_way(scorer: Scorer, features: torch.Tensor, device: torch.device) -> None:
    """The reference implementation's loop: a DataLoader over per-weight rows, batches of 8192, each
    moved to the scorer's device."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(features), batch_size=PAPER_BATCH)
    network, normalization = scorer.network.to(device), scorer.normalization.to(device)
    outputs = []
    with torch.no_grad():
        for (batch,) in loader:
            outputs.append(network(normalization(batch.to(device))))
    torch.cat(outputs).cpu()


def inference_rows(repeats: int, paper_rows: int, device: torch.device) -> list[dict]:
    """ResNet-18 (CIFAR-10 shape) on `device`: features, chunked scoring, the paper's loop, end to end."""
    model, batch, weights = resnet18_and_batch(device)
    rows = []
    compact = untrained_scorer("compact_mlp", TRANSFERABLE_FEATURES, [32, 32])
    paper = untrained_scorer("paper_mlp", ["w0", "g0"], [])
    for scorer in (compact, paper):
        scorer.network.to(device)
    for name, scorer in (("compact_mlp (7 features, 32-32)", compact), ("paper_mlp (w0, g0)", paper)):
        seconds = median_time(lambda: compute_features(model, [batch], scorer.feature_names), repeats)
        rows.append({"what": f"features for {name}, ResNet-18", "weights": weights, "seconds": seconds})
        features = compute_features(model, [batch], scorer.feature_names)
        seconds = median_time(lambda: [predict(scorer.network, scorer.normalization, m) for m in features.values()],
                              repeats)
        rows.append({"what": f"score: {name}, chunked (autosparse)", "weights": weights, "seconds": seconds})
    sample = torch.cat(list(compute_features(model, [batch], paper.feature_names).values()))[:paper_rows]
    seconds = median_time(lambda: paper_way(paper, sample, device), max(1, repeats - 1))
    rows.append({"what": f"score: paper_mlp, DataLoader batch 8192 (paper's way; {len(sample):,} rows timed, "
                 "extrapolated)", "weights": weights, "seconds": seconds * weights / len(sample)})
    end_to_end = median_time(lambda: compact(ScoringContext(model, [batch])), repeats)
    rows.append({"what": "one AutoS scoring pass end to end (features + compact scoring)", "weights": weights,
                 "seconds": end_to_end})
    return rows


def startup_rows(repeats: int) -> list[dict]:
    """Ray and MLflow start-up, each in a fresh interpreter (what a user waits for)."""
    code = {
        "ray.init (local, 2 CPUs, no dashboard)":
            "import ray,time;t=time.perf_counter();ray.init(num_cpus=2,include_dashboard=False);"
            "print(time.perf_counter()-t);ray.shutdown()",
        "MLflow SQLite store: create + first run":
            "import tempfile,time,os;from mlflow.tracking import MlflowClient;d=tempfile.mkdtemp();"
            "t=time.perf_counter();c=MlflowClient(f'sqlite:///{d}/m.db');e=c.create_experiment('x');"
            "c.create_run(e);print(time.perf_counter()-t)",
    }
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_LOGGING_LEVEL": "ERROR"}
    rows = []
    for what, snippet in code.items():
        values = [float(subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, env=env,
                                       check=True).stdout.strip().splitlines()[-1]) for _ in range(repeats)]
        rows.append({"what": what, "weights": None, "seconds": statistics.median(values)})
    return rows


def ray_rows(repeats: int) -> list[dict]:
    """IRP per-round overhead on Ray Train (vs the same chain in-process) and matrix cells per minute."""
    import ray

    from autosparse.config import (DataConfig, IRPChainConfig, IRPConfig, ModelOnData, PipelineConfig,
                                   TrainConfig)
    from autosparse.data import load_dataset
    from autosparse.matrix_cell import CellSpec
    from autosparse.irp import run_irp
    from autosparse.orchestration.cell_stage import CellStage, cell_job
    from autosparse.orchestration.irp_stage import chain_job, fit_chain
    from autosparse.orchestration.runtime import init_ray
    from autosparse.orchestration.stage import Runner
    from autosparse.orchestration.store import StageStore

    rows = []
    chain = IRPChainConfig("conv", "digits", 0, IRPConfig(rounds=6, prune_fraction=0.3),
                           TrainConfig(epochs=4, batch_size=64))
    torch.set_num_threads(1)
    in_process = median_time(lambda: run_irp(chain, load_dataset("digits")), repeats)
    init_ray(num_cpus=2)
    on_ray = median_time(lambda: fit_chain(chain_job(chain, {}), DataConfig(), StageStore(tempfile.mkdtemp())),
                         repeats)
    rounds = chain.irp.rounds + 1
    rows.append({"what": f"IRP conv/digits, {rounds} rounds x 4 epochs, in-process (1 thread)", "weights": None,
                 "seconds": in_process})
    rows.append({"what": "same chain as one Ray Train run (start-up + per-round checkpoints)", "weights": None,
                 "seconds": on_ray})
    rows.append({"what": "Ray Train overhead per round ((Ray - in-process) / rounds)", "weights": None,
                 "seconds": (on_ray - in_process) / rounds})
    ray.shutdown()
    train = TrainConfig(epochs=5, batch_size=64)
    jobs = [cell_job(CellSpec(ModelOnData("mlp", "digits"), method, 0.95, seed, train), (), {})
            for method in ("snip", "random", "synflow") for seed in range(4)]
    for cpus in (1, 2):
        init_ray(num_cpus=cpus)
        timings = []
        for _ in range(repeats):
            runner = Runner(StageStore(tempfile.mkdtemp()), DataConfig(), PipelineConfig(), lambda: None,
                            echo=lambda text: None, progress=False)
            started = time.perf_counter()
            CellStage().run(jobs, runner)
            timings.append(time.perf_counter() - started)
        rows.append({"what": f"matrix: {len(jobs)} mlp/digits cells (5 epochs) on {cpus} Ray worker(s), cells/min",
                     "weights": None, "seconds": statistics.median(timings),
                     "rate": 60 * len(jobs) / statistics.median(timings)})
        ray.shutdown()
    return rows


def speedup_row(rows: list[dict]) -> dict:
    compact = next(r for r in rows if r["what"].startswith("score: compact"))["seconds"]
    paper = next(r for r in rows if "paper's way" in r["what"])["seconds"]
    return {"what": "speed-up: compact chunked vs paper_mlp the paper's way", "weights": None, "seconds": None,
            "rate": paper / compact, "ratio": True}


def markdown_table(rows: list[dict]) -> list[str]:
    lines = ["| measurement | weights | seconds | rate |", "|---|---|---|---|"]
    for r in rows:
        weights = f"{r['weights']:,}" if r.get("weights") else ""
        seconds = f"{r['seconds']:.2f}" if r.get("seconds") is not None else ""
        rate = r.get("rate")
        rate_text = f"{rate:.2f}" + ("x" if r.get("ratio") else " cells/min") if rate else (
            f"{r['weights'] / r['seconds'] / 1e6:.2f} M weights/s" if r.get("weights") and r.get("seconds") else "")
        lines.append(f"| {r['what']} | {weights} | {seconds} | {rate_text} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper-rows", type=int, default=500_000, help="rows timed for the paper's way")
    parser.add_argument("--device", default="cpu", help="where the inference rows run (cpu or cuda)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of "
                        + ", ".join(SECTIONS))
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    device = torch.device(args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    if "pruning" in sections:
        rows += pruning_rows(args.repeats, device)
    if "inference" in sections:
        inference = inference_rows(args.repeats, args.paper_rows, device)
        rows += inference + [speedup_row(inference)]
    if "startup" in sections:
        rows += startup_rows(args.repeats)
    if "ray" in sections:
        rows += ray_rows(args.repeats)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {where}, torch {torch.__version__}, "
             f"median of {args.repeats} repetitions.", "", *markdown_table(rows)]
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    atomic_write(out / "speed.md", lambda tmp: Path(tmp).write_text(table))
    atomic_write(out / "speed.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2)))


if __name__ == "__main__":
    main()
