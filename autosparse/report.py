"""Accuracy tables (mean ± std over seeds), convergence and anchor flags, margins, and plots for a matrix."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .config import DEFAULT_INIT, TrainConfig
from .errors import UserError
from .matrix_cell import DENSE, CellSpec, label_method
from .methods import Method
from .recipes import anchors
from .sparse_init import ORIGINAL, SPARSE_INITS
from .storage import atomic_write, write_json

IRP_LABEL = "irp"  # the target's own IRP chain, at the round closest to each sparsity
RECORDS_FILE = "records.json"
ANCHOR_TOLERANCE = 3.0  # points a dense reference may fall short of its published anchor
NO_PROGRESS = 0.9  # final training loss at or above this share of the initial loss: did not train
CHANCE_FACTOR = 1.5  # test accuracy at or below this multiple of chance (1 / classes): did not train
FLAG_COLLAPSED = "†"
FLAG_UNTRAINED = "‡"
MARGIN_TOLERANCE = 0.01  # AutoS within this much of the best control counts as level with it
DISCONNECTED_NOTE = (" (logit std exactly 0: the output does not depend on the input, so no kept path joins "
                     "them: the mask, not the init)")


@dataclass
class CellRecord:
    target: str  # "model/dataset"
    label: str  # method label as in tables, e.g. "snip/iter20@alloc:synflow+shuffle"
    method: str  # the method without its variant (or "irp", "dense")
    variant: Optional[str]
    sparsity: float
    seed: int
    accuracy: float
    layer_densities: dict[str, float]
    collapsed: list[str]
    initial_loss: float = math.nan
    final_loss: float = math.nan
    num_classes: int = 0
    irp_density: Optional[float] = None  # IRP references sit at the closest IRP density
    cut_classes: int = 0  # output units of the last layer without any kept weight
    init: str = ORIGINAL  # the sparse init of the kept weights (autosparse/sparse_init.py)
    logit_std: float = math.nan  # std over the scoring batch of the logits at init (after the sparse init)
    grad_norm: float = math.nan  # norm of the loss gradient at init

    @property
    def trained(self) -> bool:
        return not self.collapsed and not self.did_not_train()

    @classmethod
    def of(cls, spec: CellSpec, result: dict) -> "CellRecord":
        empty = list(result.get("empty_units", {}).values())
        return cls(spec.target.pair, spec.label, spec.method, spec.variant, spec.sparsity, spec.seed,
                   result["test_accuracy"], result["layer_densities"], result["collapsed_layers"],
                   result["initial_loss"], result["train_loss_per_epoch"][-1], result["num_classes"],
                   cut_classes=empty[-1] if empty else 0, init=spec.init,
                   logit_std=result.get("init_logit_std", math.nan), grad_norm=result.get("init_grad_norm", math.nan))

    @property
    def is_autos(self) -> bool:
        method = arm_method(self.method)
        return method is not None and method.is_autos

    @property
    def is_control(self) -> bool:
        """A PaI baseline: neither dense, IRP, AutoS nor a sanity variant."""
        return self.variant is None and self.method not in (DENSE, "irp") and not self.is_autos

    def stuck(self) -> bool:
        """Loss stuck near its start, or chance accuracy, whether or not a layer collapsed."""
        if self.method == "irp" or not self.num_classes:
            return False
        stuck = math.isfinite(self.initial_loss) and self.final_loss >= NO_PROGRESS * self.initial_loss
        return stuck or self.accuracy <= CHANCE_FACTOR / self.num_classes

    def did_not_train(self) -> bool:
        """Stuck while no layer collapsed (a collapsed cell is a bad mask, not a failed start)."""
        return not self.collapsed and self.stuck()


@dataclass
class ReportContext:
    """What the report states besides accuracies: each target's recipe and each AutoS method's sources."""

    recipes: dict[str, TrainConfig] = field(default_factory=dict)
    sources: dict[tuple[str, str], list[str]] = field(default_factory=dict)


@dataclass
class Summary:
    target: str
    label: str
    sparsity: float
    mean: float
    std: float
    seeds: int
    collapsed: int = 0
    untrained: int = 0
    irp_density: Optional[float] = None
    init: str = ORIGINAL
    trained_mean: Optional[float] = None  # over the seeds that learned (loss moved, above chance; a residual
    # net may learn through its skip connection with a branch collapsed): None if none
    untrained_logit_std: Optional[float] = None  # mean logit std at init of the seeds that did not train


def irp_reference_records(target: str, history: list[dict], sparsities: list[float], seed: int) -> list[CellRecord]:
    """The target's IRP accuracy at the round whose density is closest (in log space) to each sparsity."""
    records = []
    for sparsity in sparsities:
        best = min(history, key=lambda r: abs(math.log(r["density"]) - math.log(1 - sparsity)))
        records.append(CellRecord(target, IRP_LABEL, "irp", None, sparsity, seed, best["test_accuracy"], {}, [],
                                  irp_density=best["density"]))
    return records


