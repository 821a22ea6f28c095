"""The main job: IRP chains -> AutoS scorers -> generalization matrix -> report, on Ray, tracked in MLflow."""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..config import PipelineConfig, ScorerConfig
from ..criteria import CRITERIA
from ..data import DATASETS
from ..experiment import AUTOS, DENSE, CellSpec
from ..features import FEATURES
from ..models import resolve_factory
from ..report import CellRecord, irp_reference_records, write_report
from ..schema import ConfigError, content_hash, to_dict
from ..scorer import SCORER_NETWORKS
from .irp_stage import ChainJob, finalize_chain, fit_chain
from .matrix_stage import CellJob, run_cells
from .scorer_stage import execute_fit, scorer_digest
from .stages import STAGE_KINDS, StageStore
from .tracking import Tracker, default_tracking_uri, params_of

STAGES = ("irp", "scorer", "matrix", "report")


def validate_names(config: PipelineConfig) -> None:
    """Every model, dataset, method, feature and network named in the config exists (before any work)."""
    pairs = [(s.model, s.dataset) for s in config.sources] + [(t.model, t.dataset) for t in config.matrix.targets]
    for model, dataset in pairs:
        resolve_factory(model)
        DATASETS.get(dataset)
    for method in config.matrix.methods:
        CRITERIA.get(method)
    for method in config.matrix.variant_methods or []:
        if method != AUTOS and method not in config.matrix.methods:
            raise ConfigError(f"matrix.variant_methods: {method!r} is neither 'autos' nor one of matrix.methods")
    for name in config.irp.features:
        FEATURES.get(name)
    for scorer in config.scorers:
        SCORER_NETWORKS.get(scorer.network)
        missing = [f for f in scorer.features if f not in config.irp.features]
        for name in scorer.features:
            FEATURES.get(name)
        if missing:
            raise ConfigError(f"scorers[{scorer.name}].features: {missing} are not computed by irp.features")


def pipeline_hash(config: PipelineConfig) -> str:
    return content_hash({k: v for k, v in to_dict(config).items() if k != "data"})


@dataclass
class ScorerJob:
    config: ScorerConfig
    sources: list[ChainJob]
    digest: str

    @property
    def source_label(self) -> str:
        return "+".join(f"{c.chain.model}/{c.chain.dataset}" for c in self.sources)


@dataclass
class PipelineResult:
    workspace: str
    table: str = ""
    report_files: list[Path] = field(default_factory=list)
    records: list[CellRecord] = field(default_factory=list)
    stages_run: dict[str, int] = field(default_factory=dict)
    parent_run_id: str = ""
    experiment_id: str = ""


