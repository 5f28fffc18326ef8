"""Speed measurements behind ``scripts/bench.py``: real latency of the networks our pruning leaves,
next to their MACs; the cost of adapters at inference and in training (ours, and the authors'
``structured-pruning-adapters`` library on the same layers); the cost of scoring and pruning.

Every figure is a median over repeated runs after warm-up, and is also given as a ratio to a
baseline measured in the same call. Models compared with each other are timed interleaved (one
pass of each in turn, per repeat), so a slow drift of the machine hits them alike.
"""
from __future__ import annotations

import copy
import ctypes
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from spa.adapters import adapter_layers, apply_adapter, fuse
from spa.adapters.layers import expand_blocks
from spa.models import create_backbone
from spa.pruning.blocks import SPARSE_LAYOUTS, sparse_layout
from spa.pruning.importance import CRITERIA, group_scores
from spa.pruning.lrp import input_bounds
from spa.pruning.schedule import Plan, select_channels
from spa.pruning.session import PruningSession, count_macs
from spa.reporting.params import BackboneSpec, weight_pruned
from spa.training.engine import apply_channels_last, autocast_context

SEED = 0    # the random weights every benchmark model starts from (so runs prune the same channels)


@dataclass(frozen=True)
class NetSpec(BackboneSpec):
    """A backbone (10 classes unless said) and the input size it is measured at."""
    num_classes: int = 10
    size: int = 224


RESNET50 = NetSpec("ResNet-50, 224 px", "resnet50", size=224)
RESNET50_CIFAR = NetSpec("ResNet-50, CIFAR stem, 32 px", "resnet50", cifar_stem=True, size=32)
DEIT_S = NetSpec("DeiT-S/16, 224 px", "deit_small_patch16_224", size=224)
LITE0 = NetSpec("EfficientNet-Lite0, 224 px", "tf_efficientnet_lite0", size=224)
MOBILENETV2 = NetSpec("MobileNetV2, 224 px", "mobilenetv2_100", size=224)
NETS = (RESNET50, RESNET50_CIFAR, DEIT_S, LITE0, MOBILENETV2)
# the inference target (latency ratio within TARGET x the MACs ratio at 30 % density) is checked on these
INFERENCE_TARGETS = (RESNET50.label, LITE0.label, MOBILENETV2.label)
DENSITIES = (1.0, 0.7, 0.5, 0.3, 0.1)
# (name, adapter kind, options) of the adapter comparisons
ADAPTERS = (("splora_r8", "splora", {"rank": 8}), ("splora_r32", "splora", {"rank": 32}), ("sppara", "sppara", {}))
AUTHORS_LIBRARY = "structured-pruning-adapters"


def last_item(items: Iterable[Any]) -> Any:
    """The last item of an iterable (a generator of pruned versions: only the last one is kept)."""
    return deque(items, maxlen=1)[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int = 10,
          warmup: int = 2) -> dict[str, float]:
    """Median seconds of each callable, run interleaved: ``warmup`` rounds, then ``repeats`` rounds
    of one call each, in turn (the order reversed every other round)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in (list(fns.items()) if i % 2 == 0 else list(fns.items())[::-1]):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _forward(model: nn.Module, x: torch.Tensor, amp: bool) -> Callable[[], Any]:
    model.eval()

    def run():
        with torch.no_grad(), autocast_context(x.device, amp):
            model(x)
    return run


def latency(model: nn.Module, x: torch.Tensor, repeats: int = 10, warmup: int = 2, amp: bool = False) -> float:
    """Median seconds of one forward pass of ``x`` in eval mode, after ``warmup`` passes."""
    return timed({"model": _forward(model, x, amp)}, x.device, repeats, warmup)["model"]


def _input(spec: NetSpec, batch: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(SEED)).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """The run's layout: :func:`apply_channels_last` where asked (its CPU exceptions included)."""
    return apply_channels_last(model, next(model.parameters()).device) if channels_last else model


# ----------------------------------------------------------------------------- pruned networks
def pruned_versions(spec: NetSpec, densities=DENSITIES, adapter: str = "finetune", adapter_options: dict | None = None,
                    device: torch.device | None = None, round_to: int = 1,
                    tolerance: float = 0.01) -> Iterator[tuple[float, nn.Module, PruningSession]]:
    """Yield ``(density, model, session)`` at each density of ``densities`` as :func:`weight_pruned`
    prunes ``spec`` in 10 % steps (the same groups and budgets as a run; seeded random weights, so
    which channels go differs from a trained network, but not how many). A density is taken at
    the first step within ``tolerance`` of it; one the schedule cannot reach gets the last model."""
    wanted = sorted(densities, reverse=True)
    session = model = None
    for _, session, model in weight_pruned(spec, adapter, adapter_options, 0.1, min(wanted), (spec.size, spec.size),
                                           device, round_to=round_to, seed=SEED):
        while wanted and session.density <= wanted[0] + tolerance:
            wanted.pop(0)
            yield round(session.density, 3), model, session
    for _ in wanted:
        yield round(session.density, 3), model, session


