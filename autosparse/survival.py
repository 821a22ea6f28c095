"""Survival datasets: one Parquet file per IRP chain with every prunable weight's init features and
survival score (columns `layer`, `position`, one float32 column per feature, `survival`), plus JSON
metadata in the Parquet schema under the key `autosparse`. Readable from any Arrow-capable tool."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from .io import atomic_write, read_header

FORMAT = "autosparse.survival"
FORMAT_VERSION = 1
METADATA_KEY = b"autosparse"


class SurvivalFormatError(ValueError):
    """The file is not a survival dataset of a supported format version."""


@dataclass
class SurvivalDataset:
    """Columns as tensors (one row per prunable weight) plus the chain's metadata."""

    layers: list[str]
    layer_index: Tensor  # int64 per row: index into `layers`
    features: dict[str, Tensor]  # name -> float32 per row
    survival: Tensor  # int16 per row, 0..rounds
    metadata: dict[str, Any]

    @property
    def rounds(self) -> int:
        return int(self.metadata["rounds"])

    def __len__(self) -> int:
        return len(self.survival)

    def feature_matrix(self, names: list[str]) -> Tensor:
        missing = [n for n in names if n not in self.features]
        if missing:
            raise SurvivalFormatError(f"survival dataset lacks feature(s) {missing} (has {sorted(self.features)})")
        return torch.stack([self.features[n] for n in names], dim=1)


def write_survival(path: Path, layer_features: dict[str, Tensor], feature_names: list[str],
                   survival: dict[str, Tensor], metadata: dict[str, Any]) -> None:
    """Write atomically: per layer (n, F) feature matrices and survival counts, in layer order."""
    layers = list(layer_features)
    sizes = [layer_features[n].shape[0] for n in layers]
    features = torch.cat([layer_features[n] for n in layers]).numpy()
    columns = {
        "layer": pa.DictionaryArray.from_arrays(np.repeat(np.arange(len(layers), dtype=np.int32), sizes),
                                                pa.array(layers)),
        "position": np.concatenate([np.arange(s, dtype=np.int64) for s in sizes]),
        **{name: features[:, i] for i, name in enumerate(feature_names)},
        "survival": torch.cat([survival[n].flatten() for n in layers]).numpy().astype(np.int16),
    }
    meta = {**metadata, "format": FORMAT, "format_version": FORMAT_VERSION, "layers": layers,
            "layer_shapes": {n: list(survival[n].shape) for n in layers}, "feature_names": list(feature_names)}
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
    meta = read_header(raw, path, SurvivalFormatError, FORMAT, FORMAT_VERSION, "Parquet file",
                       "survival dataset")
    return meta


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
        features=features,
        survival=torch.from_numpy(table.column("survival").to_numpy().astype(np.int16)),
        metadata=meta,
    )
