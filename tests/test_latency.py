"""The per-layer latency model (spa.pruning.latency): layer shapes from one forward pass, the
one-node onnxruntime layers it times, interpolation on its grid, its cache, and the accuracy report
of spa.bench.latency_model (plumbing, on a tiny network)."""
from __future__ import annotations

import importlib.util
import json
from importlib.metadata import version

import numpy as np
import pytest
import torch
import torch.nn as nn

from spa.adapters import apply_adapter
from spa.pruning import latency
from spa.pruning.latency import GRID, LatencyModel, LayerShape, grid_points, layer_shapes
from spa.utils import Precision


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.dw(self.conv(x)).mean(dim=(2, 3)))


def test_layer_shapes_record_kind_widths_and_input_size_of_every_layer_adapted_or_not():
    model = apply_adapter(Tiny(), "splora", rank=2, exclude=["fc"])
    model.pretrained_cfg = {"classifier": "fc"}
    shapes = layer_shapes(model, (16, 16))
    assert shapes["conv"] == LayerShape("conv", 3, 8, (3, 3), (2, 2), (1, 1), (1, 1), (16, 16))
    assert shapes["dw"].kind == "depthwise" and shapes["dw"].spatial == (8, 8) and shapes["dw"].in_ch == 8
    assert shapes["fc"] == LayerShape("linear", 8, 4)
    assert grid_points(shapes["dw"]) == [(f, f) for f in GRID] and len(grid_points(shapes["conv"])) == len(GRID) ** 2


def test_a_one_node_onnx_layer_computes_what_the_torch_layer_does():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    for layer, x in ((nn.Conv2d(4, 6, 3, stride=2, padding=1), torch.randn(2, 4, 9, 9)),
                     (nn.Conv2d(6, 6, 3, padding=1, groups=6), torch.randn(2, 6, 5, 5)),
                     (nn.Linear(5, 3), torch.randn(2, 7, 5))):
        out = latency._onnx_layer(layer.eval(), x)()[0]
        with torch.no_grad():
            np.testing.assert_allclose(out, layer(x).numpy(), rtol=1e-5, atol=1e-5)


def test_the_grid_is_read_exactly_at_its_points_and_bilinearly_between_them():
    shape = LayerShape("conv", 8, 8, spatial=(4, 4))
    points = {f"{fi},{fo}": 10 * fi + fo for fi, fo in grid_points(shape)}    # bilinear in both fractions
    model = LatencyModel("torch", 1, 1, {shape.key(): points}, {})
    assert model.layer(shape, 8, 8) == pytest.approx(11.0) and model.layer(shape, 4, 2) == pytest.approx(5.25)
    assert model.layer(shape, 5, 7) == pytest.approx(10 * 5 / 8 + 7 / 8)          # between grid points
    assert model.layer(shape, 1, 8) == pytest.approx(10 / 8 + 1)                   # on the lowest cell, exactly
    dw = LayerShape("depthwise", 8, 8, (3, 3), spatial=(4, 4))
    dw_model = LatencyModel("torch", 1, 1, {dw.key(): {f"{f},{f}": 2 * f for f in GRID}}, {})
    assert dw_model.layer(dw, 3, 3) == pytest.approx(0.75)
    original = {"a": shape, "b": dw}
    now = {"a": LayerShape("conv", 4, 2, spatial=(4, 4)), "b": LayerShape("depthwise", 3, 3, (3, 3), spatial=(4, 4))}
    both = LatencyModel("torch", 1, 1, {shape.key(): points, dw.key(): {f"{f},{f}": 2 * f for f in GRID}}, {})
    assert both.layers_sum(original, now) == pytest.approx(5.25 + 0.75)


def test_the_cache_is_reused_for_the_same_runtime_batch_threads_and_versions(tmp_path, monkeypatch):
    calls = []

    def fake(shape, runtime, batch, repeats=15):
        calls.append(shape.key())
        return {f"{fi},{fo}": fi * fo for fi, fo in grid_points(shape)}
    monkeypatch.setattr(latency, "measure_shape", fake)
    shapes = layer_shapes(Tiny(), (16, 16))
    first = latency.latency_model(shapes, "onnxruntime", 1, tmp_path)
    assert len(calls) == 3
    second = latency.latency_model(shapes, "onnxruntime", 1, tmp_path)
    assert len(calls) == 3 and second.grids == first.grids            # nothing measured again
    latency.latency_model(shapes, "onnxruntime", 8, tmp_path)
    assert len(calls) == 6                                           # another batch is another table
    files = sorted(tmp_path.glob("latency_onnxruntime_b*.json"))
    assert len(files) == 2 and json.loads(files[0].read_text())["versions"]["torch"] == version("torch")


def test_an_unknown_runtime_is_refused():
    with pytest.raises(ValueError, match="use one of"):
        latency.measure_shape(LayerShape("linear", 4, 4), "tensorrt", 1)


def test_the_accuracy_report_measures_and_predicts_each_random_pruned_network(tmp_path):
    from spa.bench.latency_model import accuracy_rows
    from spa.bench.nets import NetSpec
    spec = NetSpec("test", "test_resnet", size=32)
    rows = accuracy_rows(spec, "torch", 1, samples=2, precision=Precision(rounds=2, warmup=1, max_seconds=0.5),
                         cache_dir=tmp_path)
    assert [r["sample"] for r in rows] == [0, 1] and all(r["macs_ratio"] < 1 and r["density"] < 1 for r in rows)
    for r in rows:
        assert r["measured_ratio"] > 0 and 0 < r["predicted_ratio"] < 1.5
        error = abs(r["predicted_ratio"] - r["measured_ratio"]) / r["measured_ratio"]
        assert r["relative_error"] == pytest.approx(error)


def test_random_widths_rounded_to_a_multiple_keep_every_pruned_width_on_it():
    from spa.bench.latency_model import random_widths
    from spa.bench.nets import NetSpec, dense_model
    dense = dense_model(NetSpec("test", "test_resnet", size=32), torch.device("cpu")).eval()
    before = {n: m.weight.shape[0] for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)}
    model, density = random_widths(dense, (32, 32), 0.5, seed=0, round_to=8)
    after = {n: m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    changed = [n for n in after if after[n] != before[n]]
    assert changed and density < 0.75 and all(after[n] % 8 == 0 for n in changed)


def test_a_conv_that_pads_in_its_forward_is_tabled_with_the_padding_it_applies():
    """timm's Conv2dSame (TF "same" padding) has padding 0 and pads in forward: the table's one-node conv
    must get the padding that gives the layer's own output size, or a small input fails in onnxruntime."""
    from timm.layers import Conv2dSame
    model = nn.Sequential(Conv2dSame(3, 4, 5, stride=2), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 4, 4))
    model.pretrained_cfg = {"classifier": "2"}
    shape = layer_shapes(model, (4, 4))["0"]
    assert shape.padding == (2, 2) and shape.spatial == (4, 4)
    points = latency.measure_shape(shape, "torch", 1, repeats=1, warmup=0)
    assert len(points) == len(GRID) ** 2 and all(v > 0 for v in points.values())
    if importlib.util.find_spec("onnxruntime") is not None:
        assert len(latency.measure_shape(shape, "onnxruntime", 1, repeats=1, warmup=0)) == len(GRID) ** 2
