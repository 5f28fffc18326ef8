"""How well the per-layer latency model (spa.pruning.latency) predicts a pruned network's latency:
random pruned widths of a network, each measured on the runtime against the dense network
(interleaved), beside the model's prediction."""
from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from spa.bench.deployment import onnx_session
from spa.bench.nets import NetSpec, bench_input, dense_model
from spa.bench.timing import eval_forward
from spa.pruning.importance import RandomImportance
from spa.pruning.latency import LatencyModel, latency_model, layer_shapes
from spa.pruning.schedule import Plan
from spa.pruning.session import PruningSession, count_macs, example_input
from spa.utils import timed

CPU = torch.device("cpu")


def network_runner(runtime: str, model: nn.Module, x: torch.Tensor, workdir: Path) -> Callable[[], Any]:
    """One forward pass of ``model`` on ``x``: eager PyTorch, or onnxruntime (CPU) on its ONNX export."""
    if runtime == "torch":
        return eval_forward(model, x, False)
    return onnx_session(model.eval(), x, workdir)


def random_widths(dense: nn.Module, size: tuple[int, int], density: float, seed: int,
                  round_to: int = 1) -> tuple[nn.Module, float]:
    """A copy of ``dense`` pruned in one step to ``density`` of its filters by random scores, ranked
    globally: uneven widths, layer by layer, as no criterion would choose them on purpose (each kept
    width a multiple of ``round_to`` where it is above 1); the copy and its filter density."""
    model = copy.deepcopy(dense)
    session = PruningSession(model, example_input(model, size))
    session.step(1, Plan(session.original_filters, 1 - density, density), RandomImportance(seed), None, CPU,
                 round_to=round_to)
    return model.eval(), session.density


def accuracy_rows(spec: NetSpec, runtime: str, batch: int, workdir: Path, samples: int = 20, repeats: int = 10,
                  warmup: int = 2, cache_dir: Path | None = None, seed: int = 0,
                  round_to: int = 1) -> list[dict[str, Any]]:
    """One row per random pruned network (widths rounded to ``round_to``): filter density, MACs ratio,
    measured and predicted latency (fraction of dense) and the relative error of the prediction."""
    size = (spec.size, spec.size)
    dense = dense_model(spec, CPU).eval()
    original = layer_shapes(dense, size)
    table: LatencyModel = latency_model(original, runtime, batch, cache_dir)
    x = bench_input(spec, batch, CPU, False)
    dense_run = network_runner(runtime, dense, x, workdir)
    dense_s = timed({"dense": dense_run}, CPU, repeats, warmup)["dense"]
    constant = dense_s - table.layers_sum(original, original)
    dense_macs = count_macs(dense, size)
    rng = random.Random(seed)
    rows = []
    for i in range(samples):
        density = rng.uniform(0.2, 0.95)
        model, kept = random_widths(dense, size, density, seed + i, round_to)
        seconds = timed({"dense": dense_run, "pruned": network_runner(runtime, model, x, workdir)}, CPU, repeats,
                        warmup)
        measured = seconds["pruned"] / seconds["dense"]              # drift between rounds cancels
        predicted = (constant + table.layers_sum(original, layer_shapes(model, size))) / dense_s
        rows.append({"network": spec.label, "runtime": runtime, "batch": batch, "round_to": round_to,
                     "sample": i, "target_density": round(density, 3), "density": round(kept, 3),
                     "macs_ratio": count_macs(model, size) / dense_macs,
                     "dense_ms": 1e3 * dense_s, "measured_ratio": measured, "predicted_ratio": predicted,
                     "relative_error": abs(predicted - measured) / measured})
    return rows
