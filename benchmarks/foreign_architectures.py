"""A fitted AutoS scorer and learned allocation (e.g. the quickstart's own) on architectures outside the
model registry, on both embedded datasets: deeper and wider MLPs, a BatchNorm VGG-style net with
max-pooling, a depthwise-separable residual net, a token MLP with LayerNorm and a six-layer conv net without
normalization (all defined here, for 2-D digits and 1-D MNIST-1D inputs alike).

    make run                                    # the quickstart: fits the scorer and the allocation
    .venv/bin/python benchmarks/foreign_architectures.py --scorer autosparse-workspace/scorer/<hash>/scorer.safetensors \\
        --allocator autosparse-workspace/allocator/<hash>/allocator.safetensors [--seeds 1,2,3] \\
        [--sparsities 0.98,0.99] [--datasets digits,mnist1d] [--architectures deep_conv,...] \\
        [--inits unit_fan_in,original] [--irp]

Each network is pruned by the default AutoS method (the scorer in its own steps under the learned
allocation), by SNIP, SynFlow and iterative SNIP, then trained from each sparse init with the dataset's
default recipe (autosparse/recipes.py) at each seed, exactly as a matrix cell (`run_cell`), beside its
dense reference. Two swaps tell the layer allocation from the ranking inside layers: the scorer under
SynFlow's per-layer counts, and SynFlow under the learned allocation. With --irp, an IRP chain of the
architecture (first seed, 28% per round, the same recipe and the first init) gives the accuracy of IRP's
own mask at the nearest density. Writes the report (tables with the signal at init of every cell that did
not train, untrained counts per method, plots) and target.md (AutoS against the best control) to --out.
"""
from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import autosparse
from accuracy import target_table
from autosparse.config import DEFAULT_INIT, IRPChainConfig, IRPConfig, ModelOnData
from autosparse.irp import run_irp
from autosparse.layer_allocation import LEARNED
from autosparse.matrix_cell import DENSE, CellSpec, cell_mask, run_cell
from autosparse.methods import Method
from autosparse.recipes import train_config
from autosparse.report import CellRecord, ReportContext, irp_reference_records, write_report
from autosparse.sparse_init import ORIGINAL
from autosparse.storage import atomic_write


def conv_layer(dims: int):
    return nn.Conv1d if dims == 1 else nn.Conv2d


def batch_norm(dims: int):
    return nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d


class DeepMLP(nn.Sequential):
    """Four hidden layers, 512-256-128-64."""

    def __init__(self, input_shape, num_classes):
        layers, width = [nn.Flatten()], math.prod(input_shape)
        for hidden in (512, 256, 128, 64):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        super().__init__(*layers, nn.Linear(width, num_classes))


class WideShallow(nn.Sequential):
    """One tanh hidden layer of 2048 units."""

    def __init__(self, input_shape, num_classes):
        super().__init__(nn.Flatten(), nn.Linear(math.prod(input_shape), 2048), nn.Tanh(),
                         nn.Linear(2048, num_classes))


class BatchNormConvNet(nn.Module):
    """VGG style: conv-BN-ReLU twice, max-pooling, a wider conv, global average pooling, a linear head."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        dims, conv, norm = len(input_shape) - 1, conv_layer(len(input_shape) - 1), batch_norm(len(input_shape) - 1)
        pool = nn.MaxPool1d(2) if dims == 1 else nn.MaxPool2d(2)
        self.features = nn.Sequential(conv(input_shape[0], 48, 3, padding=1), norm(48), nn.ReLU(),
                                      conv(48, 48, 3, padding=1), norm(48), nn.ReLU(), pool,
                                      conv(48, 96, 3, padding=1), norm(96), nn.ReLU())
        self.classifier = nn.Linear(96, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(2).mean(2))


class DepthwiseResidual(nn.Module):
    """MobileNet style: two depthwise-separable blocks (the first residual), GELU, BatchNorm."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        conv, norm = conv_layer(len(input_shape) - 1), batch_norm(len(input_shape) - 1)
        self.stem = conv(input_shape[0], 32, 3, padding=1)
        self.depthwise1, self.pointwise1 = conv(32, 32, 3, padding=1, groups=32), conv(32, 32, 1)
        self.depthwise2, self.pointwise2 = conv(32, 32, 3, padding=1, groups=32), conv(32, 64, 1)
        self.norm = norm(64)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        h = F.gelu(self.stem(x))
        h = h + F.gelu(self.pointwise1(self.depthwise1(h)))
        h = F.gelu(self.norm(self.pointwise2(self.depthwise2(h))))
        return self.head(h.flatten(2).mean(2))


