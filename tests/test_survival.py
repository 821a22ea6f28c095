"""Survival datasets on disk: exact round trip, plain-Parquet readability, atomic writes, clear format errors."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from autosparse import UserError
from autosparse.survival import (FORMAT, FORMAT_VERSION, METADATA_KEY, RoundFeatures, SurvivalDataset,
                                 SurvivalFormatError, read_metadata, read_survival, write_survival)

from helpers import write_file

NAMES = ["w0", "g0_z"]
LAYERS = ["features.0.weight", "head.weight"]
SURVIVAL = {"features.0.weight": torch.tensor([0, 1, 2, 3, 3, 2, 1, 0], dtype=torch.int16).view(2, 1, 2, 2),
            "head.weight": torch.tensor([[3, 0, 1], [2, 2, 0]], dtype=torch.int16)}


def example():
    """A conv layer (2, 1, 2, 2) = 8 weights and a linear layer (3, 2) = 6 weights, 3 rounds; feature rows
    for round 0 (every weight) and round 2 (the weights that survived two prunings)."""
    generator = torch.Generator().manual_seed(0)
    blocks = []
    for round_index in (0, 2):
        positions = {n: torch.nonzero(s.flatten() >= round_index).flatten() for n, s in SURVIVAL.items()}
        features = {n: torch.randn(len(p), 2, generator=generator) for n, p in positions.items()}
        blocks.append(RoundFeatures(round_index, positions, features))
    metadata = {"model": "conv", "dataset": "digits", "seed": 4, "rounds": 3, "prune_fraction": 0.2,
                "feature_names": list(NAMES), "config_hash": "0123abcd", "history": [{"round": 0, "density": 1.0}]}
    return blocks, dict(SURVIVAL), metadata


@pytest.fixture
def written(tmp_path):
    blocks, survival, metadata = example()
    path = tmp_path / "chain" / "survival.parquet"
    write_survival(path, blocks, NAMES, survival, metadata)
    return path


ROUND_TWO = [2, 3, 3, 2, 3, 2, 2]  # survival of the weights with survival >= 2, layer by layer


def test_round_trip_is_exact(written):
    blocks, survival, metadata = example()
    data = read_survival(written)
    assert isinstance(data, SurvivalDataset)
    assert data.layers == LAYERS
    assert len(data) == 14 + 7
    assert data.round.tolist() == [0] * 14 + [2] * 7
    assert data.layer_index.dtype == torch.int64
    assert data.layer_index.tolist() == [0] * 8 + [1] * 6 + [0] * 4 + [1] * 3
    assert list(data.features) == NAMES
    for index, name in enumerate(NAMES):
        assert data.features[name].dtype == torch.float32
        expected = torch.cat([block.features[n][:, index] for block in blocks for n in LAYERS])
        assert torch.equal(data.features[name], expected)
    assert data.survival.dtype == torch.int16
    assert data.survival.tolist() == [0, 1, 2, 3, 3, 2, 1, 0, 3, 0, 1, 2, 2, 0] + ROUND_TWO
    assert data.rounds == 3 and data.label == "conv/digits/seed4"
    assert data.layer_sizes() == [8, 6]
    assert data.metadata == {"format": FORMAT, "format_version": FORMAT_VERSION, "layers": LAYERS,
                             "layer_shapes": {"features.0.weight": [2, 1, 2, 2], "head.weight": [2, 3]},
                             "feature_rounds": [0, 2], **metadata}
    assert torch.equal(data.feature_matrix(["g0_z", "w0"]),
                       torch.stack([data.features["g0_z"], data.features["w0"]], dim=1))


def test_round_zero_rows_reshape_back_to_each_layer(written):
    data = read_survival(written)
    dense = data.select(data.round == 0)
    for index, layer in enumerate(data.layers):
        rows = dense.survival[dense.layer_index == index]
        assert torch.equal(rows.view(data.metadata["layer_shapes"][layer]), SURVIVAL[layer])


def test_the_label_of_conditional_survival(written):
    data = read_survival(written)
    survived_next = (data.survival.long() > data.round).tolist()
    assert survived_next[14:] == [False, True, True, False, True, False, False]


def test_missing_feature_column_is_a_format_error(written):
    with pytest.raises(SurvivalFormatError, match="synflow"):
        read_survival(written).feature_matrix(["w0", "synflow"])


def test_file_is_plain_parquet(written):
    table = pq.read_table(written)
    assert table.column_names == ["round", "layer", "position", *NAMES, "survival"]
    assert table.num_rows == 21
    assert table.column("layer").to_pylist() == [LAYERS[0]] * 8 + [LAYERS[1]] * 6 + [LAYERS[0]] * 4 + [LAYERS[1]] * 3
    assert table.column("position").to_pylist() == list(range(8)) + list(range(6)) + [2, 3, 4, 5] + [0, 3, 4]
    assert table.schema.field("survival").type == pa.int16()
    assert table.schema.field("w0").type == pa.float32()
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    assert meta["format"] == "autosparse.survival" and meta["format_version"] == 2
    assert read_metadata(written)["config_hash"] == "0123abcd"


def test_writing_leaves_only_the_target_file(written):
    assert [p.name for p in written.parent.iterdir()] == ["survival.parquet"]
    blocks, survival, metadata = example()
    write_survival(written, blocks, NAMES, survival, {**metadata, "seed": 5})  # overwrite in place
    assert [p.name for p in written.parent.iterdir()] == ["survival.parquet"]
    assert read_survival(written).metadata["seed"] == 5


def test_failed_write_leaves_no_file_behind(tmp_path, monkeypatch):
    def broken_write(table, where, **kwargs):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken_write)
    blocks, survival, metadata = example()
    with pytest.raises(OSError, match="disk full"):
        write_survival(tmp_path / "survival.parquet", blocks, NAMES, survival, metadata)
    assert list(tmp_path.iterdir()) == []


def test_reader_reads_back_what_the_writer_was_given_without_feature_names_in_metadata(tmp_path):
    blocks, survival, metadata = example()
    del metadata["feature_names"]
    path = tmp_path / "survival.parquet"
    write_survival(path, blocks, NAMES, survival, metadata)
    assert list(read_survival(path).features) == NAMES


# ---------------------------------------------------------------- unreadable files


def assert_format_error(path, match: str | None) -> None:
    with pytest.raises(SurvivalFormatError, match=match) as error:
        read_survival(path)
    assert str(path) in str(error.value)
    assert isinstance(error.value, UserError)


def test_truncated_file(written):
    data = written.read_bytes()
    written.write_bytes(data[: len(data) // 2])
    assert_format_error(written, "truncated or foreign")


def test_foreign_parquet_file(tmp_path):
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"layer": ["a", "b"], "survival": np.array([1, 2], dtype=np.int16)}), path)
    assert_format_error(path, "not an autosparse survival dataset")


def test_parquet_file_of_another_format(tmp_path):
    path = tmp_path / "other.parquet"
    table = pa.table({"x": [1.0]}).replace_schema_metadata({METADATA_KEY: json.dumps({"format": "other"}).encode()})
    pq.write_table(table, path)
    assert_format_error(path, "not an autosparse survival dataset")


def test_non_parquet_file(tmp_path):
    assert_format_error(write_file(tmp_path, "layer,position,survival\nhead.weight,0,3\n", "notes.parquet"),
                        "truncated or foreign")


def test_empty_file(tmp_path):
    assert_format_error(write_file(tmp_path, b"", "empty.parquet"), "truncated or foreign")


def test_missing_file(tmp_path):
    assert_format_error(tmp_path / "absent.parquet", "does not exist")


def test_future_format_version(written):
    table = pq.read_table(written)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    meta["format_version"] = 99
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()}), written)
    assert_format_error(written, "version 99")
    with pytest.raises(SurvivalFormatError, match="version 99"):
        read_metadata(written)


def test_parquet_file_with_a_malformed_autosparse_header(tmp_path):
    path = tmp_path / "garbled.parquet"
    pq.write_table(pa.table({"x": [1.0]}).replace_schema_metadata({METADATA_KEY: b"{not json"}), path)
    assert_format_error(path, None)
