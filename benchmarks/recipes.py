"""Do the default recipes converge? Dense references against their anchors, and sparse networks at 98%
sparsity trained with the recipe and with twice its epochs, beside the old 6-epoch budget.

    .venv/bin/python benchmarks/recipes.py [--seeds 0,1,2] [--pairs mlp/digits,...] [--out FILE]

A recipe counts as converged for sparse networks when doubling its epochs moves SNIP and SynFlow at 98%
by about a point or less (mean over seeds).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from autosparse import apply_mask, build_model, load_dataset, prune
from autosparse.config import TrainConfig
from autosparse.recipes import anchors, train_config
from autosparse.storage import atomic_write
from autosparse.training import train

PAIRS = [("digits", "mlp"), ("digits", "conv"), ("digits", "resnet20"), ("mnist1d", "mlp"), ("mnist1d", "conv1d")]
OLD_BUDGET = TrainConfig(epochs=6, batch_size=64, lr=0.05)  # the accuracy benchmark's budget before the recipes
SPARSITY = 0.98


def accuracy(dataset, model_name: str, recipe: TrainConfig, seed: int, method: str | None) -> float:
    model = build_model(model_name, dataset.input_shape, dataset.num_classes, seed)
    if method:
        apply_mask(model, prune(model, SPARSITY, method, dataset.sample_batch(256, seed), seed=seed))
    return train(model, dataset, recipe, seed=seed).final_accuracy


def cell(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values) if len(values) > 1 else 0:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pairs", default=",".join(f"{m}/{d}" for d, m in PAIRS),
                        help="comma-separated model/dataset pairs (default: all five)")
    parser.add_argument("--out", default="benchmarks/results/recipes.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = args.pairs.split(",")
    unknown = sorted(set(chosen) - {f"{m}/{d}" for d, m in PAIRS})
    if unknown:
        parser.error(f"--pairs: unknown pair {unknown[0]!r}")
    lines = ["| pair | recipe | dense (anchor) | dense, old 6-epoch budget | SNIP 98%: old / recipe / 2x epochs | "
             "SynFlow 98%: old / recipe / 2x epochs | seconds per recipe training |",
             "|---|---|---|---|---|---|---|"]
    for dataset_name, model in [(d, m) for d, m in PAIRS if f"{m}/{d}" in chosen]:
        dataset = load_dataset(dataset_name)
        recipe = train_config(dataset_name, model)
        doubled = dataclasses.replace(recipe, epochs=2 * recipe.epochs)
        started = time.perf_counter()
        dense = [accuracy(dataset, model, recipe, s, None) for s in seeds]
        seconds = (time.perf_counter() - started) / len(seeds)
        old_dense = [accuracy(dataset, model, OLD_BUDGET, s, None) for s in seeds]
        sparse = {method: [cell([accuracy(dataset, model, budget, s, method) for s in seeds])
                           for budget in (OLD_BUDGET, recipe, doubled)] for method in ("snip", "synflow")}
        anchor = next((a for a in anchors(dataset_name, model) if a.method == "dense"), None)
        lines.append(f"| {model}/{dataset_name} | {recipe.epochs} epochs, batch {recipe.batch_size}, lr {recipe.lr}, "
                     f"wd {recipe.weight_decay} | {cell(dense)}{f' ({anchor.accuracy:.0f})' if anchor else ''} | "
                     f"{cell(old_dense)} | {' / '.join(sparse['snip'])} | {' / '.join(sparse['synflow'])} | "
                     f"{seconds:.1f} |")
        print(lines[-1], flush=True)
    text = (f"Measured {time.strftime('%Y-%m-%d')} on 2 CPU cores (1 thread per training), seeds {args.seeds}; "
            f"test accuracy in %, mean ± std over seeds.\n\n" + "\n".join(lines) + "\n")
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
