"""Typed configuration: the single source of truth for YAML files, CLI overrides, Tune spaces and MLflow params."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .data.base import DEFAULT_DATA_ROOT
from .criteria import CRITERIA
from .features import all_feature_names
from .layer_allocation import LEARNED
from .methods import VARIANTS, allocation_names
from .schema import ConfigError, check, check_partial, from_dict, resource, set_dotted
from .sparse_init import ORIGINAL, SPARSE_INITS

# Scale-free features (standardized within the layer or over the whole model). Layer constants such as
# depth or fan-in let a scorer fitted on a few layers of one model extrapolate badly to another model.
TRANSFERABLE_FEATURES = ["w0_z", "g0_z", "log_snip_z", "synflow_z", "log_abs_w0_gz", "log_snip_gz", "synflow_gz"]
# The conditional scorer's default inputs: the masked network's magnitude, SNIP and SynFlow ranks within the
# layer and over the model, the kept share of the weight's input and output units, and where the layer sits
# (depth, share of the model's weights, its density and the model's). Chosen leave-one-source-out over the
# benchmark's sources, never on a test target: it beat the five within-layer features alone (mean 84.1% vs
# 66.5% at 98/99% sparsity; BENCHMARKS.md, "Choosing the AutoS design").
CONDITIONAL_FEATURES = ["log_abs_w0_z", "log_snip_z", "synflow_z", "log_snip_gz", "synflow_gz", "in_unit_kept",
                        "out_unit_kept", "log_layer_density", "log_density", "depth", "log_layer_share"]
# Steps of the default conditional scorer. On the validation sources 20 steps edged out 10 (mean over seeds
# 10-13: 83.9% vs 83.6%), at twice the cost (BENCHMARKS.md, "Choosing the AutoS design" and "Speed").
CONDITIONAL_STEPS = 20
# Examples behind each step's features: every step takes the next 64 of the scoring batch in turn, a quarter
# of the gradient cost of all 256. Validation sources, seeds 10-13: 84.1% vs 83.8% with the whole batch
# (paired difference +0.3 +- 0.6 over 32 cells); it brings AutoS on ResNet-18 within 2x SynFlow's time.
CONDITIONAL_STEP_BATCH = 64
# The sparse init of every matrix cell and IRP reference (autosparse/sparse_init.py): each unit's kept weights
# rescaled to its dense squared norm, then each layer's output spread on the scoring batch matched to the dense
# network's. Chosen on the validation sources and the deep validation architectures (BENCHMARKS.md, "Choosing
# the sparse init").
DEFAULT_INIT = "calibrated"


def _positive(value: float, key: str) -> None:
    check(value > 0, key, f"must be positive, got {value!r}")


def _sparse_init(name: str, key: str) -> None:
    check(name in SPARSE_INITS, key, f"unknown sparse init {name!r} (known: {', '.join(SPARSE_INITS.names())})")


@dataclass
class TrainConfig:
    """How one (masked) network is trained. Pipeline configs give only the fields that differ from the
    recipe of the (dataset, model) pair (autosparse/recipes.py); the rest come from the recipe."""

    epochs: int = 20
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["constant", "multistep", "cosine"] = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.2
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        _positive(self.epochs, "epochs")
        _positive(self.batch_size, "batch_size")
        _positive(self.lr, "lr")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        check(0 <= self.warmup_epochs < self.epochs, "warmup_epochs",
              f"must be in [0, epochs), got {self.warmup_epochs!r}")


TrainOverrides = dict[str, Any]


def check_train_overrides(overrides: TrainOverrides, key: str = "train") -> None:
    """Keys and value types of a partial TrainConfig (the whole is checked once merged with a recipe)."""
    check_partial(TrainConfig, overrides, key)


@dataclass
class DataConfig:
    """Where datasets live; downloads happen only when asked for."""

    data_root: str = DEFAULT_DATA_ROOT
    download: bool = False
    score_batch_size: int = 256

    def __post_init__(self) -> None:
        _positive(self.score_batch_size, "score_batch_size")


class Pair:
    """Mixin for configs with `model` and `dataset`: the pair as one string, `model/dataset`."""

    model: str
    dataset: str

    @property
    def pair(self) -> str:
        return f"{self.model}/{self.dataset}"


@dataclass
class ModelOnData(Pair):
    model: str
    dataset: str


@dataclass
class SourceConfig(Pair):
    """One IRP source: a model trained on a dataset with an init seed."""

    model: str = "conv"
    dataset: str = "digits"
    seed: int = 0


@dataclass
class IRPConfig:
    """Iterative rewind pruning settings, shared by every source chain (`train` overrides the recipe).
    `init` is the sparse init of the kept weights at every rewind of the source chains (a target's IRP
    reference chain takes `matrix.init` instead, like the target's cells). `num_workers`, `cpus_per_worker`
    and `use_gpu` are resources: they enter no hash."""

    rounds: int = 20
    prune_fraction: float = 0.2
    rewind_step: int = 0
    trained_criterion: str = "magnitude"
    allocation: str = "global"
    features: list[str] = field(default_factory=all_feature_names)
    feature_round_stride: int = 1
    train: TrainOverrides = field(default_factory=dict)
    num_workers: int = resource(1)
    cpus_per_worker: int = resource(1)
    use_gpu: bool = resource(False)
    init: str = ORIGINAL

    def __post_init__(self) -> None:
        _positive(self.rounds, "rounds")
        _sparse_init(self.init, "init")
        check(self.trained_criterion in CRITERIA, "trained_criterion",
              f"unknown pruning criterion {self.trained_criterion!r} (known: {', '.join(CRITERIA.names())})")
        chain_allocations = [name for name in allocation_names() if name != LEARNED]
        check(self.allocation in chain_allocations, "allocation",
              f"unknown allocation {self.allocation!r} for IRP (known: {', '.join(chain_allocations)})")
        _positive(self.cpus_per_worker, "cpus_per_worker")
        _positive(self.feature_round_stride, "feature_round_stride")
        check(0 < self.prune_fraction < 1, "prune_fraction", f"must be in (0, 1), got {self.prune_fraction!r}")
        check(self.rewind_step >= 0, "rewind_step", f"must be >= 0, got {self.rewind_step!r}")
        _positive(self.num_workers, "num_workers")
        check_train_overrides(self.train)


@dataclass
class IRPChainConfig(Pair):
    """One IRP chain as a stage: the settings, the (model, dataset, seed) it runs on, the resolved
    training recipe, and the feature batch size. Everything that changes its output is here."""

    model: str
    dataset: str
    seed: int
    irp: IRPConfig
    train: TrainConfig
    score_batch_size: int = 256


@dataclass
class ScorerConfig:
    """An AutoS scorer: network, inputs, what it learns, and its fitting schedule.

    `target: survival` is the paper's one-shot design (round-0 rows, survival / R); `next_round` learns
    conditional survival (rows of every round, label: survives the next pruning) and prunes in `steps`,
    each step's features on the next `step_batch_size` examples of the scoring batch in turn (default: 64
    for `next_round`, the whole batch otherwise; a size at least the scoring batch means the whole batch).
    """

    name: str = "conditional"
    network: str = "compact_mlp"
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    features: list[str] = field(default_factory=lambda: list(CONDITIONAL_FEATURES))
    target: Literal["survival", "next_round"] = "next_round"
    loss: Literal["mse", "pairwise", "bce"] = "bce"
    bce_density: float = 0.05
    steps: Optional[int] = None
    step_batch_size: Optional[int] = None
    normalization: Literal["standard", "none"] = "standard"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 4096
    epochs: int = 30
    rows_per_epoch: int = 200_000
    patience: int = 5
    selection_tolerance: float = 0.01
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
        check(self.selection_tolerance >= 0, "selection_tolerance",
              f"must be >= 0, got {self.selection_tolerance!r}")
        check(self.steps is None or self.steps >= 1, "steps", f"must be at least 1, got {self.steps!r}")
        check(self.step_batch_size is None or self.step_batch_size >= 1, "step_batch_size",
              f"must be at least 1, got {self.step_batch_size!r}")
        check(all(h > 0 for h in self.hidden), "hidden", f"sizes must be positive, got {self.hidden!r}")
        check(self.target == "survival" or self.loss == "bce", "loss",
              f"target 'next_round' is a yes/no label: use loss 'bce', got {self.loss!r}")

    @property
    def prune_steps(self) -> int:
        return self.steps if self.steps is not None else (CONDITIONAL_STEPS if self.target == "next_round" else 1)

    @property
    def prune_step_batch_size(self) -> Optional[int]:
        if self.step_batch_size is not None:
            return self.step_batch_size
        return CONDITIONAL_STEP_BATCH if self.target == "next_round" else None


@dataclass
class AllocatorConfig:
    """The learned layer allocation (`@alloc:learned`): layer context and global density -> layer density,
    fitted on every (layer, round) of the IRP chains a target may learn from. No hidden layers (a linear
    model on the context and its interactions with the density) is the default: chosen leave-one-source-out."""

    hidden: list[int] = field(default_factory=list)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    epochs: int = 1500
    seed: int = 0

    def __post_init__(self) -> None:
        _positive(self.lr, "lr")
        _positive(self.epochs, "epochs")
        check(all(h > 0 for h in self.hidden), "hidden", f"sizes must be positive, got {self.hidden!r}")


@dataclass
class MatrixConfig:
    """The generalization matrix: targets x methods (and variants) x sparsities x seeds.

    Methods are written `SCORES[/iterK][/batchN][@alloc:NAME][+VARIANT]` (autosparse/methods.py), with
    `autos:<scorer name>` for a fitted scorer; `variants` adds the sanity variants to `variant_methods`. Every cell of a target, its dense reference and its IRP
    reference train with the target's recipe plus `train` overrides, and start from the sparse init `init`
    (autosparse/sparse_init.py). `compare_inits` adds cells of `compare_init_methods` (default: every
    method) under other sparse inits, labelled `<method> init:<name>`, for before/after comparisons.
    """

    targets: list[ModelOnData] = field(default_factory=lambda: [ModelOnData("mlp", "digits")])
    methods: list[str] = field(default_factory=lambda: ["random", "magnitude", "snip", "grasp", "synflow",
                                                        "random@alloc:erk"])
    variants: list[str] = field(default_factory=list)
    variant_methods: Optional[list[str]] = None
    sparsities: list[float] = field(default_factory=lambda: [0.9, 0.95, 0.98, 0.99])
    init: str = DEFAULT_INIT
    compare_inits: list[str] = field(default_factory=list)
    compare_init_methods: Optional[list[str]] = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train: TrainOverrides = field(default_factory=dict)
    irp_reference: bool = True
    dense_reference: bool = True
    workers_per_run: int = resource(1)
    cpus_per_cell: float = resource(1.0)
    gpus_per_cell: float = resource(0.0)

    def __post_init__(self) -> None:
        check(bool(self.targets), "targets", "must not be empty")
        check(bool(self.methods), "methods", "must not be empty")
        check(bool(self.sparsities), "sparsities", "must not be empty")
        for s in self.sparsities:
            check(0 < s < 1 and not math.isnan(s), "sparsities", f"sparsity {s!r} is outside (0, 1)")
        check(bool(self.seeds), "seeds", "must not be empty")
        for name in self.variants:
            check(name in VARIANTS, "variants", f"unknown sanity variant {name!r} (known: {', '.join(VARIANTS)})")
        for key, name in [("init", self.init), *(("compare_inits", n) for n in self.compare_inits)]:
            _sparse_init(name, key)
        check(self.init not in self.compare_inits, "compare_inits", f"repeats matrix.init {self.init!r}")
        check(len(set(self.seeds)) == len(self.seeds), "seeds", f"must be distinct, got {self.seeds}")
        _positive(self.workers_per_run, "workers_per_run")
        _positive(self.cpus_per_cell, "cpus_per_cell")
        check(self.gpus_per_cell >= 0, "gpus_per_cell", f"must be >= 0, got {self.gpus_per_cell!r}")
        check_train_overrides(self.train)


@dataclass
class PipelineConfig:
    """The main job: IRP on sources -> AutoS scorers and allocator -> generalization matrix -> report."""

    name: str = "quickstart"
    data: DataConfig = field(default_factory=DataConfig)
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    irp: IRPConfig = field(default_factory=IRPConfig)
    scorers: list[ScorerConfig] = field(default_factory=lambda: [ScorerConfig()])
    allocator: AllocatorConfig = field(default_factory=AllocatorConfig)
    matrix: MatrixConfig = field(default_factory=MatrixConfig)

    def __post_init__(self) -> None:
        check(bool(self.sources), "sources", "must not be empty")
        names = [s.name for s in self.scorers]
        check(len(set(names)) == len(names), "scorers", f"scorer names must be unique, got {names}")


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
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(error, 'problem', error)}") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror or error})") from None
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


# ---------------------------------------------------------------- Tune search spaces over ScorerConfig

DEFAULT_FEATURE_GROUPS = {"transferable": TRANSFERABLE_FEATURES, "conditional": CONDITIONAL_FEATURES,
                          "paper": ["w0", "g0"], "all": all_feature_names()}
SCORER_FIELDS = {f.name for f in dataclasses.fields(ScorerConfig)}


@dataclass
class Dimension:
    """One searched field: exactly one of choice, uniform, loguniform, randint."""

    choice: Optional[list[Any]] = None
    uniform: Optional[list[float]] = None
    loguniform: Optional[list[float]] = None
    randint: Optional[list[int]] = None

    def __post_init__(self) -> None:
        given = [k for k in ("choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        check(len(given) == 1, "dimension", f"needs exactly one of choice/uniform/loguniform/randint, got {given}")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds is not None:
            check(len(bounds) == 2 and bounds[0] < bounds[1], given[0], f"needs [low, high], got {bounds}")
        if self.loguniform is not None:
            check(self.loguniform[0] > 0, "loguniform", "bounds must be positive")

    def values_to_check(self) -> list[Any]:
        return self.choice if self.choice is not None else list(self.uniform or self.loguniform or self.randint)

    def to_tune(self):
        from ray import tune

        if self.choice is not None:
            return tune.choice(self.choice)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        return tune.randint(*self.randint)


@dataclass
class ASHAConfig:
    grace_period: int = 2
    reduction_factor: int = 2


@dataclass
class TuneSpace:
    """A scorer search: `space` and `fixed` keys must be ScorerConfig fields (`features` may name groups)."""

    space: dict[str, Dimension]
    fixed: dict[str, Any] = field(default_factory=dict)
    feature_groups: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_FEATURE_GROUPS))
    objective: Literal["proxy", "downstream"] = "proxy"
    metric: str = "heldout_within_layer_iou"
    num_samples: int = 8
    max_concurrent: int = resource(2)
    cpus_per_trial: float = resource(1.0)
    gpus_per_trial: float = resource(0.0)
    search: Literal["random", "optuna"] = "optuna"
    scheduler: ASHAConfig = field(default_factory=ASHAConfig)
    downstream_sparsity: float = 0.98
    downstream_epochs: int = 5
    downstream_allocation: str = "global"

    def __post_init__(self) -> None:
        for key in list(self.space) + list(self.fixed):
            check(key in SCORER_FIELDS, key, f"is not a scorer field (fields: {', '.join(sorted(SCORER_FIELDS))})")
        check(not set(self.space) & set(self.fixed), "fixed", "a field cannot be both searched and fixed")
        check(self.num_samples > 0, "num_samples", "must be positive")
        check(self.max_concurrent > 0, "max_concurrent", "must be positive")
        check(0 < self.downstream_sparsity < 1, "downstream_sparsity", "must be in (0, 1)")

    def resolve(self, values: dict[str, Any]) -> ScorerConfig:
        """A ScorerConfig from fixed + sampled values, with feature group names expanded."""
        data = {**self.fixed, **values}
        if isinstance(data.get("features"), str):
            group = data["features"]
            if group not in self.feature_groups:
                raise ConfigError(f"features: unknown group {group!r} (groups: {', '.join(self.feature_groups)})")
            data["features"] = list(self.feature_groups[group])
        return from_dict(ScorerConfig, data, where="scorer")

    def features_read(self) -> set[str]:
        """Every feature some candidate scorer of this space reads."""
        choices = self.space["features"].values_to_check() if "features" in self.space else [None]
        return {name for choice in choices
                for name in self.resolve({} if choice is None else {"features": choice}).features}

    def check_features(self, computed: list[str], base: str) -> None:
        """Fail before any trial runs if a candidate reads a feature the base config's IRP chains lack."""
        missing = sorted(self.features_read() - set(computed))
        if missing:
            raise ConfigError(f"features: candidates read {', '.join(missing)}, which the IRP chains of {base!r} "
                              "do not compute (its irp.features); add them there or drop those feature groups")

    def validate(self) -> None:
        """Every candidate value of every dimension makes a valid ScorerConfig."""
        self.resolve({})
        for key, dimension in self.space.items():
            for value in dimension.values_to_check():
                try:
                    self.resolve({key: value})
                except ConfigError as error:
                    raise ConfigError(f"space.{key}: {error}") from None


def load_space(path: str | Path) -> TuneSpace:
    """A search space YAML, validated: every candidate value must make a valid ScorerConfig."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file {str(path)!r} does not exist")
    try:
        space = from_dict(TuneSpace, load_yaml(path), where="space")
        space.validate()
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return space
