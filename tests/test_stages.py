"""One shape for every stage: the registry drives the pipeline and the CLI, hashes stay stable, models may
declare their prunable tensors. No Ray: the dummy stage runs in-process."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pytest
import torch
from torch import nn

import autosparse
from autosparse.cli import build_parser
from autosparse.config import DEFAULT_INIT, DataConfig, PipelineConfig, load_config
from autosparse.criteria import CRITERIA
from autosparse.features import FEATURES
from autosparse.masks import prunable_parameters
from autosparse.orchestration.cell_stage import target_cells
from autosparse.orchestration.irp_stage import reference_chains, source_chains
from autosparse.orchestration.pipeline import Pipeline
from autosparse.orchestration.runtime import RunOptions
from autosparse.orchestration.stage import (STAGES, Job, LineProgress, Runner, Stage, execute_job,
                                            ordered_stages, register_stage, stage_hash)
from autosparse.orchestration.store import MARKER, StageStore
from autosparse.orchestration.tracking import TrackedRun
from autosparse.schema import to_dict

# ---------------------------------------------------------------- a stage added through the registry

DUMMY_FILE = "hello.txt"


@dataclass
class DummyConfig:
    name: str
    greeting: str = "hello"


class DummyStage(Stage):
    """Writes one file per pipeline; needs no other stage, so running it starts no Ray."""

    def plan(self, config: PipelineConfig, planned: Mapping[str, list[Job]]) -> list[Job]:
        return [Job(self.kind, DummyConfig(config.name), (), f"dummy {config.name}")]

    def execute(self, job: Job, folder: Path, store: StageStore, data: DataConfig) -> dict:
        (folder / DUMMY_FILE).write_text(f"{job.config.greeting} {job.config.name}\n")
        return {"greeted": job.config.name}

    def run(self, jobs: list[Job], runner: Runner) -> None:
        for job in jobs:
            execute_job(job.to_data(), runner.store.location, to_dict(runner.data))

    def summary(self, job: Job, record: dict) -> str:
        return f"greeted {record['greeted']}"

    def track(self, job: Job, record: dict, store: StageStore) -> list[TrackedRun]:
        return [TrackedRun(name=job.label, tags={"stage": self.kind}, params={"name": job.config.name},
                           metrics={"greetings": 1.0})]


@pytest.fixture
def dummy_stage(monkeypatch):
    """DummyStage registered with `register_stage`, on a copy of the registry that is restored afterwards."""
    monkeypatch.setattr(STAGES, "_entries", dict(STAGES._entries))
    register_stage("dummy", DummyConfig, verb="say-hello", outputs=(DUMMY_FILE,), help="write a greeting")(DummyStage)
    return STAGES.get("dummy")


def test_a_registered_stage_runs_in_the_pipeline_without_ray(dummy_stage, tmp_path, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("a stage that needs no Ray started Ray")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(Pipeline, "ensure_ray", no_ray)
    lines: list[str] = []
    options = RunOptions(tracking_uri=f"sqlite:///{tmp_path}/m.db", progress=False)
    pipeline = Pipeline(load_config("smoke"), tmp_path / "ws", options, echo=lines.append)
    (job,) = pipeline.jobs["dummy"]
    assert pipeline.needed("dummy") == {job.digest}

    result = pipeline.run(through="dummy")

    folder = tmp_path / "ws" / "dummy" / job.digest
    assert (folder / MARKER).is_file()
    assert (folder / DUMMY_FILE).read_text() == "hello smoke\n"
    assert json.loads((folder / MARKER).read_text())["greeted"] == "smoke"
    assert result.stages_run["dummy"] == 1
    assert all(count == 0 for kind, count in result.stages_run.items() if kind != "dummy")
    assert not any((tmp_path / "ws" / kind).exists() for kind in STAGES.registered() if kind != "dummy")
    assert lines == ["greeted smoke"]
    assert pipeline.tracker.has_stage(job.digest)  # logged to MLflow by the generic code

    again = Pipeline(load_config("smoke"), tmp_path / "ws", options, echo=lines.append).run(through="dummy")
    assert again.stages_run["dummy"] == 0  # finished: skipped


def test_a_registered_stage_is_ordered_and_offered_by_the_cli(dummy_stage):
    assert dummy_stage in ordered_stages()
    parser = build_parser()
    args = parser.parse_args(["say-hello", "smoke", "--force", "dummy"])
    assert (args.through, args.force) == ("dummy", ["dummy"])
    assert parser.parse_args(["run", "--force", "dummy"]).force == ["dummy"]
    assert "say-hello" in parser.format_help()


def test_the_cli_offers_exactly_the_stage_kinds_and_verbs(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--force", "no-such-stage"])
    assert "invalid choice" in capsys.readouterr().err
    for stage in ordered_stages():
        assert parser.parse_args(["run", "--force", stage.kind]).force == [stage.kind]
        if stage.verb:
            assert parser.parse_args([stage.verb, "smoke"]).through == stage.kind


# ---------------------------------------------------------------- every stage kind has the same shape


def test_every_stage_declares_its_shape():
    assert {"irp", "scorer", "allocator", "cell", "report"} <= set(STAGES.names())
    for name in STAGES.registered():
        stage = STAGES.get(name)
        assert isinstance(stage, Stage)
        assert stage.kind == name
        assert dataclasses.is_dataclass(stage.config_type), name
        assert stage.outputs and all(isinstance(o, str) for o in stage.outputs), name
        assert stage.help, name
        assert all(need in STAGES for need in stage.needs), name


def test_ordered_stages_put_every_stage_after_what_it_needs():
    order = [stage.kind for stage in ordered_stages()]
    assert sorted(order) == sorted(STAGES.registered())
    for position, kind in enumerate(order):
        for need in STAGES.get(kind).needs:
            assert order.index(need) < position, f"{kind} runs before {need}"


def test_ordered_stages_reject_a_cycle(monkeypatch):
    class Chicken(DummyStage):
        pass

    class Egg(DummyStage):
        pass

    monkeypatch.setattr(STAGES, "_entries", dict(STAGES._entries))
    register_stage("chicken", DummyConfig, needs=("egg",), outputs=(DUMMY_FILE,), help="first?")(Chicken)
    register_stage("egg", DummyConfig, needs=("chicken",), outputs=(DUMMY_FILE,), help="or this?")(Egg)
    with pytest.raises(RuntimeError, match="cycle"):
        ordered_stages()


# ---------------------------------------------------------------- stable hashes


@dataclass
class Settings:
    size: int = 3
    name: str = "a"


@dataclass
class SettingsWithANewField:
    size: int = 3
    name: str = "a"
    added_later: float = 0.5


def test_a_field_added_with_a_default_keeps_the_hash():
    before = Job("thing", Settings(size=7), ("input1",))
    after = Job("thing", SettingsWithANewField(size=7), ("input1",))
    assert before.digest == after.digest == stage_hash("thing", Settings(size=7), ("input1",))
    assert Job("thing", SettingsWithANewField(size=7, added_later=0.25), ("input1",)).digest != before.digest


def test_hash_follows_values_inputs_and_extras():
    base = stage_hash("thing", Settings(size=7), ("a", "b"))
    assert stage_hash("thing", Settings(size=8), ("a", "b")) != base
    assert stage_hash("thing", Settings(size=7, name="b"), ("a", "b")) != base
    assert stage_hash("thing", Settings(size=7), ("b", "a")) == base  # inputs are a set
    assert stage_hash("thing", Settings(size=7), ("a",)) != base
    assert stage_hash("other", Settings(size=7), ("a", "b")) != base
    assert stage_hash("thing", Settings(size=7), ("a", "b"), {"features": {"w0": 2}}) != base
    assert stage_hash("thing", Settings(size=7), ("a", "b"), {}) == base
    # tags and labels are for people and MLflow: never hashed
    assert Job("thing", Settings(size=7), ("a", "b"), "label", tags={"role": "x"}).digest == base


def chain_digest(*overrides: str) -> str:
    return source_chains(load_config("smoke", list(overrides)))[0].digest


def test_score_batch_size_changes_the_irp_hash_but_data_root_does_not(tmp_path):
    default = chain_digest()
    assert chain_digest("data.score_batch_size=64") != default
    assert chain_digest(f"data.data_root={tmp_path}") == default
    assert chain_digest("data.download=true") == default


def test_the_irp_hash_includes_feature_versions(monkeypatch):
    default = chain_digest()
    name = load_config("smoke").irp.features[0]
    monkeypatch.setitem(FEATURES._entries, name, dataclasses.replace(FEATURES.get(name), version=99))
    assert chain_digest() != default


def test_the_irp_hash_includes_the_trained_criterion_constants(monkeypatch):
    default = chain_digest()
    criterion = load_config("smoke").irp.trained_criterion
    monkeypatch.setitem(CRITERIA._entries, criterion, dataclasses.replace(CRITERIA.get(criterion), constants={"k": 1}))
    assert chain_digest() != default


def cell_digests(config: PipelineConfig) -> dict[str, str]:
    """Method label -> digest of the first target's first non-variant cell."""
    digests = {}
    for job in target_cells(config, config.matrix.targets[0]):
        if job.config.variant is None:
            digests.setdefault(job.config.method, job.digest)
    return digests


