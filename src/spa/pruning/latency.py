"""A per-layer latency model of a channel-pruned network on one runtime (docs/method.md §9).

Channel pruning changes the widths of convolutions and linears; the rest of a network (activations,
norms, pooling, additions) costs little beside them or scales with the same widths. The model
predicts a network's latency as the sum, over its conv / linear layers, of the layer's latency at its
kept input and output widths, plus a constant: the dense network's measured latency minus the
dense sum. A layer's latency is read from a table measured once per layer *shape* (kind, kernel,
stride, groups, input size) on a grid of kept widths, interpolated bilinearly between grid points
(HALP, NeurIPS 2022, keeps such a table per layer). Tables are measured on this machine, interleaved
and as medians, and cached under the results directory keyed by runtime, batch, threads and the
library versions.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from spa.adapters import fuse
from spa.adapters.base import AdapterLayer
from spa.utils import Precision, Ratio, atomic_write_text, package_versions, timed, timed_ratio

RUNTIMES = ("torch", "onnxruntime")
CPU = torch.device("cpu")
TABLE_METHOD = 2       # how tables are timed (2: onnxruntime without spin-waiting); part of the cache key
GRID = (0.125, 0.25, 0.5, 0.75, 1.0)       # kept fractions of a layer's original width, per dimension
RUN_PRECISION = Precision(rounds=20, warmup=3)     # how a run measures its network (and the bench's default)


@dataclass(frozen=True)
class LayerShape:
    """What a conv / linear layer's latency depends on, widths aside."""
    kind: str                   # "conv", "depthwise" (in = out = groups) or "linear"
    in_ch: int                  # original widths: the grid's 1.0
    out_ch: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    spatial: tuple[int, ...] = ()  # (H, W) of a conv's input; (tokens,) of a linear's, () for a plain vector

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _shape_of(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LayerShape | None:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    if weight.dim() == 4:
        groups = int(getattr(module, "groups", 1))
        out_ch, in_ch = int(weight.shape[0]), int(weight.shape[1]) * groups
        kind = "depthwise" if groups > 1 and groups == in_ch == out_ch else "conv" if groups == 1 else None
        if kind is None:            # grouped convs keep their widths (spa.pruning.groups.grouped)
            kind = f"grouped{groups}"
        kernel, stride, dilation = tuple(weight.shape[2:]), _pair(module.stride), _pair(module.dilation)
        spatial = tuple(int(s) for s in x.shape[2:])
        padding = tuple(_padding(spatial[d], int(y.shape[2 + d]), kernel[d], stride[d], dilation[d]) for d in range(2))
        return LayerShape(kind, in_ch, out_ch, kernel, stride, padding, dilation, spatial)
    if weight.dim() == 2:
        tokens = int(math.prod(x.shape[1:-1]))
        return LayerShape("linear", int(weight.shape[1]), int(weight.shape[0]), spatial=(tokens,) if tokens > 1 else ())
    return None


def _padding(size: int, out: int, kernel: int, stride: int, dilation: int) -> int:
    """The symmetric padding that gives a conv's observed output size: the layer's own, or what a conv that
    pads in its forward (timm's Conv2dSame, TF "same" padding) adds, rounded up to both sides."""
    pad = 0
    while (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1 < out and pad <= dilation * kernel:
        pad += 1
    return pad


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def layer_shapes(model: nn.Module, input_size: tuple[int, int]) -> dict[str, LayerShape]:
    """Every conv / linear layer (adapted or not) of ``model`` and its shape, from one forward pass of
    a single zero image of ``input_size`` (hooks record each layer's input)."""
    shapes: dict[str, LayerShape] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, AdapterLayer)):
            def hook(mod, inputs, output, name=name):
                shape = _shape_of(mod, inputs[0], output)
                if shape is not None and name not in shapes:
                    shapes[name] = shape
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(1, 3, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes


def widths_at(shape: LayerShape, f_in: float, f_out: float) -> tuple[int, int]:
    """Kept (in, out) widths of ``shape`` at grid fractions; a depthwise layer keeps in = out."""
    kept_in = max(1, round(shape.in_ch * f_in))
    kept_out = kept_in if shape.kind == "depthwise" else max(1, round(shape.out_ch * f_out))
    return kept_in, kept_out


def _layer(shape: LayerShape, kept_in: int, kept_out: int) -> nn.Module:
    if shape.kind == "linear":
        return nn.Linear(kept_in, kept_out)
    groups = kept_in if shape.kind == "depthwise" else int(shape.kind[7:]) if shape.kind.startswith("grouped") else 1
    return nn.Conv2d(kept_in, kept_out, shape.kernel, shape.stride, shape.padding, shape.dilation, groups=groups)


def _input(shape: LayerShape, kept_in: int, batch: int) -> torch.Tensor:
    return torch.randn(batch, kept_in, *shape.spatial) if shape.kind != "linear" else \
        torch.randn(batch, *shape.spatial, kept_in)


def _eager(module: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """One call of ``module`` on ``x`` in eager PyTorch, without autograd."""
    def run():
        with torch.no_grad():
            module(x)
    return run


def _runner(runtime: str, layer: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """One call of ``layer`` on ``x`` in ``runtime`` (eager PyTorch, or onnxruntime on CPU)."""
    layer.eval()
    return _eager(layer, x) if runtime == "torch" else _onnx_layer(layer, x)


def ort_options(threads: int | None = None):
    """onnxruntime session options for timing sessions side by side: torch's thread count, and no
    spin-waiting of idle intra-op threads (on by default: a session's threads keep spinning after its
    run, taking the cores from the next session timed, so interleaved timings would favour the first)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _onnx_layer(layer: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """``layer`` as a one-node ONNX graph (Conv, or MatMul + Add) in an onnxruntime CPU session with
    torch's thread count: built with ``onnx.helper``, no exporter run per grid point."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    w = layer.weight.detach().numpy()
    b = layer.bias.detach().numpy()
    if isinstance(layer, nn.Conv2d):
        ph, pw = layer.padding
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(layer.kernel_size),
                                  strides=list(layer.stride), pads=[ph, pw, ph, pw], dilations=list(layer.dilation),
                                  group=layer.groups)]
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    else:
        nodes = [helper.make_node("MatMul", ["x", "wt"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
        inits = [numpy_helper.from_array(np.ascontiguousarray(w.T), "wt"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), ort_options(), providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: session.run(None, feed)


def grid_points(shape: LayerShape) -> list[tuple[float, float]]:
    """The (in, out) fractions a shape is measured at: the full grid, or its diagonal for a depthwise
    layer (in = out) and for a grouped one (its widths are kept whole: 1.0 only)."""
    if shape.kind.startswith("grouped"):
        return [(1.0, 1.0)]
    if shape.kind == "depthwise":
        return [(f, f) for f in GRID]
    return [(fi, fo) for fi in GRID for fo in GRID]


def measure_shape(shape: LayerShape, runtime: str, batch: int, repeats: int = 15,
                  warmup: int = 3) -> dict[str, float]:
    """Median seconds of ``shape`` at every grid point, timed interleaved: {"fi,fo": seconds}."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: use one of {RUNTIMES}")
    torch.manual_seed(0)
    fns = {}
    for fi, fo in grid_points(shape):
        kept_in, kept_out = widths_at(shape, fi, fo)
        fns[f"{fi},{fo}"] = _runner(runtime, _layer(shape, kept_in, kept_out), _input(shape, kept_in, batch))
    return timed(fns, torch.device("cpu"), repeats, warmup)


def _interpolate(points: dict[str, float], shape: LayerShape, f_in: float, f_out: float) -> float:
    """Bilinear interpolation of the grid (linear on the diagonal for depthwise layers); fractions
    below the grid's lowest are extrapolated towards 0 latency at width 0."""
    if shape.kind.startswith("grouped"):
        return points["1.0,1.0"]
    if shape.kind == "depthwise":
        xs = [0.0, *GRID]
        ys = [0.0, *(points[f"{f},{f}"] for f in GRID)]
        return float(np.interp(f_in, xs, ys))
    i_lo, i_hi, wi = _bracket(f_in)
    o_lo, o_hi, wo = _bracket(f_out)

    def at(fi, fo):
        return 0.0 if fi == 0.0 or fo == 0.0 else points[f"{fi},{fo}"]
    return ((1 - wi) * (1 - wo) * at(i_lo, o_lo) + wi * (1 - wo) * at(i_hi, o_lo)
            + (1 - wi) * wo * at(i_lo, o_hi) + wi * wo * at(i_hi, o_hi))


def _bracket(f: float) -> tuple[float, float, float]:
    """The grid fractions around ``f`` (0 below the lowest) and ``f``'s weight towards the upper one."""
    f = min(max(f, 0.0), 1.0)
    xs = [0.0, *GRID]
    for lo, hi in zip(xs, xs[1:]):
        if f <= hi:
            return lo, hi, (f - lo) / (hi - lo)
    return 1.0, 1.0, 0.0


def monotone(points: dict[str, float]) -> dict[str, float]:
    """A grid made non-decreasing in both widths: each point takes the largest time measured at
    widths no larger in either dimension. More channels never cost less; where a timing says so it
    is noise (a tiny layer's time is mostly the call's overhead), and a latency target would chase it."""
    parsed = [(tuple(float(f) for f in k.split(",")), k) for k in points]
    return {k: max(points[q] for (qi, qo), q in parsed if qi <= fi and qo <= fo) for (fi, fo), k in parsed}


@dataclass
class LatencyModel:
    """Per-shape grids of one runtime, batch and thread count, and the network's constant."""
    runtime: str
    batch: int
    threads: int
    grids: dict[str, dict[str, float]]        # LayerShape.key() -> {"fi,fo": seconds}
    versions: dict[str, Any]

    def __post_init__(self) -> None:
        self.grids = {key: monotone(points) for key, points in self.grids.items()}

    def layer(self, shape: LayerShape, kept_in: int, kept_out: int) -> float:
        return _interpolate(self.grids[shape.key()], shape, kept_in / shape.in_ch, kept_out / shape.out_ch)

    def layers_sum(self, original: dict[str, LayerShape], now: dict[str, LayerShape]) -> float:
        """Σ over ``original``'s layers of the table's latency at their widths in ``now`` (same names)."""
        return sum(self.layer(shape, now[name].in_ch, now[name].out_ch) for name, shape in original.items())


def cache_key(runtime: str, batch: int, threads: int) -> tuple[str, dict[str, Any]]:
    versions = package_versions(("torch", "onnxruntime", "onnx"))
    blob = json.dumps({"runtime": runtime, "batch": batch, "threads": threads, "method": TABLE_METHOD, **versions},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16], versions


def latency_model(shapes: dict[str, LayerShape], runtime: str, batch: int, cache_dir: Path | None = None,
                  repeats: int = 15) -> LatencyModel:
    """The latency model for ``shapes`` (the unpruned network's layers), measuring only the shapes
    the cache under ``cache_dir`` lacks for this runtime, batch, thread count and library versions."""
    threads = torch.get_num_threads()
    key, versions = cache_key(runtime, batch, threads)
    path = cache_dir / f"latency_{runtime}_b{batch}_t{threads}_{key}.json" if cache_dir is not None else None
    grids = json.loads(path.read_text())["grids"] if path is not None and path.is_file() else {}
    missing = {s.key(): s for s in shapes.values() if s.key() not in grids}
    for k, shape in missing.items():
        grids[k] = measure_shape(shape, runtime, batch, repeats)
    if path is not None and missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"runtime": runtime, "batch": batch, "threads": threads,
                                            "versions": versions, "grids": grids}, indent=1, sort_keys=True))
    return LatencyModel(runtime, batch, threads, grids, versions)


def check_runtime(runtime: object, key: str = "schedule.runtime") -> None:
    """``runtime`` is one of :data:`RUNTIMES` and installed; else an error naming the fix."""
    if runtime not in RUNTIMES:
        raise ValueError(f"{key}={runtime!r}: use torch (eager PyTorch) or onnxruntime (its ONNX export, CPU)")
    missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(m) is None] \
        if runtime == "onnxruntime" else []
    if missing:
        raise ModuleNotFoundError(f"{key}=onnxruntime needs {', '.join(missing)}, not installed here: pip install "
                                  f"{' '.join(missing)} (make install does), or measure eager PyTorch ({key}=torch)")


def onnx_program(model: nn.Module, example: torch.Tensor):
    """``model`` exported to ONNX as every export here is (the dynamo exporter; input ``image``, output
    ``logits``, dynamic batch): the ``torch.onnx.ONNXProgram``, its ``model_proto`` to save or run."""
    batch = torch.export.Dim("batch", min=1)
    return torch.onnx.export(model, (example,), None, dynamo=True, input_names=["image"], output_names=["logits"],
                             dynamic_shapes=({0: batch},), verbose=False)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The ONNX exporter without its progress lines (printed, and logged at INFO by onnxscript / onnx_ir):
    a run exports its network at every step, and its log would be mostly those lines."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def network_runner(runtime: str, model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """One forward pass of ``model`` (eval, CPU) on ``x``: eager PyTorch, or an onnxruntime CPU session
    (torch's thread count) of the ONNX export ``scripts/export.py`` writes (dynamo exporter, dynamic
    batch), exported in memory."""
    model.eval()
    if runtime == "torch":
        return _eager(model, x)
    check_runtime(runtime)
    import onnxruntime as ort
    with quiet_exporter():
        program = onnx_program(model, torch.zeros(2, *x.shape[1:]))
    session = ort.InferenceSession(program.model_proto.SerializeToString(), ort_options(),
                                   providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}
    return lambda: session.run(None, feed)


def deployable(model: nn.Module) -> nn.Module:
    """What is deployed and timed: a fused (adapters folded in), float32, eval-mode CPU copy with its
    weights in the default memory format (a run that trains channels-last exports and deploys them so)."""
    return fuse(copy.deepcopy(model)).float().to(CPU, memory_format=torch.contiguous_format).eval()


class NetworkLatency:
    """A network's latency on one runtime as it is pruned, against its dense start: predicted by the
    per-layer table (:class:`LatencyModel`) and measured by running the network interleaved with the
    dense one (the median of per-round ratios, to ``precision``). Build it on the unpruned model."""

    def __init__(self, dense: nn.Module, size: tuple[int, int], runtime: str, batch: int = 1,
                 cache_dir: Path | None = None, precision: Precision = RUN_PRECISION):
        check_runtime(runtime)
        self.runtime, self.batch, self.precision = runtime, batch, precision
        self.dense = deployable(dense)
        self.shapes = layer_shapes(self.dense, size)
        self.table = latency_model(self.shapes, runtime, batch, cache_dir)
        self.x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
        self._dense_run = network_runner(runtime, self.dense, self.x)
        self.dense_s = timed({"dense": self._dense_run}, CPU, precision.rounds, precision.warmup,
                             precision.min_seconds)["dense"]
        self.last: Ratio | None = None        # the last measurement, with its rounds and interval
        # what the table's layers leave out (activations, pooling, ...), where it is positive; a runtime that
        # fuses layers runs the network faster than its layers one by one, and the table is then read as ratios
        self.base = self.seconds(self.widths(self.dense))
        self.constant = max(0.0, self.dense_s - self.base)

    def widths(self, model: nn.Module) -> dict[str, tuple[int, int]]:
        """(in, out) widths now of the table's layers in ``model`` (same names; adapted or fused)."""
        out = {}
        for name in self.shapes:
            weight = model.get_submodule(name).weight
            groups = int(getattr(model.get_submodule(name), "groups", 1)) if weight.dim() == 4 else 1
            out[name] = (int(weight.shape[1]) * groups, int(weight.shape[0]))
        return out

    def layer(self, name: str, kept_in: int, kept_out: int) -> float:
        """Seconds the table gives layer ``name`` at these widths."""
        return self.table.layer(self.shapes[name], kept_in, kept_out)

    def seconds(self, widths: dict[str, tuple[int, int]]) -> float:
        """Σ of the table's layers at ``widths`` (without the constant)."""
        return sum(self.layer(name, *widths[name]) for name in self.shapes)

    def predict(self, model: nn.Module) -> float:
        """Predicted latency of ``model`` as a fraction of the dense network's: (constant + Σ layers now)
        / (constant + Σ layers dense)."""
        return (self.constant + self.seconds(self.widths(model))) / (self.constant + self.base)

    def table_seconds(self, fraction: float) -> float:
        """``fraction`` of the dense network's latency in the table's seconds (what :meth:`layer` sums to)."""
        return fraction * (self.constant + self.base)

    def measure(self, model: nn.Module) -> tuple[float, float]:
        """(milliseconds, fraction of dense) of ``model`` deployed on the runtime, timed interleaved
        with the dense network: the median of the per-round ratios, measured to ``self.precision``."""
        self.last = timed_ratio(network_runner(self.runtime, deployable(model), self.x), self._dense_run, CPU,
                                self.precision)
        return 1e3 * self.last.seconds, self.last.ratio
