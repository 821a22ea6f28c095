"""Accuracy tables (mean +- std over seeds) and plots for a generalization matrix."""
from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .experiment import AUTOS, DENSE
from .io import atomic_write

IRP_LABEL = "irp (reference)"


@dataclass
class CellRecord:
    target: str  # "model/dataset"
    label: str  # method label, e.g. "snip+shuffle"
    method: str
    variant: Optional[str]
    source: Optional[str]
    sparsity: float
    seed: int
    accuracy: float
    layer_densities: dict[str, float]
    collapsed: list[str]


@dataclass
class Summary:
    target: str
    label: str
    sparsity: float
    mean: float
    std: float
    seeds: int
    actual_sparsity: Optional[float] = None  # IRP references sit at the closest IRP density


def irp_reference_records(target: str, history: list[dict], sparsities: list[float], seed: int) -> list[CellRecord]:
    """The target's IRP accuracy at the round whose density is closest (in log space) to each sparsity."""
    records = []
    for sparsity in sparsities:
        best = min(history, key=lambda r: abs(math.log(r["density"]) - math.log(1 - sparsity)))
        records.append(CellRecord(target, IRP_LABEL, "irp", None, None, sparsity, seed, best["test_accuracy"],
                                  {}, []))
        records[-1].layer_densities = {"__density__": best["density"]}
    return records


def summarize(records: list[CellRecord]) -> list[Summary]:
    groups: dict[tuple, list[CellRecord]] = defaultdict(list)
    for record in records:
        groups[(record.target, record.label, record.sparsity)].append(record)
    summaries = []
    for (target, label, sparsity), group in sorted(groups.items()):
        values = [r.accuracy for r in group]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        actual = None
        if group[0].method == "irp":
            actual = 1 - group[0].layer_densities["__density__"]
        summaries.append(Summary(target, label, sparsity, statistics.fmean(values), std, len(values), actual))
    return summaries


def _method_order(label: str) -> tuple:
    base = label.split("+")[0]
    rank = 0 if label == DENSE else 2 if base == IRP_LABEL else 1
    return (rank, base.startswith(AUTOS), label)


def markdown_table(summaries: list[Summary]) -> str:
    """One table per target: methods as rows, sparsities as columns, cells 'mean +- std' in percent."""
    out = io.StringIO()
    targets = sorted({s.target for s in summaries})
    for target in targets:
        rows = [s for s in summaries if s.target == target]
        sparsities = sorted({s.sparsity for s in rows if s.label != DENSE})
        labels = sorted({s.label for s in rows}, key=_method_order)
        out.write(f"\n### {target}\n\n| method | " + " | ".join(f"{s:.0%} sparse" for s in sparsities) + " |\n")
        out.write("|---|" + "---|" * len(sparsities) + "\n")
        for label in labels:
            cells = []
            for sparsity in sparsities:
                match = [s for s in rows if s.label == label and (s.sparsity == sparsity or label == DENSE)]
                if not match:
                    cells.append("")
                    continue
                s = match[0]
                text = f"{100 * s.mean:.1f} ± {100 * s.std:.1f}"
                if s.actual_sparsity is not None:
                    text += f" (at {s.actual_sparsity:.1%})"
                cells.append(text)
            out.write(f"| {label} | " + " | ".join(cells) + " |\n")
    seeds = max((s.seeds for s in summaries), default=0)
    out.write(f"\nTest accuracy in %, mean ± std over up to {seeds} seeds.\n")
    return out.getvalue()


