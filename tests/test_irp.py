"""Iterative rewind pruning: schedule arithmetic, survival bookkeeping, exact rewinds, resume, determinism."""
from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from autosparse import UserError
from autosparse.config import IRPChainConfig, IRPConfig, TrainConfig
from autosparse.irp import (IRPState, RoundRecord, chain_features, check_schedule, clone_state, density_after,
                            run_irp, survival_metadata)
from autosparse.masks import Mask, apply_mask, prunable_parameters
from autosparse.models import build_model
from autosparse.training import make_optimizer, train

ROUNDS, FRACTION = 3, 0.5
IRP = IRPConfig(rounds=ROUNDS, prune_fraction=FRACTION, features=["w0", "abs_w0", "depth", "log_layer_density"])
TRAIN = TrainConfig(epochs=1)
CONFIG = IRPChainConfig("mlp", "digits", 0, IRP, TRAIN, score_batch_size=32)
LAYERS = ["1.weight", "3.weight", "5.weight"]  # Flatten, Linear(64,300), ReLU, Linear(300,100), ReLU, Linear(100,10)
TOTAL = 64 * 300 + 300 * 100 + 100 * 10  # 50,200 prunable weights
STEPS_PER_EPOCH = 11  # digits: 1,347 training images in batches of 128


def chain_config(**irp_changes) -> IRPChainConfig:
    return IRPChainConfig("mlp", "digits", 0, replace(IRP, **irp_changes), TRAIN, score_batch_size=32)




class Recorder:
    """`wrap` sees the model right before each round's training; `on_round` sees the state after it."""

    def __init__(self):
        self.starts: list[dict[str, torch.Tensor]] = []
        self.masks: list[dict[str, torch.Tensor]] = []

    def wrap(self, model):
        self.starts.append(clone_state(model))
        return model

    def on_round(self, state, model, optimizer):
        self.masks.append({n: m.clone() for n, m in state.mask.items()})


@pytest.fixture(scope="module")
def chain(digits):
    recorder = Recorder()
    state = run_irp(CONFIG, digits, wrap=recorder.wrap, on_round=recorder.on_round)
    return SimpleNamespace(state=state, starts=recorder.starts, masks=recorder.masks)


