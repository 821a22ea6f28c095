"""Pruning-at-initialization criteria: each scores every prunable weight of a (masked) network.

A criterion sees the network as pruned so far (`ScoringContext.model` is a private copy whose pruned
weights are zero) and returns one score per weight, higher = keep. Pruned weights are excluded by the
caller, so a criterion never needs to know the mask; iterating a criterion re-scores the masked network
(see `autosparse.pruning`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .errors import UserError
from .masks import Mask, prunable_parameters
from .registry import Registry

Batch = tuple[Tensor, Tensor]
Scores = dict[str, Tensor]
GRASP_TEMPERATURE = 200.0
SYNFLOW_ROUNDS = 100
ITERATIVE_SNIP_STEPS = 20


class ScoringError(UserError):
    """A criterion cannot score with what it was given (missing data, input shape, mismatched batch)."""


@dataclass(frozen=True)
class ScoringContext:
    """What a criterion may use. `model` is a private copy at initialization with the weights `mask`
    prunes already zero (criteria may run it, never change its weights; `mask` None means dense);
    `batches` are model-ready (inputs, targets) pairs or None."""

    model: nn.Module
    batches: Optional[Sequence[Batch]]
    seed: int = 0
    input_shape: Optional[tuple[int, ...]] = None
    mask: Optional[Mask] = None

    def require_batches(self, method: str) -> Sequence[Batch]:
        if not self.batches:
            raise ScoringError(f"method {method!r} needs data: pass data=(inputs, targets)")
        return self.batches

    def sample_input_shape(self) -> tuple[int, ...]:
        if self.batches:
            return tuple(self.batches[0][0].shape[1:])
        if self.input_shape is None:
            raise ScoringError("a data-free criterion needs input_shape= (or data) to know the input size")
        return tuple(self.input_shape)


@runtime_checkable
class ScoringPlugin(Protocol):
    """What a scoring plug-in of `autosparse.prune` offers (a registered `Criterion`, a fitted AutoS `Scorer`):
    scores for a (masked) network, and how it prunes unless told otherwise. A plain function scoring a
    context is a plug-in of one step on the whole batch."""

    @property
    def default_steps(self) -> int:
        """Re-scoring steps."""

    @property
    def default_step_batch_size(self) -> Optional[int]:
        """Examples each step scores on, in turn (None: all of them)."""

    def __call__(self, context: ScoringContext) -> Scores:
        """One score per prunable weight, higher = keep."""


@dataclass(frozen=True)
class Criterion:
    """A registered scoring rule (a `ScoringPlugin`); `default_steps` is how many re-scoring steps its method
    uses, each on the whole batch."""

    name: str
    score: Callable[[ScoringContext], Scores]
    needs_data: bool
    default_steps: int = 1
    constants: Optional[dict] = None
    default_step_batch_size: Optional[int] = None

    def __call__(self, context: ScoringContext) -> Scores:
        if self.needs_data:
            context.require_batches(self.name)
        return self.score(context)


CRITERIA: Registry[Criterion] = Registry("pruning criterion")


def criterion(name: str, needs_data: bool, default_steps: int = 1, constants: Optional[dict] = None) -> Callable:
    """Register a scoring function as a criterion (`constants` enter the hashes of stages that use it)."""
    def register(score: Callable[[ScoringContext], Scores]) -> Criterion:
        return CRITERIA.register(name)(Criterion(name, score, needs_data, default_steps, constants))

    return register


def as_batches(data: object) -> Optional[list[Batch]]:
    """Accept None, one (inputs, targets) pair, or an iterable of such pairs."""
    if data is None:
        return None
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        return [data]
    if isinstance(data, Iterable):
        batches = list(data)
        if batches and all(isinstance(b, (tuple, list)) and len(b) == 2 for b in batches):
            return [(b[0], b[1]) for b in batches]
    raise ScoringError("data must be an (inputs, targets) pair or an iterable of such pairs")


def forward(model: nn.Module, inputs: Tensor) -> Tensor:
    """Run the model, turning a shape mismatch into a ScoringError that names the batch shape."""
    try:
        return model(inputs)
    except RuntimeError as error:
        reason = str(error).splitlines()[0]
        raise ScoringError(f"data of shape {tuple(inputs.shape)} does not fit the model: {reason}") from None


@contextmanager
def training_mode_without_side_effects(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in train mode (batch statistics, as SNIP and GraSP do), then restore its modes and
    buffers (BatchNorm running statistics), so scoring leaves no trace on it."""
    modes = {module: module.training for module in model.modules()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.train()
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])


