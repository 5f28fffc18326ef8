"""How well the per-layer latency model (spa.pruning.latency) predicts a pruned network's latency:
random pruned widths of a network, each measured on the runtime against the dense network
(interleaved), beside the model's prediction."""
from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from spa.bench.nets import NetSpec, dense_model
from spa.pruning.importance import RandomImportance
from spa.pruning.latency import RUN_PRECISION, NetworkLatency
from spa.pruning.schedule import Plan
from spa.pruning.session import PruningSession, count_macs, example_input
from spa.utils import Precision

CPU = torch.device("cpu")


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


def accuracy_rows(spec: NetSpec, runtime: str, batch: int, samples: int = 20, precision: Precision = RUN_PRECISION,
                  cache_dir: Path | None = None, seed: int = 0,
                  round_to: int = 1) -> list[dict[str, Any]]:
    """One row per random pruned network (widths rounded to ``round_to``): filter density, MACs ratio,
    measured and predicted latency (fraction of dense: :class:`~spa.pruning.latency.NetworkLatency`,
    what a latency target steps by) and the relative error of the prediction."""
    size = (spec.size, spec.size)
    dense = dense_model(spec, CPU).eval()
    net = NetworkLatency(dense, size, runtime, batch, cache_dir, precision)
    dense_macs = count_macs(dense, size)
    rng = random.Random(seed)
    rows = []
    for i in range(samples):
        density = rng.uniform(0.2, 0.95)
        model, kept = random_widths(dense, size, density, seed + i, round_to)
        _, measured = net.measure(model)            # interleaved with the dense network: drift cancels
        predicted = net.predict(model)
        rows.append({"network": spec.label, "runtime": runtime, "batch": batch, "round_to": round_to,
                     "sample": i, "target_density": round(density, 3), "density": round(kept, 3),
                     "macs_ratio": count_macs(model, size) / dense_macs,
                     "dense_ms": 1e3 * net.dense_s, "measured_ratio": measured, "predicted_ratio": predicted,
                     "relative_error": abs(predicted - measured) / measured})
    return rows