def assert_state_equal(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert torch.equal(actual[name], expected[name]), name


# ---------------------------------------------------------------- schedule arithmetic


def test_density_after_is_geometric():
    assert density_after(3, 0.2) == pytest.approx(0.512, abs=1e-12)
    assert density_after(0, 0.2) == 1.0
    assert density_after(1, 0.2) == pytest.approx(0.8)
    assert density_after(20, 0.2) == pytest.approx(0.8 ** 20)
    assert density_after(3, 0.5) == 0.125


def kept_after(total: int, rounds: int, prune_fraction: float) -> int:
    """Weights the schedule keeps after `rounds` prunings (whole weights)."""
    return round(density_after(rounds, prune_fraction) * total)


def test_the_schedule_rounds_to_whole_weights():
    assert kept_after(1000, 3, 0.2) == 512
    assert kept_after(100, 1, 0.333) == 67
    assert kept_after(TOTAL, 3, 0.5) == 6275
    assert kept_after(TOTAL, 0, 0.5) == TOTAL


# ---------------------------------------------------------------- one chain: mask, survival, history


def test_final_mask_hits_the_schedule(chain):
    state = chain.state
    assert list(state.mask) == LAYERS
    assert state.mask.num_total() == TOTAL
    assert state.mask.num_kept() == kept_after(TOTAL, ROUNDS, FRACTION) == 6275
    check_schedule(state, CONFIG)
    assert state.completed == ROUNDS + 1


def test_check_schedule_rejects_an_off_schedule_mask(chain):
    tensors = {n: m.clone() for n, m in chain.state.mask.items()}
    flat = tensors["3.weight"].view(-1)
    flat[(~flat).nonzero()[:2, 0]] = True  # two extra weights kept
    off = IRPState(ROUNDS + 1, Mask(tensors), chain.state.survival, chain.state.initial, chain.state.rewind)
    with pytest.raises(AssertionError, match="6277"):
        check_schedule(off, CONFIG)


def test_survival_values_and_counts_per_round(chain):
    survival = chain.state.survival
    assert list(survival) == LAYERS
    flat = torch.cat([s.flatten() for s in survival.values()])
    assert flat.dtype == torch.int16
    assert int(flat.min()) == 0 and int(flat.max()) == ROUNDS
    for name in LAYERS:
        assert survival[name].shape == chain.state.mask[name].shape
    for r in range(ROUNDS + 1):
        assert int((flat >= r).sum()) == kept_after(TOTAL, r, FRACTION)
    assert [int((flat == r).sum()) for r in range(ROUNDS + 1)] == [25100, 12550, 6275, 6275]


def test_survival_counts_the_prunings_each_weight_survived(chain):
    masks, survival = chain.masks, chain.state.survival
    assert len(masks) == ROUNDS + 1  # on_round runs after every training, the last one prunes nothing
    for name in LAYERS:
        for r in range(1, ROUNDS):
            assert not bool((masks[r][name] & ~masks[r - 1][name]).any()), "a pruned weight came back"
        assert torch.equal(masks[ROUNDS][name], masks[ROUNDS - 1][name])
        survived = sum(masks[r][name].to(torch.int16) for r in range(ROUNDS))
        assert torch.equal(survival[name], survived)
        assert torch.equal(chain.state.mask[name], survival[name] == ROUNDS)
        for r in range(ROUNDS):
            assert torch.equal(masks[r][name], survival[name] >= r + 1)


def test_history_has_one_record_per_training(chain):
    history = chain.state.history
    assert [r.round for r in history] == [0, 1, 2, 3]
    assert [r.density for r in history] == pytest.approx([1.0, 0.5, 0.25, 0.125])
    for record in history:
        assert 0.0 <= record.test_accuracy <= 1.0
        assert math.isfinite(record.train_loss) and record.train_loss > 0
        assert record.seconds > 0
    assert history[0].test_accuracy > 0.3  # one epoch of the dense MLP learns digits well above chance (0.1)


def test_initial_state_is_the_seeded_initialization(chain, digits):
    fresh = build_model("mlp", digits.input_shape, digits.num_classes, 0).state_dict()
    assert_state_equal(chain.state.initial, {k: v for k, v in fresh.items()})
    other = build_model("mlp", digits.input_shape, digits.num_classes, 1).state_dict()
    assert not torch.equal(chain.state.initial["1.weight"], other["1.weight"])


# ---------------------------------------------------------------- rewinding


def test_rewind_step_zero_restarts_every_round_from_the_masked_init(chain):
    state, starts = chain.state, chain.starts
    assert len(starts) == ROUNDS + 1
    assert_state_equal(state.rewind, state.initial)
    assert_state_equal(starts[0], state.initial)  # round 0: the dense init itself
    for r in range(1, ROUNDS + 1):
        for name, value in state.initial.items():
            expected = value * (state.survival[name] >= r) if name in LAYERS else value
            assert torch.equal(starts[r][name], expected), (r, name)
        pruned = ~(state.survival["3.weight"] >= r)
        assert bool((starts[r]["3.weight"][pruned] == 0).all())


def test_rewind_step_captures_the_weights_after_that_many_steps(digits):
    rewind_step = 3
    config = chain_config(rounds=1, rewind_step=rewind_step)
    recorder = Recorder()
    state = run_irp(config, digits, wrap=recorder.wrap, on_round=recorder.on_round)
    assert state.rewind is not state.initial
    assert not torch.equal(state.rewind["1.weight"], state.initial["1.weight"])

    # Replay round 0 exactly as run_irp does and stop after `rewind_step` optimizer steps.
    model = build_model("mlp", digits.input_shape, digits.num_classes, 0)
    apply_mask(model, Mask.dense(model))
    optimizer = make_optimizer(model, config.train)
    captured = {}

    class Stop(Exception):
        pass

    def on_step(step):
        if step == rewind_step:
            captured.update(clone_state(model))
            raise Stop

    with pytest.raises(Stop):
        train(model, digits, config.train, seed=0, optimizer=optimizer, on_step=on_step)
    assert_state_equal(state.rewind, captured)

    # Round 1 starts from the rewound (not the initial) weights under the round-0 mask.
    assert len(recorder.starts) == 2
    for name, value in state.rewind.items():
        expected = value * state.mask[name] if name in LAYERS else value
        assert torch.equal(recorder.starts[1][name], expected), name
    check_schedule(state, config)


def test_rewind_step_on_the_last_step_of_the_first_round_is_allowed(digits):
    state = run_irp(chain_config(rounds=1, rewind_step=STEPS_PER_EPOCH), digits)
    assert not torch.equal(state.rewind["5.weight"], state.initial["5.weight"])


def test_rewind_step_beyond_the_first_round_raises(digits):
    with pytest.raises(UserError, match=f"rewind_step {STEPS_PER_EPOCH + 1}"):
        run_irp(chain_config(rounds=1, rewind_step=STEPS_PER_EPOCH + 1), digits)


# ---------------------------------------------------------------- resume and determinism


def test_resume_after_an_interruption_matches_the_straight_run(chain, digits):
    class Interrupted(Exception):
        pass

    saved = {}

    def on_round(state, model, optimizer):
        if state.completed == 2:  # after round 1
            buffer = io.BytesIO()
            torch.save(state.to_tensors(), buffer)
            saved["bytes"] = buffer.getvalue()
            raise Interrupted

    with pytest.raises(Interrupted):
        run_irp(CONFIG, digits, on_round=on_round)
    resumed = IRPState.from_tensors(torch.load(io.BytesIO(saved["bytes"]), weights_only=True))
    assert resumed.completed == 2 and len(resumed.history) == 2

    recorder = Recorder()
    final = run_irp(CONFIG, digits, state=resumed, wrap=recorder.wrap)
    assert len(recorder.starts) == 2  # only rounds 2 and 3 were trained again
    assert final.completed == ROUNDS + 1
    assert_state_equal(final.survival, chain.state.survival)
    assert_state_equal(dict(final.mask), dict(chain.state.mask))
    assert [(r.round, r.density, r.test_accuracy, r.train_loss) for r in final.history] == \
           [(r.round, r.density, r.test_accuracy, r.train_loss) for r in chain.state.history]


def test_resuming_a_finished_chain_trains_nothing(chain, digits):
    recorder = Recorder()
    state = IRPState.from_tensors(chain.state.to_tensors())
    final = run_irp(CONFIG, digits, state=state, wrap=recorder.wrap)
    assert recorder.starts == []
    assert_state_equal(final.survival, chain.state.survival)


def test_identical_runs_give_identical_survival(chain, digits):
    again = run_irp(CONFIG, digits)
    assert_state_equal(again.survival, chain.state.survival)
    assert [r.test_accuracy for r in again.history] == [r.test_accuracy for r in chain.state.history]


def test_different_seeds_give_different_survival(chain, digits):
    other = run_irp(IRPChainConfig("mlp", "digits", 1, replace(IRP, rounds=1), TRAIN), digits)
    assert not torch.equal(other.survival["3.weight"] >= 1, chain.state.survival["3.weight"] >= 1)


def test_state_round_trips_through_weights_only_torch_load(chain, tmp_path):
    path = tmp_path / "state.pt"
    torch.save(chain.state.to_tensors(), path)
    loaded = IRPState.from_tensors(torch.load(path, weights_only=True))
    original = chain.state
    assert loaded.completed == original.completed
    assert isinstance(loaded.mask, Mask)
    assert_state_equal(dict(loaded.mask), dict(original.mask))
    assert_state_equal(loaded.survival, original.survival)
    assert_state_equal(loaded.initial, original.initial)
    assert_state_equal(loaded.rewind, original.rewind)
    assert loaded.history == original.history
    assert all(isinstance(r, RoundRecord) and isinstance(r.round, int) for r in loaded.history)


# ---------------------------------------------------------------- other criteria and allocations


def test_snip_trained_criterion_hits_the_schedule_and_differs_from_magnitude(chain, digits):
    config = chain_config(trained_criterion="snip")
    state = run_irp(config, digits)
    check_schedule(state, config)
    flat = torch.cat([s.flatten() for s in state.survival.values()])
    for r in range(ROUNDS + 1):
        assert int((flat >= r).sum()) == kept_after(TOTAL, r, FRACTION)
    assert not all(torch.equal(state.mask[n], chain.state.mask[n]) for n in LAYERS)


def test_uniform_allocation_prunes_every_layer_to_the_same_density(digits):
    config = chain_config(allocation="uniform")
    state = run_irp(config, digits)
    check_schedule(state, config)
    sizes = {"1.weight": 19200, "3.weight": 30000, "5.weight": 1000}
    for name, size in sizes.items():
        for r in range(ROUNDS + 1):
            assert int((state.survival[name] >= r).sum()) == size * FRACTION ** r, (name, r)


# ---------------------------------------------------------------- features and metadata of a chain


def test_chain_features_describe_each_rounds_masked_network(chain, digits):
    blocks = chain_features(CONFIG, digits, chain.state)
    assert [block.round for block in blocks] == [0, 1, 2]  # rounds 0..R-1: each has a next pruning to label
    for block in blocks:
        for index, name in enumerate(LAYERS):
            kept = chain.state.survival[name].flatten() >= block.round
            assert torch.equal(block.positions[name], torch.nonzero(kept).flatten())
            matrix = block.features[name]
            assert matrix.shape == (int(kept.sum()), 4)
            assert torch.equal(matrix[:, 0], chain.state.initial[name].flatten()[kept])  # w0 of the kept weights
            assert torch.equal(matrix[:, 1], chain.state.initial[name].flatten()[kept].abs())
            assert bool((matrix[:, 2] == index / 2).all())
            density = float(kept.float().mean())
            assert float(matrix[0, 3]) == pytest.approx(math.log(density), abs=1e-6)


def test_feature_round_stride_thins_the_rounds(chain, digits):
    assert [b.round for b in chain_features(chain_config(feature_round_stride=2), digits, chain.state)] == [0, 2]


def test_survival_metadata_describes_the_chain(chain):
    meta = survival_metadata(CONFIG, chain.state, "cafe")
    json.dumps(meta)  # plain data
    assert (meta["model"], meta["dataset"], meta["seed"]) == ("mlp", "digits", 0)
    assert (meta["rounds"], meta["prune_fraction"], meta["rewind_step"]) == (ROUNDS, FRACTION, 0)
    assert meta["feature_names"] == ["w0", "abs_w0", "depth", "log_layer_density"]
    assert meta["feature_versions"] == {"w0": 1, "abs_w0": 1, "depth": 1, "log_layer_density": 1}
    assert meta["config_hash"] == "cafe"
    assert [h["round"] for h in meta["history"]] == [0, 1, 2, 3]


def test_prunable_layers_of_the_chain_model(digits):
    model = build_model("mlp", digits.input_shape, digits.num_classes, 0)
    assert list(prunable_parameters(model)) == LAYERS