def test_cell_hashes_include_the_constants_of_the_criteria_they_use(monkeypatch):
    config = load_config("smoke", ["matrix.methods=[grasp, snip, random@alloc:grasp]"])
    before = cell_digests(config)
    grasp = CRITERIA.get("grasp")
    assert grasp.constants and "temperature" in grasp.constants
    monkeypatch.setitem(CRITERIA._entries, "grasp",
                        dataclasses.replace(grasp, constants={**grasp.constants, "temperature": 100.0}))
    after = cell_digests(config)
    assert after["grasp"] != before["grasp"]
    assert after["random@alloc:grasp"] != before["random@alloc:grasp"]  # allocation by a criterion counts too
    assert after["snip"] == before["snip"]  # SNIP does not use GraSP's temperature


def test_the_sparse_init_enters_the_hashes_of_what_it_changes_only():
    default = load_config("smoke")
    original = load_config("smoke", ["matrix.init=original"])
    assert cell_digests(original)["snip"] != cell_digests(default)["snip"]
    assert chain_digest("matrix.init=original") == chain_digest()  # source chains: irp.init, not matrix.init
    assert chain_digest("irp.init=layer_variance") != chain_digest()
    references = [reference_chains(config)[0].digest for config in (default, original)]
    assert references[0] != references[1]  # a target's IRP reference trains under the cells' init


