"""Typed configuration: the single source of truth for YAML files, CLI overrides, Tune spaces and MLflow params."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, Optional

import yaml

from .schema import ConfigError, check, from_dict, set_dotted, to_dict

VARIANTS = ("shuffle", "invert", "reinit")
ALL_FEATURES = [
    "w0", "abs_w0", "g0", "snip", "grasp", "synflow",
    "depth", "log_fan_in", "log_fan_out", "kernel_size", "log_layer_size", "layer_kind",
    "w0_z", "g0_z", "log_snip_z", "synflow_z",
    "log_layer_share", "log_abs_w0_gz", "log_snip_gz", "synflow_gz",
]
# Scale-free features (standardized within the layer or over the whole model). Layer constants such as
# depth or fan-in let a scorer fitted on a few layers of one model extrapolate badly to another model.
TRANSFERABLE_FEATURES = ["w0_z", "g0_z", "log_snip_z", "synflow_z", "log_abs_w0_gz", "log_snip_gz", "synflow_gz"]


def _positive(value: float, key: str) -> None:
    check(value > 0, key, f"must be positive, got {value!r}")


@dataclass
class TrainConfig:
    """How one (masked) network is trained."""

    epochs: int = 20
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["constant", "multistep", "cosine"] = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.2

    def __post_init__(self) -> None:
        _positive(self.epochs, "epochs")
        _positive(self.batch_size, "batch_size")
        _positive(self.lr, "lr")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay!r}")


@dataclass
class DataConfig:
    """Where datasets live; downloads happen only when asked for."""

    data_root: str = "~/.cache/autosparse/data"
    download: bool = False
    score_batch_size: int = 256

    def __post_init__(self) -> None:
        _positive(self.score_batch_size, "score_batch_size")


@dataclass
class ModelOnData:
    model: str
    dataset: str


@dataclass
class SourceConfig:
    """One IRP source: a model trained on a dataset with an init seed."""

    model: str = "conv"
    dataset: str = "digits"
    seed: int = 0


@dataclass
class IRPConfig:
    """Iterative rewind pruning settings, shared by every source and target reference chain."""

    rounds: int = 20
    prune_fraction: float = 0.2
    rewind_step: int = 0
    trained_criterion: Literal["magnitude", "snip"] = "magnitude"
    scope: Literal["global", "layerwise"] = "global"
    features: list[str] = field(default_factory=lambda: list(ALL_FEATURES))
    train: TrainConfig = field(default_factory=TrainConfig)
    num_workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: bool = False

    def __post_init__(self) -> None:
        _positive(self.rounds, "rounds")
        _positive(self.cpus_per_worker, "cpus_per_worker")
        check(0 < self.prune_fraction < 1, "prune_fraction", f"must be in (0, 1), got {self.prune_fraction!r}")
        check(self.rewind_step >= 0, "rewind_step", f"must be >= 0, got {self.rewind_step!r}")
        _positive(self.num_workers, "num_workers")


@dataclass
class IRPChainConfig:
    """One IRP chain: the settings plus the (model, dataset, seed) it runs on. Hashed as a stage."""

    model: str
    dataset: str
    seed: int
    irp: IRPConfig


@dataclass
class ScorerConfig:
    """An AutoS scorer: network, inputs, loss and fitting schedule."""

    name: str = "compact"
    network: str = "compact_mlp"
    hidden: list[int] = field(default_factory=lambda: [32, 32])
    features: list[str] = field(default_factory=lambda: list(TRANSFERABLE_FEATURES))
    loss: Literal["mse", "pairwise", "bce"] = "pairwise"
    bce_density: float = 0.05
    normalization: Literal["standard", "none"] = "standard"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 4096
    epochs: int = 30
    rows_per_epoch: int = 200_000
    patience: int = 5
    validation: Literal["layers", "sources"] = "layers"
    validation_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        check(bool(self.features), "features", "must not be empty")
        check(0 < self.bce_density < 1, "bce_density", f"must be in (0, 1), got {self.bce_density!r}")
        check(0 < self.validation_fraction < 1, "validation_fraction",
              f"must be in (0, 1), got {self.validation_fraction!r}")
        for key in ("lr", "batch_size", "epochs", "rows_per_epoch", "patience"):
            _positive(getattr(self, key), key)
        check(all(h > 0 for h in self.hidden), "hidden", f"sizes must be positive, got {self.hidden!r}")


@dataclass
class MatrixConfig:
    """The generalization matrix: targets x methods (and variants) x sparsities x seeds."""

    targets: list[ModelOnData] = field(default_factory=lambda: [ModelOnData("mlp", "digits")])
    methods: list[str] = field(default_factory=lambda: ["random", "magnitude", "snip", "grasp", "synflow", "erk"])
    variants: list[Literal["shuffle", "invert", "reinit"]] = field(default_factory=list)
    variant_methods: Optional[list[str]] = None
    sparsities: list[float] = field(default_factory=lambda: [0.9, 0.95, 0.98, 0.99])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    scope: Literal["global", "layerwise"] = "global"
    train: TrainConfig = field(default_factory=TrainConfig)
    irp_reference: bool = True
    dense_reference: bool = True
    workers_per_run: int = 1
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0

    def __post_init__(self) -> None:
        check(bool(self.targets), "targets", "must not be empty")
        check(bool(self.sparsities), "sparsities", "must not be empty")
        for s in self.sparsities:
            check(0 < s < 1 and not math.isnan(s), "sparsities", f"sparsity {s!r} is outside (0, 1)")
        check(bool(self.seeds), "seeds", "must not be empty")
        _positive(self.workers_per_run, "workers_per_run")
        _positive(self.cpus_per_cell, "cpus_per_cell")
        check(self.gpus_per_cell >= 0, "gpus_per_cell", f"must be >= 0, got {self.gpus_per_cell!r}")


@dataclass
class PipelineConfig:
    """The main job: IRP on sources -> AutoS scorers -> generalization matrix -> report."""

    name: str = "quickstart"
    data: DataConfig = field(default_factory=DataConfig)
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    irp: IRPConfig = field(default_factory=IRPConfig)
    scorers: list[ScorerConfig] = field(default_factory=lambda: [ScorerConfig()])
    matrix: MatrixConfig = field(default_factory=MatrixConfig)

    def __post_init__(self) -> None:
        check(bool(self.sources), "sources", "must not be empty")
        names = [s.name for s in self.scorers]
        check(len(set(names)) == len(names), "scorers", f"scorer names must be unique, got {names}")

    def chain(self, model: str, dataset: str, seed: int) -> IRPChainConfig:
        return IRPChainConfig(model=model, dataset=dataset, seed=seed, irp=self.irp)


def packaged_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("autosparse.configs").iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A packaged config name (`quickstart`, `smoke`, ...) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {name_or_path!r} does not exist")
        return path
    if name_or_path in packaged_configs():
        return Path(str(resources.files("autosparse.configs") / f"{name_or_path}.yaml"))
    raise ConfigError(f"unknown config {name_or_path!r} (packaged: {', '.join(packaged_configs())}; or give a .yaml path)")


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(error, 'problem', error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, object]:
    """`key.path=value` with the value parsed as YAML (`matrix.seeds=[0,1]`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: value is not valid YAML") from None


def load_config(name_or_path: str = "quickstart", overrides: list[str] = ()) -> PipelineConfig:
    """Load a pipeline config, apply `key=value` overrides, validate strictly."""
    path = resolve_config_path(name_or_path)
    data = load_yaml(path)
    try:
        for override in overrides:
            set_dotted(data, *parse_override(override))
        return from_dict(PipelineConfig, data, where="config")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def dump_config(config: PipelineConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
