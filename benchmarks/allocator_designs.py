"""Choosing the learned allocation's model, leave one source chain out.

    .venv/bin/python benchmarks/allocator_designs.py [--config benchmarks/accuracy.yaml] [--workspace DIR]

For each candidate (hidden layers; with or without the context's density interactions), fit on every
source chain but one and score the one left out: the mean |log| ratio of predicted to IRP layer density at
5%, 2% and 1% density (0 = IRP's allocation exactly). Writes benchmarks/results/validation/allocator.md.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from autosparse.config import load_config
from autosparse.learned_allocation import CONTEXT, Allocator, density_error, examples
from autosparse.orchestration.irp_stage import source_chains, survival_path
from autosparse.orchestration.store import StageStore
from autosparse.scorer.networks import MLPScorer
from autosparse.storage import atomic_write
from autosparse.survival import read_survival

INTERACTIONS = [i for i, name in enumerate(CONTEXT) if "*" in name]
CANDIDATES = [([], True), ([], False), ([8], True), ([8], False), ([32, 32], True), ([32, 32], False)]


class Restricted(torch.nn.Module):
    """A network that reads only some context columns (to fit without the density interactions)."""

    def __init__(self, columns: list[int], network: torch.nn.Module):
        super().__init__()
        self.columns, self.network = columns, network

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.network(context[:, self.columns])


def fit(datasets, hidden: list[int], interactions: bool, epochs: int = 1500) -> Allocator:
    """The allocator's own recipe (AdamW, full batch, MSE on log density ratios) on some columns."""
    columns = [i for i in range(len(CONTEXT)) if interactions or i not in INTERACTIONS]
    pairs = [examples(d) for d in datasets]
    inputs, targets = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    mean, std = inputs.mean(0), inputs.std(0).clamp_min(1e-6)
    torch.manual_seed(0)
    network = Restricted(columns, MLPScorer(len(columns), hidden, batch_norm=False))
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        loss = torch.nn.functional.mse_loss(network((inputs - mean) / std), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return Allocator(network.eval(), mean, std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).with_name("accuracy.yaml")))
    parser.add_argument("--workspace", default="autosparse-workspace-benchmark")
    parser.add_argument("--out", default="benchmarks/results/validation/allocator.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = StageStore(args.workspace)
    chains = {job.config.pair: read_survival(survival_path(store, job.digest))
              for job in source_chains(load_config(args.config))}
    lines = ["| model | density interactions | " + " | ".join(chains) + " | mean |", "|---|---|" + "---|" * (len(chains) + 1)]
    for hidden, interactions in CANDIDATES:
        errors = []
        for held, data in chains.items():
            allocator = fit([d for pair, d in chains.items() if pair != held], hidden, interactions)
            errors.append(statistics.fmean(density_error(allocator, data).values()))
        model = "linear" if not hidden else f"MLP {'-'.join(map(str, hidden))}"
        lines.append(f"| {model} | {'yes' if interactions else 'no'} | " + " | ".join(f"{e:.3f}" for e in errors)
                     + f" | {statistics.fmean(errors):.3f} |")
        print(lines[-1], flush=True)
    text = ("Leave one source chain out: mean |log(predicted / IRP layer density)| over layers and over 5%, 2% "
            "and 1% density, on the chain left out (lower is better).\n\n" + "\n".join(lines) + "\n")
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
