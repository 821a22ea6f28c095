"""The report on synthetic records: mean ± std, 'did not train' apart from 'collapsed', anchors, margins."""
from __future__ import annotations

import math

import pytest

from autosparse.config import DEFAULT_INIT, TrainConfig
from autosparse.report import (FLAG_COLLAPSED, FLAG_UNTRAINED, IRP_LABEL, CellRecord, ReportContext, margin_table,
                               margins, markdown_table, regenerate_reports, summarize, summary_metrics,
                               untrained_table, write_report)
from autosparse.sparse_init import SPARSE_INITS


def record(target="mlp/digits", label="snip", sparsity=0.9, seed=0, accuracy=0.9, collapsed=(), initial=2.3,
           final=0.2, classes=10, variant=None, init=DEFAULT_INIT, logit_std=0.5) -> CellRecord:
    method = label.split("+")[0].split(" init:")[0]
    return CellRecord(target, label, method, variant, sparsity, seed, accuracy, {"a": 0.1}, list(collapsed), initial,
                      final, classes, init=init, logit_std=logit_std, grad_norm=1.0)


def test_did_not_train_flags_stuck_loss_or_chance_accuracy_without_collapse():
    assert not record().did_not_train()
    assert record(final=2.2).did_not_train()  # 2.2 >= 0.9 * 2.3: the loss barely moved
    assert record(accuracy=0.11).did_not_train()  # chance on 10 classes (1.5 x 10% is the bar)
    assert not record(accuracy=0.16).did_not_train()
    collapsed = record(accuracy=0.1, final=2.3, collapsed=["a"])
    assert not collapsed.did_not_train() and collapsed.collapsed  # a bad mask, not a short budget
    assert not record(label="dense", accuracy=0.98).did_not_train()


def test_table_marks_collapsed_and_untrained_cells_apart():
    records = [record(seed=0), record(seed=1, accuracy=0.8),
               record(label="magnitude", accuracy=0.1, final=2.3, collapsed=["a"]),
               record(label="random", accuracy=0.1, final=2.3)]
    table = markdown_table(summarize(records))
    assert "| snip | 85.0 ± 7.1 |" in table  # mean ± sample std of 90 and 80
    assert f"| magnitude | 10.0 {FLAG_COLLAPSED}1 |" in table  # one seed: no std
    assert f"| random | 10.0 {FLAG_UNTRAINED}1 σ5e-01 |" in table


def test_dense_reference_beside_its_anchor_and_marked_when_short():
    good = [record(target="conv1d/mnist1d", label="dense", sparsity=0.0, accuracy=0.95)]
    table = markdown_table(summarize(good))
    assert "published dense reference: 94.0%" in table and "below its anchor" not in table
    short = [record(target="mlp/mnist1d", label="dense", sparsity=0.0, accuracy=0.55)]
    table = markdown_table(summarize(short))
    assert "### mlp/mnist1d (dense reference below its anchor)" in table
    assert "published dense reference: 68.0%" in table and "more than 3 points below it" in table
    no_anchor = markdown_table(summarize([record(label="dense", sparsity=0.0)]))
    assert "published" not in no_anchor


def test_published_sparse_numbers_are_printed_for_their_rows():
    records = [record(target="resnet18/cifar10", label="snip", sparsity=0.99)]
    assert "snip 90.8% at 99%" in markdown_table(summarize(records))


def test_autos_margin_over_the_best_control_and_gap_to_irp():
    records = [record(label="snip", accuracy=0.80), record(label="synflow", accuracy=0.85),
               record(label="synflow+shuffle", accuracy=0.95, variant="shuffle"),  # a variant is no control
               record(label="autos:c@alloc:learned", accuracy=0.88),
               CellRecord("mlp/digits", IRP_LABEL, "irp", None, 0.9, 0, 0.97, {}, [], irp_density=0.1)]
    (margin,) = margins(summarize(records), records)
    assert margin.best.label == "synflow"
    assert margin.over_best == pytest.approx(0.03) and margin.to_irp == pytest.approx(-0.09)
    metrics = summary_metrics(records)
    assert metrics["autos_minus_best_control.mlp/digits.autos:c at alloc:learned.0.9"] == pytest.approx(0.03)
    assert metrics["mean.mlp/digits.snip.0.9"] == pytest.approx(0.8)


def test_summary_metrics_are_named_from_the_label():
    records = [record(label="snip/iter20@alloc:synflow+shuffle", variant="shuffle", seed=0, accuracy=0.8),
               record(label="snip/iter20@alloc:synflow+shuffle", variant="shuffle", seed=1, accuracy=0.9),
               CellRecord("mlp/digits", IRP_LABEL, "irp", None, 0.9, 0, 0.97, {}, [], irp_density=0.1)]
    assert summary_metrics(records) == pytest.approx({  # means only: no std, so no std 0 for one IRP chain
        "mean.mlp/digits.snip/iter20 at alloc:synflow plus shuffle.0.9": 0.85, "mean.mlp/digits.irp.0.9": 0.97})


