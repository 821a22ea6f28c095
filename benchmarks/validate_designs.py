"""Choosing the AutoS design on validation sources only: leave one source out, never a test target.

    .venv/bin/autosparse irp benchmarks/validation.yaml --workspace DIR
    .venv/bin/python benchmarks/validate_designs.py [--config benchmarks/validation.yaml] [--workspace DIR]

For every source chain of the config (read from the workspace, where `autosparse irp` put them), each
candidate design is fitted on the OTHER sources only, then prunes that
held-out source's (model, dataset) pair at validation seeds (10, 11: no test target uses them), and the
network trains with its recipe from each sparse init of `--inits` (rows are labelled `<design> init:<name>`
for inits other than `original`, the init every design was chosen under before). Writes
benchmarks/results/validation/{results.jsonl, validation.md}; rows already in results.jsonl are not recomputed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from autosparse.config import (TRANSFERABLE_FEATURES, AllocatorConfig, ModelOnData, ScorerConfig, load_config)
from autosparse.data import load_dataset
from autosparse.learned_allocation import fit_allocator
from autosparse.matrix_cell import CellSpec, run_cell
from autosparse.methods import Method
from autosparse.orchestration.irp_stage import source_chains, survival_path
from autosparse.orchestration.store import StageStore
from autosparse.recipes import train_config
from autosparse.report import CellRecord
from autosparse.scorer import fit_scorer, scorer_from_fit
from autosparse.sparse_init import ORIGINAL, SPARSE_INITS
from autosparse.storage import atomic_write
from autosparse.survival import read_survival

# `wide` reads the default conditional features (config.CONDITIONAL_FEATURES); `narrow` its five within-layer
# features only (the default before this comparison). Both score every step on the whole scoring batch
# (validation.yaml's 256 examples), as they were measured; `wide-b64` is the default: 64 examples per step.
NARROW_FEATURES = ["log_abs_w0_z", "log_snip_z", "synflow_z", "in_unit_kept", "out_unit_kept"]
WHOLE_BATCH = 256
SCORERS = {
    "paper": ScorerConfig(name="paper", network="paper_mlp", features=["w0", "g0"], target="survival", loss="mse",
                          epochs=4, rows_per_epoch=30000),
    "oneshot": ScorerConfig(name="oneshot", hidden=[32, 32], features=list(TRANSFERABLE_FEATURES), target="survival",
                            loss="pairwise", epochs=20),
    "narrow": ScorerConfig(name="narrow", features=NARROW_FEATURES, validation="layers", step_batch_size=WHOLE_BATCH),
    "wide": ScorerConfig(name="wide", validation="layers", step_batch_size=WHOLE_BATCH),
    "wide-b64": ScorerConfig(name="wide-b64", validation="layers", step_batch_size=64),
    "narrow-src": ScorerConfig(name="narrow-src", features=NARROW_FEATURES, validation="sources",
                               step_batch_size=WHOLE_BATCH),
    "wide-src": ScorerConfig(name="wide-src", validation="sources", step_batch_size=WHOLE_BATCH),
}
DESIGNS = ["snip", "synflow", "iter_snip", "snip/iter20@alloc:learned", "autos:paper", "autos:oneshot@alloc:learned",
           "autos:narrow/iter20", "autos:narrow/iter20@alloc:synflow", "autos:narrow/iter20@alloc:learned",
           "autos:wide/iter20@alloc:learned", "autos:wide/iter10@alloc:learned",
           "autos:wide-b64/iter20@alloc:learned",
           "autos:narrow-src/iter20@alloc:learned", "autos:wide-src/iter20@alloc:learned"]


def fitted(held: str, others: list, out: Path, scorer: str | None, allocator: bool) -> tuple:
    """The scorer and allocator files for one held-out source (fitted once, kept in `out`)."""
    folder = out / held.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [None, None]
    if scorer:
        paths[0] = folder / f"{scorer}.safetensors"
        if not paths[0].exists():
            config = SCORERS[scorer]
            scorer_from_fit(fit_scorer(others, config), config, {}).save(paths[0])
    if allocator:
        paths[1] = folder / "allocator.safetensors"
        if not paths[1].exists():
            fit_allocator(others, AllocatorConfig())[0].save(paths[1])
    return tuple(paths)


def row_init(row: dict) -> str:
    return row.get("init", ORIGINAL)  # rows written before sparse inits existed are `original`


def row_label(design: str, init: str) -> str:
    return design if init == ORIGINAL else f"{design} init:{init}"


def table(rows: list[dict]) -> str:
    """Designs (x inits) as rows, held-out pair x sparsity as columns; a design needs every column. The last
    column counts the cells that did not train (rows written before that was recorded show '?')."""
    cells, untrained = defaultdict(list), defaultdict(list)
    for row in rows:
        key = (row_label(row["design"], row_init(row)), row["held_out"], row["sparsity"])
        cells[key].append(row["accuracy"])
        untrained[key[0]].append(row.get("did_not_train"))
    held = sorted({r["held_out"] for r in rows})
    sparsities = sorted({r["sparsity"] for r in rows})
    columns = [(h, s) for h in held for s in sparsities]
    lines = ["| design | " + " | ".join(f"{h} {s:.0%}" for h, s in columns) + " | mean | did not train |",
             "|---|" + "---|" * (len(columns) + 2)]
    labels = [row_label(d, i) for i in [ORIGINAL, *SPARSE_INITS.registered()] for d in DESIGNS]
    for label in dict.fromkeys(labels):
        values = [statistics.fmean(cells[(label, h, s)]) for h, s in columns if cells.get((label, h, s))]
        if len(values) < len(columns):
            continue
        flags = untrained[label]
        count = "?" if None in flags else f"{sum(flags)} of {len(flags)}"
        lines.append(f"| {label} | " + " | ".join(f"{100 * v:.1f}" for v in values) +
                     f" | {100 * statistics.fmean(values):.1f} | {count} |")
    return "\n".join(lines) + "\n"


def leave_one_out_arguments(description: str, out: str) -> argparse.ArgumentParser:
    """The options every leave-one-source-out script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=str(Path(__file__).with_name("validation.yaml")))
    parser.add_argument("--workspace", default="autosparse-workspace-benchmark")
    parser.add_argument("--seeds", default="10,11")
    parser.add_argument("--sparsities", default="0.98,0.99")
    parser.add_argument("--out", default=out)
    return parser