def masked_copy(model: nn.Module, masked: nn.Module) -> nn.Module:
    """What the paper's code ran: the dense network with the pruned filters' weights zeroed (same
    shapes, same cost): ``masked`` (a dense network) with, layer by layer, as many conv/linear
    output rows zeroed as ``model`` removed."""
    widths = {n: m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    with torch.no_grad():
        for name, module in masked.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and name in widths:
                module.weight[widths[name]:] = 0
    return masked


def _dense(spec: NetSpec, device: torch.device) -> nn.Module:
    torch.manual_seed(SEED)
    model, _ = create_backbone(spec.timm_name, spec.num_classes, cifar_stem=spec.cifar_stem,
                               kwargs=dict(spec.kwargs))
    return model.to(device)


def inference_vs_density(spec: NetSpec, batch: int, device: torch.device, repeats: int, warmup: int,
                         amp: bool = False, channels_last: bool = False, round_to: int = 8,
                         round_density: float = 0.3) -> list[dict[str, Any]]:
    """Latency / throughput / MACs of ``spec`` at each density, with ratios to the dense network;
    the network pruned with ``pruning.round_to=round_to`` at ``round_density``; and the masked-only
    network (dense shapes, zeroed filters) for contrast. All of them timed interleaved."""
    x = _input(spec, batch, device, channels_last)
    size = (spec.size, spec.size)
    rows: list[dict[str, Any]] = []
    models: list[nn.Module] = []

    def add(variant: str, density: float, model: nn.Module, macs: int | None = None) -> None:
        model = _layout(copy.deepcopy(model), channels_last)
        rows.append({"variant": variant, "density": density,
                     "macs": count_macs(model, size, device) if macs is None else macs})
        models.append(model)
    for density, model, _ in pruned_versions(spec, device=device):
        add("pruned (channels removed)", density, model)
    last = model
    if round_to > 1 and not spec.timm_name.startswith(("deit", "vit")):
        density, model, _ = last_item(pruned_versions(spec, (1.0, round_density), device=device, round_to=round_to))
        add(f"pruned, widths rounded to multiples of {round_to}", density, model)
    # the masked-only network at the lowest density: dense shapes, hence the dense cost
    add("masked only (paper's code)", rows[len(DENSITIES) - 1]["density"], masked_copy(last, _dense(spec, device)),
        rows[0]["macs"])
    seconds = timed({i: _forward(m, x, amp) for i, m in enumerate(models)}, device, repeats, warmup)
    for i, row in enumerate(rows):
        row["latency_s"] = seconds[i]
    dense_macs, dense_latency = rows[0]["macs"], rows[0]["latency_s"]
    for row in rows:
        row.update(network=spec.label, batch=batch, throughput_img_s=batch / row["latency_s"],
                   macs_ratio=row["macs"] / dense_macs, latency_ratio=row["latency_s"] / dense_latency)
        row["latency_over_macs_ratio"] = row["latency_ratio"] / row["macs_ratio"]
    return rows


# ----------------------------------------------------------------------------- adapters at inference
def _applies(kind: str, spec: NetSpec) -> bool:
    """SPPaRA adapts convolutions only: not a ViT/DeiT."""
    return not (kind == "sppara" and spec.timm_name.startswith(("deit", "vit")))


def adapter_overhead(spec: NetSpec, density: float, batch: int, device: torch.device, repeats: int, warmup: int,
                     amp: bool = False, channels_last: bool = False, adapters=ADAPTERS) -> list[dict[str, Any]]:
    """Per adapter: the pruned adapter model in eval mode (fused weight cached) and after ``fuse()``,
    against the plain pruned model of the same shape (a fine-tuning backbone with the same pruning
    history replayed), timed interleaved."""
    x = _input(spec, batch, device, channels_last)
    rows: list[dict[str, Any]] = []
    for name, kind, options in adapters:
        if not _applies(kind, spec):
            continue
        d, model, session = last_item(pruned_versions(spec, (1.0, density), kind, options, device))
        plain = _dense(spec, device).eval()
        PruningSession(plain, torch.zeros(1, 3, spec.size, spec.size, device=device)).replay(session.history)
        fused = fuse(model).eval()
        models = {"plain pruned model (baseline)": plain, "adapter model, eval mode": model,
                  "adapter model after fuse()": fused}
        seconds = timed({v: _forward(_layout(m, channels_last), x, amp) for v, m in models.items()}, device,
                        repeats, warmup)
        base = seconds["plain pruned model (baseline)"]
        for variant, s in seconds.items():
            rows.append({"network": spec.label, "adapter": name, "density": d, "variant": variant, "batch": batch,
                         "latency_s": s, "ratio_to_plain": s / base})
    return rows


# ----------------------------------------------------------------------------- training step
def authors_available() -> bool:
    try:
        import sp_adapters  # noqa: F401
    except ImportError:
        return False
    return True


def _authors_layer(layer: nn.Module, kind: str, options: dict) -> nn.Module:
    import sp_adapters
    if kind == "sppara":
        return sp_adapters.SPPaRAConv2d.from_module(layer, init_range=options.get("init_range", 1e-4))
    cls = sp_adapters.SPLoRAConv2d if isinstance(layer, nn.Conv2d) else sp_adapters.SPLoRALinear
    return cls.from_module(layer, rank=options["rank"], init_range=options.get("init_range", 1e-4))


def authors_model(ours: nn.Module, fresh: nn.Module, kind: str, options: dict) -> nn.Module:
    """``fresh`` (the backbone ``ours`` was converted from, same weights) with the authors' library
    layers (``sp_adapters``) on exactly the layers ``ours`` adapts, and the same parameters trainable."""
    from spa.adapters.convert import _set_module

    for name in adapter_layers(ours):
        _set_module(fresh, name, _authors_layer(fresh.get_submodule(name), kind, options))
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    for n, p in fresh.named_parameters():
        p.requires_grad_(n in trainable or ".adapter" in n)
    return fresh


def _trim_malloc() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Bytes by which one call of ``fn`` raises memory use at its peak: allocated CUDA memory on a
    GPU; on Linux CPUs the process's peak resident set (reset through /proc/self/clear_refs, after
    handing freed heap back with malloc_trim). None where neither can be read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _trim_malloc()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    before = _proc_kib("VmRSS")
    fn()
    peak = _proc_kib("VmHWM")
    return None if before is None or peak is None else 1024 * (peak - before)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool = False) -> int:
    """Bytes of the distinct tensors autograd keeps from one training forward for the backward
    pass (parameters excluded): the activation memory of a step, exactly, on any device."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_context(x.device, amp):
        F.cross_entropy(model(x), y)
    return sum(storages.values())


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0)


def training_models(spec: NetSpec, device: torch.device, adapters=ADAPTERS,
                    authors: bool = True) -> Iterator[tuple[str, str, nn.Module]]:
    """(implementation, learner, model): fine-tuning, each adapter of ours, and the authors' library
    on the same layers where it is installed. Dense networks from the same seeded weights."""
    yield "spa", "finetune", apply_adapter(_dense(spec, device), "finetune")
    for name, kind, options in adapters:
        if not _applies(kind, spec):
            continue
        ours = apply_adapter(_dense(spec, device), kind, **options)
        yield "spa", name, ours
        if authors and authors_available():
            yield AUTHORS_LIBRARY, name, authors_model(ours, _dense(spec, device), kind, options)


def training_step(spec: NetSpec, batch: int, device: torch.device, repeats: int, warmup: int, amp: bool = False,
                  channels_last: bool = False, adapters=ADAPTERS, authors: bool = True) -> list[dict[str, Any]]:
    """Time and peak memory of one SGD training step (forward, loss, backward, momentum update) per
    learner, with the optimiser state, gradient and saved-activation memory it holds; ratios to fine-tuning, and for
    the authors' library, our time / theirs on the same learner."""
    x = _input(spec, batch, device, channels_last)
    y = torch.arange(batch, device=device) % spec.num_classes
    entries = []
    for implementation, learner, model in training_models(spec, device, adapters, authors):
        model = _layout(model, channels_last).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=5e-4)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(device, amp):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        entries.append((implementation, learner, model, optimizer, step, sum(p.numel() for p in params)))
    seconds = timed({(i, learner): s for i, learner, _, _, s, _ in entries}, device, repeats, warmup)
    rows = []
    for implementation, learner, model, optimizer, step, trainable in entries:
        rows.append({"network": spec.label, "implementation": implementation, "learner": learner, "batch": batch,
                     "step_s": seconds[implementation, learner], "trainable_params": trainable,
                     "optimizer_state_bytes": _state_bytes(optimizer),
                     "gradient_bytes": sum(p.numel() * p.element_size() for p in model.parameters()
                                           if p.requires_grad),
                     "saved_activation_bytes": saved_activation_bytes(model, x, y, amp),
                     "peak_step_memory_bytes": peak_memory(step, device)})
    base = next(r["step_s"] for r in rows if r["learner"] == "finetune")
    ours = {r["learner"]: r["step_s"] for r in rows if r["implementation"] == "spa"}
    for row in rows:
        row["ratio_to_finetune"] = row["step_s"] / base
        row["ours_over_authors"] = ours[row["learner"]] / row["step_s"] if row["implementation"] != "spa" else None
    return rows


