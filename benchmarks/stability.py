"""Is a low cell a bad mask or an unstable training run? Loss spikes per method, and the same masks retrained
at a lower learning rate.

    .venv/bin/python benchmarks/stability.py --workspace DIR [--target conv/digits] [--sparsities 0.98,0.99]
                                             [--methods synflow,iter_snip,...] [--retrain-lr 0.05]

DIR is a workspace with finished matrix cells (e.g. the accuracy benchmark's). For each cell of the target
(no sanity variants) it reads the training-loss curve and reports the largest spike: the largest rise of the
loss above its lowest value so far. With --retrain-lr, each cell's saved mask is applied to the same
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
from autosparse.config import TrainConfig
from autosparse.data import load_dataset
from autosparse.io import atomic_write
from autosparse.schema import from_dict
from autosparse.training import train


def largest_spike(losses: list[float]) -> float:
    """max over epochs e >= 1 of loss[e] - min(loss[:e]): 0 for a curve that never rises."""
    return max([losses[e] - min(losses[:e]) for e in range(1, len(losses))], default=0.0)


def cells(workspace: Path, target: str, sparsities: set[float], methods: set[str] | None):
    """(config, result, folder) of every finished cell of `target` at those sparsities, without variants."""
    for stage in sorted((workspace / "cell").glob("*/stage.json")):
        config = json.loads(stage.read_text()).get("config", {})
        pair = f"{config.get('target', {}).get('model')}/{config.get('target', {}).get('dataset')}"
        result = stage.with_name("result.json")
        if (pair != target or config.get("variant") or config.get("sparsity") not in sparsities
                or (methods and config.get("method") not in methods) or not result.exists()):
            continue
        yield config, json.loads(result.read_text()), stage.parent


def retrained_accuracy(config: dict, folder: Path, lr: float) -> float:
    model_name, dataset_name = config["target"]["model"], config["target"]["dataset"]
    dataset = load_dataset(dataset_name)
    model = build_model(model_name, dataset.input_shape, dataset.num_classes, config["seed"])
    apply_mask(model, Mask.load(folder / "mask.pt"))
    recipe = replace(from_dict(TrainConfig, config["train"], where="cell train"), lr=lr)
    return train(model, dataset, recipe, seed=config["seed"]).final_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--target", default="conv/digits")
    parser.add_argument("--sparsities", default="0.98,0.99")
    parser.add_argument("--methods", default="", help="comma-separated methods (default: every method)")
    parser.add_argument("--retrain-lr", type=float, default=None)
    parser.add_argument("--out", default="benchmarks/results/stability.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    methods = set(args.methods.split(",")) if args.methods else None
    rows = defaultdict(list)
    for config, result, folder in cells(args.workspace, args.target, set(map(float, args.sparsities.split(","))),
                                        methods):
        row = {"seed": config["seed"], "accuracy": result["test_accuracy"],
               "spike": largest_spike(result["train_loss_per_epoch"])}
        if args.retrain_lr is not None:
            row["retrained"] = retrained_accuracy(config, folder, args.retrain_lr)
        key = (config["method"], config["sparsity"], config.get("scorer"))
        rows[key].append(row)
        print(key, row, flush=True)
    lr_column = f" | accuracy at lr {args.retrain_lr} (same masks)" if args.retrain_lr is not None else ""
    lines = [f"Cells of {args.target} in `{args.workspace}`; per seed: test accuracy (%) / largest loss spike.\n",
             f"| method | sparsity | scorer | per seed | spikes > 0.5{lr_column} |",
             "|---|---|---|---|---|" + ("---|" if lr_column else "")]
    for (method, sparsity, scorer), values in sorted(rows.items(), key=lambda item: (item[0][0], item[0][1],
                                                                                      item[0][2] or "")):
        values.sort(key=lambda r: r["seed"])
        per_seed = ", ".join(f"{r['seed']}: {100 * r['accuracy']:.1f} / {r['spike']:.2f}" for r in values)
        line = (f"| {method} | {sparsity:.0%} | {scorer or ''} | {per_seed} | "
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
