"""autosparse: learned pruning at initialization (AutoSparse) on Ray and MLflow.

The core (this namespace) is pure PyTorch:

    mask = autosparse.prune(model, sparsity=0.95, method="snip", data=(x, y))
    mask = autosparse.prune(model, 0.98, "snip", (x, y), steps=20, allocation="synflow")
    autosparse.apply_mask(model, mask, init="calibrated", inputs=x)  # kept weights: the dense net's signal
"""
from .criteria import CRITERIA
from .data import DATASETS, load_dataset
from .errors import UserError
from .layer_allocation import SHAPE_ALLOCATIONS, top_k_within_layers
from .learned_allocation import load_allocator  # importing it registers its loader in methods.LEARNED_FILES
from .masks import Mask, apply_mask, prunable_parameters
from .methods import Method
from .models import MODELS, build_model
from .pruning import prune, score
from .scorer import load_scorer  # likewise
from .sparse_init import SPARSE_INITS, signal_at_init

__version__ = "0.2.0"  # the one version string (pyproject.toml reads it)

__all__ = ["CRITERIA", "DATASETS", "MODELS", "Mask", "Method", "SHAPE_ALLOCATIONS", "SPARSE_INITS", "UserError", "apply_mask",
           "build_model", "load_allocator", "load_dataset", "load_scorer", "prunable_parameters", "prune", "score",
           "signal_at_init", "top_k_within_layers", "__version__"]