def summarize(records: list[CellRecord]) -> list[Summary]:
    groups: dict[tuple, list[CellRecord]] = defaultdict(list)
    for record in records:
        groups[(record.target, record.label, record.sparsity)].append(record)
    summaries = []
    for (target, label, sparsity), group in sorted(groups.items()):
        values = [r.accuracy for r in group]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        learned = [r.accuracy for r in group if not r.stuck()]
        untrained_std = [r.logit_std for r in group if r.did_not_train() and math.isfinite(r.logit_std)]
        summaries.append(Summary(target, label, sparsity, statistics.fmean(values), std, len(values),
                                 sum(bool(r.collapsed) for r in group), sum(r.did_not_train() for r in group),
                                 group[0].irp_density, group[0].init,
                                 statistics.fmean(learned) if learned else None,
                                 statistics.fmean(untrained_std) if untrained_std else None))
    return summaries


def arm_method(label: str) -> Optional[Method]:
    """The method of a table row's label; None for the dense and IRP references."""
    return None if label == IRP_LABEL else label_method(label)


def method_order(label: str) -> tuple:
    method = arm_method(label)
    base = method.plain.label if method else label
    rank = 0 if label == DENSE else 3 if label == IRP_LABEL else 2 if method.is_autos else 1
    return (rank, base, label)


def dense_anchor_note(target: str, dense: Optional[Summary]) -> tuple[str, bool]:
    """The published dense reference beside ours, and whether ours falls more than 3 points short."""
    model, _, dataset = target.partition("/")
    for anchor in anchors(dataset, model):
        if anchor.method == DENSE and dense is not None:
            short = anchor.accuracy - 100 * dense.mean > ANCHOR_TOLERANCE
            flag = f" — **{100 * dense.mean:.1f} is more than {ANCHOR_TOLERANCE:.0f} points below it**" if short else ""
            return f"published dense reference: {anchor.accuracy:.1f}% ({anchor.source}){flag}", short
    return "", False


def markdown_table(summaries: list[Summary]) -> str:
    """One table per target: methods as rows, sparsities as columns, cells 'mean ± std' in percent."""
    out = io.StringIO()
    for target in sorted({s.target for s in summaries}):
        rows = [s for s in summaries if s.target == target]
        sparsities = sorted({s.sparsity for s in rows if s.label != DENSE})
        dense = next((s for s in rows if s.label == DENSE), None)
        note, short = dense_anchor_note(target, dense)
        out.write(f"\n### {target}{' (dense reference below its anchor)' if short else ''}\n\n")
        if note:
            out.write(f"{note}\n\n")
        out.write("| method | " + " | ".join(f"{s:.0%} sparse" for s in sparsities) + " |\n")
        out.write("|---|" + "---|" * len(sparsities) + "\n")
        for label in sorted({s.label for s in rows}, key=method_order):
            cells = []
            for sparsity in sparsities:
                match = [s for s in rows if s.label == label and (s.sparsity == sparsity or label == DENSE)]
                cells.append(_cell_text(match[0]) if match else "")
            out.write(f"| {label} | " + " | ".join(cells) + " |\n")
        model, _, dataset = target.partition("/")
        published = [a for a in anchors(dataset, model) if a.method != DENSE and a.sparsity in sparsities]
        if published:
            out.write("\nPublished: " + "; ".join(f"{a.method} {a.accuracy:.1f}% at {a.sparsity:.0%} ({a.source})"
                                                   for a in published) + "\n")
    seeds = max((s.seeds for s in summaries), default=0)
    out.write(f"\nTest accuracy in %, mean ± std over up to {seeds} seeds. {FLAG_COLLAPSED}: a layer collapsed (no "
              f"weight kept) in that many seeds; {FLAG_UNTRAINED}: did not train (loss stayed near its start or "
              f"chance accuracy, with no collapsed layer) in that many seeds, with σ the std over the scoring batch "
              f"of the logits at init in those seeds (about 0: the network outputs a constant).\n")
    return out.getvalue()


