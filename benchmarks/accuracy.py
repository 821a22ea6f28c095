"""Accuracy benchmark: run the embedded generalization matrix and check AutoS against its target.

    .venv/bin/python benchmarks/accuracy.py [--config benchmarks/accuracy.yaml] [--workspace DIR]

Writes benchmarks/results/accuracy/{report.md, results.csv, records.json, *.png, target.md}. The target:
at 98% and 99% sparsity, on targets whose (model, dataset) pair no scorer saw, AutoS is within 1 point of
(or above) the best PaI control under the same sparse init in at least 3 of every 4 cases, with every AutoS
seed trained; a pair where no control trains is a protocol failure, never a win; SNIP, SynFlow and
iterative SNIP leave no cell untrained; the report shows the gap to IRP and the mean margin.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from autosparse.config import load_config
from autosparse.orchestration.pipeline import Pipeline
from autosparse.report import MARGIN_TOLERANCE, RECORDS_FILE, CellRecord, margins, summarize
from autosparse.storage import atomic_write

TARGET_SPARSITIES = (0.98, 0.99)
REQUIRED_CONTROLS = ("snip", "synflow", "iter_snip")  # must leave no cell untrained at the target sparsities


def target_table(records: list[CellRecord], sparsities=TARGET_SPARSITIES) -> str:
    """Per AutoS method x target x sparsity: the best control under the same sparse init, the margin, IRP,
    failed seeds and the verdict; then, per AutoS method, the count of cases within 1 point (a pair where no
    control trained is a protocol failure, counted apart) and the mean margin; then the untrained cells of
    the required controls."""
    lines = ["| AutoS method | target | sparsity | AutoS | best control | margin | gap to IRP | AutoS failed | "
             "within 1 point | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    verdicts: dict[str, list[bool]] = {}
    over: dict[str, list[float]] = {}
    failures: dict[str, int] = {}
    for m in sorted(margins(summarize(records), records), key=lambda m: (m.label, m.target, m.sparsity)):
        if m.sparsity not in sparsities or m.best is None:
            continue
        failed = m.autos.collapsed + m.autos.untrained
        ok = m.over_best >= -MARGIN_TOLERANCE and failed == 0
        if m.protocol_failure:
            failures[m.label] = failures.get(m.label, 0) + 1
        else:
            verdicts.setdefault(m.label, []).append(ok)
            over.setdefault(m.label, []).append(m.over_best)
        irp = f"{100 * m.to_irp:+.1f}" if m.irp else ""
        verdict = "protocol failure" if m.protocol_failure else "yes" if ok else "no"
        lines.append(f"| {m.label} | {m.target} | {m.sparsity:.0%} | {100 * m.autos.mean:.1f} ± {100 * m.autos.std:.1f} | "
                     f"{m.best.label} {100 * m.best.mean:.1f} ± {100 * m.best.std:.1f} | {100 * m.over_best:+.1f} | "
                     f"{irp} | {failed} of {m.autos.seeds} | {verdict} | {m.note} |")
    lines.append("")
    for label, oks in sorted(verdicts.items()):
        met = sum(oks) >= 0.75 * len(oks)
        lines.append(f"- {label}: within 1 point of the best control, every seed trained, in {sum(oks)} of {len(oks)} "
                     f"cases (target {'met' if met else 'NOT met'}); mean margin over the best control "
                     f"{100 * sum(over[label]) / len(over[label]):+.1f} points"
                     + (f"; {failures[label]} protocol failure(s) not counted" if label in failures else ""))
    for control in REQUIRED_CONTROLS:
        for init in sorted({r.init for r in records if r.method == control}):
            cells = [r for r in records if r.method == control and r.init == init and r.variant is None
                     and r.sparsity in sparsities]
            untrained = [r for r in cells if r.did_not_train()]
            collapsed = sum(bool(r.collapsed) for r in cells)
            lines.append(f"- {cells[0].label if cells else control}: {len(untrained)} of {len(cells)} cells at "
                         f"{'/'.join(f'{s:.0%}' for s in sparsities)} did not train"
                         + (f" ({collapsed} more collapsed a layer)" if collapsed else ""))
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
