"""Small helpers shared by every stage: atomic file writes, seeding, environment facts, module
surgery and interleaved timing."""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import platform
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename.

    A reader never sees a half-written file, and a crash leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temp file and a rename (no half-written checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = torch.cuda.is_available()


_GPU_SLOT: tuple[int, Any] | None = None     # (GPU index, open lock file) held by this process


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step`` of a run seeded ``seed`` (``seed · 1000 + step``: distinct per run
    and step for fewer than 1,000 steps), so a resumed run redoes a step with the same draws."""
    return seed * 1000 + step


def gpu_slot_dir() -> Path:
    """Where the per-GPU lock files live: the machine's temp directory (the locks are per machine)."""
    return Path(os.environ.get("SPA_GPU_SLOT_DIR") or Path(tempfile.gettempdir()) / f"spa-gpu-slots-{os.getuid()}")


def claim_gpu_slot(count: int | None = None, lock_dir: str | Path | None = None, wait_s: float = 5.0) -> int:
    """The index of a GPU that no other process of this machine holds, locked for the rest of this
    process's life (so a launcher worker stays on one GPU). Waits while every GPU is held."""
    global _GPU_SLOT
    if _GPU_SLOT is not None:
        return _GPU_SLOT[0]
    count = torch.cuda.device_count() if count is None else count
    if count < 1:
        raise RuntimeError("device=gpu_slot (launcher=gpus) needs CUDA GPUs and this machine has none; "
                           "use launcher=local, or device=cpu")
    folder = Path(lock_dir) if lock_dir is not None else gpu_slot_dir()
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for index in range(count):
            handle = open(folder / f"gpu{index}.lock", "a")    # "a": a contender must not truncate it
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")   # who holds it, for a human looking
            handle.flush()
            _GPU_SLOT = (index, handle)
            return index
        time.sleep(wait_s)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` are explicit;
    ``gpu_slot`` claims a GPU no other run of this machine holds (:func:`claim_gpu_slot`) and
    makes it this process's current device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "gpu_slot":
        index = claim_gpu_slot()
        torch.cuda.set_device(index)
        return torch.device(f"cuda:{index}")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} was asked for but CUDA is not available; use device=auto or device=cpu")
    return device


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def git_state(root: str | Path) -> dict[str, Any]:
    """The commit SHA and whether the work tree had uncommitted changes (None outside git)."""
    def _git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": None if status is None else bool(status)}


PACKAGES = ("torch", "torchvision", "timm", "hydra-core", "omegaconf", "numpy", "pandas", "spa")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record() -> dict[str, Any]:
    """Which CPU kernels made a result: float32 results differ in their last bits between kernel sets.
    torch picks its kernels by the CPU's instruction set (``cpu_capability``, capped by
    ``ATEN_CPU_CAPABILITY``); oneDNN, which runs the convolutions, by its own check (capped by
    ``ONEDNN_MAX_CPU_ISA``, None when not set: the CPU's best); MKL, which runs the matrix products, by
    its own (``MKL_CBWR``, None when not set; ``COMPATIBLE``: the same code on every x86 CPU)."""
    return {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
            "mkl_cbwr": os.environ.get("MKL_CBWR"), "threads": torch.get_num_threads()}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    """Python and ``names``' versions, and the machine's kernels (:func:`machine_record`)."""
    versions: dict[str, Any] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {**versions, **machine_record()}


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` (dotted) of ``model`` by ``module``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int = 10,
          warmup: int = 2, min_seconds: float = 0.0) -> dict[str, float]:
    """Median seconds of each callable, run interleaved: ``warmup`` rounds, then ``repeats`` rounds
    of one call each, in turn (the order reversed every other round), and more rounds until the timed
    ones add up to ``min_seconds`` (a few passes of a network of a millisecond are mostly noise)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    i, spent = 0, 0.0
    while i < warmup + repeats or spent < min_seconds:
        for name, seconds in _round(fns, device, reverse=i % 2 == 1).items():
            if i >= warmup:
                times[name].append(seconds)
                spent += seconds
        i += 1
    return {name: statistics.median(t) for name, t in times.items()}


def _round(fns: dict[str, Callable[[], Any]], device: torch.device, reverse: bool) -> dict[str, float]:
    """Seconds of one call of each callable, in turn (in reverse order if ``reverse``)."""
    out = {}
    for name, fn in (list(fns.items())[::-1] if reverse else list(fns.items())):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        out[name] = time.perf_counter() - start
    return out


@dataclass(frozen=True)
class Precision:
    """How long a latency ratio is measured (:func:`timed_ratio`): ``warmup`` rounds, then at least
    ``rounds`` rounds and ``min_seconds``, then until the 95 % interval of the ratio is within
    ± ``tolerance`` of it, or ``max_seconds`` have passed."""
    rounds: int = 10
    warmup: int = 2
    tolerance: float = 0.01
    min_seconds: float = 0.2
    max_seconds: float = 10.0


@dataclass(frozen=True)
class Ratio:
    """A measured latency ratio: the median of the per-round ratios, the two callables' median
    seconds, the rounds timed and the 95 % interval's half-width relative to the ratio."""
    ratio: float
    seconds: float
    reference_s: float
    rounds: int
    interval: float


def median_interval(values: list[float]) -> float:
    """Half-width of an approximate 95 % interval of the median of ``values``: 1.96 × 1.2533 ×
    1.4826 × MAD / √n (a normal sample's standard error of the median, with its spread from the median
    absolute deviation, which the outliers of a busy machine move little)."""
    if len(values) < 2:
        return math.inf
    middle = statistics.median(values)
    mad = statistics.median(abs(v - middle) for v in values)
    return 1.96 * 1.2533 * 1.4826 * mad / math.sqrt(len(values))


def timed_ratio(fn: Callable[[], Any], reference: Callable[[], Any], device: torch.device,
                precision: Precision = Precision()) -> Ratio:
    """``fn``'s time over ``reference``'s, timed in interleaved rounds of one call each (the order
    swapped every other round): the median of the per-round ratios, so that a drift of the machine,
    which moves both calls of a round alike, cancels. The rounds go on until ``precision`` is met."""
    fns = {"fn": fn, "reference": reference}
    for i in range(precision.warmup):
        _round(fns, device, reverse=i % 2 == 1)
    times: list[dict[str, float]] = []
    ratios: list[float] = []
    start = time.perf_counter()
    while True:
        times.append(_round(fns, device, reverse=len(times) % 2 == 1))
        ratios.append(times[-1]["fn"] / max(times[-1]["reference"], 1e-12))
        spent = time.perf_counter() - start
        if len(times) < precision.rounds or spent < precision.min_seconds:
            continue
        ratio = statistics.median(ratios)
        interval = median_interval(ratios) / ratio
        if interval <= precision.tolerance or spent >= precision.max_seconds:
            return Ratio(ratio, statistics.median(t["fn"] for t in times),
                         statistics.median(t["reference"] for t in times), len(times), interval)