class TokenMLP(nn.Module):
    """Rows (digits) or positions (MNIST-1D) as tokens: a shared embedding, a LayerNorm residual mixing
    layer, a linear head over all tokens."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        tokens = input_shape[-1] if len(input_shape) == 2 else input_shape[1]
        channels = input_shape[0] if len(input_shape) == 2 else input_shape[0] * input_shape[2]
        self.embed, self.norm, self.mix = nn.Linear(channels, 64), nn.LayerNorm(64), nn.Linear(64, 64)
        self.head = nn.Linear(64 * tokens, num_classes)

    def forward(self, x):
        x = x.permute(0, 2, 1, 3).flatten(2) if x.dim() == 4 else x.transpose(1, 2)
        h = torch.relu(self.embed(x))
        h = h + torch.relu(self.mix(self.norm(h)))
        return self.head(h.flatten(1))


class DeepConvNet(nn.Module):
    """Six layers without normalization: five 3-wide convolutions (32 channels, ReLU) and a linear head over
    the pooled features; the depth at which a sparse net's signal at init vanishes (DESIGN.md 1c)."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        conv = conv_layer(len(input_shape) - 1)
        channels = [input_shape[0], 32, 32, 32, 32, 32]
        self.features = nn.Sequential(*[m for a, b in zip(channels, channels[1:])
                                        for m in (conv(a, b, 3, padding=1), nn.ReLU())])
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(2).mean(2))


ARCHITECTURES = {"deep_mlp": DeepMLP, "wide_shallow": WideShallow, "bn_convnet": BatchNormConvNet,
                 "depthwise_residual": DepthwiseResidual, "token_mlp": TokenMLP, "deep_conv": DeepConvNet}
AUTOS = Method("autos:given", allocation=LEARNED).label  # the given scorer in its own steps, under the given allocator
METHODS = [AUTOS, "snip", "synflow", "iter_snip", "autos:given@alloc:synflow", "synflow@alloc:learned"]
IRP_FRACTION = 0.28


def model_name(name: str) -> str:
    """The architecture as a `module:factory` model name, so `build_model` and IRP chains take it."""
    return f"{__name__}:{ARCHITECTURES[name].__name__}"


def irp_records(name: str, dataset, dataset_name: str, seed: int, sparsities: list[float], init: str) -> list:
    """The accuracy of IRP's round nearest to each sparsity on this architecture, trained under `init`."""
    rounds = math.ceil(math.log(1 - max(sparsities)) / math.log(1 - IRP_FRACTION))
    config = IRPChainConfig(model_name(name), dataset_name, seed,
                            IRPConfig(rounds=rounds, prune_fraction=IRP_FRACTION, init=init),
                            train_config(dataset_name, name))
    history = [vars(r) for r in run_irp(config, dataset).history]
    return irp_reference_records(f"{name}/{dataset_name}", history, sparsities, seed)


