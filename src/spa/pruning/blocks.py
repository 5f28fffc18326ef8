"""Block pruning (docs/method.md §6): a mask over the p × q
blocks of every adapted matrix, enforced in every forward and in ``fuse()``.

The adapted matrices are the layers a block SPA adapts: every Linear (not the head, not a ViT's
patch embedding) and every pointwise conv the block divides. With SPLoPA they are its layers
(``W' = W + Σ_i B_i ⊗ C_i R_i``, masked as ``mask ⊙ W'``); with fine-tuning ("block fine-pruning",
the baseline) the same layers become :class:`BlockDenseLinear` / :class:`BlockDenseConv2d`, whose
whole weight is trained and masked the same way, so the two compare like with like.

Methods (scores per block, ``S``):
- ``magnitude``: S = Σ |W'| over the block (W' as the last training forward computed it);
- ``movement``: S accumulates ``−Σ W'·∂L/∂(mask ⊙ W')`` over the block at every training step
  (the straight-through gradient of the block's mask, i.e. SGD with learning rate 1 on scores that
  start at 0, as movement pruning's analysis states it); pruned blocks keep moving, so they can
  come back;
- magnitude and movement keep the top fraction of blocks **per matrix**; the fraction follows the
  cubic schedule (:func:`cubic`) from the stage's start to its target density;
- ``soft_movement``: S learned by Adam (lr ``score_lr``) from the same straight-through gradient
  plus an L1 penalty ``λ_t · mean σ(S)`` over all blocks; a block is kept while σ(S) > τ_t, τ_t
  following the cubic schedule from 0 to the stage's threshold and λ_t = λ·τ_t / τ. The density is
  what the penalty leaves.

The kept fraction is a schedule over *stages* (``densities`` [0.5, 0.3, 0.1]: each stage ramps from
the previous density to its own over its training, so one run gives a row per density, like the
channel pipeline's steps); a single stage is the spec's schedule as written. A zero block saves time
only where a block-sparse kernel runs it or whole rows / columns are empty (counted by
:func:`empty_lines`; ``make bench`` section ``blocks`` times the kernels).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from spa.adapters.base import AdapterLayer, ConvAdapter, LinearAdapter
from spa.adapters.block import SPLoPALayer, is_pointwise
from spa.adapters.convert import excluded_names, matches_any
from spa.utils import set_module

log = logging.getLogger(__name__)

BLOCK_METHODS = ("magnitude", "movement", "soft_movement")


class _BlockDense:
    """Fine-pruning's layer: the whole weight is learned (nothing is frozen), masked by blocks."""

    weight: nn.Parameter

    def _learn_weight(self) -> None:
        self.weight.requires_grad_(True)

    def delta(self) -> torch.Tensor:
        return torch.zeros_like(self.weight)

    def fused_weight(self) -> torch.Tensor:
        return self._masked(self.weight)          # no update to add: the weight is what is learned

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [self.weight]


class BlockDenseLinear(_BlockDense, LinearAdapter):
    """A Linear whose weight is trained and block-masked; ``to_module`` gives the plain Linear."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__(layer.weight, layer.bias)
        self._learn_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.fused_weight() if self.training else self._eval_weight(), self.bias)


class BlockDenseConv2d(_BlockDense, ConvAdapter):
    """A pointwise conv whose weight is trained and block-masked; ``to_module`` gives the plain conv."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv)
        self._learn_weight()

    def _train_fused(self) -> bool:
        return True


def _matrix(layer: nn.Module) -> tuple[int, int]:
    return int(layer.weight.shape[0]), int(layer.weight.shape[1])


