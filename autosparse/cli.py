"""The `autosparse` command line: `run`, one verb per stage that has one (irp, fit-scorer, fit-allocator,
matrix), and prune | tune | report | ui."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from .data.base import DEFAULT_DATA_ROOT

DEFAULT_WORKSPACE = "./autosparse-workspace"
EPILOG = "Configs are packaged names (quickstart, smoke, cifar10_resnet18) or paths to YAML files."


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _workspace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=os.environ.get("AUTOSPARSE_WORKSPACE", DEFAULT_WORKSPACE),
                        help=f"stage outputs, reports and the MLflow store: a folder or an object-store URI "
                             f"(default: {DEFAULT_WORKSPACE})")
    parser.add_argument("-v", "--verbose", action="store_true", help="more output: Ray and MLflow logs where they run, and the traceback of a bug")


def _cluster(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray-address", default=None, help="join this Ray cluster (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or SQLite in the workspace)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _pipeline(parser: argparse.ArgumentParser, kinds: list[str], config_required: bool = True) -> None:
    parser.add_argument("config", nargs=None if config_required else "?", default="quickstart",
                        help="packaged config name or YAML path" + ("" if config_required else " (default: quickstart)"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set matrix.seeds=[0,1] (repeatable)")
    parser.add_argument("--force", action="append", default=[], choices=kinds,
                        help="delete and rerun this stage's outputs (repeatable)")
    _cluster(parser)
    _workspace(parser)


def build_parser() -> argparse.ArgumentParser:
    from .config import DEFAULT_INIT
    from .orchestration.stage import ordered_stages
    from .sparse_init import SPARSE_INITS

    stages = ordered_stages()
    kinds = [stage.kind for stage in stages]
    parser = argparse.ArgumentParser(
        prog="autosparse", epilog=EPILOG,
        description="Learned pruning at initialization: IRP once, fit an AutoS scorer, prune any model in one shot.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = verbs.add_parser("run", help="the whole job: every stage, ending with the report", epilog=EPILOG)
    run.set_defaults(through=None)
    _pipeline(run, kinds, config_required=False)
    for stage in stages:
        if stage.verb:
            sub = verbs.add_parser(stage.verb, help=stage.help, epilog=EPILOG)
            sub.set_defaults(through=stage.kind)
            _pipeline(sub, kinds)

    prune = verbs.add_parser("prune", help="prune one model at initialization and save its mask")
    prune.add_argument("--model", required=True, help="registered model name or package.module:factory")
    prune.add_argument("--dataset", required=True, help="dataset the model is sized for (and scored on)")
    prune.add_argument("--method", required=True,
                       help="SCORES[/iterK][/batchN][@alloc:NAME][+VARIANT] (e.g. snip/iter20@alloc:synflow), "
                            "SCORES a criterion or a scorer file")
    prune.add_argument("--sparsity", type=float, required=True, help="fraction of prunable weights to remove")
    prune.add_argument("--allocation", default=None,
                       help="global, uniform, erk, a criterion name, or an allocator file (overrides @alloc:)")
    prune.add_argument("--seed", type=int, default=0, help="model init and scoring seed")
    prune.add_argument("--batch-size", type=positive_int, default=256, help="training samples used to score")
    prune.add_argument("--data-root", default=DEFAULT_DATA_ROOT)
    prune.add_argument("--download", action="store_true", help="allow torchvision downloads")
    prune.add_argument("--init", default=DEFAULT_INIT, choices=SPARSE_INITS.registered(),
                       help=f"sparse init of the kept weights, whose signal at init is printed (default: {DEFAULT_INIT}; "
                            "original: the dense values, which a deep net at 98-99%% sparsity may not pass a signal through)")
    prune.add_argument("--out", default=None, help="save the mask here (torch file)")
    prune.add_argument("--weights-out", default=None,
                       help="save the pruned network's initial weights here, after the sparse init (state_dict file)")
    prune.add_argument("-v", "--verbose", action="store_true", help="tracebacks of bugs")

    tune = verbs.add_parser("tune", help="Ray Tune search over scorer architecture and features")
    tune.add_argument("space", help="search space YAML (see tuning/scorer_space.yaml)")
    tune.add_argument("--base", default="quickstart", help="pipeline config whose IRP sources feed the search")
    _cluster(tune)
    _workspace(tune)

    report = verbs.add_parser("report", help="regenerate tables and plots from a workspace")
    report.add_argument("report_workspace", nargs="?", default=None, metavar="WORKSPACE")
    _workspace(report)

    ui = verbs.add_parser("ui", help="serve the MLflow UI for the workspace on 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: local only)")
    _workspace(ui)
    return parser


def _quiet(verbose: bool) -> None:
    import logging
    import warnings

    from .orchestration.runtime import set_local_defaults

    set_local_defaults()
    if not verbose:  # the CLI reports every error in one line: library logs would only add tracebacks
        os.environ["MLFLOW_LOGGING_LEVEL"] = "CRITICAL"
        for name in ("ray", "mlflow", "alembic", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore")


def run_options(args: argparse.Namespace):
    from .orchestration.runtime import RunOptions

    return RunOptions(args.ray_address, args.tracking_uri, args.verbose, not args.no_progress)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from .config import load_config
    from .orchestration.pipeline import Pipeline

    config = load_config(args.config, args.overrides)
    pipeline = Pipeline(config, args.workspace, run_options(args))
    result = pipeline.run(args.through, tuple(args.force))
    if result.table:
        print(result.table)
    ran = ", ".join(f"{k}: {v}" for k, v in result.stages_run.items())
    print(f"\nworkspace: {result.workspace}\nstages run this time: {ran}")
    if result.report_folder:
        print(f"report: {result.report_folder}")
    print(f"MLflow: {pipeline.tracking_uri} (experiment {result.experiment_id}, parent run {result.parent_run_id}); "
          f"browse with `autosparse ui --workspace {args.workspace}`")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from . import Method, apply_mask, build_model, load_dataset, prune
    from .sparse_init import signal_at_init
    from .storage import atomic_write

    dataset = load_dataset(args.dataset, args.data_root, args.download)
    model = build_model(args.model, dataset.input_shape, dataset.num_classes, args.seed)
    method = Method.parse(args.method)
    method.validate()
    batch = dataset.sample_batch(args.batch_size, args.seed)
    mask = prune(model, args.sparsity, method, batch, allocation=args.allocation, seed=args.seed)
    print(f"{'layer':<40} {'weights':>10} {'density':>9}")
    for name, density in mask.layer_densities().items():
        print(f"{name:<40} {mask[name].numel():>10} {density:>9.4f}")
    print(f"{'total':<40} {mask.num_total():>10} {mask.density():>9.4f}")
    if mask.collapsed_layers():
        print(f"layer collapse: {', '.join(mask.collapsed_layers())} keep no weight")
    apply_mask(model, mask, args.init, batch[0])
    signal = signal_at_init(model, *batch)
    print(f"signal at init ({args.init}): logit std {signal.logit_std:.3g}, gradient norm {signal.grad_norm:.3g}, "
          f"loss {signal.loss:.4f} on the scoring batch")
    if args.out:
        mask.save(args.out)
        print(f"mask saved to {args.out}")
    if args.weights_out:
        atomic_write(args.weights_out, lambda tmp: torch.save(model.state_dict(), tmp))
        print(f"initial weights ({args.init}) saved to {args.weights_out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .orchestration.store import StageStore
    from .report import regenerate_reports

    store = StageStore(args.report_workspace or args.workspace)
    if store.remote and store.list_dirs("report"):
        store.pull("report")
    for folder, table in regenerate_reports(store.local):
        print(table)
        print(f"report: {folder}")
    store.push("report")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Print a link to each pipeline's runs table, then become the MLflow UI (one worker: light and quick to
    start)."""
    from .orchestration.store import StageStore
    from .orchestration.tracking import ARTIFACTS_FOLDER, default_tracking_uri, relocate_artifacts, runs_table_links

    store = StageStore(args.workspace)
    uri = default_tracking_uri(store.local)
    relocate_artifacts(uri, store.uri(ARTIFACTS_FOLDER))
    address = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    print(f"MLflow UI for {uri} at {address} (Ctrl-C to stop)")
    for experiment, link in runs_table_links(uri, address).items():
        print(f"{experiment}, runs by test accuracy: {link}")
    sys.stdout.flush()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    os.execve(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
                               "--port", str(args.port), "--workers", "1"], env)


def cmd_tune(args: argparse.Namespace) -> int:
    from .config import load_config, load_space
    from .orchestration.tuning import TuneRequest, run_tuning

    request = TuneRequest(space=load_space(args.space), space_path=args.space, base=load_config(args.base),
                          workspace=args.workspace, options=run_options(args))
    result = run_tuning(request)
    print(result.table)
    print(f"best config: {result.best_config}\nbest scorer: {result.best_scorer}")
    return 0


COMMANDS = {"prune": cmd_prune, "report": cmd_report, "ui": cmd_ui, "tune": cmd_tune}


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet(args.verbose)
    from .errors import describe, is_user_error

    try:
        return COMMANDS.get(args.verb, cmd_pipeline)(args)
    except KeyboardInterrupt:
        print("autosparse: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as error:
        if is_user_error(error):
            print(f"autosparse: error: {describe(error)}", file=sys.stderr)
            return 2
        if args.verbose:
            raise
        print(f"autosparse: internal error (a bug; rerun with -v for the traceback): {describe(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
