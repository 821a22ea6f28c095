"""Typed configuration: packaged configs, strict validation with helpful messages, overrides, hashing."""
from __future__ import annotations

import dataclasses
import hashlib
import re

import pytest
import yaml

from autosparse.config import (
    MatrixConfig, ModelOnData, PipelineConfig, TrainConfig, load_config, packaged_configs,
)
from autosparse import UserError
from autosparse.schema import (ConfigError, canonical_json, content_hash, flatten, from_dict, non_default, set_dotted,
                               to_dict)

from helpers import write_file


# ---------------------------------------------------------------- packaged configs


def test_packaged_configs_are_listed():
    assert {"smoke", "quickstart", "cifar10_resnet18"} <= set(packaged_configs())


def test_load_smoke():
    config = load_config("smoke")
    assert isinstance(config, PipelineConfig) and config.name == "smoke"
    assert config.irp.rounds == 3 and config.irp.prune_fraction == 0.5
    assert config.irp.train == {"epochs": 1, "batch_size": 128}
    assert [s.name for s in config.scorers] == ["conditional", "paper"]
    assert config.scorers[1].features == ["w0", "g0"] and config.scorers[1].loss == "mse"
    assert config.matrix.targets == [ModelOnData("mlp", "digits"), ModelOnData("conv1d", "mnist1d")]
    assert config.matrix.variants == ["shuffle", "invert", "reinit"]
    assert config.matrix.sparsities == [0.9] and config.matrix.seeds == [0]


def test_load_quickstart_is_the_default():
    config = load_config("quickstart")
    assert config == load_config()
    assert config.name == "quickstart"
    assert [s.pair for s in config.sources] == ["conv/digits", "conv1d/mnist1d"]
    assert config.matrix.sparsities == [0.9, 0.98] and config.matrix.seeds == [0, 1]
    assert config.matrix.train == {}  # the targets train with their recipes
    assert "autos:conditional/iter20@alloc:learned" in config.matrix.methods
    assert {"synflow", "snip/iter20@alloc:learned", "autos:paper"} <= set(config.matrix.methods)
    assert config.data.score_batch_size == 256 and config.data.download is False  # untouched default


def test_load_cifar10_resnet18_uses_the_paper_recipe():
    from autosparse.recipes import train_config

    config = load_config("cifar10_resnet18")
    assert config.sources[0].model == "resnet18" and config.sources[0].dataset == "cifar10"
    paper = TrainConfig(epochs=160, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0005,
                        schedule="multistep", milestones=[60, 120], gamma=0.2)
    assert config.irp.train == config.matrix.train == {}
    assert train_config("cifar10", "resnet18") == paper == train_config("tiny_imagenet", "resnet18")
    assert config.irp.use_gpu is True
    assert config.matrix.gpus_per_cell == 1.0 and isinstance(config.matrix.gpus_per_cell, float)  # int -> float
    assert config.data.data_root == "/data"


def test_load_config_from_a_path(tmp_path):
    path = write_file(tmp_path, "name: mine\nmatrix:\n  seeds: [4, 5]\n")
    config = load_config(str(path))
    assert config.name == "mine" and config.matrix.seeds == [4, 5]
    assert config.irp == PipelineConfig().irp  # everything else is the default
    assert load_config(str(write_file(tmp_path, "", "empty.yaml"))) == PipelineConfig()


def test_unknown_config_name_or_missing_file():
    with pytest.raises(ConfigError, match="'no_such_config'.*smoke"):
        load_config("no_such_config")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/dir/job.yaml")


# ---------------------------------------------------------------- validation errors


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = write_file(tmp_path, "matrix:\n  sparsitys: [0.9]\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert "'sparsitys'" in message
    assert str(path) in message
    assert "matrix" in message and "sparsities" in message  # where, and what is allowed


def test_unknown_top_level_and_nested_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"config: unknown key 'bogus'"):
        load_config(str(write_file(tmp_path, "bogus: 1\n")))
    with pytest.raises(ConfigError, match=r"config\.irp\.train: unknown key 'learning_rate'"):
        load_config(str(write_file(tmp_path, "irp:\n  train: {learning_rate: 0.1}\n")))
    with pytest.raises(ConfigError, match=r"config\.sources\[0\]: unknown key 'arch'"):
        load_config(str(write_file(tmp_path, "sources:\n  - {arch: conv}\n")))