def test_report_files_state_the_recipe_and_regenerate(tmp_path):
    records = [record(), record(seed=1), record(label="dense", sparsity=0.0, accuracy=0.98)]
    context = ReportContext({"mlp/digits": TrainConfig(epochs=60, batch_size=64, lr=0.1)}, {})
    folder = tmp_path / "report" / "abc"
    table, files = write_report(records, folder, "t", context)
    text = (folder / "report.md").read_text()
    assert "## Recipes" in text and "| mlp/digits | 60 | 64 | sgd (momentum 0.9) | 0.1 | cosine |" in text
    assert (f"Sparse init (autosparse/sparse_init.py): `{DEFAULT_INIT}`: "
            f"{SPARSE_INITS.get(DEFAULT_INIT).description}." in text)
    assert {f.name for f in files} >= {"report.md", "results.csv", "records.json", "accuracy_vs_sparsity.png"}
    ((path, again),) = regenerate_reports(tmp_path)
    assert path == folder and again == table
    assert math.isfinite(summarize(records)[0].mean)


def test_classes_cut_off_are_listed_apart(tmp_path):
    cut = record(label="snip/iter20@alloc:learned", accuracy=0.45)
    cut.cut_classes = 6
    write_report([cut, record()], tmp_path, "t")
    text = (tmp_path / "report.md").read_text()
    assert "## Classes cut off" in text and "snip/iter20@alloc:learned at 90%: 6 output unit(s)" in text


def untrained(label: str, seed: int, **kwargs) -> CellRecord:
    return record(label=label, seed=seed, accuracy=0.1, final=2.3, logit_std=5e-5, **kwargs)


def test_untrained_cells_show_their_signal_at_init_and_are_counted_per_method(tmp_path):
    records = [record(seed=0), untrained("snip", 1), untrained("random", 0), untrained("random", 1)]
    table = markdown_table(summarize(records))
    assert f"| snip | 50.0 ± 56.6 {FLAG_UNTRAINED}1 σ5e-05 |" in table
    counts = untrained_table(records)
    assert "| random | 2 of 2 |" in counts and "| snip | 1 of 2 |" in counts
    write_report(records, tmp_path, "t")
    text = (tmp_path / "report.md").read_text()
    assert "- mlp/digits / snip at 90%: did not train in 1 seed(s): logit std 5.0e-05, gradient norm 1.0e+00; " \
           "trained in 1 seed(s): logit std 5.0e-01" in text


def test_a_pair_where_no_control_trains_is_a_protocol_failure_not_a_win():
    records = [untrained("snip", 0), untrained("synflow", 0), record(label="autos:c", accuracy=0.9)]
    (margin,) = margins(summarize(records), records)
    assert margin.protocol_failure and margin.note == "protocol failure: no control trained"
    assert "protocol failure" in margin_table([margin])


def test_a_target_whose_dense_reference_did_not_train_is_a_protocol_failure():
    """A recipe that fails the dense network (here in 1 of 2 seeds) makes every margin of the target moot, even
    where a control happened to train; without an IRP reference the gap to IRP is left empty, not nan."""
    records = [record(label="dense", sparsity=0.0, seed=0, accuracy=0.95), untrained("dense", 1, sparsity=0.0),
               record(label="synflow", accuracy=0.60), record(label="autos:c", accuracy=0.30)]
    (margin,) = margins(summarize(records), records)
    assert margin.protocol_failure and margin.note == "protocol failure: the dense reference did not train in 1 seeds"
    row = margin_table([margin]).splitlines()[2]
    assert "nan" not in row and "| -30.0 |  |  | protocol failure" in row
    healthy = [record(label="dense", sparsity=0.0, accuracy=0.95), *records[2:]]
    assert not margins(summarize(healthy), healthy)[0].protocol_failure


def test_a_control_that_learned_with_a_collapsed_layer_is_no_protocol_failure():
    """SynFlow may prune a residual branch to nothing and learn through the skip connection: collapsed, and
    still the control to beat."""
    records = [record(label="synflow", accuracy=0.54, final=1.2, collapsed=["branch"]),
               record(label="snip", accuracy=0.1, final=2.3, collapsed=["branch"]), record(label="autos:c", accuracy=0.35)]
    (margin,) = margins(summarize(records), records)
    assert not margin.protocol_failure and margin.best_trained.label == "synflow"
    assert margin.over_best == pytest.approx(-0.19)


def test_a_margin_that_comes_from_trainability_is_named():
    records = [record(label="synflow", seed=0, accuracy=0.95), untrained("synflow", 1),
               record(label="autos:c", seed=0, accuracy=0.90), record(label="autos:c", seed=1, accuracy=0.90)]
    (margin,) = margins(summarize(records), records)
    assert margin.over_best > 0 and margin.from_trainability  # 90 vs 52.5 over both seeds, vs 95 where it trained
    assert margin.note == "from trainability: synflow 95.0 in the seeds that trained"
    fair = [record(label="synflow", accuracy=0.95), record(label="autos:c", accuracy=0.96)]
    assert not margins(summarize(fair), fair)[0].note


def test_controls_under_another_init_never_set_the_margin():
    records = [record(label="synflow", accuracy=0.80), record(label="autos:c", accuracy=0.85),
               record(label="synflow init:original", init="original", accuracy=0.99)]
    (margin,) = [m for m in margins(summarize(records), records) if m.label == "autos:c"]
    assert margin.best.label == "synflow" and margin.over_best == pytest.approx(0.05)


def test_an_output_that_ignores_the_input_is_named_a_mask_failure(tmp_path):
    records = [untrained("iter_snip", 0), untrained("iter_snip", 1), untrained("snip", 0)]
    for r in records[:2]:
        r.logit_std = 0.0  # no kept path from input to output: exactly constant logits
    write_report(records, tmp_path, "t")
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert any(line.startswith("- mlp/digits / iter_snip at 90%") and "the mask, not the init" in line for line in lines)
    assert any(line.startswith("- mlp/digits / snip at 90%") and "the mask" not in line for line in lines)
