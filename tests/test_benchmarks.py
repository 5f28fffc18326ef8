"""The benchmark measures what it says: pruned networks at each density with their MACs, the
masked-only contrast at dense cost, and adapter models against the plain model of their shape."""
from __future__ import annotations

import pytest
import torch

from spa.benchmarks import NetSpec, adapter_overhead, inference_vs_density, latency, pruned_versions

TINY = NetSpec("tiny", "test_resnet", size=32)
CPU = torch.device("cpu")


def test_pruned_versions_reach_each_density():
    got = [(d, sum(p.numel() for p in m.parameters())) for d, m in pruned_versions(TINY, (1.0, 0.5, 0.3))]
    assert [d for d, _ in got] == pytest.approx([1.0, 0.5, 0.3], abs=0.01)
    assert got[0][1] > got[1][1] > got[2][1]


def test_inference_rows_carry_ratios_to_the_dense_network():
    rows = inference_vs_density(TINY, batch=2, device=CPU, repeats=1, warmup=0)
    pruned = [r for r in rows if r["variant"].startswith("pruned")]
    masked = [r for r in rows if r["variant"].startswith("masked")]
    assert [round(r["density"], 1) for r in pruned] == [1.0, 0.7, 0.5, 0.3, 0.1] and len(masked) == 1
    assert pruned[0]["macs_ratio"] == pruned[0]["latency_ratio"] == 1.0
    assert all(a["macs"] > b["macs"] for a, b in zip(pruned, pruned[1:]))
    assert masked[0]["macs_ratio"] == 1.0 and masked[0]["density"] == pruned[-1]["density"]
    assert all(r["latency_s"] > 0 and r["throughput_img_s"] == pytest.approx(2 / r["latency_s"]) for r in rows)


def test_adapter_overhead_compares_with_the_plain_model_of_the_same_shape():
    rows = adapter_overhead(TINY, 0.5, batch=2, device=CPU, repeats=1, warmup=0,
                            adapters=(("splora_r8", "splora", {"rank": 8}),))
    assert [r["variant"] for r in rows] == ["plain pruned model (baseline)", "adapter model, eval mode"]
    assert rows[0]["ratio_to_plain"] == 1.0 and rows[1]["ratio_to_plain"] > 0


def test_latency_is_a_median_after_warmup():
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(1)
            return x

    assert latency(Counting(), torch.zeros(1), repeats=3, warmup=2) >= 0 and len(calls) == 5
