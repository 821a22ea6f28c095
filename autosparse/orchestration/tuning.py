"""`autosparse tune`: Ray Tune search over scorer designs, every trial an MLflow child run.

Trials learn from the base config's source chains and are scored on its target IRP chains (other
models or datasets: the proxy objective), or by pruning and briefly training its first target.
"""
from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from ..config import DataConfig, PipelineConfig, TuneSpace
from ..matrix_cell import CellSpec
from ..methods import AUTOS, Method
from ..recipes import train_config
from ..schema import ConfigError, content_hash, from_dict, non_default, to_dict
from ..storage import atomic_write
from ..survival import read_survival
from .irp_stage import reference_chains, source_chains, survival_path
from .pipeline import Pipeline
from .runtime import RunOptions
from .store import StageStore
from .tracking import ARTIFACTS_FOLDER, TrackedRun, Tracker, params_of

BEST_CONFIG_FILE = "best_scorer.yaml"
BEST_SCORER_FILE = "best_scorer.safetensors"
RESULTS_FILE = "results.md"


@dataclass
class TuneRequest:
    """A search: the space, the pipeline config whose chains feed it, and where to run and track it."""

    space: TuneSpace
    space_path: str
    base: PipelineConfig
    workspace: str
    options: RunOptions = field(default_factory=RunOptions)


@dataclass
class TuneResult:
    table: str
    best_config: str
    best_scorer: str


def read_chains(workspace: str, digests: list[str]) -> list:
    store = StageStore(workspace)
    return [read_survival(survival_path(store, digest)) for digest in digests]


def downstream_cell(base: PipelineConfig, space: TuneSpace) -> CellSpec:
    """The cell a downstream trial trains: the base config's first target and seed under its recipe (cut to
    `downstream_epochs`), scoring batch and sparse init, pruned by the trial's scorer at `downstream_sparsity`."""
    target = base.matrix.targets[0]
    train = replace(train_config(target.dataset, target.model, base.matrix.train, "matrix.train"),
                    epochs=space.downstream_epochs)
    method = Method(f"{AUTOS}:{space.resolve({}).name}", allocation=space.downstream_allocation)
    return CellSpec(target, method.label, space.downstream_sparsity, base.matrix.seeds[0], train,
                    score_batch_size=base.data.score_batch_size, init=base.matrix.init)


def scorer_trial(config: dict, space_data: dict, workspace: str, sources: list[str], held_out: list[str],
                 downstream: dict) -> None:
    """One Tune trial: fit a scorer, reporting held-out proxy metrics every epoch (or downstream accuracy).

    `sources` and `held_out` are IRP stage hashes in `workspace`; `downstream` the cell (`downstream_cell`)
    and the data settings of the downstream objective."""
    from ray import tune

    from ..scorer import fit_scorer

    space = from_dict(TuneSpace, space_data)
    scorer_config = space.resolve(config)
    torch.set_num_threads(max(1, int(space.cpus_per_trial)))
    datasets = read_chains(workspace, sources)
    if space.objective == "proxy":
        fit_scorer(datasets, scorer_config, held_out=read_chains(workspace, held_out),
                   on_epoch=lambda epoch, metrics: tune.report(metrics))
        return
    tune.report({"downstream_accuracy": downstream_accuracy(fit_scorer(datasets, scorer_config), scorer_config,
                                                            from_dict(CellSpec, downstream["cell"]),
                                                            from_dict(DataConfig, downstream["data"]))})


def downstream_accuracy(result, scorer_config, spec: CellSpec, data: DataConfig) -> float:
    """Prune and train the downstream cell with the fitted scorer; its test accuracy."""
    from ..data import load_dataset
    from ..matrix_cell import run_cell
    from ..scorer import scorer_from_fit

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scorer.safetensors"
        scorer_from_fit(result, scorer_config, {}).save(path)
        dataset = load_dataset(spec.target.dataset, data.data_root, data.download)
        return run_cell(spec, dataset, path)["test_accuracy"]


def results_table(results, metric: str) -> str:
    rows = []
    for result in results:
        if result.metrics and metric in result.metrics:
            rows.append((result.metrics[metric], result.metrics.get("training_iteration", 0), result.config))
    rows.sort(key=lambda row: -row[0])
    lines = [f"| rank | {metric} | epochs | config |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | {value:.4f} | {epochs} | `{config}` |" for i, (value, epochs, config) in enumerate(rows)]
    return "\n".join(lines) + "\n"