def layer_speed(spec: NetSpec, batch: int, device: torch.device, repeats: int, warmup: int, amp: bool = False,
                channels_last: bool = False, adapters=ADAPTERS) -> list[dict[str, Any]]:
    """Our adapter layers against the authors' on the same shapes: every distinct adapted layer of
    ``spec`` (type, weight shape, stride, padding, groups, input shape), one training forward and
    backward each on the input it sees in the network, timed interleaved. One row per adapter and
    shape with the count of such layers in the network; the network's totals follow from the rows."""
    if not authors_available():
        return []
    dense = _dense(spec, device).eval()
    x = _input(spec, batch, device, channels_last)
    inputs: dict[str, torch.Tensor] = {}      # every conv / linear input, from one pass for all adapters
    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: inputs.__setitem__(n, args[0].detach()))
             for n, m in dense.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        dense(x)
    for h in hooks:
        h.remove()
    rows: list[dict[str, Any]] = []
    for name, kind, options in adapters:
        if not _applies(kind, spec):
            continue
        ours_model = apply_adapter(copy.deepcopy(dense), kind, **options)
        names = list(adapter_layers(ours_model))
        shapes: dict[tuple, list[str]] = {}
        for n in names:
            layer = dense.get_submodule(n)
            key = (type(layer).__name__, tuple(layer.weight.shape), getattr(layer, "stride", None),
                   getattr(layer, "padding", None), getattr(layer, "groups", 1), tuple(inputs[n].shape))
            shapes.setdefault(key, []).append(n)
        for key, members in shapes.items():
            ours = ours_model.get_submodule(members[0]).train()
            theirs = _authors_layer(copy.deepcopy(dense.get_submodule(members[0])), kind, options).train()
            inp = inputs[members[0]].clone().requires_grad_(True)
            grad = torch.ones_like(ours(inp))

            def step(layer):
                def run():
                    with autocast_context(device, amp):
                        out = layer(inp)          # noqa: B023 (timed below, in this iteration)
                    out.backward(grad)            # noqa: B023
                return run
            seconds = timed({"spa": step(ours), AUTHORS_LIBRARY: step(theirs)}, device, repeats, warmup)
            rows.append({"network": spec.label, "adapter": name, "layer": key[0],
                         "weight_shape": "x".join(map(str, key[1])), "input_shape": "x".join(map(str, key[5])),
                         "stride": str(key[2]), "count": len(members), "ours_s": seconds["spa"],
                         "authors_s": seconds[AUTHORS_LIBRARY],
                         "ours_over_authors": seconds["spa"] / seconds[AUTHORS_LIBRARY]})
    return rows