class Pipeline:
    """Plans every stage from the config, then runs the unfinished ones."""

    def __init__(self, config: PipelineConfig, workspace: str | os.PathLike, *, ray_address: Optional[str] = None,
                 tracking_uri: Optional[str] = None, verbose: bool = False, progress: bool = True,
                 echo: Callable[[str], None] = print):
        validate_names(config)
        self.config = config
        self.store = StageStore(workspace)
        self.ray_address = ray_address
        self.verbose = verbose
        self.progress = progress
        self.echo = echo
        self.digest = pipeline_hash(config)
        self.tracking_uri = tracking_uri or default_tracking_uri(self.store.local)
        self.sources = self._unique([ChainJob.of(config.chain(s.model, s.dataset, s.seed)) for s in config.sources])
        matrix = config.matrix
        reference_seeds = matrix.seeds[:1]
        self.references = self._unique([ChainJob.of(config.chain(t.model, t.dataset, seed))
                                        for t in matrix.targets for seed in reference_seeds]) \
            if matrix.irp_reference else []
        self.scorers = self._plan_scorers()
        self.cells = [CellJob.of(spec) for spec in self._plan_cells()]
        self.tracker: Optional[Tracker] = None

    @staticmethod
    def _unique(jobs: list) -> list:
        seen: dict[str, object] = {}
        for job in jobs:
            seen.setdefault(job.digest, job)
        return list(seen.values())

    def _plan_scorers(self) -> list[ScorerJob]:
        jobs = []
        for scorer in self.config.scorers:
            groups = [self.sources] if scorer.validation == "sources" else [[s] for s in self.sources]
            for group in groups:
                jobs.append(ScorerJob(scorer, group, scorer_digest(scorer, [s.digest for s in group])))
        return jobs

    def _plan_cells(self) -> list[CellSpec]:
        matrix, data = self.config.matrix, self.config.data
        variant_methods = matrix.variant_methods
        specs = []
        for target in matrix.targets:
            for seed in matrix.seeds:
                common = dict(target=target, seed=seed, train=matrix.train, scope=matrix.scope,
                              score_batch_size=data.score_batch_size)
                if matrix.dense_reference:
                    specs.append(CellSpec(method=DENSE, sparsity=0.0, **common))
                methods = [(m, {}) for m in matrix.methods] + [
                    (AUTOS, dict(scorer=j.digest, scorer_name=j.config.name, source=j.source_label))
                    for j in self.scorers]
                for method, extra in methods:
                    variants = [None] + (list(matrix.variants)
                                         if variant_methods is None or method in variant_methods else [])
                    for variant in variants:
                        for sparsity in matrix.sparsities:
                            specs.append(CellSpec(method=method, sparsity=sparsity, variant=variant, **extra, **common))
        return specs

    # -- running -------------------------------------------------------------------------------------

    def connect_tracking(self) -> Tracker:
        """Fail fast (before any training) when MLflow is unusable."""
        if self.tracker is None:
            self.tracker = Tracker(self.tracking_uri, f"autosparse-{self.config.name}", self.digest,
                                   params_of(self.config), {"pipeline.name": self.config.name})
        return self.tracker

    def _ensure_ray(self) -> None:
        from .runtime import init_ray

        init_ray(self.ray_address, verbose=self.verbose)

    def preflight(self) -> None:
        """Fail before any work on an unreachable Ray address or, for local runs, a missing dataset."""
        from ..data import load_dataset
        from ..data.embedded import EMBEDDED
        from .runtime import check_ray_address

        address = self.ray_address or os.environ.get("RAY_ADDRESS")
        if address:
            check_ray_address(address)
            return
        names = {s.dataset for s in self.config.sources} | {t.dataset for t in self.config.matrix.targets}
        for name in sorted(names - set(EMBEDDED)):
            load_dataset(name, self.config.data.data_root, self.config.data.download)

    def run(self, stages: tuple[str, ...] = STAGES, force: tuple[str, ...] = ()) -> PipelineResult:
        self.preflight()
        tracker = self.connect_tracking()
        for kind in force:
            if kind not in STAGE_KINDS:
                raise ConfigError(f"--force: unknown stage {kind!r} (stages: {', '.join(STAGE_KINDS)})")
            self.store.remove(kind)
        result = PipelineResult(self.store.location, parent_run_id=tracker.parent_id,
                                experiment_id=tracker.experiment_id)
        status = "FAILED"
        try:
            if "irp" in stages or "scorer" in stages or "matrix" in stages:
                result.stages_run["irp"] = self.run_chains(self.sources + (self.references if "matrix" in stages else []))
            if "scorer" in stages or "matrix" in stages:
                result.stages_run["scorer"] = self.run_scorers()
            if "matrix" in stages:
                result.records, result.stages_run["cell"] = self.run_matrix()
            if "report" in stages and result.records:
                result.table, result.report_files = self.write_report(result.records)
            status = "FINISHED"
        finally:
            tracker.finish(status)
        return result

    def run_chains(self, jobs: list[ChainJob]) -> int:
        """Run unfinished IRP chains concurrently (one Ray Train run each); log every chain."""
        pending = [job for job in jobs if not self.store.done("irp", job.digest)]
        if pending:
            self._ensure_ray()
            import ray

            workers = max(job.chain.irp.num_workers * job.chain.irp.cpus_per_worker for job in pending)
            parallel = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
            self.echo(f"IRP: {len(pending)} chain(s) to run ({len(jobs) - len(pending)} finished), "
                      f"{parallel} at a time")
            with ThreadPoolExecutor(max_workers=parallel) as pool:
                futures = {pool.submit(fit_chain, job, self.config.data, self.store): job for job in pending}
                for future in as_completed(futures):
                    job = futures[future]
                    finalize_chain(job, future.result(), self.config.data, self.store)
                    self.echo(self.round_table(job))
        for job in jobs:
            self._log_chain(job)
        return len(pending)

    def round_table(self, job: ChainJob) -> str:
        history = self.store.record("irp", job.digest)["history"]
        lines = [f"IRP {job.label} ({job.digest})", f"{'round':>5} {'density':>9} {'test acc':>9} {'seconds':>8}"]
        lines += [f"{r['round']:>5} {r['density']:>9.4f} {r['test_accuracy']:>9.4f} {r['seconds']:>8.1f}"
                  for r in history]
        return "\n".join(lines)

    def _log_chain(self, job: ChainJob) -> None:
        if self.tracker.has_stage(job.digest):
            return
        record = self.store.record("irp", job.digest)
        history = record["history"]
        self.tracker.log_stage(
            job.digest, f"irp {job.label}",
            tags={"stage": "irp", "source.model": job.chain.model, "source.dataset": job.chain.dataset,
                  "seed": job.chain.seed},
            params=params_of(job.chain),
            metrics={"final_density": history[-1]["density"], "final_test_accuracy": history[-1]["test_accuracy"]},
            curves={"test_accuracy": [r["test_accuracy"] for r in history], "density": [r["density"] for r in history],
                    "round_seconds": [r["seconds"] for r in history]},
            texts={"irp_rounds.txt": self.round_table(job)},
        )

    def run_scorers(self) -> int:
        """Fit unfinished scorers as Ray tasks (one CPU each)."""
        pending = [job for job in self.scorers if not self.store.done("scorer", job.digest)]
        if pending:
            self._ensure_ray()
            import ray

            self.echo(f"AutoS: fitting {len(pending)} scorer(s)")
            task = ray.remote(execute_fit).options(num_cpus=1, max_retries=2)
            refs = [task.remote(to_dict(job.config), [s.digest for s in job.sources], self.store.location)
                    for job in pending]
            ray.get(refs)
        for job in self.scorers:
            record = self.store.record("scorer", job.digest)
            self.echo(f"AutoS scorer {job.config.name}@{job.source_label}: validation "
                      + ", ".join(f"{k} {v:.3f}" for k, v in record["metrics"].items() if k != "epoch"))
            if not self.tracker.has_stage(job.digest):
                history = json.loads((self.store.output("scorer", job.digest) / "history.json").read_text())
                keys = sorted({k for epoch in history for k in epoch})
                self.tracker.log_stage(
                    job.digest, f"scorer {job.config.name}@{job.source_label}",
                    tags={"stage": "scorer", "scorer.name": job.config.name,
                          "source.model": "+".join(s.chain.model for s in job.sources),
                          "source.dataset": "+".join(s.chain.dataset for s in job.sources)},
                    params=params_of(job.config), metrics=record["metrics"],
                    curves={k: [e[k] for e in history if k in e] for k in keys},
                    artifacts=[self.store.output("scorer", job.digest) / "scorer.safetensors"],
                )
        return len(pending)

    def run_matrix(self) -> tuple[list[CellRecord], int]:
        records: list[CellRecord] = []
        pending = [job for job in self.cells if not self.store.done("cell", job.digest)]
        self.echo(f"Matrix: {len(self.cells)} cells ({len(pending)} to run)")
        if pending:
            self._ensure_ray()

        def on_result(job: CellJob, result: dict) -> None:
            spec = job.spec
            target = f"{spec.target.model}/{spec.target.dataset}"
            records.append(CellRecord(target, spec.label, spec.method, spec.variant, spec.source, spec.sparsity,
                                      spec.seed, result["test_accuracy"], result["layer_densities"],
                                      result["collapsed_layers"]))
            if self.tracker.has_stage(job.digest):
                return
            source_model, _, source_dataset = (spec.source or "/").partition("/")
            densities = "\n".join(f"{name}\t{d:.6f}" for name, d in result["layer_densities"].items())
            self.tracker.log_stage(
                job.digest, f"{target} {spec.label} s={spec.sparsity} seed={spec.seed}",
                tags={"stage": "cell", "target.model": spec.target.model, "target.dataset": spec.target.dataset,
                      "source.model": source_model or None, "source.dataset": source_dataset or None,
                      "method": spec.label, "variant": spec.variant, "sparsity": spec.sparsity, "seed": spec.seed},
                params=params_of(spec),
                metrics={"test_accuracy": result["test_accuracy"], "density": result["density"],
                         "collapsed_layers": len(result["collapsed_layers"]), "seconds": result["seconds"]},
                curves={"epoch_test_accuracy": result["test_accuracy_per_epoch"],
                        "epoch_train_loss": result["train_loss_per_epoch"]},
                texts={"layer_densities.tsv": f"layer\tdensity\n{densities}\n"} if densities else None,
            )

        run_cells(self.cells, self.config.data, self.store, self.config.matrix, on_result, self.progress)
        for job in self.references:
            target = f"{job.chain.model}/{job.chain.dataset}"
            history = self.store.record("irp", job.digest)["history"]
            records += irp_reference_records(target, history, self.config.matrix.sparsities, job.chain.seed)
        return records, len(pending)

    def write_report(self, records: list[CellRecord]) -> tuple[str, list[Path]]:
        folder = self.store.local / "reports" / self.digest
        table, files = write_report(records, folder, f"autosparse report: {self.config.name} ({self.digest})")
        self.store.push(f"reports/{self.digest}")
        self.tracker.log_parent_artifacts(files)
        return table, files
