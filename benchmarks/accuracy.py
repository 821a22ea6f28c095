"""Accuracy benchmark: run the embedded generalization matrix and check AutoS against the bar.

    .venv/bin/python benchmarks/accuracy.py [--config benchmarks/accuracy.yaml] [--workspace DIR]

Writes benchmarks/results/accuracy/{report.md, results.csv, *.png, bar.md}. The bar: on every target
other than the source, AutoS above the best PaI baseline at 95/98/99% sparsity by more than one
standard deviation, closing at least half of the gap from that baseline to the target's IRP curve.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from autosparse.config import load_config
from autosparse.experiment import AUTOS, DENSE
from autosparse.io import atomic_write
from autosparse.orchestration.pipeline import Pipeline
from autosparse.report import IRP_LABEL, summarize

BAR_SPARSITIES = (0.95, 0.98, 0.99)


def bar_table(summaries, source: str) -> str:
    """Per target x sparsity x AutoS scorer: best baseline, AutoS, IRP, gap closed, verdict."""
    keyed = {(s.target, s.label, s.sparsity): s for s in summaries}
    lines = ["| target | sparsity | AutoS scorer | AutoS | best baseline | IRP | gap closed | bar met |",
             "|---|---|---|---|---|---|---|---|"]
    met = total = 0
    for target in sorted({s.target for s in summaries}):
        for sparsity in BAR_SPARSITIES:
            baselines = [s for (t, label, sp), s in keyed.items() if t == target and sp == sparsity
                         and "+" not in label and not label.startswith(AUTOS) and label not in (DENSE, IRP_LABEL)]
            irp = keyed.get((target, IRP_LABEL, sparsity))
            if not baselines:
                continue
            best = max(baselines, key=lambda s: s.mean)
            for autos in sorted({label for (t, label, sp) in keyed if t == target and sp == sparsity
                                 and label.startswith(AUTOS) and "+" not in label}):
                a = keyed[(target, autos, sparsity)]
                gap = (irp.mean - best.mean) if irp else float("nan")
                closed = (a.mean - best.mean) / gap if irp and gap > 0 else float("nan")
                ok = a.mean - best.mean > max(a.std, best.std) and closed >= 0.5
                is_source = target == source
                if not is_source:
                    met += ok
                    total += 1
                lines.append(
                    f"| {target}{' (source)' if is_source else ''} | {sparsity:.0%} | {autos} | "
                    f"{100 * a.mean:.1f} ± {100 * a.std:.1f} | {best.label} {100 * best.mean:.1f} ± {100 * best.std:.1f} | "
                    f"{100 * irp.mean:.1f} | {closed:+.0%} | {'yes' if ok else 'no'} |" if irp else "")
    lines.append(f"\nBar met in {met} of {total} (target, sparsity, scorer) cases outside the source.")
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
    for path in result.report_files:
        shutil.copy(path, out / path.name)
    source = f"{config.sources[0].model}/{config.sources[0].dataset}"
    bar = bar_table(summarize(result.records), source)
    header = (f"Config `{args.config}` (pipeline hash `{pipeline.digest}`), {time.strftime('%Y-%m-%d')}, "
              f"{minutes:.0f} min wall time for the stages run now ({result.stages_run}).\n\n")
    atomic_write(out / "bar.md", lambda tmp: Path(tmp).write_text(header + bar))
    print(result.table)
    print(header + bar)


if __name__ == "__main__":
    main()
