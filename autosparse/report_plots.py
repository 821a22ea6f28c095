"""The report's plots, every value in %: accuracy against sparsity, per-layer densities, the AutoS margin heatmap."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from .report import DENSE, IRP_LABEL, CellRecord, Margin, Summary, method_order
from .storage import atomic_write

MARKERS = "osD^vP<X>*"  # hollow and of different shapes: a line hidden under another still shows its markers
DASHES = ["-", "--", ":", "-."]
SPREAD = 0.3  # layer-density lines spread over this share of the gap between two layers
CLIP_FACTOR = 2.0  # the heatmap's colour scale: this multiple of the median |margin| (outliers do not set it)


def seeds_note(summaries: list[Summary]) -> tuple[int, str]:
    """The seed count most arms have, and the legend's title saying what the error bars are."""
    counts = [s.seeds for s in summaries if s.label not in (DENSE, IRP_LABEL)] or [1]
    most = statistics.mode(counts)
    return most, (f"error bars: std over {most} seeds" if most > 1 else "one seed: no error bars")


def legend_label(label: str, seeds: int, most: int) -> str:
    """An arm's legend entry, with its seed count where it differs from most arms'."""
    return label if seeds == most else f"{label} ({seeds} seed{'s' if seeds > 1 else ''})"


def clip_limit(values: list[float]) -> float:
    """The symmetric colour range of a margin heatmap: CLIP_FACTOR times the median |value| (at least 1 point),
    so that at least half the cells keep their colour however far the outliers lie."""
    return max(1.0, CLIP_FACTOR * statistics.median(abs(v) for v in values))


def spread(count: int) -> list[float]:
    """Horizontal offsets of `count` lines drawn over the same layers, centred on 0."""
    if count == 1:
        return [0.0]
    return [SPREAD * (k / (count - 1) - 0.5) for k in range(count)]


def accuracy_plot(summaries: list[Summary], targets: list[str]):
    """Per target, each arm's mean test accuracy against sparsity, with its std over seeds as error bars."""
    import matplotlib.ticker

    plt = pyplot()

    most, note = seeds_note(summaries)
    fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4.2), squeeze=False)
    for ax, target in zip(axes[0], targets):
        rows = [s for s in summaries if s.target == target]
        for index, label in enumerate(sorted({s.label for s in rows}, key=method_order)):
            points = sorted((s.sparsity, 100 * s.mean, 100 * s.std, s.seeds) for s in rows if s.label == label)
            if label == DENSE:
                ax.axhline(points[0][1], color="black", linestyle=":", label=legend_label(DENSE, points[0][3], most))
                continue
            xs, ys, errors, seeds = zip(*points)
            style = dict(linewidth=2.5, color="black") if label == IRP_LABEL else {}
            ax.errorbar(xs, ys, yerr=errors if max(seeds) > 1 else None, marker=MARKERS[index % len(MARKERS)],
                        markerfacecolor="none", capsize=3, label=legend_label(label, max(seeds), most),
                        linestyle="--" if "+" in label else "-", **style)
        ax.set_xscale("logit")
        ticks = sorted({s.sparsity for s in rows if s.label != DENSE})
        ax.set_xticks(ticks, [f"{100 * t:g}%" for t in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(target)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, title=note, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def layer_density_plot(records: list[CellRecord], targets: list[str]):
    """Per method (first seed), each layer's density at the highest sparsity, layers named on the x axis; lines
    over the same layer are spread apart, and a layer that kept no weight is drawn at a floor, marked x."""
    plt = pyplot()
    pruned = [r for r in records if r.layer_densities and r.method != "irp"]
    top = max(r.sparsity for r in pruned)
    fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4.6), squeeze=False)
    for ax, target in zip(axes[0], targets):
        collapsed = False
        chosen: dict[str, CellRecord] = {}
        for r in sorted(pruned, key=lambda r: r.seed):
            if r.target == target and r.sparsity == top and "+" not in r.label:
                chosen.setdefault(r.label, r)
        offsets = spread(len(chosen))
        kept = [100 * d for r in chosen.values() for d in r.layer_densities.values() if d > 0]
        floor = min(kept, default=1.0) / 3  # where a layer that kept no weight is drawn (0 has no place on a log axis)
        for index, (label, record) in enumerate(sorted(chosen.items(), key=lambda item: method_order(item[0]))):
            xs = [i + offsets[index] for i in range(len(record.layer_densities))]
            densities = [100 * d for d in record.layer_densities.values()]
            line, = ax.plot(xs, [d or floor for d in densities], label=label, marker=MARKERS[index % len(MARKERS)],
                            markerfacecolor="none", linestyle=DASHES[index % len(DASHES)])
            empty = [x for x, d in zip(xs, densities) if d == 0]
            ax.plot(empty, [floor] * len(empty), linestyle="none", marker="x", markersize=9, color=line.get_color(),
                    label="_")
            collapsed = collapsed or bool(empty)
        if collapsed:
            ax.axhline(floor, color="grey", linewidth=0.8)
            ax.annotate("x: no weight kept (0%)", (0, floor), xycoords=("axes fraction", "data"), xytext=(4, 4),
                        textcoords="offset points", fontsize=7, color="grey")
        names = list(next(iter(chosen.values())).layer_densities) if chosen else []
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(lambda value, _: f"{value:g}")
        ax.set_title(f"{target}: layer densities at {100 * top:g}% sparsity")
        ax.set_xlabel("prunable layer (input to output)")
        ax.set_ylabel("density (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def margin_heatmap(items: list[Margin]):
    """AutoS minus the best control, in accuracy points; the colour scale is clipped at `clip_limit` and the
    cells beyond it are outlined."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    rows = sorted({m.label for m in items})
    cols = sorted({(m.target, m.sparsity) for m in items})
    keyed = {(m.label, m.target, m.sparsity): 100 * m.over_best for m in items}
    values = [[keyed.get((r, *c), math.nan) for c in cols] for r in rows]
    limit = clip_limit([v for row in values for v in row if not math.isnan(v)])
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 4, 0.7 * len(rows) + 2.5))
    image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(cols)), [f"{t} {100 * s:g}%" for t, s in cols], rotation=40, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    clipped = 0
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if math.isnan(value):
                continue
            beyond = abs(value) > limit
            clipped += beyond
            ax.text(j, i, f"{value:+.1f}", ha="center", va="center", fontsize=8,
                    fontweight="bold" if beyond else "normal", color="white" if abs(value) > 0.6 * limit else "black")
            if beyond:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    label = "AutoS - best control (accuracy points)"
    if clipped:
        label += f"\noutlined: beyond ±{limit:.1f}, colour clipped"
    fig.colorbar(image, label=label, extend="both" if clipped else "neither")
    ax.set_title("AutoS minus the best PaI control")
    return fig


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(records: list[CellRecord], summaries: list[Summary], items: list[Margin], folder: Path) -> list[Path]:
    """Accuracy vs sparsity per target, per-layer densities per method, and the AutoS margin heatmap (the
    margins with a best control)."""
    targets = sorted({s.target for s in summaries})
    figures = {"accuracy_vs_sparsity.png": accuracy_plot(summaries, targets)}
    if any(r.layer_densities and r.method != "irp" for r in records):
        figures["layer_densities.png"] = layer_density_plot(records, targets)
    if items:
        figures["autos_margin_heatmap.png"] = margin_heatmap(items)
    return [save(figure, folder / name) for name, figure in figures.items()]


def save(figure, path: Path) -> Path:
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    pyplot().close(figure)
    return path
