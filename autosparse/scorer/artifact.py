"""The saved AutoS scorer: safetensors weights with a JSON header, usable as a pruning method."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..config import ScorerConfig
from ..criteria import ScoringContext, Scores
from ..errors import UserError
from ..features import FEATURES, compute_features
from ..masks import prunable_parameters
from ..methods import LEARNED_FILES
from ..storage import load_network_file, save_network_file
from .fit import FitResult, Normalization, predict
from .networks import SCORER_NETWORKS

FORMAT = "autosparse.scorer"
FORMAT_VERSION = 2


class ScorerFormatError(UserError):
    """The file is not a loadable AutoS scorer for this version of autosparse."""


@dataclass
class Scorer:
    """A fitted scorer (a `ScoringPlugin`): computes the target model's init features and predicts survival
    scores."""

    network: nn.Module
    normalization: Normalization
    header: dict[str, Any]

    @property
    def feature_names(self) -> list[str]:
        return [f["name"] for f in self.header["features"]]

    @property
    def default_steps(self) -> int:
        """How many re-scoring steps `autosparse.prune` uses with this scorer unless told otherwise."""
        return int(self.header.get("steps", 1))

    @property
    def default_step_batch_size(self) -> Optional[int]:
        """Examples per step `autosparse.prune` scores on unless told otherwise (None: the whole batch)."""
        return self.header.get("step_batch_size")

    def __call__(self, context: ScoringContext) -> Scores:
        """Score every prunable weight of `context.model` still kept by `context.mask` (a pruning method for
        `autosparse.prune`) on the model's device; pruned weights score -inf. Scores come back on the CPU."""
        features = compute_features(context.model, context.batches, self.feature_names, context.input_shape,
                                    context.mask)
        parameters = prunable_parameters(context.model)
        self.network.to(next(iter(parameters.values())).device)
        scores = {}
        for layer, matrix in features.items():
            values = torch.full((len(matrix),), -math.inf)
            kept = context.mask[layer].flatten().cpu() if context.mask is not None else slice(None)
            values[kept] = predict(self.network, self.normalization, matrix[kept])
            scores[layer] = values.view(parameters[layer].shape)
        return scores

    def save(self, path: str | os.PathLike) -> None:
        save_network_file(path, self.network.state_dict(), self.normalization.mean, self.normalization.std,
                          self.header, FORMAT, FORMAT_VERSION)


def scorer_from_fit(result: FitResult, config: ScorerConfig, extra: dict[str, Any]) -> Scorer:
    header = {
        "network": config.network, "hidden": list(config.hidden), "target": config.target,
        "steps": config.prune_steps, "step_batch_size": config.prune_step_batch_size,
        "features": [{"name": n, "version": FEATURES.get(n).version} for n in config.features],
        "normalization": {"mean": result.normalization.mean.tolist(), "std": result.normalization.std.tolist()},
        "metrics": result.best, "epochs": result.epochs, "train_rows": result.train_rows,
        "validation_rows": result.validation_rows, **extra,
    }
    return Scorer(result.network, result.normalization, header)


@LEARNED_FILES.register("scorer")
def load_scorer(path: str | os.PathLike) -> Scorer:
    """Load and validate a scorer file; clear errors for foreign, truncated or incompatible files."""
    header, state, mean, std = load_network_file(path, ScorerFormatError, FORMAT, FORMAT_VERSION, "scorer")
    for item in header["features"]:
        if item["name"] not in FEATURES:
            raise ScorerFormatError(f"{str(path)!r} uses feature {item['name']!r}, unknown to this autosparse")
        if FEATURES.get(item["name"]).version != item["version"]:
            raise ScorerFormatError(f"{str(path)!r} uses feature {item['name']!r} version {item['version']}, "
                                    f"this autosparse computes version {FEATURES.get(item['name']).version}")
    if header.get("network") not in SCORER_NETWORKS:
        raise ScorerFormatError(f"{str(path)!r} uses scorer network {header.get('network')!r}, "
                                "unknown to this autosparse")
    network = SCORER_NETWORKS.get(header["network"])(len(header["features"]), header["hidden"])
    network.load_state_dict(state)
    network.eval()
    return Scorer(network, Normalization(mean, std), header)
