"""Accuracy benchmark: run the embedded generalization matrix and check AutoS against its target.

    .venv/bin/python benchmarks/accuracy.py [--config benchmarks/accuracy.yaml] [--workspace DIR]

Writes benchmarks/results/accuracy/{report.md, results.csv, records.json, *.png, target.md}. The target:
at 98% and 99% sparsity, on targets whose (model, dataset) pair no scorer saw, AutoS is within 1 point of
(or above) the best PaI control in at least 3 of every 4 cases, never collapses a layer, and the report
shows its gap to IRP.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from autosparse.config import load_config
from autosparse.io import atomic_write
from autosparse.orchestration.pipeline import Pipeline
from autosparse.report import RECORDS_FILE, CellRecord, margins, summarize

TARGET_SPARSITIES = (0.98, 0.99)
TOLERANCE = 0.01


def target_table(records: list[CellRecord]) -> str:
    """Per AutoS method x target x sparsity: the best control, the margin, IRP, collapses, verdict."""
    lines = ["| AutoS method | target | sparsity | AutoS | best control | margin | gap to IRP | collapsed | within 1 point |",
             "|---|---|---|---|---|---|---|---|---|"]
    verdicts: dict[str, list[bool]] = {}
    for m in sorted(margins(summarize(records), records), key=lambda m: (m.label, m.target, m.sparsity)):
        if m.sparsity not in TARGET_SPARSITIES or m.best is None:
            continue
        ok = m.over_best >= -TOLERANCE and m.autos.collapsed == 0
        verdicts.setdefault(m.label, []).append(ok)
        irp = f"{100 * m.to_irp:+.1f}" if m.irp else ""
        lines.append(f"| {m.label} | {m.target} | {m.sparsity:.0%} | {100 * m.autos.mean:.1f} ± {100 * m.autos.std:.1f} | "
                     f"{m.best.label} {100 * m.best.mean:.1f} ± {100 * m.best.std:.1f} | {100 * m.over_best:+.1f} | "
                     f"{irp} | {m.autos.collapsed} | {'yes' if ok else 'no'} |")
    lines.append("")
    for label, oks in sorted(verdicts.items()):
        met = sum(oks) >= 0.75 * len(oks)
        lines.append(f"- {label}: within 1 point of the best control (and no collapse) in {sum(oks)} of {len(oks)} "
                     f"cases: target {'met' if met else 'NOT met'}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).with_name("accuracy.yaml")))
    parser.add_argument("--workspace", default="autosparse-workspace-benchmark")
    parser.add_argument("--out", default="benchmarks/results/accuracy")
    args = parser.parse_args()
    config = load_config(args.config)
    started = time.perf_counter()
    pipeline = Pipeline(config, args.workspace)
    result = pipeline.run()
    minutes = (time.perf_counter() - started) / 60
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = pipeline.store.output("report", pipeline.jobs["report"][0].digest)
    for path in folder.iterdir():
        if path.is_file() and path.name != "stage.json":
            shutil.copy(path, out / path.name)
    saved = json.loads((folder / RECORDS_FILE).read_text())
    records = [CellRecord(**r) for r in saved["records"]]  # cells and the targets' IRP references
    header = (f"Config `{args.config}` (pipeline hash `{pipeline.digest}`), {time.strftime('%Y-%m-%d')}, "
              f"{minutes:.0f} min wall time for the stages run now ({result.stages_run}).\n\n")
    table = target_table(records)
    atomic_write(out / "target.md", lambda tmp: Path(tmp).write_text(header + table))
    print(result.table)
    print(header + table)


if __name__ == "__main__":
    main()
