"""Block-sparse deployment: a pruned Linear weight in dense, BSR or CSR form, timed on the
device to pick the fastest (``fastest_form``), and ``deploy_sparse`` that swaps each layer of a
fused block-pruned model for its fastest form. The speed benchmarks (``spa.bench.sparse``) use the
same forms."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from spa.adapters.base import expand_blocks
from spa.pruning.blocks import block_sums
from spa.utils import set_module, timed

SPARSE_LAYOUTS = ("bsr", "csr")

# y = x W^T with a sparse W, each as torch offers it (W: the sparse weight, x: tokens × in). Which
# are supported and which is fastest depends on the layout, the device and the torch build: every
# one is tried and the fastest supported one stands for its layout. The transposed products return
# a (tokens × out) view of an (out × tokens) result, usable as it is by the next op.
SPARSE_PRODUCTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "F.linear(x, W)": lambda w, x: F.linear(x, w),
    "torch.sparse.mm(W, x.T).T": lambda w, x: torch.sparse.mm(w, x.T).T,
}


FORMS = ("dense", "bsr", "csr")


def sparse_layout(weight: torch.Tensor, block: Sequence[int], layout: str) -> torch.Tensor:
    """``weight`` in torch's BSR layout with ``block`` blocks (zero blocks dropped) or CSR (zeros
    dropped), without torch's "support is in beta" warning."""
    if layout not in SPARSE_LAYOUTS:
        raise ValueError(f"sparse layout {layout!r}: use one of {SPARSE_LAYOUTS}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        return weight.to_sparse_bsr(tuple(block)) if layout == "bsr" else weight.to_sparse_csr()


class SparseLinear(nn.Module):
    """Inference-only ``y = x Wᵀ + b`` with W in torch's BSR or CSR layout (``torch.sparse.mm``):
    what :func:`deploy_sparse` puts where a sparse kernel is faster than the dense weight."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, form: str, block: Sequence[int]) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.form = form
        self.register_buffer("sparse", sparse_layout(weight.detach(), block, form), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sparse.mm(self.sparse, x.reshape(-1, self.in_features).T).T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, form={self.form}"


def block_mask(rows: int, cols: int, density: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random boolean mask over ``rows × cols`` blocks with exactly ``round(density · rows · cols)``
    blocks kept (a random subset, from ``generator``)."""
    kept = round(density * rows * cols)
    mask = torch.zeros(rows * cols, dtype=torch.bool)
    mask[torch.randperm(rows * cols, generator=generator)[:kept]] = True
    return mask.view(rows, cols)


def block_sparse_weight(out: int, inp: int, block: tuple[int, int], density: float,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, mask)``: a seeded random ``out × in`` float32 weight (std 1/√in) with the blocks
    outside a :func:`block_mask` of ``density`` zeroed; ``mask`` is over the ``out/p × in/q`` blocks."""
    p, q = block
    if out % p or inp % q:
        raise ValueError(f"a {out} x {inp} weight is not divisible into {p} x {q} blocks")
    gen = torch.Generator().manual_seed(seed)
    mask = block_mask(out // p, inp // q, density, gen)
    weight = torch.randn(out, inp, generator=gen) / inp ** 0.5
    return weight * expand_blocks(mask, (p, q)), mask


def sparse_forms(weight: torch.Tensor, block: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The weight as deployed in each of :data:`FORMS`: dense (zeros included), BSR with ``block``
    blocks (zero blocks dropped) and CSR (zeros dropped)."""
    return {"dense": weight, **{layout: sparse_layout(weight, block, layout) for layout in SPARSE_LAYOUTS}}


def _sparse_tolerance(device: torch.device) -> dict[str, float]:
    return {"rtol": 1e-3, "atol": 1e-3} if device.type == "cpu" else {"rtol": 2e-2, "atol": 2e-2}


def form_timings(weight: torch.Tensor, block: tuple[int, int], x: torch.Tensor, repeats: int = 5,
                 warmup: int = 1) -> dict[str, Any]:
    """Median seconds of ``y = x @ weight.T`` in each form of :func:`sparse_forms`, all timed
    interleaved (without autograd): dense with ``F.linear``; BSR and CSR with every product of
    :data:`SPARSE_PRODUCTS`, each checked against the dense result first (``assert_close``, loose
    tolerance). A product that raises is recorded as unsupported.

    Returns ``dense_s``, ``bsr_s``, ``csr_s`` (the fastest supported product of that layout; None
    if none is), ``bsr_product`` / ``csr_product`` (its name), ``candidates_s`` ({"bsr: <product>":
    seconds or None}), ``unsupported`` ({"bsr: <product>": error}), ``bsr_blocks`` (the blocks BSR
    stores) and ``deploy`` (:func:`deploy_form` of the three)."""
    weight, x = weight.to(x.device), x.detach()
    forms = sparse_forms(weight, block)
    fns: dict[str, Callable[[], Any]] = {"dense": lambda: F.linear(x, weight)}
    unsupported: dict[str, str] = {}
    # no_grad, not inference_mode: F.linear on a sparse weight fails under inference_mode in torch
    # 2.14 ("Cannot set version_counter for inference tensor")
    with torch.no_grad():
        reference = F.linear(x, weight)
        for layout in ("bsr", "csr"):
            for name, product in SPARSE_PRODUCTS.items():
                key = f"{layout}: {name}"
                try:
                    got = product(forms[layout], x)
                except (RuntimeError, NotImplementedError, TypeError, ValueError) as err:
                    unsupported[key] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
                    continue
                torch.testing.assert_close(got, reference, **_sparse_tolerance(x.device),
                                           msg=lambda m, key=key: f"{key} differs from the dense product: {m}")
                fns[key] = lambda product=product, w=forms[layout]: product(w, x)
        seconds = timed(fns, x.device, repeats, warmup)
    row: dict[str, Any] = {"dense_s": seconds["dense"]}
    for layout in ("bsr", "csr"):
        times = {k.split(": ", 1)[1]: s for k, s in seconds.items() if k.startswith(layout + ":")}
        best = min(times, key=times.__getitem__) if times else None
        row[f"{layout}_s"] = times[best] if best else None
        row[f"{layout}_product"] = best
    row["candidates_s"] = {f"{layout}: {name}": seconds.get(f"{layout}: {name}")
                           for layout in ("bsr", "csr") for name in SPARSE_PRODUCTS}
    row["unsupported"] = unsupported
    row["bsr_blocks"] = int(forms["bsr"].values().shape[0])
    row["deploy"] = deploy_form(row)
    return row


def deploy_form(seconds: dict[str, Any]) -> str:
    """The fastest of :data:`FORMS` given ``{"dense_s": .., "bsr_s": .., "csr_s": ..}`` (None: not
    supported); dense on a tie."""
    supported = {form: seconds[f"{form}_s"] for form in FORMS if seconds.get(f"{form}_s") is not None}
    return min(supported, key=supported.__getitem__)


def fastest_form(weight: torch.Tensor, block: tuple[int, int], x: torch.Tensor, repeats: int = 5,
                 warmup: int = 1) -> str:
    """Which form to deploy a (block-)sparse Linear weight in: 'dense', 'bsr' or 'csr', whichever
    computes ``x @ weight.T`` fastest here (:func:`form_timings` on ``x``, a representative
    input: tokens × in, on the target device)."""
    return form_timings(weight, block, x, repeats, warmup)["deploy"]


def deploy_sparse(model: nn.Module, example_input: torch.Tensor, block: Sequence[int] = (32, 32),
                  choose: Callable[..., str] | None = None) -> dict[str, str]:
    """Deploy each Linear of a plain (fused) block-pruned model in its fastest form, in place: the
    dense weight, or BSR / CSR where ``choose(weight, block, x)`` (default
    :func:`fastest_form`, timed on the layer's own input for ``example_input``) says
    a sparse kernel is faster on this device. Layers with no pruned block, the head and layers the
    block does not divide stay dense. Returns {layer: form}."""
    from spa.adapters.convert import head_names
    choose = choose or fastest_form
    p, q = (int(v) for v in block)
    heads = set(head_names(model))
    candidates = {n: m for n, m in model.named_modules() if type(m) is nn.Linear and n not in heads
                  and m.weight.shape[0] % p == 0 and m.weight.shape[1] % q == 0
                  and bool((block_sums(m.weight.detach().abs(), (p, q)) == 0).any())}
    inputs: dict[str, torch.Tensor] = {}
    def keep_input(name: str):
        def hook(module, args, output) -> None:       # returns None: the output stays the module's
            inputs.setdefault(name, args[0].detach())
        return hook
    hooks = [m.register_forward_hook(keep_input(n)) for n, m in candidates.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    forms = {}
    for name, layer in candidates.items():
        x = inputs[name].reshape(-1, layer.in_features)
        forms[name] = choose(layer.weight.detach(), (p, q), x)
        if forms[name] != "dense":
            set_module(model, name, SparseLinear(layer.weight, layer.bias, forms[name], (p, q)))
    return forms