def run_tuning(request: TuneRequest) -> TuneResult:
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from ..scorer import fit_scorer, scorer_from_fit

    space, base, options = request.space, request.base, request.options
    if space.objective == "downstream" and space.metric != "downstream_accuracy":
        raise ConfigError(f"{request.space_path}: metric: objective 'downstream' reports 'downstream_accuracy'")
    try:
        space.check_features(base.irp.features, base.name)
    except ConfigError as error:
        raise ConfigError(f"{request.space_path}: {error}") from None
    sources, references = source_chains(base), reference_chains(base)
    if space.objective == "proxy" and not references:
        raise ConfigError(f"{base.name}: the proxy objective needs held-out survival data: "
                          "set matrix.irp_reference: true (target IRP chains)")
    pipeline = Pipeline(base, request.workspace, options)
    pipeline.run(through="irp")  # the base config's chains, as `autosparse irp BASE` runs and tracks them
    store, uri = pipeline.store, pipeline.tracking_uri
    digest = content_hash({"space": non_default(space), "base": non_default(base)})
    experiment = f"autosparse-tune-{base.name}"
    tracker = Tracker(uri, experiment, digest, params_of(space), {"pipeline.name": base.name,
                                                                  "tune.space": request.space_path},
                      artifact_root=store.uri(ARTIFACTS_FOLDER))
    status = "FAILED"
    try:
        pipeline.ensure_ray()
        name = f"tune-{digest}"
        folder = store.local / "tune" / name
        search_path = store.path("tune", name)
        downstream = {"cell": to_dict(downstream_cell(base, space)), "data": to_dict(base.data)}
        trainable = tune.with_resources(
            functools.partial(scorer_trial, space_data=to_dict(space), workspace=store.location,
                              sources=[j.digest for j in sources], held_out=[j.digest for j in references],
                              downstream=downstream),
            {"cpu": space.cpus_per_trial, "gpu": space.gpus_per_trial})
        if tune.Tuner.can_restore(search_path, storage_filesystem=store.fs):
            print(f"resuming the interrupted search in {store.uri('tune', name)}")
            tuner = tune.Tuner.restore(search_path, trainable=trainable, resume_errored=True,
                                       storage_filesystem=store.fs)
        else:
            search_alg = None
            if space.search == "optuna":
                from ray.tune.search.optuna import OptunaSearch

                search_alg = OptunaSearch()
            tuner = tune.Tuner(
                trainable,
                param_space={key: dimension.to_tune() for key, dimension in space.space.items()},
                tune_config=tune.TuneConfig(
                    metric=space.metric, mode="max", num_samples=space.num_samples, search_alg=search_alg,
                    max_concurrent_trials=space.max_concurrent,
                    scheduler=ASHAScheduler(time_attr="training_iteration", max_t=space.resolve({}).epochs,
                                            grace_period=space.scheduler.grace_period,
                                            reduction_factor=space.scheduler.reduction_factor)),
                run_config=tune.RunConfig(
                    name=name, storage_path=store.path("tune"), storage_filesystem=store.fs,
                    verbose=1 if options.verbose else 0,
                    callbacks=[MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment,
                                                    tags={MLFLOW_PARENT_RUN_ID: tracker.parent_id})]),
            )
        results = tuner.fit()
        best = results.get_best_result(space.metric, "max")
        best_config = space.resolve(best.config)
        table = results_table(results, space.metric)
        atomic_write(folder / BEST_CONFIG_FILE, lambda tmp: Path(tmp).write_text(
            f"# best of {len(results)} trials: {space.metric} = {best.metrics[space.metric]:.4f}\n"
            + yaml.safe_dump(to_dict(best_config), sort_keys=False)))
        atomic_write(folder / RESULTS_FILE, lambda tmp: Path(tmp).write_text(table))
        refit = fit_scorer(read_chains(store.location, [j.digest for j in sources]), best_config)
        scorer_from_fit(refit, best_config, {"config": to_dict(best_config)}).save(folder / BEST_SCORER_FILE)
        store.push(f"tune/{name}")
        tracker.log_parent(TrackedRun("tune", {}, {}, {f"best_{space.metric}": best.metrics[space.metric]},
                                      artifacts=[folder / BEST_CONFIG_FILE, folder / RESULTS_FILE,
                                                 folder / BEST_SCORER_FILE]))
        status = "FINISHED"
    finally:
        tracker.finish(status)
    return TuneResult(table, store.uri("tune", name, BEST_CONFIG_FILE), store.uri("tune", name, BEST_SCORER_FILE))
