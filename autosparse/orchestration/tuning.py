"""`autosparse tune`: Ray Tune search over scorer designs, every trial an MLflow child run."""
from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch
import yaml

from ..config import load_config
from ..io import atomic_write
from ..schema import ConfigError, content_hash, from_dict, to_dict
from ..survival import read_survival
from ..tuning_space import TuneSpace, load_space
from .irp_stage import survival_path
from .pipeline import Pipeline
from .stages import StageStore
from .tracking import Tracker, default_tracking_uri, params_of

BEST_CONFIG_FILE = "best_scorer.yaml"
BEST_SCORER_FILE = "best_scorer.safetensors"
RESULTS_FILE = "results.md"


def read_chains(workspace: str, digests: list[str]) -> list:
    store = StageStore(workspace)
    return [read_survival(survival_path(store, digest)) for digest in digests]


def scorer_trial(config: dict, space_data: dict, workspace: str, sources: list[str], held_out: list[str],
                 downstream: dict) -> None:
    """One Tune trial: fit a scorer, reporting held-out proxy metrics every epoch (or downstream accuracy).

    `sources` and `held_out` are IRP stage hashes in `workspace`."""
    from ray import tune

    space = from_dict(TuneSpace, space_data)
    scorer_config = space.resolve(config)
    torch.set_num_threads(max(1, int(space.cpus_per_trial)))
    from ..scorer import fit_scorer

    datasets = read_chains(workspace, sources)
    if space.objective == "proxy":
        fit_scorer(datasets, scorer_config, held_out=read_chains(workspace, held_out),
                   on_epoch=lambda epoch, metrics: tune.report(metrics))
        return
    tune.report({"downstream_accuracy": downstream_accuracy(fit_scorer(datasets, scorer_config), scorer_config,
                                                            space, downstream)})


def downstream_accuracy(result, scorer_config, space: TuneSpace, downstream: dict) -> float:
    """Prune the base config's first target with the fitted scorer and train it briefly."""
    from ..config import ModelOnData, TrainConfig
    from ..data import load_dataset
    from ..experiment import run_cell, CellSpec
    from ..scorer import scorer_from_fit
    import tempfile

    target = ModelOnData(**downstream["target"])
    train = from_dict(TrainConfig, {**downstream["train"], "epochs": space.downstream_epochs})
    scorer = scorer_from_fit(result, scorer_config.network, scorer_config.hidden, scorer_config.features, {})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scorer.safetensors"
        scorer.save(path)
        spec = CellSpec(target=target, method="autos", sparsity=space.downstream_sparsity, seed=0, train=train)
        return run_cell(spec, load_dataset(target.dataset), path)["test_accuracy"]


def results_table(results, metric: str) -> str:
    rows = []
    for result in results:
        if result.metrics and metric in result.metrics:
            rows.append((result.metrics[metric], result.metrics.get("training_iteration", 0), result.config))
    rows.sort(key=lambda row: -row[0])
    lines = [f"| rank | {metric} | epochs | config |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | {value:.4f} | {epochs} | `{config}` |" for i, (value, epochs, config) in enumerate(rows)]
    return "\n".join(lines) + "\n"


def run_tuning(args: argparse.Namespace) -> int:
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    space = load_space(args.space)
    base = load_config(args.base)
    if space.objective == "downstream" and space.metric != "downstream_accuracy":
        raise ConfigError(f"{args.space}: metric: objective 'downstream' reports 'downstream_accuracy'")
    pipeline = Pipeline(base, args.workspace, ray_address=args.ray_address, tracking_uri=args.tracking_uri,
                        progress=not args.no_progress)
    if space.objective == "proxy" and not pipeline.references:
        raise ConfigError(f"{args.base}: the proxy objective needs held-out survival data: "
                          "set matrix.irp_reference: true (target IRP chains)")
    pipeline.connect_tracking()
    pipeline.run_chains(pipeline.sources + pipeline.references)
    store = pipeline.store
    sources, held_out = [j.digest for j in pipeline.sources], [j.digest for j in pipeline.references]

    digest = content_hash({"space": to_dict(space), "base": pipeline.digest})
    name = f"tune-{digest}"
    folder = store.local / "tune" / name
    search_path = store.path("tune", name)
    uri = args.tracking_uri or default_tracking_uri(store.local)
    experiment = f"autosparse-tune-{base.name}"
    tracker = Tracker(uri, experiment, digest, params_of(space), {"pipeline.name": base.name, "tune.space": args.space})
    downstream = {"target": to_dict(base.matrix.targets[0]), "train": to_dict(base.matrix.train)}
    trainable = tune.with_resources(
        functools.partial(scorer_trial, space_data=to_dict(space), workspace=store.location, sources=sources,
                          held_out=held_out, downstream=downstream),
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
        max_epochs = space.resolve({}).epochs
        tuner = tune.Tuner(
            trainable,
            param_space={key: dimension.to_tune() for key, dimension in space.space.items()},
            tune_config=tune.TuneConfig(
                metric=space.metric, mode="max", num_samples=space.num_samples, search_alg=search_alg,
                max_concurrent_trials=space.max_concurrent,
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=max_epochs,
                                        grace_period=space.scheduler.grace_period,
                                        reduction_factor=space.scheduler.reduction_factor)),
            run_config=tune.RunConfig(
                name=name, storage_path=store.path("tune"), storage_filesystem=store.fs,
                verbose=1 if args.verbose else 0,
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
    from ..scorer import fit_scorer, scorer_from_fit

    refit = fit_scorer(read_chains(store.location, sources), best_config)
    scorer_from_fit(refit, best_config.network, best_config.hidden, best_config.features,
                    {"config": to_dict(best_config)}).save(folder / BEST_SCORER_FILE)
    store.push(f"tune/{name}")
    tracker.log_parent_artifacts([folder / BEST_CONFIG_FILE, folder / RESULTS_FILE, folder / BEST_SCORER_FILE],
                                 {f"best_{space.metric}": best.metrics[space.metric]})
    tracker.finish()
    print(table)
    print(f"best config: {store.uri('tune', name, BEST_CONFIG_FILE)}\n"
          f"best scorer: {store.uri('tune', name, BEST_SCORER_FILE)}")
    return 0
