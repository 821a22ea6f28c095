"""autosparse: learned pruning at initialization (AutoSparse) on Ray and MLflow.

The core (this namespace) is pure PyTorch:

    mask = autosparse.prune(model, sparsity=0.95, method="snip", data=(x, y))
    autosparse.apply_mask(model, mask)
"""
from .criteria import CRITERIA
from .data import DATASETS, load_dataset
from .masks import Mask, apply_mask, prunable_parameters, select_top_k
from .models import MODELS, build_model
from .pruning import prune, score

__version__ = "0.1.0"


def load_scorer(path):
    """Load a saved AutoS scorer; usable as `method=` in `prune`."""
    from .scorer.artifact import load_scorer as load

    return load(path)


__all__ = ["CRITERIA", "DATASETS", "MODELS", "Mask", "apply_mask", "build_model", "load_dataset", "load_scorer",
           "prunable_parameters", "prune", "score", "select_top_k", "__version__"]