def test_compare_inits_add_labelled_cells_of_the_methods_named():
    config = load_config("smoke", [f"matrix.init={DEFAULT_INIT}", "matrix.compare_inits=[original]",
                                   "matrix.compare_init_methods=[snip, autos]", "matrix.variants=[]"])
    labels = {job.config.label for job in target_cells(config, config.matrix.targets[0]) if job.config.seed == 0}
    assert {"snip init:original", "autos:paper init:original", "autos:conditional@alloc:learned init:original",
            "snip", "synflow", "dense"} <= labels
    assert "synflow init:original" not in labels and "dense init:original" not in labels


# ---------------------------------------------------------------- models declare their prunable tensors


class DeclaresPrunable(nn.Module):
    """Prunes only the second layer's weight and the first layer's bias (not the default set)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(4, 6)
        self.second = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.relu(self.second(torch.relu(self.first(x)))))

    def prunable_parameter_names(self) -> list[str]:
        return ["second.weight", "first.bias"]


def test_a_model_declares_its_prunable_tensors():
    model = DeclaresPrunable()
    params = prunable_parameters(model)
    assert list(params) == ["second.weight", "first.bias"]
    assert params["second.weight"] is model.second.weight and params["first.bias"] is model.first.bias


@pytest.mark.parametrize("method", ["magnitude", "snip", "random"])
def test_prune_covers_exactly_the_declared_tensors(method):
    model = DeclaresPrunable()
    generator = torch.Generator().manual_seed(0)
    data = (torch.randn(8, 4, generator=generator), torch.randint(0, 3, (8,), generator=generator))
    mask = autosparse.prune(model, 0.5, method, data=data)
    assert list(mask) == ["second.weight", "first.bias"]
    assert mask["second.weight"].shape == (5, 6) and mask["first.bias"].shape == (6,)
    assert mask.num_kept() == (30 + 6) // 2
    autosparse.apply_mask(model, mask)
    assert not model.second.weight[~mask["second.weight"]].any() and not model.first.bias[~mask["first.bias"]].any()
    untouched = DeclaresPrunable()
    for name in ("first.weight", "second.bias", "head.weight", "head.bias"):  # undeclared: never pruned
        assert torch.equal(model.get_parameter(name), untouched.get_parameter(name)), name


def test_line_progress_reports_each_finished_tenth_once():
    lines: list[str] = []
    progress = LineProgress(25, "matrix cells", lines.append)
    for _ in range(25):
        progress.update()
    assert [int(line.split(": ")[1].split("/")[0]) for line in lines] == [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]
    assert lines[-1] == "matrix cells: 25/25 finished"
    few: list[str] = []
    progress = LineProgress(3, "cells", few.append)
    for _ in range(3):
        progress.update()
    assert few == ["cells: 1/3 finished", "cells: 2/3 finished", "cells: 3/3 finished"]


def test_chains_are_ordered_by_their_estimated_compute() -> None:
    """Multiply-accumulates, not parameters: a conv weight works at every output position."""
    from autosparse.config import load_config
    from autosparse.orchestration.irp_stage import chain_cost, forward_macs, reference_chains, source_chains

    conv = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(8, 3))
    assert forward_macs(conv, (1, 4, 4)) == 2 * 2 * 2 * 9 + 8 * 3
    config = load_config("quickstart")
    chains = sorted(source_chains(config) + reference_chains(config), key=lambda job: chain_cost(job.config, config.data))
    assert [job.label for job in chains][:2] == ["mlp/digits/seed0", "mlp/mnist1d/seed0"]  # 66 s and 142 s of rounds
