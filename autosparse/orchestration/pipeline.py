"""The main job: every registered stage in dependency order, running only unfinished jobs, tracked in MLflow."""
from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..config import PipelineConfig
from ..data import DATASETS
from ..data.embedded import EMBEDDED
from ..features import FEATURES
from ..models import resolve_factory
from ..errors import UserError
from ..methods import Method
from ..schema import ConfigError, content_hash, non_default
from ..scorer import SCORER_NETWORKS
from .runtime import RunOptions
from .stage import STAGES, Job, Runner, ordered_stages
from .store import StageStore
from .tracking import ARTIFACTS_FOLDER, DESCRIPTION_TAG, TrackedRun, Tracker, default_tracking_uri, params_of

EXPERIMENT_DESCRIPTION = """autosparse pipeline `{name}`: learned pruning at initialization. The answer is in the parent run `{name}`: its description, and `report.md` among its artifacts.

Compare methods (values are fractions: 0.963 is 96.3%): search `tags.target = 'mlp/digits' and tags.sparsity = '0.98'`,
group by Tags > `method` (one group per arm; its row shows the mean over seeds), show Metrics > `test_accuracy`.

- Every run with metrics `test_accuracy` and `sparsity` is one point: a matrix cell (`tags.stage = 'cell'`: one target
  pruned by one method at one sparsity and seed, then trained) or an IRP reference (`tags.method = 'irp'`: the round
  of the target's own IRP chain closest to that sparsity; its `sparsity` metric is that round's real sparsity).
- Tags: `method` (the arm: method, sanity variant and sparse init, e.g. `autos:paper+shuffle`; runs sharing it are one
  arm), `variant` (`none` for plain cells), `target`, `sparsity`, `seed`, `init`, `criterion`, `allocation`.
  Cells with `method = 'dense'` are the dense references. Metrics `init_logit_std`, `init_grad_norm`: the signal
  at init (about 0: the cell could not train); per-epoch `epoch_train_loss`.
- `tags.stage = 'irp'` with `role` source or reference: IRP chains; `'scorer'` / `'allocator'`: what AutoS learned.
  A run's description links the runs it was made from.
- The parent's metrics: `mean.<target>.<label>.<sparsity>`, `autos_minus_best_control.` and `autos_minus_irp.`,
  where a label's `@` is written ` at ` and `+` ` plus `."""


def validate_names(config: PipelineConfig) -> None:
    """Every model, dataset, method, feature and network named in the config exists (before any work)."""
    for pair in [*config.sources, *config.matrix.targets]:
        resolve_factory(pair.model)
        DATASETS.get(pair.dataset)
    scorer_names = [s.name for s in config.scorers]
    methods = []
    for index, text in enumerate(config.matrix.methods):
        try:
            methods.append(Method.parse(text))
            methods[-1].validate(scorer_names)
        except UserError as error:
            raise ConfigError(f"matrix.methods[{index}]: {error}") from None
    for key in ("variant_methods", "compare_init_methods"):
        for name in getattr(config.matrix, key) or []:
            if not any(method.selected_by([name]) for method in methods):
                raise ConfigError(f"matrix.{key}: {name!r} is not one of matrix.methods (or their criterion, "
                                  "or 'autos')")
    for name in config.irp.features:
        FEATURES.get(name)
    for scorer in config.scorers:
        SCORER_NETWORKS.get(scorer.network)
        for name in scorer.features:
            FEATURES.get(name)
        missing = [f for f in scorer.features if f not in config.irp.features]
        if missing:
            raise ConfigError(f"scorers[{scorer.name}].features: {missing} are not computed by irp.features")


def pipeline_hash(config: PipelineConfig) -> str:
    return content_hash({k: v for k, v in non_default(config).items() if k != "data"})


@dataclass
class PipelineResult:
    workspace: str
    table: str = ""
    report_folder: Optional[str] = None
    stages_run: dict[str, int] = field(default_factory=dict)
    parent_run_id: str = ""
    experiment_id: str = ""


