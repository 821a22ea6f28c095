"""A fitted AutoS scorer and learned allocation (e.g. the quickstart's own) on architectures outside the
model registry, on both embedded datasets: deeper and wider MLPs, a BatchNorm VGG-style net with
max-pooling, a depthwise-separable residual net, and a token MLP with LayerNorm (all defined here, for 2-D
digits and 1-D MNIST-1D inputs alike).

    make run                                    # the quickstart: fits the scorer and the allocation
    .venv/bin/python benchmarks/foreign_architectures.py --scorer autosparse-workspace/scorer/<hash>/scorer.safetensors \\
        --allocator autosparse-workspace/allocator/<hash>/allocator.safetensors [--seeds 1,2] [--sparsity 0.98] \\
        [--datasets digits,mnist1d] [--irp]

Each network is pruned by the default AutoS method (the scorer in its own steps under the learned
allocation), by SNIP, SynFlow and iterative SNIP, then trained with the dataset's default recipe
(autosparse/recipes.py) at each seed, and compared with its dense reference. Two swaps tell the layer
allocation from the ranking inside layers: the scorer under SynFlow's per-layer counts, and SynFlow under
the learned allocation. With --irp, an IRP chain of the architecture (first seed, 28% per round, the same
recipe) gives the accuracy of IRP's own mask at the nearest density. Writes
benchmarks/results/foreign_architectures.md (or --out).
"""
from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import autosparse
from autosparse.config import IRPChainConfig, IRPConfig
from autosparse.io import atomic_write
from autosparse.irp import run_irp
from autosparse.recipes import train_config
from autosparse.training import train


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


ARCHITECTURES = {"deep_mlp": DeepMLP, "wide_shallow": WideShallow, "bn_convnet": BatchNormConvNet,
                 "depthwise_residual": DepthwiseResidual, "token_mlp": TokenMLP}
CONTROLS = ["snip", "synflow", "iter_snip"]
SWAPS = ["autos@alloc:synflow", "synflow@alloc:learned"]
IRP_FRACTION = 0.28


def model_name(name: str) -> str:
    """The architecture as a `module:factory` model name, so `build_model` and IRP chains take it."""
    return f"{__name__}:{ARCHITECTURES[name].__name__}"


def prune_with(method: str, model: nn.Module, sparsity: float, batch, seed: int, scorer, allocator):
    """`method` is autos (under the learned allocation unless told), a criterion (global unless told), or
    either with `@alloc:NAME` (`learned` is the quickstart's allocator)."""
    criterion, _, allocation = method.partition("@alloc:")
    allocation = allocation or ("learned" if criterion == "autos" else "global")
    return autosparse.prune(model, sparsity, scorer if criterion == "autos" else criterion, batch,
                            allocation=allocator if allocation == "learned" else allocation, seed=seed)


def run(name: str, dataset, dataset_name: str, method: str, seed: int, sparsity: float, scorer, allocator) -> dict:
    model = autosparse.build_model(model_name(name), dataset.input_shape, dataset.num_classes, seed)
    mask = None
    if method != "dense":
        mask = prune_with(method, model, sparsity, dataset.sample_batch(256, seed), seed, scorer, allocator)
        autosparse.apply_mask(model, mask)
    accuracy = train(model, dataset, train_config(dataset_name, name), seed=seed).final_accuracy
    return {"accuracy": 100 * accuracy, "collapsed": len(mask.collapsed_layers()) if mask is not None else 0}


def irp_accuracy(name: str, dataset, dataset_name: str, seed: int, sparsity: float) -> tuple[float, float]:
    """(density, test accuracy) of IRP's round nearest to `1 - sparsity` on this architecture."""
    rounds = round(math.log(1 - sparsity) / math.log(1 - IRP_FRACTION))
    config = IRPChainConfig(model_name(name), dataset_name, seed,
                            IRPConfig(rounds=rounds, prune_fraction=IRP_FRACTION), train_config(dataset_name, name))
    last = run_irp(config, dataset).history[-1]
    return last.density, 100 * last.test_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorer", required=True, help="a conditional scorer file (e.g. the quickstart's)")
    parser.add_argument("--allocator", required=True, help="an allocator file (e.g. the quickstart's)")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--sparsity", type=float, default=0.98)
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--irp", action="store_true", help="also run an IRP chain per architecture (first seed)")
    parser.add_argument("--out", default="benchmarks/results/foreign_architectures.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    scorer, allocator = autosparse.load_scorer(args.scorer), autosparse.load_allocator(args.allocator)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = ["dense", "autos", *CONTROLS, *SWAPS]
    irp_column = [f"IRP (seed {seeds[0]})"] if args.irp else []
    lines = [f"Scorer `{Path(args.scorer).parent.name}` and allocator `{Path(args.allocator).parent.name}` at "
             f"{args.sparsity:.0%} sparsity; test accuracy (%), mean ± std over seeds {args.seeds}; "
             "(n collapsed) counts collapsed layers over the seeds.\n",
             "| dataset | architecture | " + " | ".join(methods + irp_column) + " | AutoS - best control |",
             "|---|---|" + "---|" * (len(methods) + len(irp_column) + 1)]
    for dataset_name in args.datasets.split(","):
        dataset = autosparse.load_dataset(dataset_name)
        for name in ARCHITECTURES:
            results = {m: [run(name, dataset, dataset_name, m, s, args.sparsity, scorer, allocator) for s in seeds]
                       for m in methods}
            means = {m: statistics.fmean(r["accuracy"] for r in rs) for m, rs in results.items()}
            cells = []
            for method, rows in results.items():
                values = [r["accuracy"] for r in rows]
                spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
                collapsed = sum(r["collapsed"] for r in rows)
                cells.append(f"{means[method]:.1f}{spread}" + (f" ({collapsed} collapsed)" if collapsed else ""))
            if args.irp:
                density, accuracy = irp_accuracy(name, dataset, dataset_name, seeds[0], args.sparsity)
                cells.append(f"{accuracy:.1f} (at {1 - density:.1%})")
            margin = means["autos"] - max(means[c] for c in CONTROLS)
            lines.append(f"| {dataset_name} | {name} | " + " | ".join(cells) + f" | {margin:+.1f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
