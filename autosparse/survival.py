"""Survival datasets: one Parquet file per IRP chain.

Each row is one weight as the network stood at the start of one IRP round r: the weight was still kept
then (rows of round 0 cover every prunable weight), its features were computed on the initial network
masked by round r's mask, and `survival` is how many prunings the weight survived in all (0..R). So
`survival > round` says whether it survived round r's pruning: the label of conditional survival.
Columns: `round`, `layer`, `position` (flat index in the layer), one float32 column per feature,
`survival`; JSON metadata sits in the Parquet schema under the key `autosparse`. Any Arrow tool reads it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from .errors import UserError
from .storage import atomic_write, read_header

FORMAT = "autosparse.survival"
FORMAT_VERSION = 2
METADATA_KEY = b"autosparse"


class SurvivalFormatError(UserError):
    """The file is not a survival dataset of a supported format version."""


@dataclass(frozen=True)
class RoundFeatures:
    """The features of the weights kept at the start of one round: per layer, flat positions and rows."""

    round: int
    positions: dict[str, Tensor]  # layer -> int64 flat indices of the kept weights
    features: dict[str, Tensor]  # layer -> (kept, F) float32


@dataclass
class SurvivalDataset:
    """Columns as tensors (one row per weight and round) plus the chain's metadata."""

    layers: list[str]
    layer_index: Tensor  # int64 per row: index into `layers`
    round: Tensor  # int64 per row: the round whose mask the features describe
    features: dict[str, Tensor]  # name -> float32 per row
    survival: Tensor  # int16 per row, 0..rounds
    metadata: dict[str, Any]

    @property
    def rounds(self) -> int:
        return int(self.metadata["rounds"])

    @property
    def label(self) -> str:
        meta = self.metadata
        return f"{meta['model']}/{meta['dataset']}/seed{meta['seed']}"

    def __len__(self) -> int:
        return len(self.survival)

    def feature_matrix(self, names: Sequence[str]) -> Tensor:
        missing = [n for n in names if n not in self.features]
        if missing:
            raise SurvivalFormatError(f"survival dataset {self.label} lacks feature(s) {missing} "
                                      f"(has {sorted(self.features)})")
        return torch.stack([self.features[n] for n in names], dim=1)

    def select(self, rows: Tensor) -> "SurvivalDataset":
        """The rows where the bool tensor `rows` is true (same layers and metadata)."""
        return SurvivalDataset(self.layers, self.layer_index[rows], self.round[rows],
                               {n: v[rows] for n, v in self.features.items()}, self.survival[rows], self.metadata)

    def layer_sizes(self) -> list[int]:
        return [int(np.prod(self.metadata["layer_shapes"][name])) for name in self.layers]


def write_survival(path: Path, blocks: Sequence[RoundFeatures], feature_names: Sequence[str],
                   survival: dict[str, Tensor], metadata: dict[str, Any]) -> None:
    """Write atomically: one block of rows per round, layers in order within each block."""
    layers = list(survival)
    rounds, layer_ids, positions, features, counts = [], [], [], [], []
    for block in blocks:
        for index, layer in enumerate(layers):
            kept = block.positions[layer].long().cpu()
            rounds.append(np.full(len(kept), block.round, dtype=np.int16))
            layer_ids.append(np.full(len(kept), index, dtype=np.int32))
            positions.append(kept.numpy())
            features.append(block.features[layer].float().cpu().numpy().reshape(len(kept), len(feature_names)))
            counts.append(survival[layer].flatten().cpu()[kept].numpy().astype(np.int16))
    matrix = np.concatenate(features) if features else np.zeros((0, len(feature_names)), np.float32)
    columns = {
        "round": np.concatenate(rounds),
        "layer": pa.DictionaryArray.from_arrays(np.concatenate(layer_ids), pa.array(layers)),
        "position": np.concatenate(positions).astype(np.int64),
        **{name: matrix[:, i] for i, name in enumerate(feature_names)},
        "survival": np.concatenate(counts),
    }
    meta = {**metadata, "format": FORMAT, "format_version": FORMAT_VERSION, "layers": layers,
            "layer_shapes": {n: list(survival[n].shape) for n in layers}, "feature_names": list(feature_names),
            "feature_rounds": [block.round for block in blocks]}
    table = pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_metadata(path: Path) -> dict[str, Any]:
    """Only the metadata (cheap): validates that this is a survival dataset we can read."""
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise SurvivalFormatError(f"survival dataset {str(path)!r} does not exist") from None
    except (pa.ArrowInvalid, OSError) as error:
        raise SurvivalFormatError(f"{str(path)!r} is not a readable survival dataset (truncated or foreign file: "
                                  f"{str(error).splitlines()[0]})") from None
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return read_header(raw, path, SurvivalFormatError, FORMAT, FORMAT_VERSION, "Parquet file", "survival dataset")


def read_survival(path: str | os.PathLike) -> SurvivalDataset:
    path = Path(path)
    meta = read_metadata(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise SurvivalFormatError(f"{str(path)!r} is truncated or corrupt: {str(error).splitlines()[0]}") from None
    layer_column = table.column("layer").combine_chunks()
    features = {name: torch.from_numpy(table.column(name).to_numpy().astype(np.float32))
                for name in meta["feature_names"]}
    return SurvivalDataset(
        layers=meta["layers"],
        layer_index=torch.from_numpy(layer_column.indices.to_numpy().astype(np.int64)),
        round=torch.from_numpy(table.column("round").to_numpy().astype(np.int64)),
        features=features,
        survival=torch.from_numpy(table.column("survival").to_numpy().astype(np.int16)),
        metadata=meta,
    )
