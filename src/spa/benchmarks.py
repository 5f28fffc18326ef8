"""Speed measurements behind ``scripts/bench.py``: real latency of the networks our pruning leaves,
next to their MACs, and the cost of adapters at inference. Every figure is a median over repeated
runs after warm-up, and is also given as a ratio to a baseline measured in the same call."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from spa.adapters import fuse
from spa.models import create_backbone
from spa.pruning.session import count_macs
from spa.reporting.params import BackboneSpec, weight_pruned


@dataclass(frozen=True)
class NetSpec(BackboneSpec):
    """A backbone (10 classes unless said) and the input size it is measured at."""
    num_classes: int = 10
    size: int = 224


NETS = (NetSpec("ResNet-50, 224 px", "resnet50", size=224),
        NetSpec("ResNet-50, CIFAR stem, 32 px", "resnet50", cifar_stem=True, size=32))
# DeiT-S/16 (NetSpec("DeiT-S/16, 224 px", "deit_small_patch16_224", size=224)) is left out until its pruned
# forward is fast: measured here, one pass of the pruned model did not finish in minutes (to investigate)
DENSITIES = (1.0, 0.7, 0.5, 0.3, 0.1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latency(model: nn.Module, x: torch.Tensor, repeats: int = 10, warmup: int = 2, amp: bool = False) -> float:
    """Median seconds of one forward pass of ``x`` in eval mode, after ``warmup`` passes."""
    model.eval()
    device = x.device
    context = torch.autocast(device.type, dtype=torch.bfloat16) if amp else torch.autocast(device.type, enabled=False)
    times = []
    with context:
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def pruned_versions(spec: NetSpec, densities=DENSITIES, adapter: str = "finetune", adapter_options: dict | None = None,
                    device: torch.device | None = None):
    """Yield (density, model) at each density of ``densities`` as :func:`weight_pruned` prunes
    ``spec`` in 10 % steps (the same groups and budgets as a run; random weights, so which channels
    go differs from a trained network, but not how many). A density the schedule cannot reach gets
    the last pruned model."""
    wanted = sorted(densities, reverse=True)
    for _, session, model in weight_pruned(spec, adapter, adapter_options, 0.1, min(wanted), (spec.size, spec.size),
                                           device):
        while wanted and session.density <= wanted[0] + 1e-3:
            wanted.pop(0)
            yield round(session.density, 3), model
    for _ in wanted:
        yield round(session.density, 3), model


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


def inference_vs_density(spec: NetSpec, batch: int, device: torch.device, repeats: int, warmup: int,
                         amp: bool = False, channels_last: bool = False) -> list[dict[str, Any]]:
    """Latency / throughput / MACs of ``spec`` at each density, with ratios to the dense network,
    and the masked-only network (dense shapes, zeroed filters) for contrast."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, spec.size, spec.size, device=device).contiguous(memory_format=fmt)
    rows: list[dict[str, Any]] = []
    for density, model in pruned_versions(spec, device=device):
        if channels_last:
            model.to(memory_format=fmt)
        rows.append({"network": spec.label, "variant": "pruned (channels removed)", "density": density,
                     "macs": count_macs(model, (spec.size, spec.size), device),
                     "latency_s": latency(model, x, repeats, warmup, amp)})
    dense_macs, dense_latency = rows[0]["macs"], rows[0]["latency_s"]
    # the masked-only network at the lowest density: dense shapes, hence the dense cost
    dense, _ = create_backbone(spec.timm_name, spec.num_classes, cifar_stem=spec.cifar_stem)
    masked = masked_copy(model, dense.to(device, memory_format=fmt) if channels_last else dense.to(device))
    rows.append({"network": spec.label, "variant": "masked only (paper's code)", "density": density,
                 "macs": dense_macs, "latency_s": latency(masked, x, repeats, warmup, amp)})
    for row in rows:
        row.update(batch=batch, throughput_img_s=batch / row["latency_s"], macs_ratio=row["macs"] / dense_macs,
                   latency_ratio=row["latency_s"] / dense_latency)
        row["latency_over_macs_ratio"] = row["latency_ratio"] / row["macs_ratio"]
    return rows


def adapter_overhead(spec: NetSpec, density: float, batch: int, device: torch.device, repeats: int, warmup: int,
                     adapters=(("splora_r8", "splora", {"rank": 8}), ("splora_r32", "splora", {"rank": 32}),
                               ("sppara", "sppara", {}))) -> list[dict[str, Any]]:
    """Per adapter: the pruned adapter model in eval mode (fused weights cached) and after
    ``fuse()``, against the plain pruned model of the same shape (the fused one)."""
    x = torch.randn(batch, 3, spec.size, spec.size, device=device)
    rows: list[dict[str, Any]] = []
    for name, kind, options in adapters:
        model = None
        for d, pruned in pruned_versions(spec, (1.0, density), kind, options, device):
            model = pruned
        plain = fuse(model).eval()
        base = latency(plain, x, repeats, warmup)
        adapted = latency(model.eval(), x, repeats, warmup)
        for variant, seconds in (("plain pruned model (baseline)", base), ("adapter model, eval mode", adapted)):
            rows.append({"network": spec.label, "adapter": name, "density": round(d, 3), "variant": variant,
                         "batch": batch, "latency_s": seconds, "ratio_to_plain": seconds / base})
    return rows