def layer_totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (network, adapter): the summed time of all adapted layers (count × median per shape),
    ours over the authors', and the range of the per-shape ratios."""
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        t = totals.setdefault((r["network"], r["adapter"]), {"network": r["network"], "adapter": r["adapter"],
                                                             "layers": 0, "shapes": 0, "ours_s": 0.0, "authors_s": 0.0,
                                                             "min_ratio": float("inf"), "max_ratio": 0.0})
        t["layers"] += r["count"]
        t["shapes"] += 1
        t["ours_s"] += r["count"] * r["ours_s"]
        t["authors_s"] += r["count"] * r["authors_s"]
        t["min_ratio"] = min(t["min_ratio"], r["ours_over_authors"])
        t["max_ratio"] = max(t["max_ratio"], r["ours_over_authors"])
    for t in totals.values():
        t["ours_over_authors"] = t["ours_s"] / t["authors_s"]
    return list(totals.values())


# ----------------------------------------------------------------------------- pruning overhead
def _criterion(name: str) -> Any:
    if name == "lrp":
        return CRITERIA[name](*input_bounds((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    return CRITERIA[name]()


def pruning_overhead(spec: NetSpec, batch: int, device: torch.device, batches: int = 3, warmup: int = 1,
                     criteria=("weight", "gradient", "taylor", "lrp"), amp: bool = False,
                     channels_last: bool = False) -> list[dict[str, Any]]:
    """Per criterion: seconds of scoring ``batches`` batches (the weight criterion is data-free: one
    call), next to a training step on as many batches; the data-driven criteria score every batch
    of an epoch (``schedule.score_batches: null``, the paper), so their ratio is that of a scoring
    pass to a training epoch. Then the pruning step itself: selecting and removing a 10 % budget
    (dependency-graph surgery), without scoring."""
    torch.manual_seed(SEED)
    model = _layout(_dense(spec, device), channels_last)
    gen = torch.Generator().manual_seed(SEED)
    data = [(torch.randn(batch, 3, spec.size, spec.size, generator=gen).to(device),
             torch.randint(0, spec.num_classes, (batch,), generator=gen).to(device)) for _ in range(batches)]
    session = PruningSession(model, torch.zeros(1, 3, spec.size, spec.size, device=device))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train():
        model.train()
        for x, y in data:
            optimizer.zero_grad(set_to_none=True)
            with autocast_context(device, amp):
                F.cross_entropy(model(x), y).backward()
            optimizer.step()
    train_s = timed({"train": train}, device, 1, warmup)["train"]
    rows = []
    for name in criteria:
        criterion = _criterion(name)
        try:
            s = timed({name: lambda: criterion.score(model, session.groups, data, device)},  # noqa: B023 (called here)
                      device, 1, warmup)[name]
        except (NotImplementedError, ValueError, TypeError) as err:
            rows.append({"network": spec.label, "criterion": name, "batch": batch, "batches": batches,
                         "seconds": None, "train_seconds": train_s, "ratio_to_training": None, "note": str(err)[:80]})
            continue
        rows.append({"network": spec.label, "criterion": name, "batch": batch,
                     "batches": 0 if not criterion.needs_data else batches, "seconds": s, "train_seconds": train_s,
                     "ratio_to_training": s / train_s, "note": ""})
    scores = CRITERIA["weight"]().score(model, session.groups)
    start = time.perf_counter()
    ranked = group_scores(session.groups, scores, "l1")
    budget = Plan(session.original_filters, 0.1, 0.1).budget(1, session.kept_filters)
    session.apply(1, select_channels(session.groups, ranked, budget))
    step_s = time.perf_counter() - start
    rows.append({"network": spec.label, "criterion": "pruning step (select + remove 10 %)", "batch": batch,
                 "batches": 0, "seconds": step_s, "train_seconds": train_s, "ratio_to_training": step_s / train_s,
                 "note": "after scoring"})
    return rows


# ----------------------------------------------------------------------------- block-sparse layers
# DeiT-S's Linear layers (out × in): attention qkv and proj, MLP fc1 and fc2 (embed 384, MLP 1536)
DEIT_S_LINEARS = (("qkv", 1152, 384), ("proj", 384, 384), ("fc1", 1536, 384), ("fc2", 384, 1536))
DEIT_S_TOKENS = 197                  # tokens per image: 14 × 14 patches and the class token
BLOCK_DENSITIES = (0.7, 0.5, 0.3, 0.1)
# y = x W^T with a sparse W, each as torch offers it (W: the sparse weight, x: tokens × in). Which
# are supported and which is fastest depends on the layout, the device and the torch build: every
# one is tried and the fastest supported one stands for its layout. The transposed products return
# a (tokens × out) view of an (out × tokens) result, usable as it is by the next op.
SPARSE_PRODUCTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "F.linear(x, W)": lambda w, x: F.linear(x, w),
    "torch.sparse.mm(W, x.T).T": lambda w, x: torch.sparse.mm(w, x.T).T,
}
FORMS = ("dense", "bsr", "csr")


def block_mask(rows: int, cols: int, density: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random boolean mask over ``rows × cols`` blocks with exactly ``round(density · rows · cols)``
    blocks kept (a random subset, from ``generator``)."""
    kept = round(density * rows * cols)
    mask = torch.zeros(rows * cols, dtype=torch.bool)
    mask[torch.randperm(rows * cols, generator=generator)[:kept]] = True
    return mask.view(rows, cols)


def block_sparse_weight(out: int, inp: int, block: tuple[int, int], density: float,
                        seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
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


def block_sparse_inference(tokens: int, device: torch.device, repeats: int = 5, warmup: int = 1,
                           shapes=DEIT_S_LINEARS, densities=BLOCK_DENSITIES, block: tuple[int, int] = (32, 32),
                           seed: int = SEED) -> list[dict[str, Any]]:
    """Per (layer shape, block density): :func:`form_timings` of a :func:`block_sparse_weight` on
    ``tokens`` seeded random float32 tokens, with the speed-ups dense / BSR and dense / CSR (> 1:
    faster than dense). ``shapes``: (name, out, in) triples."""
    rows = []
    for name, out, inp in shapes:
        x = torch.randn(tokens, inp, generator=torch.Generator().manual_seed(seed)).to(device)
        for density in densities:
            weight, mask = block_sparse_weight(out, inp, block, density, seed)
            row = {"layer": name, "weight_shape": f"{out}x{inp}", "tokens": tokens, "block": "x".join(map(str, block)),
                   "density": density, "blocks": mask.numel(), "kept_blocks": int(mask.sum()),
                   **form_timings(weight, block, x, repeats, warmup)}
            for layout in ("bsr", "csr"):
                s = row[f"{layout}_s"]
                row[f"dense_over_{layout}"] = None if s is None else row["dense_s"] / s
            rows.append(row)
    return rows


def splopa_factored_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of a training-mode :class:`~spa.adapters.block.SPLoPALinear`, ``x (W + ΔW)^T + b``
    with ``ΔW = Σ_i B_i ⊗ C_i R_i``, without materialising ΔW: with ``x`` (T × m) viewed as T × m/q × q,
    ``Z = x_b R^T`` (T × N × m/q × r), ``U = Σ_b B Z`` (T × N × n/p × r), ``out = Σ_k U C^T`` (T × n/p × p),
    i.e. T·N·r·(m + n) + T·N·(n/p)·(m/q)·r multiply-adds in place of N·n·m for ΔW (independent of
    T). Leading dims of ``x`` are kept. With a ``block_mask`` (block pruning; its blocks, the layer's
    ``block_shape``, are multiples of the prototypes' p × q) the masked blocks are dropped from W and
    ΔW alike (B masked per block position); the block pruner's gradient hook is not fed (that needs
    the materialised weight)."""
    num, rows, cols = layer.B.shape
    p, q = layer.bank.shape[1:3]
    lead = x.shape[:-1]
    xb = x.reshape(-1, cols, q)
    weight, positions = layer.weight, layer.B
    mask = layer._buffers.get("block_mask")
    if mask is not None:
        mp, mq = layer.block_shape
        positions = positions * expand_blocks(mask, (mp // p, mq // q)).to(positions.dtype)
        weight = weight * expand_blocks(mask, (mp, mq)).to(weight.dtype)
    z = torch.einsum("tbj,krj->tkbr", xb, layer.bank.R)
    u = torch.einsum("tkbr,kab->tkar", z, positions)
    out = torch.einsum("tkar,kir->tai", u, layer.bank.C).reshape(*lead, rows * p)
    return F.linear(x, weight, layer.bias) + out


def splopa_layer(out: int, inp: int, prototypes: int, rank: int = 2, block: tuple[int, int] = (32, 32),
                 device: torch.device | None = None, seed: int = SEED) -> nn.Module:
    """A seeded training-mode SPLoPALinear on an ``out × in`` Linear with its own bank of
    ``prototypes`` prototypes: base weight frozen, B, C and R trainable."""
    from spa.adapters.block import PrototypeBank, SPLoPALinear

    torch.manual_seed(seed)
    bank = PrototypeBank(prototypes, tuple(block), rank)
    return SPLoPALinear(nn.Linear(inp, out), bank).to(device).train()


def splopa_training_forms(tokens: int, device: torch.device, repeats: int = 5, warmup: int = 1,
                          shapes=DEIT_S_LINEARS, prototypes=(64, 128), rank: int = 2,
                          block: tuple[int, int] = (32, 32), seed: int = SEED) -> list[dict[str, Any]]:
    """Per (layer shape, prototype count): one training step of a :func:`splopa_layer` (forward and
    backward of the outputs' sum, gradients set to None first; the input requires grad, as inside
    a network) in the layer's own form (ΔW materialised once, then ``F.linear``) and in
    :func:`splopa_factored_forward`, timed interleaved after checking that the two outputs agree;
    with the ratio factored / materialised (> 1: factored is slower)."""
    rows = []
    for name, out, inp in shapes:
        x = torch.randn(tokens, inp, generator=torch.Generator().manual_seed(seed)).to(device).requires_grad_(True)
        for num in prototypes:
            layer = splopa_layer(out, inp, num, rank, block, device, seed)
            with torch.no_grad():
                torch.testing.assert_close(splopa_factored_forward(layer, x), layer(x), rtol=1e-3, atol=1e-3)

            def step(forward, layer=layer):
                def run():
                    layer.zero_grad(set_to_none=True)
                    x.grad = None                     # noqa: B023 (timed below, in this iteration)
                    forward(x).sum().backward()       # noqa: B023
                return run
            seconds = timed({"materialised": step(layer),
                             "factored": step(lambda v, layer=layer: splopa_factored_forward(layer, v))},
                            device, repeats, warmup)
            rows.append({"layer": name, "weight_shape": f"{out}x{inp}", "tokens": tokens, "prototypes": num,
                         "rank": rank, "block": "x".join(map(str, block)),
                         "materialised_s": seconds["materialised"], "factored_s": seconds["factored"],
                         "factored_over_materialised": seconds["factored"] / seconds["materialised"]})
    return rows


# ----------------------------------------------------------------------------- the targets
def checks(sections: dict[str, list[dict[str, Any]]], density: float = 0.3) -> list[dict[str, Any]]:
    """The speed targets, evaluated on the rows of the sections at hand ({section: rows}):
    one row per check with the measured value, the target and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(check: str, value: float, target: str, met: bool) -> None:
        out.append({"check": check, "measured": value, "target": target, "met": bool(met)})
    for row in sections.get("inference", []):
        if row["network"] in INFERENCE_TARGETS and row["variant"] == "pruned (channels removed)" \
                and abs(row["density"] - density) < 0.02:
            add(f"{row['network']} at {row['density']:.0%}: latency ratio / MACs ratio",
                row["latency_over_macs_ratio"], "<= 1.3", row["latency_over_macs_ratio"] <= 1.3)
    for row in sections.get("adapters", []):
        if row["adapter"].startswith("splora") and row["variant"] != "plain pruned model (baseline)":
            add(f"{row['network']}, {row['adapter']} {row['variant']}: latency / plain pruned model",
                row["ratio_to_plain"], "<= 1.03", row["ratio_to_plain"] <= 1.03)
    rows = sections.get("training", [])
    for row in rows:
        if row["implementation"] != "spa" or not row["learner"].startswith("splora"):
            continue
        finetune = next(r for r in rows if r["network"] == row["network"] and r["learner"] == "finetune")
        add(f"{row['network']}, {row['learner']}: step time / fine-tuning step", row["ratio_to_finetune"], "<= 1.0",
            row["ratio_to_finetune"] <= 1.0)
        add(f"{row['network']}, {row['learner']}: optimiser state / fine-tuning's",
            row["optimizer_state_bytes"] / finetune["optimizer_state_bytes"], "< 1",
            row["optimizer_state_bytes"] < finetune["optimizer_state_bytes"])
    for row in layer_totals(sections.get("layers", [])):
        add(f"{row['network']}, {row['adapter']}: our adapted layers' time / the authors' on the same shapes",
            row["ours_over_authors"], "<= 1.0", row["ours_over_authors"] <= 1.0)
    deployed = [r for r in sections.get("deploy", []) if abs(r["density"] - density) < 0.02]
    for network in dict.fromkeys(r["network"] for r in deployed):
        best = min((r for r in deployed if r["network"] == network), key=lambda r: r["latency_s"])
        add(f"{network} at {best['density']:.0%}: best runtime ({best['runtime']}) latency ratio / MACs ratio",
            best["latency_over_macs_ratio"], f"<= {DEPLOY_TARGET}", best["latency_over_macs_ratio"] <= DEPLOY_TARGET)
    for row in sections.get("tasks", []):
        if row["measurement"] == "time" and row["what"] == "switch a task":
            add(f"{row['network']}: task switch time / loading a full model file", row["ratio"], "< 1",
                row["ratio"] < 1)
            add(f"{row['network']}: outputs after switching A -> B -> A equal a fresh load of A (1 = yes)",
                float(row["exact_after_switching"]), "= 1", row["exact_after_switching"])
    return out



# ----------------------------------------------------------------------------- deployment runtimes
DEPLOY_NETS = (RESNET50, MOBILENETV2)
DEPLOY_DENSITIES = (1.0, 0.3, 0.1)
DEPLOY_TARGET = 1.15      # at 30 % density the best runtime's latency ratio within this x the MACs ratio


def _onnx_runner(model: nn.Module, x: torch.Tensor, workdir: Path) -> Callable[[], Any] | None:
    """An onnxruntime (CPU) session of ``model`` exported as scripts/export.py does; None where
    onnxruntime is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    from spa.export import load_export, write_onnx
    path = workdir / f"deploy_{id(model)}.onnx"
    write_onnx(model.cpu(), torch.zeros(2, *x.shape[1:]), path, {})
    run, feed = load_export(path, threads=torch.get_num_threads())[0], x.cpu().numpy()   # torch's threads
    return lambda: run(feed)


def deploy_latency(spec: NetSpec, batch: int, device: torch.device, repeats: int, warmup: int, workdir: Path,
                   densities=DEPLOY_DENSITIES, compile_model: bool = True) -> list[dict[str, Any]]:
    """Latency of ``spec`` pruned (channels removed, data-free weight criterion) at each density in
    PyTorch eager, ``torch.compile`` (inductor) and onnxruntime (CPU only), timed interleaved at one
    batch; ratios to the dense network in eager mode, and to the MACs ratio."""
    x = _input(spec, batch, device, False)
    rows: list[dict[str, Any]] = []
    for density, model, _ in pruned_versions(spec, densities, device=device):
        model.eval()
        macs = count_macs(model, (spec.size, spec.size))
        fns = {"eager": _forward(model, x, False)}
        if compile_model:
            torch._dynamo.reset()
            fns["torch.compile"] = _forward(torch.compile(model), x, False)
        if device.type == "cpu":
            runner = _onnx_runner(model, x, workdir)
            if runner is not None:
                fns["onnxruntime"] = runner
        for name, seconds in timed(fns, device, repeats, warmup).items():
            rows.append({"network": spec.label, "density": density, "runtime": name, "latency_s": seconds,
                         "macs": macs})
    dense = {r["runtime"]: r["latency_s"] for r in rows if r["density"] == max(densities)}
    dense_macs = max(r["macs"] for r in rows)
    for r in rows:
        r["latency_ratio"] = r["latency_s"] / dense["eager"]
        r["macs_ratio"] = r["macs"] / dense_macs
        r["latency_over_macs_ratio"] = r["latency_ratio"] / r["macs_ratio"]
        r["ratio_to_same_runtime_dense"] = r["latency_s"] / dense[r["runtime"]]    # what pruning buys in it
    return rows


# ----------------------------------------------------------------------------- one base, many tasks
TASK_COUNTS = (1, 4, 16)


def _task_files(spec: NetSpec, count: int, workdir: Path) -> tuple[nn.Module, list[Path], list[Path]]:
    """The dense base of ``spec`` (seeded random weights), ``count`` SPLoRA-r8 task files trained on it
    (drawn at random: only their sizes and shapes matter here) and each task's full model file."""
    import logging

    from spa.adapters import save_task
    from spa.models.backbones import save_model_file
    base = _dense(spec, torch.device("cpu")).eval()
    tasks, fulls = [], []
    adapters_log = logging.getLogger("spa.adapters")
    level = adapters_log.level
    for i in range(count):
        adapters_log.setLevel(logging.ERROR if i else level)      # the stem's rank note once, not once per task
        try:
            model = apply_adapter(copy.deepcopy(base), "splora", rank=8)
        finally:
            adapters_log.setLevel(level)
        generator = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn(p.shape, generator=generator))
        tasks.append(save_task(model.eval(), workdir / f"task_{i}.pt", base={"timm_name": spec.timm_name},
                               adapter={"kind": "splora", "options": {"rank": 8}}))
        fulls.append(save_model_file(fuse(model), workdir / f"model_{i}.pt", timm_name=spec.timm_name,
                                     cifar_stem=spec.cifar_stem, kwargs=dict(spec.kwargs),
                                     classes=[str(c) for c in range(spec.num_classes)]))
    return base, tasks, fulls


def _resident_after(kind: str, spec: NetSpec, paths: list[str], queue) -> None:
    """Child process: the resident set added by holding ``paths`` as a task bank (one base + the task
    files) or as full models, after importing everything; put on ``queue``."""
    from spa.adapters import TaskBank
    _trim_malloc()
    before = _proc_kib("VmRSS")
    if kind == "bank":
        bank = TaskBank(_dense(spec, torch.device("cpu")))
        for i, path in enumerate(paths):
            bank.register(str(i), path)
        held = [bank, bank.model("0")]
    else:
        held = [create_backbone(spec.timm_name, spec.num_classes, weights=path)[0] for path in paths]
    _trim_malloc()
    queue.put(1024 * (_proc_kib("VmRSS") - before))
    del held


def task_switching(spec: NetSpec, device: torch.device, repeats: int, warmup: int, workdir: Path,
                   counts=TASK_COUNTS) -> list[dict[str, Any]]:
    """One base, many tasks: the time of switching a bank's model to another task against loading a
    full model file, whether A -> B -> A gives A's outputs exactly, and the memory of a bank with N task
    files against N full models (the resident set each adds in a fresh process, and the exact bytes of
    the tensors each holds)."""
    import multiprocessing

    from spa.adapters import TaskBank, load_task
    base, tasks, fulls = _task_files(spec, max(counts), workdir)
    bank = TaskBank(base)
    for i, path in enumerate(tasks):
        bank.register(str(i), path)
    x = _input(spec, 2, torch.device("cpu"), False)
    a = bank.predict("0", x)
    bank.predict("1", x)
    exact = torch.equal(bank.predict("0", x), a) and torch.equal(a, load_task(base, tasks[0]).eval()(x).detach())
    turn = {"i": 0}

    def switch():
        turn["i"] = 1 - turn["i"]
        bank.model(str(turn["i"]))
    times = timed({"switch a task": switch,
                   "load a full model file": lambda: create_backbone(spec.timm_name, spec.num_classes,
                                                                     weights=str(fulls[0]))},
                  torch.device("cpu"), repeats, warmup)
    param_bytes = sum(t.numel() * t.element_size() for t in base.state_dict().values())
    task_bytes = [sum(t.numel() * t.element_size() for t in torch.load(p, weights_only=True)["state"].values())
                  for p in tasks]
    context = multiprocessing.get_context("spawn")
    rows = [{"network": spec.label, "measurement": "time", "what": name, "tasks": None, "seconds": seconds,
             "ratio": seconds / times["load a full model file"], "exact_after_switching": exact}
            for name, seconds in times.items()]
    for count in counts:
        resident = {}
        for kind, paths in (("bank", tasks[:count]), ("full", fulls[:count])):
            queue = context.Queue()
            child = context.Process(target=_resident_after, args=(kind, spec, [str(p) for p in paths], queue))
            child.start()
            resident[kind] = queue.get(timeout=600)
            child.join()
        held = {"bank": param_bytes + sum(task_bytes[:count]), "full": param_bytes * count}
        for kind, label in (("bank", f"base + {count} task files"), ("full", f"{count} full models")):
            rows.append({"network": spec.label, "measurement": "memory", "what": label, "tasks": count,
                         "resident_bytes": resident[kind], "tensor_bytes": held[kind],
                         "ratio": held[kind] / held["full"], "exact_after_switching": exact})
    return rows