class Pipeline:
    """Plans every stage's jobs from the config, then runs the unfinished ones, stage by stage."""

    def __init__(self, config: PipelineConfig, workspace: str | os.PathLike, options: RunOptions = RunOptions(),
                 echo: Callable[[str], None] = print):
        validate_names(config)
        self.config = config
        self.store = StageStore(workspace)
        self.options = options
        self.echo = echo
        self.digest = pipeline_hash(config)
        self.tracking_uri = options.tracking_uri or default_tracking_uri(self.store.local)
        self.jobs: dict[str, list[Job]] = {}
        for stage in ordered_stages():
            self.jobs[stage.kind] = stage.plan(config, self.jobs)
        self.kind_of = {job.digest: kind for kind, jobs in self.jobs.items() for job in jobs}
        self.tracker: Optional[Tracker] = None

    def connect_tracking(self) -> Tracker:
        """Fail fast (before any training) when MLflow is unusable."""
        if self.tracker is None:
            self.tracker = Tracker(self.tracking_uri, f"autosparse-{self.config.name}", self.digest,
                                   params_of(self.config), {"pipeline.name": self.config.name},
                                   artifact_root=self.store.uri(ARTIFACTS_FOLDER),
                                   description=EXPERIMENT_DESCRIPTION.format(name=self.config.name),
                                   run_name=self.config.name)
        return self.tracker

    def ensure_ray(self) -> None:
        from .runtime import init_ray

        init_ray(self.options.ray_address, verbose=self.options.verbose)

    def runner(self) -> Runner:
        return Runner(self.store, self.config.data, self.config, self.ensure_ray, self.echo, self.options.progress,
                      self.connect_tracking())

    def preflight(self) -> None:
        """Fail before any work on an unreachable Ray address or, for local runs, a missing dataset."""
        from ..data import load_dataset
        from .runtime import check_ray_address

        address = self.options.ray_address or os.environ.get("RAY_ADDRESS")
        if address:
            check_ray_address(address)
            return
        names = {s.dataset for s in self.config.sources} | {t.dataset for t in self.config.matrix.targets}
        for name in sorted(names - set(EMBEDDED)):
            load_dataset(name, self.config.data.data_root, self.config.data.download)

    def needed(self, through: Optional[str]) -> set[str]:
        """Digests of the jobs of stage `through` and of every job they read (all jobs when None)."""
        by_digest = {job.digest: job for jobs in self.jobs.values() for job in jobs}
        if through is None:
            return set(by_digest)
        stack, seen = [job.digest for job in self.jobs[through]], set()
        while stack:
            digest = stack.pop()
            if digest not in seen and digest in by_digest:
                seen.add(digest)
                stack.extend(by_digest[digest].inputs)
        return seen

    def run(self, through: Optional[str] = None, force: tuple[str, ...] = ()) -> PipelineResult:
        """Run the jobs of stage `through` and what they need (everything when None); `force` first deletes
        the finished outputs of those stage kinds."""
        for kind in force:
            STAGES.get(kind)
        self.preflight()
        tracker = self.connect_tracking()
        for kind in force:
            self.store.remove(kind)
        result = PipelineResult(self.store.location, parent_run_id=tracker.parent_id,
                                experiment_id=tracker.experiment_id)
        needed, runner = self.needed(through), self.runner()
        try:
            for stage in ordered_stages():
                jobs = [job for job in self.jobs[stage.kind] if job.digest in needed]
                pending = [job for job in jobs if not self.store.done(stage.kind, job.digest)]
                if pending:
                    stage.run(pending, runner)
                result.stages_run[stage.kind] = len(pending)
                for job in jobs:
                    self.record(stage, job, echo=job in pending)
                    if stage.kind == "report":
                        result.table = self.store.record("report", job.digest)["table"]
                        result.report_folder = self.store.uri("report", job.digest)
        except BaseException:
            with suppress(Exception):  # the first error is the one to report, not the cleanup's
                tracker.finish("FAILED")
            raise
        tracker.finish("FINISHED")
        return result

    def log(self, kind: str, job: Job, record: dict, tracked: TrackedRun) -> None:
        """Log one child run, with its real times and links to the runs it read: the runs of the job's inputs
        (its scorer, allocator, chains), or for a part of a job, the job's own run."""
        tracked.start_ms = tracked.start_ms or int(record.get("started", 0) * 1000) or None
        tracked.end_ms = tracked.end_ms or int(record.get("finished", 0) * 1000) or None
        tracked.tags.setdefault("ray.node_id", record.get("node"))
        read = [(kind, job.digest)] if tracked.part else [(self.kind_of.get(d), d) for d in job.inputs]
        links = []
        for input_kind, digest in read:
            run_id = self.tracker.run_id_of(digest)
            if input_kind and run_id:
                tracked.tags[f"{input_kind}.run_id"] = run_id
                links.append(f"- {input_kind} [{digest}]({self.tracker.link(run_id)})")
        if links:
            description = tracked.tags.get(DESCRIPTION_TAG)
            tracked.tags[DESCRIPTION_TAG] = "\n\n".join(
                filter(None, [description, "Made from these runs (links open in a new tab):", "\n".join(links)]))
        self.tracker.log_stage(job.digest, tracked)

    def record(self, stage, job: Job, echo: bool) -> None:
        """Print a job's summary (when it ran now) and log it to MLflow once."""
        record = self.store.record(stage.kind, job.digest)
        line = stage.summary(job, record)
        if echo and line and stage.kind != "report":
            self.echo(line)
        for tracked in stage.track(job, record, self.store):
            if not self.tracker.has_stage(job.digest, tracked.part):
                self.log(stage.kind, job, record, tracked)
        parent = stage.parent_logging(job, record, self.store)
        if parent is not None:
            self.tracker.log_parent(parent)