@pytest.mark.parametrize("text,pattern", [
    ('matrix:\n  seeds: "a"\n', r"matrix\.seeds: expected a list, got str 'a'"),
    ("matrix:\n  seeds: [a]\n", r"matrix\.seeds\[0\]: expected int, got str 'a'"),
    ("matrix:\n  seeds: [true]\n", r"matrix\.seeds\[0\]: expected int, got bool"),
    ("matrix:\n  sparsities: [0.5, 1.5]\n", r"matrix\.sparsities: sparsity 1\.5 is outside \(0, 1\)"),
    ("matrix:\n  sparsities: [0]\n", r"matrix\.sparsities: sparsity 0\.0 is outside"),
    ("matrix:\n  sparsities: []\n", r"matrix\.sparsities: must not be empty"),
    ("irp:\n  allocation: rows\n", r"irp\.allocation: unknown allocation 'rows' for IRP \(known: global, erk,"),
    ("irp:\n  allocation: learned\n", r"irp\.allocation: unknown allocation 'learned' for IRP"),
    ("irp:\n  trained_criterion: weight\n", r"irp\.trained_criterion: unknown pruning criterion 'weight' \(known:"),
    ("matrix:\n  variants: [flip]\n", r"matrix\.variants: unknown sanity variant 'flip' \(known: shuffle, invert,"),
    ("matrix:\n  seeds: [1, 1]\n", r"matrix\.seeds: must be distinct"),
    ("matrix:\n  methods: []\n", r"matrix\.methods: must not be empty"),
    ("matrix:\n  targets: [{model: mlp}]\n", r"matrix\.targets\[0\]: missing key 'dataset'"),
    ("matrix:\n  train: {epochs: 2.5}\n", r"matrix\.train\.epochs: expected int, got float"),
    ("scorers:\n  - {target: next_round, loss: mse}\n", r"target 'next_round' is a yes/no label"),
    ("irp:\n  rounds: 0\n", r"irp\.rounds: must be positive"),
    ("irp:\n  prune_fraction: 1\n", r"irp\.prune_fraction: must be in \(0, 1\)"),
    ("data: [1]\n", r"config\.data: expected a mapping, got list"),
    ("sources: []\n", r"sources: must not be empty"),
    ("scorers:\n  - {name: a}\n  - {name: a}\n", r"scorer names must be unique"),
    ("matrix:\n  variant_methods: 3\n", r"matrix\.variant_methods"),
])
def test_invalid_values_name_the_problem_and_the_file(tmp_path, text, pattern):
    path = write_file(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(str(path))
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("text", ["matrix:\n  seeds: [1, 2\n", "matrix: {a: 1\n", "a: b: c\n", "\tname: x\n"])
def test_malformed_yaml(tmp_path, text):
    path = write_file(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": malformed YAML"):
        load_config(str(path))


def test_malformed_yaml_reports_the_line(tmp_path):
    path = write_file(tmp_path, "name: x\nmatrix:\n  seeds: [1, 2\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+"):
        load_config(str(path))


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_config(str(write_file(tmp_path, "- a\n- b\n")))


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError)
    with pytest.raises(UserError, match=r"sparsities: sparsity 2 is outside"):
        MatrixConfig(sparsities=[2])


def test_a_config_that_is_not_utf8_text_is_named(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: \xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": not UTF-8 text"):
        load_config(str(path))


def test_train_overrides_are_checked_once_merged_with_the_recipe():
    from autosparse.recipes import train_config

    assert train_config("digits", "mlp", {"epochs": 3}).epochs == 3
    with pytest.raises(ConfigError, match=r"matrix\.train \(mlp/digits\)\.lr: must be positive"):
        train_config("digits", "mlp", {"lr": 0}, "matrix.train")
    with pytest.raises(ConfigError, match="warmup_epochs"):
        train_config("digits", "mlp", {"warmup_epochs": 60}, "matrix.train")


# ---------------------------------------------------------------- overrides


def test_overrides_apply():
    config = load_config("smoke", ["matrix.seeds=[3]"])
    assert config.matrix.seeds == [3]
    config = load_config("smoke", ["matrix.seeds=[1, 2]", "matrix.train.lr=0.1", "data.download=true",
                                   "irp.allocation=uniform", "name=other"])
    assert config.matrix.seeds == [1, 2]
    assert config.matrix.train == {"lr": 0.1, "epochs": 1, "batch_size": 128}  # sibling keys kept
    assert config.data.download is True
    assert config.irp.allocation == "uniform"
    assert config.name == "other"
    assert load_config("smoke").matrix.seeds == [0]  # the packaged file was not changed