def attach_blocks(model: nn.Module, block_shape: Sequence[int], dense: bool,
                  exclude: Sequence[str] | None = None, columns: Sequence[str] = ()) -> list[str]:
    """Give every adapted matrix of ``model`` a block mask (all kept) and block scores (zero), in
    place; returns their names. ``dense=True`` (fine-tuning): the eligible plain layers become
    :class:`BlockDenseLinear` / :class:`BlockDenseConv2d` first. ``dense=False`` (SPLoPA): its
    layers, whose blocks must be ``block_shape``.

    ``columns`` ("hybrid"): layers whose name ends with one of these (e.g. ``conv_pwl``, ``mlp.fc2``)
    are masked by whole input columns in strips of q (a mask block of out × q), so what they prune is
    always a channel no layer reads, which :func:`crop` removes; the others by p × q blocks."""
    p, q = (int(v) for v in block_shape)
    skip = excluded_names(model, exclude)
    if dense:
        for name, module in list(model.named_modules()):
            if name and not matches_any(name, skip) and (type(module) is nn.Linear or is_pointwise(module)):
                out, inp = _matrix(module)
                if out % p == 0 and inp % q == 0:
                    set_module(model, name, BlockDenseLinear(module) if isinstance(module, nn.Linear)
                                else BlockDenseConv2d(module))
    names = []
    for name, layer in model.named_modules():
        if isinstance(layer, SPLoPALayer) and tuple(layer.bank.shape[1:3]) != (p, q):
            raise ValueError(f"block pruning with {p} x {q} blocks, but SPLoPA's prototypes are "
                             f"{layer.bank.shape[1]} x {layer.bank.shape[2]}: prune by the prototypes' blocks "
                             f"(pruning.block_shape=null, or the adapter's block_shape)")
        if isinstance(layer, (SPLoPALayer, _BlockDense)):
            out, inp = _matrix(layer)
            if "block_mask" not in layer._buffers:
                w = layer.weight
                shape = (out, q) if _matches(name, columns) else (p, q)
                layer.block_shape = shape
                layer.block_units = (shape[0] // p) * (shape[1] // q)    # p × q blocks per mask entry
                layer.register_buffer("block_mask", torch.ones(out // shape[0], inp // q, device=w.device,
                                                               dtype=w.dtype))
                layer.register_buffer("block_scores", torch.zeros(out // shape[0], inp // q, device=w.device,
                                                                  dtype=torch.float32))
            names.append(name)
    if not names:
        raise ValueError(f"block pruning found no Linear or pointwise conv that {p} x {q} blocks divide; "
                         f"use pruning.block_shape with a size that divides the layers (e.g. [8, 8])")
    if columns and not any(_matches(n, columns) for n in names):
        raise ValueError(f"pruning.columns={list(columns)} names no masked layer (names end with e.g. conv_pwl, "
                         f"mlp.fc2)")
    return names


def _matches(name: str, suffixes: Sequence[str]) -> bool:
    return any(name == c or name.endswith("." + c) for c in suffixes)


def block_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """The layers that carry a block mask, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer) and "block_mask" in m._buffers}


def block_sums(matrix: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Sum of an (out × in[× 1 × 1]) tensor over each p × q block: (out/p) × (in/q)."""
    p, q = block
    m = matrix.reshape(matrix.shape[0], matrix.shape[1])
    return m.reshape(m.shape[0] // p, p, m.shape[1] // q, q).sum(dim=(1, 3))


def cubic(step: int, total: int, initial: float, final: float, initial_warmup: int = 0,
          final_warmup: int = 0) -> float:
    """The cubic schedule: ``initial`` for the first ``initial_warmup`` steps, then
    ``final + (initial − final)·(1 − t)^3`` (t from 0 to 1), then ``final`` for the last
    ``final_warmup`` steps of ``total``."""
    span = total - initial_warmup - final_warmup
    if step < initial_warmup:
        return initial
    if span <= 0 or step >= total - final_warmup:
        return final
    t = (step - initial_warmup) / span
    return final + (initial - final) * (1.0 - t) ** 3


def empty_lines(model: nn.Module) -> dict[str, int]:
    """Whole output rows and input columns whose every block is pruned, summed over the block
    layers: the part of a block-pruned network that cropping could remove."""
    rows = cols = 0
    for layer in block_layers(model).values():
        mask = layer.block_mask
        p, q = layer.block_shape
        rows += int((mask.sum(1) == 0).sum()) * p
        cols += int((mask.sum(0) == 0).sum()) * q
    return {"empty_rows": rows, "empty_cols": cols}


@dataclass
class Stage:
    """One stage of the schedule: from ``start`` to ``target`` (density, or τ for soft movement)."""
    start: float
    target: float
    steps: int
    initial_warmup: int
    final_warmup: int


PAPER_SCORE_LR = 1e-2     # the mask scores' learning rate of the published block experiments


def stage_score_lr(tau: float, steps: int) -> float:
    """Soft movement's learning rate on the block scores when none is given: the paper's 1e-2, or,
    where a stage is too short for it, 2·|logit τ| / steps. Adam moves a score by about its learning
    rate per step, and the scores start at 0 (σ = 0.5): at 1e-2 a block needs |logit τ| / 0.01 steps
    of steady push to fall below τ (220 for τ = 0.1), more than a laptop-scale stage has, so nothing
    would be pruned; at the raised rate a steadily pushed score crosses τ halfway through the stage."""
    logit = abs(math.log(tau / (1.0 - tau))) if 0.0 < tau < 1.0 else 0.0
    return max(PAPER_SCORE_LR, 2.0 * logit / max(1, int(steps)))


class BlockPruner:
    """Masks the block layers of ``model`` by ``method`` during training: call :meth:`begin` before
    a stage's training and :meth:`on_step` after every optimiser step."""

    def __init__(self, model: nn.Module, method: str, score_lr: float | None = None, l1: float = 1.0) -> None:
        if method not in BLOCK_METHODS:
            raise ValueError(f"block pruning method {method!r} is unknown; use one of {BLOCK_METHODS}")
        if score_lr is not None and not score_lr > 0:
            raise ValueError(f"score_lr={score_lr}: use a number > 0, or None (see stage_score_lr)")
        if not l1 >= 0:
            raise ValueError(f"l1={l1}: use a number >= 0")
        self.model, self.method, self.l1 = model, method, float(l1)
        self.score_lr = None if score_lr is None else float(score_lr)
        self.layers = block_layers(model)
        if not self.layers:
            raise ValueError("the model has no block layers: call spa.pruning.blocks.attach_blocks first")
        for layer in self.layers.values():
            layer._block_grad = self._grad
        self.stage: Stage | None = None
        self.done = 0
        self.optimizer: torch.optim.Optimizer | None = None

    @property
    def original_blocks(self) -> int:
        """p × q blocks of the masked matrices (a column strip counts the blocks it covers)."""
        return sum(m.block_mask.numel() * m.block_units for m in self.layers.values())

    @property
    def kept_blocks(self) -> int:
        return int(sum(m.block_mask.sum().item() * m.block_units for m in self.layers.values()))

    @property
    def density(self) -> float:
        return self.kept_blocks / self.original_blocks

    def _grad(self, layer: AdapterLayer, unmasked: torch.Tensor, grad: torch.Tensor) -> None:
        """Called by the layer's backward: the mask's straight-through gradient per block."""
        if self.stage is None:      # training before the first stage (the unpruned part of the run)
            return
        block = layer.block_shape
        with torch.no_grad():
            if self.method == "magnitude":     # the blocks' Frobenius norms, squared (the same order)
                layer.block_scores.copy_(block_sums(unmasked.float().square(), block))
            else:
                mask_grad = block_sums((unmasked * grad).float(), block)
                if self.method == "movement":
                    layer.block_scores.sub_(mask_grad)
                else:
                    scores = self._score_params[id(layer)]
                    scores.grad = mask_grad if scores.grad is None else scores.grad + mask_grad

    def begin(self, stage: Stage) -> None:
        """Start a stage (a fresh score optimiser for soft movement, as the weights' is fresh)."""
        self.stage, self.done = stage, 0
        if self.method == "soft_movement":
            self._score_params = {id(m): nn.Parameter(m.block_scores) for m in self.layers.values()}
            lr = self.score_lr if self.score_lr is not None else stage_score_lr(stage.target, stage.steps)
            self.optimizer = torch.optim.Adam(list(self._score_params.values()), lr=lr)
        self._update_masks(self.current())

    def current(self) -> float:
        s = self.stage
        return cubic(self.done, s.steps, s.start, s.target, s.initial_warmup, s.final_warmup)

    def on_step(self) -> None:
        """After an optimiser step: soft movement's score step, then the masks of the schedule."""
        self.done += 1
        value = self.current()
        if self.method == "soft_movement":
            tau = value
            weight = self.l1 * (tau / self.stage.target if self.stage.target > 0 else 1.0)
            total = self.original_blocks
            for scores in self._score_params.values():
                sig = torch.sigmoid(scores.detach())
                penalty = weight * sig * (1 - sig) / total       # d/dS of λ_t · mean σ(S)
                scores.grad = penalty if scores.grad is None else scores.grad + penalty
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._update_masks(value)

    @torch.no_grad()
    def _update_masks(self, value: float) -> None:
        for layer in self.layers.values():
            scores, mask = layer.block_scores, layer.block_mask
            if self.method == "soft_movement":
                keep = torch.sigmoid(scores) > value
            else:
                n = scores.numel()
                k = max(1, min(n, math.floor(value * n + 0.5)))
                keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
                if k == n:
                    keep[:] = True
                else:
                    keep[torch.topk(scores.flatten(), k).indices] = True
                keep = keep.view_as(scores)
            new = keep.to(mask.dtype)
            if not torch.equal(new, mask):
                mask.copy_(new)

    def stages(self, targets: Sequence[float], steps: int, initial_warmup: float,
               final_warmup: float) -> list[Stage]:
        """The stages of ``targets`` (densities, or τ for soft movement), each ``steps`` long, the
        warm-ups given as fractions of a stage; the first starts from density 1 (τ = 0)."""
        starts = [0.0 if self.method == "soft_movement" else 1.0, *targets[:-1]]
        return [Stage(s, float(t), steps, int(initial_warmup * steps), int(final_warmup * steps))
                for s, t in zip(starts, targets)]


def pruned_parameters(model: nn.Module) -> dict[str, int]:
    """What the pruned blocks take out of a model's counts: ``learned`` (a SPLoPA block position holds
    N learned values, one per prototype; a fine-pruned block its p·q weights) and ``weights`` (the p·q
    deployed weights of each pruned block, zero in the fused model)."""
    learned = weights = 0
    for layer in block_layers(model).values():
        pruned = int(layer.block_mask.numel() - layer.block_mask.sum().item())
        p, q = layer.block_shape
        learned += pruned * (layer.B.shape[0] * layer.block_units if isinstance(layer, SPLoPALayer) else p * q)
        weights += pruned * p * q
    return {"learned": learned, "weights": weights}


def _zero_columns(weight: torch.Tensor) -> torch.Tensor:
    """Per input column of a Linear / ungrouped conv weight: whether all its entries are zero."""
    return weight.detach().abs().sum(dim=[d for d in range(weight.dim()) if d != 1]) == 0


def unread_channels(model: nn.Module, session) -> dict[str, list[int]]:
    """Per group of a plain (fused) model's pruning session: the channels no consumer reads, i.e.
    whose input column is zero in every Linear / ungrouped conv that takes them (a ViT: MLP hidden
    channels whose ``fc2`` column is zero, heads whose ``proj`` columns are). Removing them (and
    what only they feed: their producers' rows, BatchNorm entries, depthwise filters) changes no
    output: the one exact cropping of a block-pruned network."""
    from spa.pruning.groups import _out_fn
    unread: dict[str, list[int]] = {}
    for group in session.groups:
        if session.structure.name == "heads_mlp":
            block = model.get_submodule(group.root.rsplit(".", 2)[0])
            if group.kind == "heads":
                proj = block.attn.proj.weight
                zero = proj.detach().abs().reshape(proj.shape[0], group.size, group.unit).sum(dim=(0, 2)) == 0
            else:
                zero = _zero_columns(block.mlp.fc2.weight)
        else:
            root = model.get_submodule(group.root)
            items = session.context.get_pruning_group(root, _out_fn(root), idxs=list(range(group.size))).items
            consumers = [item for item in items if getattr(item.dep.handler, "__name__", "") == "prune_in_channels"
                         and (isinstance(item.dep.target.module, nn.Linear) or
                              (isinstance(item.dep.target.module, nn.Conv2d) and item.dep.target.module.groups == 1))]
            if not consumers:
                continue
            zero = torch.ones(group.size, dtype=torch.bool)
            for item in consumers:
                zero &= _zero_columns(item.dep.target.module.weight).cpu()[torch.tensor(item.idxs)]
        idxs = [int(i) for i in torch.nonzero(zero.cpu()).flatten()]
        if idxs and len(idxs) < group.size:          # a group keeps at least one channel
            unread[group.root] = idxs
    return unread


def crop(model: nn.Module, input_size: tuple[int, int]) -> dict[str, int]:
    """Remove, in place, the channels of a plain block-pruned model that no layer reads
    (:func:`unread_channels`); returns how many producer filters went (``cropped_filters``)."""
    from spa.pruning.session import PruningSession, example_input
    session = PruningSession(model, example_input(model, input_size))
    before = session.kept_filters
    selection = unread_channels(model, session)
    if selection:
        session.apply(1, selection)
    return {"cropped_filters": before - session.kept_filters, "filters": before}
