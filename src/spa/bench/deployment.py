"""Deployment runtimes: a pruned network's latency in PyTorch eager, torch.compile and
onnxruntime, against its MACs."""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from spa.bench.nets import MOBILENETV2, RESNET50, NetSpec, bench_input, pruned_versions
from spa.bench.timing import eval_forward
from spa.pruning.session import count_macs
from spa.utils import Precision, timed, timed_ratio

DEPLOY_NETS = (RESNET50, MOBILENETV2)
DEPLOY_DENSITIES = (1.0, 0.3, 0.1)
DEPLOY_TARGET = 1.15      # at 30 % density the best runtime's latency ratio within this x the MACs ratio


def onnx_runner(model: nn.Module, x: torch.Tensor, workdir: Path) -> Callable[[], Any] | None:
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


def onnx_session(model: nn.Module, x: torch.Tensor, workdir: Path) -> Callable[[], Any]:
    """:func:`onnx_runner`, or ModuleNotFoundError naming the fix where onnxruntime is not installed."""
    run = onnx_runner(model, x.detach(), workdir)
    if run is None:
        raise ModuleNotFoundError("onnxruntime is not installed: pip install onnxruntime (make install does)")
    return run


def deploy_latency(spec: NetSpec, batch: int, device: torch.device, repeats: int, warmup: int, workdir: Path,
                   densities=DEPLOY_DENSITIES, compile_model: bool = True) -> list[dict[str, Any]]:
    """Latency of ``spec`` pruned (channels removed, data-free weight criterion) at each density in
    PyTorch eager, ``torch.compile`` (inductor) and onnxruntime (CPU only), timed interleaved at one
    batch; ratios to the dense network in eager mode, and to the MACs ratio."""
    x = bench_input(spec, batch, device, False)
    rows: list[dict[str, Any]] = []
    for density, model, _ in pruned_versions(spec, densities, device=device):
        model.eval()
        macs = count_macs(model, (spec.size, spec.size))
        fns = {"eager": eval_forward(model, x, False)}
        if compile_model:
            torch._dynamo.reset()
            fns["torch.compile"] = eval_forward(torch.compile(model), x, False)
        if device.type == "cpu":
            runner = onnx_runner(model, x, workdir)
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


# a finished run re-measured (scripts/latency.py): tighter than a run's own measurements, which it checks
REMEASURE = Precision(rounds=50, warmup=5, tolerance=0.005, max_seconds=30.0)


def exported_latency(run_dir: Path, onnx_file: Path, batch: int = 1,
                     precision: Precision = REMEASURE) -> dict[str, Any]:
    """The exported network of finished run ``run_dir`` (``onnx_file``, from scripts/export.py) against
    its backbone unpruned (same architecture and head, exported alike), in onnxruntime on CPU, timed
    interleaved at ``batch`` (sessions without spin-waiting), to ``precision``: ms, and the median of the
    per-round ratios with its 95 % interval."""
    import onnxruntime as ort

    from spa.deploy import load_run
    from spa.export import write_onnx
    from spa.models import create_backbone, load_model_file
    from spa.pruning.latency import ort_options
    run = load_run(run_dir)
    spec = load_model_file(Path(run_dir) / "model.pt", mmap=True)["backbone"]
    dense, _ = create_backbone(spec["timm_name"], len(run.classes), cifar_stem=spec["cifar_stem"],
                               kwargs=spec["kwargs"])
    x = torch.randn(batch, 3, run.image_size, run.image_size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        dense_file = Path(tmp) / "dense.onnx"
        write_onnx(dense.eval(), torch.zeros(2, *x.shape[1:]), dense_file, {})
        sessions = {name: ort.InferenceSession(str(path), ort_options(), providers=["CPUExecutionProvider"])
                    for name, path in (("dense", dense_file), ("pruned", Path(onnx_file)))}
        feeds = {name: {s.get_inputs()[0].name: x.numpy()} for name, s in sessions.items()}
        run = {name: (lambda s=s, f=feeds[name]: s.run(None, f)) for name, s in sessions.items()}
        measured = timed_ratio(run["pruned"], run["dense"], torch.device("cpu"), precision)
    return {"run_dir": str(run_dir), "file": str(onnx_file), "runtime": "onnxruntime", "batch": batch,
            "threads": torch.get_num_threads(), "rounds": measured.rounds, "dense_ms": 1e3 * measured.reference_s,
            "pruned_ms": 1e3 * measured.seconds, "ratio": measured.ratio, "interval": measured.interval}