def _cell_text(s: Summary) -> str:
    text = f"{100 * s.mean:.1f} ± {100 * s.std:.1f}" if s.seeds > 1 else f"{100 * s.mean:.1f}"
    if s.irp_density is not None:
        text += f" (at {1 - s.irp_density:.1%})"
    if s.collapsed:
        text += f" {FLAG_COLLAPSED}{s.collapsed}"
    if s.untrained:
        text += f" {FLAG_UNTRAINED}{s.untrained}"
        if s.untrained_logit_std is not None:
            text += f" σ{s.untrained_logit_std:.0e}"
    return text


@dataclass
class Margin:
    target: str
    label: str
    sparsity: float
    autos: Summary
    best: Optional[Summary]
    irp: Optional[Summary]
    best_trained: Optional[Summary] = None  # the best control by its trained seeds only
    dense: Optional[Summary] = None  # the target's dense reference

    @property
    def over_best(self) -> float:
        return self.autos.mean - self.best.mean if self.best else math.nan

    @property
    def dense_failed(self) -> bool:
        """The dense reference itself did not train in some seed: the recipe fails the target."""
        return self.dense is not None and self.dense.untrained > 0

    @property
    def protocol_failure(self) -> bool:
        """No control trained in any seed, or the dense reference did not train: the pair measures the
        protocol, not the masks."""
        return self.best is not None and (self.best_trained is None or self.dense_failed)

    @property
    def from_trainability(self) -> bool:
        """Level with the best control only because some control seeds did not train: against the seeds that
        did, AutoS falls more than the tolerance short (a signal kept, not better weights)."""
        return (self.best_trained is not None and self.over_best >= -MARGIN_TOLERANCE
                and self.autos.mean - self.best_trained.trained_mean < -MARGIN_TOLERANCE)

    @property
    def note(self) -> str:
        if self.protocol_failure and self.dense_failed:
            return f"protocol failure: the dense reference did not train in {self.dense.untrained} seeds"
        if self.protocol_failure:
            return "protocol failure: no control trained"
        if self.from_trainability:
            return (f"from trainability: {self.best_trained.label} {100 * self.best_trained.trained_mean:.1f} "
                    "in the seeds that trained")
        return ""

    @property
    def to_irp(self) -> float:
        return self.autos.mean - self.irp.mean if self.irp else math.nan


def margins(summaries: list[Summary], records: list[CellRecord]) -> list[Margin]:
    """Per AutoS method, target and sparsity: the best control (any PaI baseline under the same sparse init),
    the best one by its trained seeds, and the IRP reference."""
    controls = {r.label for r in records if r.is_control}
    keyed = {(s.target, s.label, s.sparsity): s for s in summaries}
    out = []
    for s in summaries:
        method = arm_method(s.label)
        if method is None or not method.is_autos or method.variant:
            continue
        candidates = [keyed[(s.target, c, s.sparsity)] for c in controls
                      if (s.target, c, s.sparsity) in keyed and keyed[(s.target, c, s.sparsity)].init == s.init]
        best = max(candidates, key=lambda c: c.mean) if candidates else None
        trained = [c for c in candidates if c.trained_mean is not None]
        best_trained = max(trained, key=lambda c: c.trained_mean) if trained else None
        out.append(Margin(s.target, s.label, s.sparsity, s, best, keyed.get((s.target, IRP_LABEL, s.sparsity)),
                          best_trained, keyed.get((s.target, DENSE, 0.0))))
    return out