def test_overrides_are_validated():
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        load_config("smoke", ["matrix.bogus=1"])
    with pytest.raises(ConfigError, match="sparsity 1.5 is outside"):
        load_config("smoke", ["matrix.sparsities=[1.5]"])
    with pytest.raises(ConfigError, match="'nokey' must look like key.path=value"):
        load_config("smoke", ["nokey"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("smoke", ["matrix.seeds=[1"])
    with pytest.raises(ConfigError, match="'name' is not a mapping"):
        load_config("smoke", ["name.x=1"])


def test_set_dotted_creates_mappings():
    data = {"a": {"b": 1}}
    set_dotted(data, "a.c.d", 2)
    set_dotted(data, "e", [1])
    assert data == {"a": {"b": 1, "c": {"d": 2}}, "e": [1]}


# ---------------------------------------------------------------- round trips and hashing


@pytest.mark.parametrize("name", ["smoke", "quickstart", "cifar10_resnet18"])
def test_to_dict_from_dict_round_trip(name):
    config = load_config(name)
    data = to_dict(config)
    assert isinstance(data, dict) and isinstance(data["matrix"]["targets"][0], dict)
    again = from_dict(PipelineConfig, data)
    assert again == config
    assert to_dict(again) == data


def test_config_yaml_round_trip(tmp_path):
    config = load_config("smoke", ["matrix.train.milestones=[1, 2]", "matrix.variant_methods=null"])
    path = write_file(tmp_path, yaml.safe_dump(to_dict(config), sort_keys=False))
    assert load_config(str(path)) == config


def test_default_round_trip_and_float_coercion():
    assert from_dict(PipelineConfig, to_dict(PipelineConfig())) == PipelineConfig()
    train = from_dict(TrainConfig, {"lr": 1, "milestones": [3]})
    assert train.lr == 1.0 and isinstance(train.lr, float) and train.milestones == [3]


def test_content_hash_is_stable_and_sensitive():
    config = load_config("smoke")
    digest = content_hash(config)
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert content_hash(load_config("smoke")) == digest  # an equal, separately built config
    assert content_hash(from_dict(PipelineConfig, to_dict(config))) == digest
    changed = dataclasses.replace(config, matrix=dataclasses.replace(config.matrix, seeds=[1]))
    assert content_hash(changed) != digest
    assert content_hash(load_config("smoke", ["matrix.train.lr=0.051"])) != digest
    assert content_hash(config) == digest  # replace() did not mutate the original
    assert content_hash(config, "x") != digest  # extra parts count


def test_content_hash_hand_value_and_key_order():
    assert canonical_json({"b": [1, 2], "a": 1}) == '{"a":1,"b":[1,2]}'
    expected = hashlib.sha256(b'{"a":1,"b":[1,2]}').hexdigest()[:16]
    assert content_hash({"b": [1, 2], "a": 1}) == content_hash({"a": 1, "b": [1, 2]}) == expected
    two = hashlib.sha256(b'{"a":1}\n[1,2]').hexdigest()[:16]
    assert content_hash({"a": 1}, [1, 2]) == two


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}
    flat = flatten(load_config("smoke"))
    assert flat["matrix.train.epochs"] == 1 and flat["irp.rounds"] == 3 and flat["name"] == "smoke"


def test_non_default_keeps_only_changed_fields():
    assert non_default(PipelineConfig()) == {}
    config = load_config("smoke")
    kept = non_default(config)
    assert kept["irp"] == {"rounds": 3, "prune_fraction": 0.5, "train": {"epochs": 1, "batch_size": 128}}
    assert "data" not in kept  # untouched
    assert non_default(TrainConfig(lr=0.1)) == {"lr": 0.1}


RESOURCES = ["irp.num_workers=4", "irp.cpus_per_worker=8", "irp.use_gpu=true", "matrix.workers_per_run=2",
             "matrix.cpus_per_cell=4", "matrix.gpus_per_cell=1"]


def test_resources_enter_no_hash():
    from autosparse.orchestration.pipeline import Pipeline, pipeline_hash

    def digests(overrides):
        config = load_config("smoke", overrides)
        planned = Pipeline(config, "unused").jobs
        return pipeline_hash(config), {kind: [job.digest for job in jobs] for kind, jobs in planned.items()}

    plain = digests([])
    assert digests(RESOURCES) == plain
    assert non_default(load_config("smoke", RESOURCES).irp) == non_default(load_config("smoke").irp)
    changed = digests(["irp.rounds=4"])  # an identity field: every chain, and what reads them, moves
    assert changed[0] != plain[0] and not set(changed[1]["irp"]) & set(plain[1]["irp"])


def test_the_allocator_hash_carries_its_fit_version():
    from autosparse.learned_allocation import FIT_VERSION
    from autosparse.orchestration.allocator_stage import allocator_for

    config = load_config("smoke")
    job = allocator_for(config, config.matrix.targets[0])
    assert job.extras == {"fit_version": FIT_VERSION}
    assert dataclasses.replace(job, extras={"fit_version": FIT_VERSION + 1}).digest != job.digest