def loss_gradients(model: nn.Module, batches: Sequence[Batch], temperature: float = 1.0) -> Scores:
    """Mean cross-entropy gradient over the batches w.r.t. each prunable weight (in train mode)."""
    params = prunable_parameters(model)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    with training_mode_without_side_effects(model):
        for inputs, targets in batches:
            loss = F.cross_entropy(forward(model, inputs) / temperature, targets)
            for name, grad in zip(params, torch.autograd.grad(loss, list(params.values()))):
                total[name] += grad / len(batches)
    return total


def hessian_gradient_product(model: nn.Module, batches: Sequence[Batch], temperature: float) -> Scores:
    """H g for the (temperature-scaled) mean loss, with g its gradient, per prunable weight."""
    params = prunable_parameters(model)
    gradient = loss_gradients(model, batches, temperature)
    product = {n: torch.zeros_like(p) for n, p in params.items()}
    with training_mode_without_side_effects(model):
        for inputs, targets in batches:
            loss = F.cross_entropy(forward(model, inputs) / temperature, targets)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            inner = sum((g * gradient[n]).sum() for n, g in zip(params, grads))
            for name, hg in zip(params, torch.autograd.grad(inner, list(params.values()))):
                product[name] += hg / len(batches)
    return product


def synflow_scores(model: nn.Module, input_shape: tuple[int, ...]) -> Scores:
    """One SynFlow pass: R = sum of the outputs of the network with every float tensor replaced by its
    absolute value (float64, eval mode) on an all-ones input; score = w * dR/dw. The model is not copied
    or changed: the pass runs through `functional_call` on absolute-valued tensors."""
    params = prunable_parameters(model)
    state = {name: tensor.detach().abs().double() if tensor.is_floating_point() else tensor
             for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    for name in params:
        state[name].requires_grad_(True)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        device = next(iter(params.values())).device
        output = functional_call(model, state, (torch.ones((1, *input_shape), dtype=torch.float64, device=device),))
    except RuntimeError as error:
        raise ScoringError(f"input shape {tuple(input_shape)} does not fit the model: "
                           f"{str(error).splitlines()[0]}") from None
    finally:
        for module, mode in modes.items():
            module.training = mode
    grads = torch.autograd.grad(output.sum(), [state[n] for n in params])
    return {n: (state[n] * g).detach() for n, g in zip(params, grads)}


@criterion("random", needs_data=False)
def random_scores(context: ScoringContext) -> Scores:
    """I.i.d. uniform scores from the seed (the same at every step)."""
    generator = torch.Generator().manual_seed(context.seed)
    return {n: torch.rand(p.shape, generator=generator) for n, p in prunable_parameters(context.model).items()}


@criterion("magnitude", needs_data=False)
def magnitude_scores(context: ScoringContext) -> Scores:
    """|w| at initialization."""
    return {n: p.detach().abs() for n, p in prunable_parameters(context.model).items()}


@criterion("snip", needs_data=True)
def snip_scores(context: ScoringContext) -> Scores:
    """SNIP (Lee et al. 2019): |w * dL/dw| of the (masked) network on the given batches."""
    grads = loss_gradients(context.model, context.batches)
    return {n: (p * grads[n]).detach().abs() for n, p in prunable_parameters(context.model).items()}


@criterion("iter_snip", needs_data=True, default_steps=ITERATIVE_SNIP_STEPS)
def iterative_snip_scores(context: ScoringContext) -> Scores:
    """Iterative SNIP (de Jorge et al. 2021, "Progressive Skeletonization: Trimming more fat from a network
    at initialization", ICLR): SNIP's |w * dL/dw| re-scored on the network pruned so far, in 20 steps of an
    exponential schedule, without resurrecting pruned weights (their FORCE variant would; not implemented).
    The same as `snip/iter20`."""
    return snip_scores(context)


@criterion("grasp", needs_data=True, constants={"temperature": GRASP_TEMPERATURE})
def grasp_scores(context: ScoringContext) -> Scores:
    """GraSP (Wang et al. 2020): w * Hg with logits / 200; keeping the highest preserves gradient flow."""
    product = hessian_gradient_product(context.model, context.batches, GRASP_TEMPERATURE)
    return {n: (p * product[n]).detach() for n, p in prunable_parameters(context.model).items()}


@criterion("synflow", needs_data=False, default_steps=SYNFLOW_ROUNDS)
def synflow_criterion(context: ScoringContext) -> Scores:
    """SynFlow (Tanaka et al. 2020): data-free synaptic flow of the masked network. Its method re-scores
    in 100 steps on an exponential density schedule (the paper's setting), which avoids layer collapse."""
    return synflow_scores(context.model, context.sample_input_shape())
