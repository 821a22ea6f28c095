"""The report's plots on synthetic records: layer names, lines that coincide, a heatmap scale outliers do not
set, % everywhere, error bars that say what they are."""
from __future__ import annotations

import pytest
from matplotlib.patches import Rectangle

from autosparse.report import IRP_LABEL, CellRecord, margins, summarize
from autosparse.report_plots import (accuracy_plot, clip_limit, layer_density_plot, margin_heatmap, pyplot, spread,
                                     write_plots)


def cell(label: str, accuracy: float, seed: int = 0, target: str = "mlp/digits", densities=None) -> CellRecord:
    return CellRecord(target, label, label.split("+")[0], None, 0.9, seed, accuracy,
                      densities or {"0.weight": 0.2, "2.weight": 0.05}, [], 2.3, 0.5, 10)


def teardown_function():
    pyplot().close("all")


def test_the_heatmap_scale_is_twice_the_median_margin_so_outliers_are_clipped():
    assert clip_limit([0.2, -0.8, -0.8, 2.3, -3.9, -40.1, -42.7, -86.7]) == pytest.approx(6.2)  # 2 x (2.3+3.9)/2
    assert clip_limit([0.1, -0.3]) == 1.0  # at least one point
    records = [cell("snip", 0.80, target="a/x"), cell("autos:c", 0.81, target="a/x"),
               cell("snip", 0.80, target="b/x"), cell("autos:c", 0.78, target="b/x"),
               cell("snip", 0.90, target="c/x"), cell("autos:c", 0.40, target="c/x")]
    figure = margin_heatmap(margins(summarize(records), records))  # margins +1, -2, -50: scale +-4
    ax, colorbar = figure.axes
    outlined = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [(p.get_x(), p.get_y()) for p in outlined] == [(1.5, -0.5)]  # only the -50 cell (column c/x)
    assert [t.get_text() for t in ax.texts] == ["+1.0", "-2.0", "-50.0"]
    assert "beyond ±4.0, colour clipped" in colorbar.get_ylabel()
    assert ax.images[0].get_clim() == pytest.approx((-4.0, 4.0))


def test_layer_densities_name_the_layers_and_keep_coinciding_lines_apart():
    same = {"0.weight": 0.02, "2.weight": 0.0}  # two methods with identical densities; the last layer kept nothing
    records = [cell("snip", 0.5, densities=same), cell("synflow", 0.5, densities=dict(same)),
               cell("synflow", 0.5, seed=1, densities={"0.weight": 0.9, "2.weight": 0.9})]  # a later seed: not drawn
    ax = layer_density_plot(records, ["mlp/digits"]).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.weight", "2.weight"]
    snip, synflow = [line for line in ax.get_lines() if line.get_label() in ("snip", "synflow")]
    assert list(snip.get_xdata()) == pytest.approx([-0.15, 0.85]) and list(synflow.get_xdata()) == pytest.approx([0.15, 1.15])
    assert list(snip.get_ydata()) == pytest.approx([2.0, 2 / 3])  # in %; 0% drawn at a third of the least kept
    assert snip.get_marker() != synflow.get_marker() and snip.get_linestyle() != synflow.get_linestyle()
    empty = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert [x for line in empty for x in line.get_xdata()] == pytest.approx([0.85, 1.15])
    assert ax.get_ylabel() == "density (%)"
    assert spread(1) == [0.0] and spread(3) == pytest.approx([-0.15, 0.0, 0.15])


def test_accuracy_is_in_percent_and_the_error_bars_say_what_they_are():
    records = [cell("snip", 0.8), cell("snip", 0.9, seed=1),
               CellRecord("mlp/digits", IRP_LABEL, "irp", None, 0.9, 0, 0.97, {}, [], irp_density=0.1)]
    ax = accuracy_plot(summarize(records), ["mlp/digits"]).axes[0]
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "error bars: std over 2 seeds"
    assert [t.get_text() for t in legend.get_texts()] == ["snip", "irp (1 seed)"]
    assert ax.get_ylabel() == "test accuracy (%)" and ax.get_xlabel() == "sparsity (%)"
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([85.0])


def test_every_plot_is_written(tmp_path):
    records = [cell("snip", 0.8), cell("autos:c", 0.85)]
    summaries = summarize(records)
    paths = write_plots(records, summaries, margins(summaries, records), tmp_path)
    assert [p.name for p in paths] == ["accuracy_vs_sparsity.png", "layer_densities.png", "autos_margin_heatmap.png"]
    assert all(p.stat().st_size > 0 for p in paths)
