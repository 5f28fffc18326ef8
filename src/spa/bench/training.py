"""Training: one SGD step per learner (time, optimiser state, gradients, saved activations, peak
memory), against fine-tuning and against the authors' ``structured-pruning-adapters`` library,
network-wide and layer by layer."""
from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from spa.adapters import adapter_layers, apply_adapter
from spa.bench.nets import ADAPTERS, AUTHORS_LIBRARY, NetSpec, adapter_applies, bench_input, dense_model, with_layout
from spa.bench.timing import peak_memory, saved_activation_bytes
from spa.training.engine import autocast_context
from spa.utils import set_module, timed


def authors_available() -> bool:
    try:
        import sp_adapters  # noqa: F401
    except ImportError:
        return False
    return True


def authors_layer(layer: nn.Module, kind: str, options: dict) -> nn.Module:
    import sp_adapters
    if kind == "sppara":
        return sp_adapters.SPPaRAConv2d.from_module(layer, init_range=options.get("init_range", 1e-4))
    cls = sp_adapters.SPLoRAConv2d if isinstance(layer, nn.Conv2d) else sp_adapters.SPLoRALinear
    return cls.from_module(layer, rank=options["rank"], init_range=options.get("init_range", 1e-4))


def authors_model(ours: nn.Module, fresh: nn.Module, kind: str, options: dict) -> nn.Module:
    """``fresh`` (the backbone ``ours`` was converted from, same weights) with the authors' library
    layers (``sp_adapters``) on exactly the layers ``ours`` adapts, and the same parameters trainable."""
    for name in adapter_layers(ours):
        set_module(fresh, name, authors_layer(fresh.get_submodule(name), kind, options))
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    for n, p in fresh.named_parameters():
        p.requires_grad_(n in trainable or ".adapter" in n)
    return fresh


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0)


def training_models(spec: NetSpec, device: torch.device, adapters=ADAPTERS,
                    authors: bool = True) -> Iterator[tuple[str, str, nn.Module]]:
    """(implementation, learner, model): fine-tuning, each adapter of ours, and the authors' library
    on the same layers where it is installed. Dense networks from the same seeded weights."""
    yield "spa", "finetune", apply_adapter(dense_model(spec, device), "finetune")
    for name, kind, options in adapters:
        if not adapter_applies(kind, spec):
            continue
        ours = apply_adapter(dense_model(spec, device), kind, **options)
        yield "spa", name, ours
        if authors and authors_available():
            yield AUTHORS_LIBRARY, name, authors_model(ours, dense_model(spec, device), kind, options)


def training_step(spec: NetSpec, batch: int, device: torch.device, repeats: int, warmup: int, amp: bool = False,
                  channels_last: bool = False, adapters=ADAPTERS, authors: bool = True) -> list[dict[str, Any]]:
    """Time and peak memory of one SGD training step (forward, loss, backward, momentum update) per
    learner, with the optimiser state, gradient and saved-activation memory it holds; ratios to fine-tuning, and for
    the authors' library, our time / theirs on the same learner."""
    x = bench_input(spec, batch, device, channels_last)
    y = torch.arange(batch, device=device) % spec.num_classes
    entries = []
    for implementation, learner, model in training_models(spec, device, adapters, authors):
        model = with_layout(model, channels_last).train()
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
                     "optimizer_state_bytes": state_bytes(optimizer),
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
    dense = dense_model(spec, device).eval()
    x = bench_input(spec, batch, device, channels_last)
    inputs: dict[str, torch.Tensor] = {}      # every conv / linear input, from one pass for all adapters
    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: inputs.__setitem__(n, args[0].detach()))
             for n, m in dense.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        dense(x)
    for h in hooks:
        h.remove()
    rows: list[dict[str, Any]] = []
    for name, kind, options in adapters:
        if not adapter_applies(kind, spec):
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
            theirs = authors_layer(copy.deepcopy(dense.get_submodule(members[0])), kind, options).train()
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