def margin_table(items: list[Margin]) -> str:
    if not items:
        return ""
    lines = ["| target | sparsity | AutoS method | AutoS | best control | margin | IRP | gap to IRP | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in sorted(items, key=lambda m: (m.target, m.label, m.sparsity)):
        best = f"{m.best.label} {_cell_text(m.best)}" if m.best else ""
        irp, gap = (f"{100 * m.irp.mean:.1f}", f"{100 * m.to_irp:+.1f}") if m.irp else ("", "")
        lines.append(f"| {m.target} | {m.sparsity:.0%} | {m.label} | {_cell_text(m.autos)} | {best} | "
                     f"{100 * m.over_best:+.1f} | {irp} | {gap} | {m.note} |")
    return "\n".join(lines) + "\n"


def untrained_table(records: list[CellRecord]) -> str:
    """Per method and sparsity: how many cells did not train or collapsed a layer, of how many."""
    cells = [r for r in records if r.method not in (DENSE, "irp")]
    sparsities = sorted({r.sparsity for r in cells})
    if not cells:
        return ""
    lines = ["| method | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |", "|---|" + "---|" * len(sparsities)]
    for label in sorted({r.label for r in cells}, key=method_order):
        counts = []
        for sparsity in sparsities:
            group = [r for r in cells if r.label == label and r.sparsity == sparsity]
            failed = sum(not r.trained for r in group)
            counts.append(f"{failed} of {len(group)}" if group else "")
        lines.append(f"| {label} | " + " | ".join(counts) + " |")
    return ("Cells that did not train or collapsed a layer, of all cells (every target and seed): a finding "
            "about the protocol, not a score.\n\n" + "\n".join(lines) + "\n")


def init_note(records: list[CellRecord]) -> str:
    inits = sorted({r.init for r in records if r.method not in (DENSE, "irp")})
    return "Sparse init (autosparse/sparse_init.py): " + "; ".join(
        f"`{name}`{' (rows marked init:' + name + ')' if name != DEFAULT_INIT else ''}: "
        f"{SPARSE_INITS.get(name).description}" for name in inits) + "."


def recipe_text(context: ReportContext, records: list[CellRecord]) -> str:
    if not context.recipes:
        return ""
    lines = ["| target | epochs | batch | optimizer | lr | schedule | weight decay | warm-up |", "|---|---|---|---|---|---|---|---|"]
    for target, t in sorted(context.recipes.items()):
        schedule = t.schedule + (f" {t.milestones} x{t.gamma}" if t.schedule == "multistep" else "")
        lines.append(f"| {target} | {t.epochs} | {t.batch_size} | {t.optimizer} (momentum {t.momentum}) | {t.lr} | "
                     f"{schedule} | {t.weight_decay} | {t.warmup_epochs} |")
    return ("Every method, the dense reference and the IRP reference of a target train with its recipe "
            f"(autosparse/recipes.py plus the config's overrides). {init_note(records)}\n\n" + "\n".join(lines) + "\n")


def csv_text(records: list[CellRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["target", "method", "variant", "init", "label", "sparsity", "seed", "accuracy", "collapsed",
                     "cut_classes", "did_not_train", "initial_loss", "final_loss", "init_logit_std", "init_grad_norm"])
    for r in records:
        writer.writerow([r.target, r.method, r.variant or "", r.init, r.label, r.sparsity, r.seed, f"{r.accuracy:.6f}",
                         ";".join(r.collapsed), r.cut_classes, int(r.did_not_train()), f"{r.initial_loss:.4f}",
                         f"{r.final_loss:.4f}", f"{r.logit_std:.3g}", f"{r.grad_norm:.3g}"])
    return out.getvalue()


LABEL_IN_METRIC_NAMES = {"@": " at ", "+": " plus "}  # a label's characters that MLflow rejects in a metric name


def metric_key(stat: str, target: str, label: str, sparsity: float) -> str:
    """The parent run's metric for one arm: `<stat>.<target>.<label>.<sparsity>`, the label spelled with `@` as
    ` at ` and `+` as ` plus ` (`snip/iter20@alloc:synflow+shuffle` -> `snip/iter20 at alloc:synflow plus
    shuffle`); any other character MLflow rejects becomes `_`."""
    for character, spelling in LABEL_IN_METRIC_NAMES.items():
        label = label.replace(character, spelling)
    return re.sub(r"[^\w.\-/ :]", "_", f"{stat}.{target}.{label}.{sparsity}")


def summary_metrics(records: list[CellRecord]) -> dict[str, float]:
    """The pipeline's summary as metrics: the mean per (target, method, sparsity), AutoS's margins over the best
    control and to IRP (the stds are in the report: fewer metrics keep the UI's column and sort pickers short)."""
    summaries = summarize(records)
    metrics = {}
    for s in summaries:
        metrics[metric_key("mean", s.target, s.label, 0 if s.label == DENSE else s.sparsity)] = s.mean
    for m in margins(summaries, records):
        if m.best:
            metrics[metric_key("autos_minus_best_control", m.target, m.label, m.sparsity)] = m.over_best
        if m.irp:
            metrics[metric_key("autos_minus_irp", m.target, m.label, m.sparsity)] = m.to_irp
    return metrics


def flag_lists(records: list[CellRecord]) -> str:
    collapsed = sorted({(r.target, r.label, r.sparsity) for r in records if r.collapsed})
    untrained = sorted({(r.target, r.label, r.sparsity) for r in records if r.did_not_train()})
    text = ""
    if collapsed:
        text += "\n## Layer collapse (a bad mask)\n\n" + "".join(f"- {t} / {label} at {s:.0%}\n" for t, label, s in collapsed)
    cut = sorted({(r.target, r.label, r.sparsity, r.cut_classes) for r in records if r.cut_classes and not r.collapsed})
    if cut:
        text += ("\n## Classes cut off (the last layer keeps no weight into some output units)\n\n"
                 + "".join(f"- {t} / {label} at {s:.0%}: {n} output unit(s)\n" for t, label, s, n in cut))
    if untrained:
        text += ("\n## Did not train (no layer collapsed), with the signal at init\n\n"
                 "Logit std: over the scoring batch, at init after the sparse init (about 0: a constant output, "
                 "whose gradients vanish); gradient norm: of the loss at init. Means over the seeds named.\n\n")
        for target, label, sparsity in untrained:
            group = [r for r in records if (r.target, r.label, r.sparsity) == (target, label, sparsity)]
            stuck = [r for r in group if r.did_not_train()]
            text += f"- {target} / {label} at {sparsity:.0%}: " + "; ".join(
                f"{name} {len(part)} seed(s): logit std {_mean(r.logit_std for r in part):.1e}, "
                f"gradient norm {_mean(r.grad_norm for r in part):.1e}"
                for name, part in (("did not train in", stuck), ("trained in", [r for r in group if r.trained]))
                if part) + (DISCONNECTED_NOTE if all(r.logit_std == 0 for r in stuck) else "") + "\n"
    return text


def _mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else math.nan


def write_report(records: list[CellRecord], folder: Path, title: str,
                 context: Optional[ReportContext] = None) -> tuple[str, list[Path]]:
    """Markdown + CSV + records + plots into `folder`; returns the Markdown table and the files written."""
    context = context or ReportContext()
    summaries = summarize(records)
    table = markdown_table(summaries)
    items = margins(summaries, records)
    margin = margin_table(items)
    sources = "".join(f"- {label} on {target} learned from: {', '.join(pairs)}\n"
                      for (target, label), pairs in sorted(context.sources.items()))
    failures = untrained_table(records)
    markdown = (f"# {title}\n\n## Recipes\n\n{recipe_text(context, records)}\n## Accuracy\n{table}"
                + (f"\n## AutoS against the best control and IRP\n\n{margin}" if margin else "")
                + (f"\n## Cells that did not train, per method\n\n{failures}" if failures else "")
                + (f"\n## What each AutoS method learned from (never its target's pair)\n\n{sources}" if sources else "")
                + flag_lists(records))
    atomic_write(folder / "report.md", lambda tmp: Path(tmp).write_text(markdown))
    atomic_write(folder / "results.csv", lambda tmp: Path(tmp).write_text(csv_text(records)))
    write_json(folder / RECORDS_FILE, {"records": [asdict(r) for r in records],
                                       "context": {"recipes": {k: asdict(v) for k, v in context.recipes.items()},
                                                   "sources": [[t, m, p] for (t, m), p in context.sources.items()]}})
    from .report_plots import write_plots  # matplotlib, and the plots read this module's types

    plotted = write_plots(records, summaries, [m for m in items if m.best], folder)
    files = [folder / "report.md", folder / "results.csv", folder / RECORDS_FILE, *plotted]
    return table + ("\n" + margin if margin else ""), files


class NoReportError(UserError):
    """A workspace holds no report to re-render."""


def regenerate_reports(workspace: Path) -> list[tuple[Path, str]]:
    """Re-render every report under `<workspace>/report/` from its saved records."""
    found = sorted((workspace / "report").glob(f"*/{RECORDS_FILE}")) if (workspace / "report").is_dir() else []
    if not found:
        raise NoReportError(f"no reports under {str(workspace)!r}: run `autosparse run` first")
    out = []
    for path in found:
        saved = json.loads(path.read_text())
        records = [CellRecord(**r) for r in saved["records"]]
        context = ReportContext({k: TrainConfig(**v) for k, v in saved["context"]["recipes"].items()},
                                {(t, m): p for t, m, p in saved["context"]["sources"]})
        table, _ = write_report(records, path.parent, f"autosparse report ({path.parent.name})", context)
        out.append((path.parent, table))
    return out
