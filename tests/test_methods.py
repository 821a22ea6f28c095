"""A pruning method as one object (autosparse/methods.py): every written form parses and prints back, bad
text is a one-line error, and `prune` reads every part of a method."""
from __future__ import annotations

import re

import pytest
import torch

import autosparse
from autosparse import Method, UserError
from autosparse.config import DEFAULT_INIT, ModelOnData, TrainConfig
from autosparse.criteria import CRITERIA, ScoringPlugin
from autosparse.matrix_cell import CellSpec, label_method
from autosparse.methods import LEARNED_FILES, names_file
from autosparse.pruning import plugin_defaults
from autosparse.sanity import shuffle_mask
from helpers import two_layer_net

FORMS = [
    ("snip", Method("snip")),
    ("synflow/iter20", Method("synflow", steps=20)),
    ("snip/batch64", Method("snip", step_batch=64)),
    ("random@alloc:erk", Method("random", allocation="erk")),
    ("snip@alloc:learned", Method("snip", allocation="learned")),
    ("magnitude+shuffle", Method("magnitude", variant="shuffle")),
    ("autos:conditional", Method("autos:conditional")),
    ("runs/best/scorer.safetensors", Method("runs/best/scorer.safetensors")),
    ("snip/iter20/batch64@alloc:synflow+invert", Method("snip", 20, 64, "synflow", "invert")),
    ("autos:conditional/iter20@alloc:learned+reinit", Method("autos:conditional", 20, None, "learned", "reinit")),
    ("runs/iter3/scorer.safetensors/iter5@alloc:runs/allocator.safetensors",
     Method("runs/iter3/scorer.safetensors", 5, None, "runs/allocator.safetensors")),
]


@pytest.mark.parametrize("text,method", FORMS, ids=[text for text, _ in FORMS])
def test_every_form_parses_and_prints_back(text, method):
    assert Method.parse(text) == method
    assert method.label == text
    assert Method.parse(method.label) == method


def test_a_global_allocation_prints_as_the_default():
    assert Method.parse("snip@alloc:global") == Method("snip")
    assert Method.parse(" snip@alloc:global ").label == "snip"


@pytest.mark.parametrize("text,reason", [
    ("", "does not look like SCORES[/iterK][/batchN][@alloc:NAME][+VARIANT]"),
    ("sn ip", "does not look like"), ("snip@alloc", "does not look like"), ("snip@alloc:", "does not look like"),
    ("snip+", "does not look like"), ("snip@alloc:erk@alloc:uniform", "does not look like"),
    ("snip/iter0", "method 'snip/iter0': steps must be at least 1"),
    ("snip/batch0", "method 'snip/batch0': step batch must be at least 1"),
    ("snip+wobble", "unknown sanity variant 'wobble' (known: shuffle, invert, reinit)"),
])
def test_bad_text_is_a_one_line_user_error(text, reason):
    with pytest.raises(UserError, match=re.escape(reason)) as raised:
        Method.parse(text)
    assert "\n" not in str(raised.value)


def test_names_are_checked_against_the_registries():
    Method.parse("snip/iter5@alloc:erk").validate()
    Method.parse("autos:paper@alloc:synflow").validate(["paper"])
    for text, names, reason in [("snap", None, "unknown pruning criterion 'snap' (known: grasp,"),
                                ("snip@alloc:wide", None, "unknown allocation 'wide' (known: global, learned,"),
                                ("autos:x", ["paper"], "method 'autos:x': no scorer named 'x' (scorers: paper)")]:
        with pytest.raises(UserError, match=re.escape(reason)):
            Method.parse(text).validate(names)


def test_what_a_method_says_about_itself():
    autos = Method.parse("autos:conditional/iter20@alloc:learned+shuffle")
    assert (autos.is_autos, autos.scorer_name, autos.scorer_file, autos.criterion) == \
        (True, "conditional", False, "autos")
    assert autos.learned_allocation and autos.plain == Method("autos:conditional", 20, None, "learned")
    file = Method.parse("runs/scorer.safetensors")
    assert (file.is_autos, file.scorer_name, file.scorer_file, file.criterion) == (False, None, True, "autos")
    snip = Method.parse("snip/iter20@alloc:synflow")
    assert (snip.is_autos, snip.scorer_file, snip.criterion, snip.learned_allocation) == (False, False, "snip", False)


def test_one_rule_tells_a_file_from_a_name():
    assert [names_file(text) for text in ("snip", "autos:conditional", "scorer.safetensors", "runs/scorer")] == \
        [False, False, True, True]


