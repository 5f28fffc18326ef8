"""Inference: latency of the pruned networks against their MACs, and the cost of an adapter at
inference (eval mode and fused) against the plain pruned model."""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from spa.adapters import fuse
from spa.bench.nets import (
    ADAPTERS,
    DENSITIES,
    NetSpec,
    adapter_applies,
    bench_input,
    dense_model,
    masked_copy,
    pruned_versions,
    with_layout,
)
from spa.bench.timing import eval_forward, last_item
from spa.pruning.session import PruningSession, count_macs
from spa.utils import timed


def inference_vs_density(spec: NetSpec, batch: int, device: torch.device, repeats: int, warmup: int,
                         amp: bool = False, channels_last: bool = False, round_to: int = 8,
                         round_density: float = 0.3) -> list[dict[str, Any]]:
    """Latency / throughput / MACs of ``spec`` at each density, with ratios to the dense network;
    the network pruned with ``pruning.round_to=round_to`` at ``round_density``; and the masked-only
    network (dense shapes, zeroed filters) for contrast. All of them timed interleaved."""
    x = bench_input(spec, batch, device, channels_last)
    size = (spec.size, spec.size)
    rows: list[dict[str, Any]] = []
    models: list[nn.Module] = []

    def add(variant: str, density: float, model: nn.Module, macs: int | None = None) -> None:
        model = with_layout(copy.deepcopy(model), channels_last)
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
    add("masked only (paper's code)", rows[len(DENSITIES) - 1]["density"], masked_copy(last, dense_model(spec, device)),
        rows[0]["macs"])
    seconds = timed({i: eval_forward(m, x, amp) for i, m in enumerate(models)}, device, repeats, warmup)
    for i, row in enumerate(rows):
        row["latency_s"] = seconds[i]
    dense_macs, dense_latency = rows[0]["macs"], rows[0]["latency_s"]
    for row in rows:
        row.update(network=spec.label, batch=batch, throughput_img_s=batch / row["latency_s"],
                   macs_ratio=row["macs"] / dense_macs, latency_ratio=row["latency_s"] / dense_latency)
        row["latency_over_macs_ratio"] = row["latency_ratio"] / row["macs_ratio"]
    return rows


def adapter_overhead(spec: NetSpec, density: float, batch: int, device: torch.device, repeats: int, warmup: int,
                     amp: bool = False, channels_last: bool = False, adapters=ADAPTERS) -> list[dict[str, Any]]:
    """Per adapter: the pruned adapter model in eval mode (fused weight cached) and after ``fuse()``,
    against the plain pruned model of the same shape (a fine-tuning backbone with the same pruning
    history replayed), timed interleaved."""
    x = bench_input(spec, batch, device, channels_last)
    rows: list[dict[str, Any]] = []
    for name, kind, options in adapters:
        if not adapter_applies(kind, spec):
            continue
        d, model, session = last_item(pruned_versions(spec, (1.0, density), kind, options, device))
        plain = dense_model(spec, device).eval()
        PruningSession(plain, torch.zeros(1, 3, spec.size, spec.size, device=device)).replay(session.history)
        fused = fuse(model).eval()
        models = {"plain pruned model (baseline)": plain, "adapter model, eval mode": model,
                  "adapter model after fuse()": fused}
        seconds = timed({v: eval_forward(with_layout(m, channels_last), x, amp) for v, m in models.items()}, device,
                        repeats, warmup)
        base = seconds["plain pruned model (baseline)"]
        for variant, s in seconds.items():
            rows.append({"network": spec.label, "adapter": name, "density": d, "variant": variant, "batch": batch,
                         "latency_s": s, "ratio_to_plain": s / base})
    return rows
