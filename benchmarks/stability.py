"""Is a low cell a bad mask or an unstable training run? Loss spikes per method, and the same masks retrained
at a lower learning rate.

    .venv/bin/python benchmarks/stability.py --workspace DIR [--config benchmarks/accuracy.yaml]
        [--target conv/digits] [--sparsities 0.98,0.99] [--methods synflow,iter_snip,...] [--retrain-lr 0.05]

DIR is the workspace where the config's matrix ran (e.g. the accuracy benchmark's). For each of the config's
cells of the target (no sanity variants) it reads the training-loss curve and reports the largest spike: the
largest rise of the loss above its lowest value so far. With --retrain-lr, each cell's saved mask is applied to the same
initialization and trained again with the same recipe, seed and data order but that learning rate.
Writes benchmarks/results/stability.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from autosparse import Mask, apply_mask, build_model
from autosparse.config import ModelOnData, load_config
from autosparse.data import load_dataset
from autosparse.matrix_cell import DENSE, CellSpec
from autosparse.orchestration.cell_stage import target_cells
from autosparse.storage import atomic_write
from autosparse.training import train


def largest_spike(losses: list[float]) -> float:
    """max over epochs e >= 1 of loss[e] - min(loss[:e]): 0 for a curve that never rises."""
    return max([losses[e] - min(losses[:e]) for e in range(1, len(losses))], default=0.0)


def cells(config_path: str, workspace: Path, target: str, sparsities: set[float], methods: set[str] | None):
    """(spec, result, folder) of every finished cell of the config at `target`, without variants."""
    model, dataset = target.split("/")
    for job in target_cells(load_config(config_path), ModelOnData(model, dataset)):
        spec, folder = job.config, workspace / "cell" / job.digest
        if (spec.method == DENSE or spec.variant or spec.sparsity not in sparsities
                or (methods and spec.method not in methods) or not (folder / "result.json").exists()):
            continue
        yield spec, json.loads((folder / "result.json").read_text()), folder


def retrained_accuracy(spec: CellSpec, folder: Path, lr: float) -> float:
    dataset = load_dataset(spec.target.dataset)
    model = build_model(spec.target.model, dataset.input_shape, dataset.num_classes, spec.seed)
    apply_mask(model, Mask.load(folder / "mask.pt"))
    return train(model, dataset, replace(spec.train, lr=lr), seed=spec.seed).final_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--config", default="benchmarks/accuracy.yaml")
    parser.add_argument("--target", default="conv/digits")
    parser.add_argument("--sparsities", default="0.98,0.99")
    parser.add_argument("--methods", default="", help="comma-separated methods (default: every method)")
    parser.add_argument("--retrain-lr", type=float, default=None)
    parser.add_argument("--out", default="benchmarks/results/stability.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    methods = set(args.methods.split(",")) if args.methods else None
    rows = defaultdict(list)
    sparsities = set(map(float, args.sparsities.split(",")))
    for spec, result, folder in cells(args.config, args.workspace, args.target, sparsities, methods):
        row = {"seed": spec.seed, "accuracy": result["test_accuracy"],
               "spike": largest_spike(result["train_loss_per_epoch"])}
        if args.retrain_lr is not None:
            row["retrained"] = retrained_accuracy(spec, folder, args.retrain_lr)
        rows[(spec.method, spec.sparsity)].append(row)
        print(spec.method, spec.sparsity, row, flush=True)
    lr_column = f" | accuracy at lr {args.retrain_lr} (same masks)" if args.retrain_lr is not None else ""
    lines = [f"Cells of `{args.config}` at {args.target}; per seed: test accuracy (%) / largest training-loss "
             "spike.\n",
             f"| method | sparsity | per seed | spikes > 0.5{lr_column} |",
             "|---|---|---|---|" + ("---|" if lr_column else "")]
    for (method, sparsity), values in sorted(rows.items()):
        values.sort(key=lambda r: r["seed"])
        per_seed = ", ".join(f"{r['seed']}: {100 * r['accuracy']:.1f} / {r['spike']:.2f}" for r in values)
        line = (f"| {method} | {sparsity:.0%} | {per_seed} | "
                f"{sum(r['spike'] > 0.5 for r in values)} of {len(values)} |")
        if lr_column:
            retrained = [100 * r["retrained"] for r in values]
            spread = f" ± {statistics.stdev(retrained):.1f}" if len(retrained) > 1 else ""
            line += f" {statistics.fmean(retrained):.1f}{spread} |"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
