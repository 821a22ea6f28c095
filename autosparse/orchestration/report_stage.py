"""The report as a stage: tables and plots from every finished cell and IRP reference, on the driver."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..config import DataConfig, PipelineConfig
from ..masks import Mask
from ..matrix_cell import CellSpec
from ..report import CellRecord, ReportContext, irp_reference_records, summary_metrics, write_report
from ..schema import from_dict, to_dict
from .cell_stage import MASK_FILE
from .irp_stage import reference_chains
from .stage import Job, Runner, Stage, execute_job, register_stage
from .store import StageStore
from .tracking import DESCRIPTION_TAG, TAG_LIMIT, TrackedRun


@dataclass
class ReportSpec:
    """A pipeline's report: its name (the inputs are every cell and IRP reference)."""

    name: str


def cell_records(store: StageStore, digests: list[str]) -> list[CellRecord]:
    records = []
    for digest in digests:
        record = store.record("cell", digest)
        spec, result = from_dict(CellSpec, record["config"]), record["result"]
        path = store.output("cell", digest) / MASK_FILE
        if path.is_file():  # the mask knows the layers' order (input to output); a JSON record may not
            mask = Mask.load(path)
            result["layer_densities"] = {name: result["layer_densities"][name] for name in mask}
            result["empty_units"] = mask.empty_units()
        records.append(CellRecord.of(spec, result))
    return records


def report_context(store: StageStore, cells: list[str]) -> ReportContext:
    """Each target's recipe and each AutoS method's training sources, for the report's notes."""
    recipes, sources = {}, {}
    for digest in cells:
        spec = from_dict(CellSpec, store.record("cell", digest)["config"])
        recipes[spec.target.pair] = spec.train
        if spec.scorer:
            scorer = store.record("scorer", spec.scorer)
            pairs = sorted({f"{s['model']}/{s['dataset']}" for s in scorer["sources"]})
            sources[(spec.target.pair, spec.method)] = pairs
    return ReportContext(recipes, sources)


@register_stage("report", ReportSpec, needs=("cell",), verb="matrix",
                outputs=("report.md", "results.csv", "records.json"),
                help="run the generalization matrix (and everything it needs) and print its table")
class ReportStage(Stage):
    """Accuracy tables (mean ± std over seeds), convergence and anchor flags, and plots."""


    def plan(self, config: PipelineConfig, planned: Mapping[str, list[Job]]) -> list[Job]:
        cells = [job.digest for job in planned["cell"]]
        references = [job.digest for job in reference_chains(config)]
        return [Job("report", ReportSpec(config.name), tuple(cells + references), f"report {config.name}")] if cells else []

    def execute(self, job: Job, folder: Path, store: StageStore, data: DataConfig) -> dict:
        cells = [d for d in job.inputs if store.done("cell", d)]
        records = cell_records(store, cells)
        for digest in job.inputs:
            if store.done("irp", digest):
                chain = store.record("irp", digest)
                config = chain["config"]
                records += irp_reference_records(f"{config['model']}/{config['dataset']}", chain["history"],
                                                 sorted({r.sparsity for r in records if r.sparsity > 0}),
                                                 config["seed"])
        table, files = write_report(records, folder, f"autosparse report: {job.config.name} ({job.digest})",
                                    report_context(store, cells))
        return {"table": table, "files": [f.name for f in files], "summary": summary_metrics(records)}

    def run(self, jobs: list[Job], runner: Runner) -> None:
        for job in jobs:
            execute_job(job.to_data(), runner.store.location, to_dict(runner.data))

    def summary(self, job: Job, record: dict) -> str:
        return record["table"]

    def parent_logging(self, job: Job, record: dict, store: StageStore) -> TrackedRun:
        """The report's files and summary metrics, and a description that points to `report.md` and, where it
        fits, holds its accuracy tables."""
        folder = store.output("report", job.digest)
        description = (f"**The answer: `report.md`** among this run's artifacts (also at "
                       f"`{store.uri('report', job.digest, 'report.md')}`): test accuracy in % per method and sparsity, "
                       "AutoS against the best control and IRP, which cells did not train, and the plots.\n")
        if len(description) + len(record["table"]) < TAG_LIMIT:
            description += record["table"]
        return TrackedRun(name="report", tags={DESCRIPTION_TAG: description}, params={}, metrics=record["summary"],
                          artifacts=[folder / name for name in record["files"]])
