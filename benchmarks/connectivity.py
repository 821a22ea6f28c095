"""Why a design's mask can train to chance with no collapsed layer: how many kept weights lie on an
input-output path (effective density, Vysogorets & Kempe 2023), leave one source out as in validate_designs.py.

    .venv/bin/python benchmarks/connectivity.py --workspace DIR [--held conv1d/mnist1d,mlp/mnist1d]

DIR holds the IRP chains of benchmarks/validation.yaml (`autosparse irp benchmarks/validation.yaml --workspace
DIR`). For each held-out source, the scorers and the allocator are fitted on the other sources (as in
validate_designs.py), each design prunes the held-out (model, dataset) pair at the validation seeds, and the
masks are measured; nothing is trained. Writes benchmarks/results/validation/connectivity.md.
"""
from __future__ import annotations

import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from autosparse import build_model
from autosparse.config import ModelOnData
from autosparse.connectivity import effective_mask
from autosparse.data import load_dataset
from autosparse.matrix_cell import CellSpec, cell_mask
from autosparse.methods import Method
from autosparse.recipes import train_config
from autosparse.storage import atomic_write
from validate_designs import fitted, leave_one_out_arguments, source_survival

DESIGNS = ["synflow", "iter_snip", "snip/iter20@alloc:learned", "autos:narrow/iter20@alloc:learned",
           "autos:wide/iter20@alloc:learned"]


def measure(spec: CellSpec, dataset, scorer, allocator) -> dict:
    model = build_model(spec.target.model, dataset.input_shape, dataset.num_classes, spec.seed)
    mask = cell_mask(spec, model, dataset, scorer, allocator)
    effective = effective_mask(model, mask, dataset.input_shape)
    return {"density": mask.density(), "effective": effective.density(),
            "dead_units": {name: int(n) for name, n in effective.empty_units().items()},
            "units": {name: int(t.shape[0]) for name, t in ((n, mask[n]) for n in mask)}}


def main() -> None:
    parser = leave_one_out_arguments(__doc__.splitlines()[0], "benchmarks/results/validation/connectivity.md")
    parser.add_argument("--held", default="", help="comma-separated held-out pairs (default: every source)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    chains = source_survival(args.config, args.workspace)
    held_out = args.held.split(",") if args.held else list(chains)
    unknown = sorted(set(held_out) - set(chains))
    if unknown:
        parser.error(f"--held: {unknown[0]!r} is not a source of {args.config} ({', '.join(chains)})")
    rows = defaultdict(list)
    with tempfile.TemporaryDirectory() as scratch:
        for held in held_out:
            others = [d for pair, d in chains.items() if pair != held]
            model, dataset_name = held.split("/")
            dataset = load_dataset(dataset_name)
            for design in DESIGNS:
                method = Method.parse(design)
                scorer, allocator = fitted(held, others, Path(scratch), method.scorer_name,
                                           method.learned_allocation)
                for sparsity in map(float, args.sparsities.split(",")):
                    for seed in map(int, args.seeds.split(",")):
                        spec = CellSpec(ModelOnData(model, dataset_name), design, sparsity, seed,
                                        train_config(dataset_name, model))
                        row = measure(spec, dataset, scorer, allocator)
                        rows[(held, design, sparsity)].append(row)
                        print(f"{held:18s} {design:38s} {sparsity:.2f} seed {seed}: density {row['density']:.4f}, "
                              f"on a path {row['effective']:.4f}", flush=True)
    lines = [f"Masks of the designs on each held-out source, fitted on the other sources of `{args.config}`; seeds "
             f"{args.seeds}; mean over seeds. 'on a path': share of the kept weights that lie on an input-output "
             "path; 'dead units': per layer, output units left with no kept input on such a path.", "",
             "| held out | design | sparsity | density | on a path | dead units per layer |",
             "|---|---|---|---|---|---|"]
    for (held, design, sparsity), found in rows.items():
        share = statistics.fmean(r["effective"] / r["density"] for r in found)
        dead = " ".join(f"{statistics.fmean(r['dead_units'][n] for r in found):.0f}/{found[0]['units'][n]}"
                        for n in found[0]["units"])
        lines.append(f"| {held} | {design} | {sparsity:.0%} | {statistics.fmean(r['density'] for r in found):.4f} | "
                     f"{share:.0%} | {dead} |")
    text = "\n".join(lines) + "\n"
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