def source_survival(config_path: str, workspace: str) -> dict:
    """(model/dataset pair) -> survival dataset of each source chain of the config, read from the workspace."""
    store = StageStore(workspace)
    return {job.config.pair: read_survival(survival_path(store, job.digest))
            for job in source_chains(load_config(config_path))}


def source_pairs(config_path: str) -> list[str]:
    return [job.config.pair for job in source_chains(load_config(config_path))]


def main() -> None:
    parser = leave_one_out_arguments(__doc__.splitlines()[0], "benchmarks/results/validation")
    parser.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated subset of the designs")
    parser.add_argument("--inits", default=ORIGINAL, help="comma-separated sparse inits (autosparse/sparse_init.py)")
    parser.add_argument("--held", default=None, help="comma-separated held-out pairs (default: every source); "
                        "validation_architectures:<class>/<dataset> for a deep validation network")
    parser.add_argument("--report", default="validation.md", help="the table's file name in --out")
    args = parser.parse_args()
    designs, inits = args.designs.split(","), args.inits.split(",")
    unknown = sorted(set(designs) - set(DESIGNS))
    if unknown:
        parser.error(f"--designs: unknown design {unknown[0]!r}")
    if set(inits) - set(SPARSE_INITS):
        parser.error(f"--inits: unknown sparse init {sorted(set(inits) - set(SPARSE_INITS))[0]!r}")
    torch.set_num_threads(1)
    pairs = source_pairs(args.config)
    learned = any(Method.parse(d).is_autos or Method.parse(d).learned_allocation for d in designs)
    chains = source_survival(args.config, args.workspace) if learned else {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    done = {(r["design"], r["held_out"], r["sparsity"], r["seed"], row_init(r)) for r in rows}
    with tempfile.TemporaryDirectory() as scratch:
        for held in args.held.split(",") if args.held else pairs:
            others = [d for pair, d in chains.items() if pair != held]
            model, dataset_name = held.split("/")
            dataset = load_dataset(dataset_name)
            for design in designs:
                missing = [(sparsity, seed, init) for sparsity in map(float, args.sparsities.split(","))
                           for seed in map(int, args.seeds.split(",")) for init in inits
                           if (design, held, sparsity, seed, init) not in done]
                if not missing:
                    continue
                method = Method.parse(design)
                scorer, allocator = fitted(held, others, Path(scratch), method.scorer_name,
                                           method.learned_allocation)
                for sparsity, seed, init in missing:
                    spec = CellSpec(ModelOnData(model, dataset_name), design, sparsity, seed,
                                    train_config(dataset_name, model), init=init)
                    result = run_cell(spec, dataset, scorer, allocator)
                    row = {"design": design, "held_out": held, "sparsity": sparsity, "seed": seed, "init": init,
                           "accuracy": result["test_accuracy"], "layer_densities": result["layer_densities"],
                           "did_not_train": not CellRecord.of(spec, result).trained,
                           "init_logit_std": result["init_logit_std"], "init_grad_norm": result["init_grad_norm"]}
                    rows.append(row)
                    with results.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(f"{held:18s} {row_label(design, init):60s} {sparsity:.2f} seed {seed}: "
                          f"{100 * row['accuracy']:.1f}", flush=True)
    held = args.held.split(",") if args.held else pairs
    text = (f"Held out: {', '.join(held)} (designs fitted on the sources of `{Path(args.config).name}` other than "
            f"the held-out pair); validation seeds {args.seeds}; test accuracy in %, mean over seeds.\n\n"
            + table([row for row in rows if row["held_out"] in held]))
    atomic_write(out / args.report, lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
