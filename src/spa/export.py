"""Export the deployable network of a finished run (``model.pt``: fused, pruned, plain timm) for
runtimes other than eager PyTorch (``scripts/export.py``):

- ``onnx``: ``torch.onnx.export`` (the torch.export-based exporter), dynamic batch, input ``image``,
  output ``logits``; checked in onnxruntime (CPU) against PyTorch before the file is kept;
- ``exported``: a ``torch.export`` program (``torch.export.save``), dynamic batch;
- ``torchscript``: ``torch.jit.trace`` (deprecated by PyTorch, kept for runtimes that still read it).

Each file carries what a prediction needs (``spa.export/1`` metadata: classes, input size, the
normalisation and transform style of the run, the run it came from): ONNX as metadata properties,
the others as an extra file ``spa.json``. ``load_export`` reads any of them back as a callable.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spa.deploy import load_run, read_images
from spa.pruning.latency import onnx_program
from spa.utils import atomic_write_text

FORMATS = {"onnx": ".onnx", "exported": ".pt2", "torchscript": ".ts"}
EXPORT_FORMAT = "spa.export/1"
META_FILE = "spa.json"
# max |Δ logit| between the exported file and PyTorch on the check batch, relative to max(1, max |logit|):
# two runtimes' float32 kernels differ by rounding that grows with the logits' size and the CPU's kernel set
TOLERANCE = 1e-4


def export_metadata(run_dir: str | Path, run=None) -> dict[str, Any]:
    """What a prediction from the exported file needs, from the run's records (``run``: its
    :func:`~spa.deploy.load_run`, when loaded already)."""
    run = run or load_run(run_dir)
    return {"format": EXPORT_FORMAT, "run_dir": str(Path(run_dir).resolve()), "classes": run.classes,
            "image_size": run.image_size, "transform": run.transform_style,
            "mean": list(run.normalization["mean"]), "std": list(run.normalization["std"]),
            "timm_name": run.timm_name}


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None,
               check: torch.Tensor | list[Path] | None = None, tolerance: float = TOLERANCE) -> tuple[Path, float]:
    """Export run ``run_dir`` as ``fmt`` (:data:`FORMATS`) to ``out`` (default ``<run_dir>/model<suffix>``),
    its metadata also in ``<out>.json``; returns the path and the max |Δ logit| against PyTorch on
    ``check`` (a batch, or image files read with the run's test transform; default: a seeded random batch
    of 3 at the run's input size). A difference above ``tolerance`` × max(1, max |logit|) removes the file
    and raises."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out) if out is not None else Path(run_dir) / f"model{FORMATS[fmt]}"
    if out.suffix != FORMATS[fmt]:        # the suffix tells load_export (and predict.py) how to read the file
        raise ValueError(f"--out {out}: a {fmt} file must end in {FORMATS[fmt]}, e.g. {out.with_suffix(FORMATS[fmt])}")
    run = load_run(run_dir)
    size = run.image_size
    if check is None:
        check = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    elif not isinstance(check, torch.Tensor):
        check = read_images(list(check), run.transform)
    meta = export_metadata(run_dir, run)
    diff = export_model(run.model, fmt, out, meta, check, tolerance, what=str(run_dir))
    write_metadata_sidecar(out, meta)
    return out, diff


def export_model(model: torch.nn.Module, fmt: str, out: Path, meta: dict[str, Any], check: torch.Tensor,
                 tolerance: float = TOLERANCE, what: str = "the model") -> float:
    """Export the plain (fused, pruned) ``model`` in eval mode as ``fmt`` to ``out`` with ``meta``, then
    compare the file's logits with PyTorch's on ``check``; returns the max |difference| (above
    ``tolerance`` × max(1, max |logit|): the file is removed and RuntimeError raised)."""
    model = model.eval()
    example = torch.zeros(2, *check.shape[1:])
    try:
        _EXPORTERS[fmt](model, example, out, meta)
    except Exception as err:   # name what failed and what else works
        others = [f for f in FORMATS if f != fmt]
        first = (str(err).splitlines() or [""])[0]
        raise RuntimeError(f"exporting {what} as {fmt} failed ({type(err).__name__}: {first}); "
                           f"try --format {' or '.join(others)}") from err
    with torch.no_grad():
        reference = model(check).float().numpy()
    got = load_export(out)[0](check.numpy())
    diff = float(np.abs(got - reference).max())
    allowed = tolerance * max(1.0, float(np.abs(reference).max()))
    if not diff <= allowed:
        out.unlink(missing_ok=True)
        raise RuntimeError(f"the {fmt} export of {what} differs from PyTorch by {diff:.2e} (> {allowed:.2g}: "
                           f"{tolerance:g} of max(1, max |logit|)) "
                           f"on the check batch; the file was removed. Try another --format.")
    return diff


def write_onnx(model, example, out: Path, meta: dict) -> None:
    """``model`` as ONNX at ``out`` (dynamic batch, input ``image``, output ``logits``), ``meta`` in its properties."""
    import onnx
    proto = onnx_program(model, example).model_proto
    onnx.helper.set_model_props(proto, {"spa": json.dumps(meta)})
    tmp = out.with_suffix(out.suffix + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(out)


def _exported(model, example, out: Path, meta: dict) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(out), extra_files={META_FILE: json.dumps(meta)})


def _torchscript(model, example, out: Path, meta: dict) -> None:
    import warnings
    with warnings.catch_warnings():      # deprecated by PyTorch, said in the module docstring
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(out), _extra_files={META_FILE: json.dumps(meta)})


_EXPORTERS: dict[str, Callable] = {"onnx": write_onnx, "exported": _exported, "torchscript": _torchscript}


def load_export(path: str | Path, threads: int | None = None) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                                        dict[str, Any]]:
    """``(predict, metadata)`` of an exported file: ``predict(batch float32 NCHW) -> logits``, with
    onnxruntime (CPU; ``threads`` intra-op threads, default its own choice) for ONNX, PyTorch for the others."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx
        import onnxruntime as ort
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return (lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]), \
            json.loads(meta.get("spa", "{}"))
    if path.suffix == ".pt2":
        files = {META_FILE: ""}
        program = torch.export.load(str(path), extra_files=files)
        module = program.module()
    elif path.suffix == ".ts":
        import warnings
        files = {META_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), _extra_files=files)
    else:
        raise ValueError(f"{path}: not an exported file (.onnx, .pt2 or .ts from scripts/export.py)")

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()
    return predict, json.loads(files[META_FILE] or "{}")


def write_metadata_sidecar(path: Path, meta: dict) -> Path:
    """``<file>.json`` beside an export: the same metadata, readable without the runtime."""
    sidecar = path.with_suffix(path.suffix + ".json")
    atomic_write_text(sidecar, json.dumps(meta, indent=2) + "\n")
    return sidecar