def test_pipeline_fitted_parts_are_replaced_by_their_files():
    method = Method.parse("autos:conditional/iter20@alloc:learned+invert")
    bound = method.with_files("w/scorer.safetensors", "w/allocator.safetensors")
    assert bound == Method("w/scorer.safetensors", 20, None, "w/allocator.safetensors", "invert")
    assert Method.parse("snip@alloc:erk").with_files() == Method("snip", allocation="erk")
    with pytest.raises(UserError, match="an AutoS method needs its scorer file"):
        method.with_files(allocator="w/allocator.safetensors")
    with pytest.raises(UserError, match="allocation 'learned' needs its allocator file"):
        method.with_files(scorer="w/scorer.safetensors")


def test_method_lists_name_a_method_by_label_scorer_or_criterion():
    method = Method.parse("autos:conditional/iter20@alloc:learned")
    assert all(method.selected_by(names) for names in (None, ["autos"], ["autos:conditional"],
                                                       ["autos:conditional/iter20@alloc:learned"]))
    assert not method.selected_by(["autos:paper", "snip"])
    assert Method.parse("snip/iter20").selected_by(["snip"]) and not Method.parse("snip").selected_by(["synflow"])


def test_a_cell_label_is_its_method_with_variant_and_init():
    spec = CellSpec(ModelOnData("mlp", "digits"), "snip/iter20@alloc:synflow", 0.98, 0, TrainConfig(),
                    variant="shuffle", init="original")
    assert spec.pruning == Method("snip", 20, None, "synflow", "shuffle")
    assert spec.label == "snip/iter20@alloc:synflow+shuffle init:original"
    assert label_method(spec.label) == spec.pruning
    plain = CellSpec(ModelOnData("mlp", "digits"), "snip", 0.98, 0, TrainConfig(), init=DEFAULT_INIT)
    assert plain.label == "snip" and label_method("dense") is None


# magnitudes of two_layer_net: layer 0 [[0.5, 1, 2], [0.25, 0.75, 1.5]], layer 1 [[1, 2], [0.5, 3]]
KEEP_4_LARGEST = {"0.weight": [[0, 0, 1], [0, 0, 1]], "1.weight": [[0, 1], [0, 1]]}
KEEP_4_SMALLEST = {"0.weight": [[1, 0, 0], [1, 1, 0]], "1.weight": [[0, 0], [1, 0]]}
HALF_OF_EACH_LAYER = {"0.weight": [[0, 1, 1], [0, 0, 1]], "1.weight": [[0, 1], [0, 1]]}


@pytest.mark.parametrize("text,sparsity,expected", [("magnitude", 0.6, KEEP_4_LARGEST),
                                                    ("magnitude+invert", 0.6, KEEP_4_SMALLEST),
                                                    ("magnitude@alloc:uniform", 0.5, HALF_OF_EACH_LAYER)])
def test_prune_reads_the_allocation_and_variant_of_a_method(text, sparsity, expected):
    mask = autosparse.prune(two_layer_net(), sparsity, text)
    assert {name: kept.int().tolist() for name, kept in mask.items()} == expected


def test_a_shuffled_method_is_its_plain_mask_shuffled_per_layer():
    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1] * 4)
    plain = autosparse.prune(two_layer_net(), 0.6, "snip", (x, y), seed=3)
    shuffled = autosparse.prune(two_layer_net(), 0.6, Method("snip", variant="shuffle"), (x, y), seed=3)
    assert all(torch.equal(shuffled[n], shuffle_mask(plain, 3)[n]) for n in plain)


def test_keywords_override_the_parts_a_method_names():
    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1] * 4)
    by_text = autosparse.prune(two_layer_net(), 0.6, "snip/iter3@alloc:erk", (x, y))
    by_keywords = autosparse.prune(two_layer_net(), 0.6, "snip", (x, y), steps=3, allocation="erk")
    overridden = autosparse.prune(two_layer_net(), 0.6, "snip/iter7@alloc:uniform", (x, y), steps=3, allocation="erk")
    assert all(torch.equal(by_text[n], by_keywords[n]) and torch.equal(by_text[n], overridden[n]) for n in by_text)


def test_an_autos_name_without_its_file_is_a_user_error():
    with pytest.raises(UserError, match="names a scorer that a pipeline fits: pass its file"):
        autosparse.prune(two_layer_net(), 0.5, "autos:conditional")


def test_plug_ins_declare_their_defaults_through_the_protocol():
    synflow = CRITERIA.get("synflow")
    assert isinstance(synflow, ScoringPlugin) and plugin_defaults(synflow) == (100, None)
    assert plugin_defaults(lambda context: {}) == (1, None)  # a plain function: one step, the whole batch
    assert {"scorer", "allocator"} <= set(LEARNED_FILES.names())
    assert LEARNED_FILES.get("scorer") is autosparse.load_scorer
    assert LEARNED_FILES.get("allocator") is autosparse.load_allocator