def signal_table(specs: list[CellSpec], dataset, scorer, allocator) -> str:
    """Without training: per method, sparsity and init, the signal at init (mean over seeds) and the share of
    units left without input, from the very masks and initial weights the cells would train."""
    rows = defaultdict(list)
    for spec in specs:
        model = autosparse.build_model(spec.target.model, dataset.input_shape, dataset.num_classes, spec.seed)
        mask = cell_mask(spec, model, dataset, scorer, allocator)
        batch = dataset.sample_batch(spec.score_batch_size, spec.seed)
        autosparse.apply_mask(model, mask, spec.init, batch[0])
        signal = autosparse.signal_at_init(model, *batch)
        empty = sum(mask.empty_units().values()) / sum(kept.shape[0] for kept in mask.values())
        rows[(spec.label, spec.sparsity)].append((signal.logit_std, signal.grad_norm, empty))
    lines = ["| method | sparsity | logit std at init | gradient norm at init | units without input |",
             "|---|---|---|---|---|"]
    for (label, sparsity), values in rows.items():
        means = [statistics.fmean(column) for column in zip(*values)]
        lines.append(f"| {label} | {sparsity:.0%} | {means[0]:.2g} | {means[1]:.2g} | {100 * means[2]:.0f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorer", default=None, help="a conditional scorer file (e.g. the quickstart's), for autos")
    parser.add_argument("--allocator", default=None, help="an allocator file (e.g. the quickstart's), for @alloc:learned")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--sparsities", default="0.98,0.99")
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--inits", default=f"{DEFAULT_INIT},{ORIGINAL}",
                        help="sparse inits, the protocol's first (the IRP column and the margins use each in turn)")
    parser.add_argument("--irp", action="store_true", help="also run an IRP chain per architecture (first seed)")
    parser.add_argument("--signal-only", action="store_true",
                        help="no training: the signal at init of every cell's mask and init (writes signal.md)")
    parser.add_argument("--out", default="benchmarks/results/foreign")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds, sparsities = [int(s) for s in args.seeds.split(",")], [float(s) for s in args.sparsities.split(",")]
    inits, methods = args.inits.split(","), [Method.parse(m) for m in args.methods.split(",")]
    if any(m.is_autos for m in methods) and not args.scorer:
        parser.error("--scorer: an autos method needs a scorer file")
    if any(m.learned_allocation for m in methods) and not args.allocator:
        parser.error("--allocator: an @alloc:learned method needs an allocator file")
    records, recipes, signals = [], {}, []
    for dataset_name in args.datasets.split(","):
        dataset = autosparse.load_dataset(dataset_name)
        for name in args.architectures.split(","):
            target, train = ModelOnData(model_name(name), dataset_name), train_config(dataset_name, name)
            recipes[f"{name}/{dataset_name}"] = train
            specs = [CellSpec(target, DENSE, 0.0, seed, train) for seed in seeds]
            specs += [CellSpec(target, method.plain.label, sparsity, seed, train, variant=method.variant, init=init)
                      for init in inits for method in methods for sparsity in sparsities for seed in seeds]
            if args.signal_only:
                text = f"### {name}/{dataset_name}, seeds {args.seeds}\n\n" + signal_table(
                    specs[len(seeds):], dataset, args.scorer, args.allocator)
                signals.append(text)
                print(text, flush=True)
                continue
            for spec in specs:
                record = CellRecord.of(spec, run_cell(spec, dataset, args.scorer, args.allocator))
                record.target = f"{name}/{dataset_name}"
                records.append(record)
                print(f"{record.target:28s} {record.label:50s} {spec.sparsity:.2f} seed {spec.seed}: "
                      f"{100 * record.accuracy:.1f}{'' if record.trained else ' (did not train)'}", flush=True)
            if args.irp:
                records += irp_records(name, dataset, dataset_name, seeds[0], sparsities, inits[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.signal_only:
        atomic_write(out / "signal.md", lambda tmp: Path(tmp).write_text("\n".join(signals)))
        return
    title = (f"Architectures outside the registry: scorer `{args.scorer and Path(args.scorer).parent.name}`, "
             f"allocator `{args.allocator and Path(args.allocator).parent.name}`, seeds {args.seeds}")
    table, _ = write_report(records, out, title, ReportContext(recipes))
    header = f"{title}; sparse inits {', '.join(inits)} (the first is the protocol's).\n\n"
    atomic_write(out / "target.md", lambda tmp: Path(tmp).write_text(header + target_table(records, sparsities)))
    print(table)
    print(header + target_table(records, sparsities))


if __name__ == "__main__":
    main()
