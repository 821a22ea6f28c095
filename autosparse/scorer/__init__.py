"""AutoS: a learned scorer from init features to IRP survival, usable as a pruning method."""
from .artifact import Scorer, ScorerFormatError, load_scorer, scorer_from_fit
from .fit import FitResult, fit_scorer
from .networks import SCORER_NETWORKS

__all__ = ["FitResult", "SCORER_NETWORKS", "Scorer", "ScorerFormatError", "fit_scorer", "load_scorer", "scorer_from_fit"]