def csv_text(records: list[CellRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["target", "method", "variant", "source", "label", "sparsity", "seed", "accuracy", "collapsed"])
    for r in records:
        writer.writerow([r.target, r.method, r.variant or "", r.source or "", r.label, r.sparsity, r.seed,
                         f"{r.accuracy:.6f}", ";".join(r.collapsed)])
    return out.getvalue()


def best_baseline_gap(summaries: list[Summary]) -> dict[tuple[str, str], float]:
    """(AutoS label, target) -> mean over sparsities of AutoS minus the best PaI baseline (no variants)."""
    gaps: dict[tuple[str, str], list[float]] = defaultdict(list)
    keyed = {(s.target, s.label, s.sparsity): s.mean for s in summaries}
    for s in summaries:
        if not s.label.startswith(AUTOS) or "+" in s.label:
            continue
        baselines = [m for (t, label, sp), m in keyed.items() if t == s.target and sp == s.sparsity
                     and "+" not in label and not label.startswith(AUTOS) and label not in (DENSE, IRP_LABEL)]
        if baselines:
            gaps[(s.label, s.target)].append(s.mean - max(baselines))
    return {key: statistics.fmean(v) for key, v in gaps.items()}


def write_plots(records: list[CellRecord], summaries: list[Summary], folder: Path) -> list[Path]:
    """Accuracy vs sparsity per target, per-layer densities per method, and the AutoS gap heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    paths = []
    targets = sorted({s.target for s in summaries})
    fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4.2), squeeze=False)
    for ax, target in zip(axes[0], targets):
        rows = [s for s in summaries if s.target == target]
        for label in sorted({s.label for s in rows}, key=_method_order):
            points = sorted((s.sparsity, s.mean, s.std) for s in rows if s.label == label)
            if label == DENSE:
                ax.axhline(points[0][1], color="black", linestyle=":", label="dense")
                continue
            xs, ys, es = zip(*points)
            style = dict(linewidth=2.5, color="black") if label == IRP_LABEL else {}
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label,
                        linestyle="--" if "+" in label else "-", **style)
        ax.set_xscale("logit")
        ticks = sorted({s.sparsity for s in rows if s.label != DENSE})
        ax.set_xticks(ticks, [f"{t:.0%}" for t in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(target)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    paths.append(_save(fig, folder / "accuracy_vs_sparsity.png"))

    pruned = [r for r in records if r.layer_densities and r.method != "irp"]
    if pruned:
        top = max(r.sparsity for r in pruned)
        fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4.2), squeeze=False)
        for ax, target in zip(axes[0], targets):
            chosen = {r.label: r for r in pruned if r.target == target and r.sparsity == top and "+" not in r.label}
            for label, record in sorted(chosen.items()):
                ax.plot(range(len(record.layer_densities)), list(record.layer_densities.values()), marker="o",
                        label=label)
            ax.set_yscale("log")
            ax.set_title(f"{target}: layer densities at {top:.0%} sparsity")
            ax.set_xlabel("prunable layer (input to output)")
            ax.set_ylabel("density")
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        paths.append(_save(fig, folder / "layer_densities.png"))

    gaps = best_baseline_gap(summaries)
    if gaps:
        rows, cols = sorted({k[0] for k in gaps}), sorted({k[1] for k in gaps})
        values = [[gaps.get((r, c), math.nan) * 100 for c in cols] for r in rows]
        fig, ax = plt.subplots(figsize=(1.8 * len(cols) + 3, 0.8 * len(rows) + 2))
        limit = max(1.0, max(abs(v) for row in values for v in row if not math.isnan(v)))
        image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                ax.text(j, i, "" if math.isnan(value) else f"{value:+.1f}", ha="center", va="center")
        fig.colorbar(image, label="AutoS - best baseline (accuracy points)")
        ax.set_title("AutoS minus best PaI baseline, mean over sparsities")
        paths.append(_save(fig, folder / "autos_gap_heatmap.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_report(records: list[CellRecord], folder: Path, title: str) -> tuple[str, list[Path]]:
    """Markdown + CSV + plots into `folder`; returns the Markdown table and the files written."""
    summaries = summarize(records)
    table = markdown_table(summaries)
    collapsed = sorted({(r.target, r.label, r.sparsity) for r in records if r.collapsed})
    notes = "".join(f"- layer collapse: {t} / {label} at {s:.0%}\n" for t, label, s in collapsed)
    markdown = f"# {title}\n{table}\n" + (f"\n## Layer collapse\n\n{notes}" if notes else "")
    atomic_write(folder / "report.md", lambda tmp: Path(tmp).write_text(markdown))
    atomic_write(folder / "results.csv", lambda tmp: Path(tmp).write_text(csv_text(records)))
    save_records(records, folder)
    return table, [folder / "report.md", folder / "results.csv", *write_plots(records, summaries, folder)]


RECORDS_FILE = "records.json"


def save_records(records: list[CellRecord], folder: Path) -> None:
    from dataclasses import asdict

    from .io import write_json

    write_json(folder / RECORDS_FILE, [asdict(r) for r in records])


def regenerate_reports(workspace: Path) -> list[tuple[Path, str]]:
    """Re-render every report under `<workspace>/reports/` from its saved records."""
    import json

    found = sorted((workspace / "reports").glob(f"*/{RECORDS_FILE}")) if (workspace / "reports").is_dir() else []
    if not found:
        raise FileNotFoundError(f"no reports under {str(workspace)!r}: run `autosparse run` first")
    out = []
    for path in found:
        records = [CellRecord(**r) for r in json.loads(path.read_text())]
        table, _ = write_report(records, path.parent, f"autosparse report ({path.parent.name})")
        out.append((path.parent, table))
    return out
