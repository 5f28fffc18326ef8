"""Timing and memory probes: median latency of a forward pass, peak memory of a call, the bytes
autograd saves. Everything is timed interleaved with ``spa.utils.timed``."""
from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from spa.training.engine import autocast_context
from spa.utils import timed


def last_item(items: Iterable[Any]) -> Any:
    """The last item of an iterable (a generator of pruned versions: only the last one is kept)."""
    return deque(items, maxlen=1)[0]


def eval_forward(model: nn.Module, x: torch.Tensor, amp: bool) -> Callable[[], Any]:
    model.eval()

    def run():
        with torch.no_grad(), autocast_context(x.device, amp):
            model(x)
    return run


def latency(model: nn.Module, x: torch.Tensor, repeats: int = 10, warmup: int = 2, amp: bool = False) -> float:
    """Median seconds of one forward pass of ``x`` in eval mode, after ``warmup`` passes."""
    return timed({"model": eval_forward(model, x, amp)}, x.device, repeats, warmup)["model"]


def trim_malloc() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def proc_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Bytes by which one call of ``fn`` raises memory use at its peak: allocated CUDA memory on a
    GPU; on Linux CPUs the process's peak resident set (reset through /proc/self/clear_refs, after
    handing freed heap back with malloc_trim). None where neither can be read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    trim_malloc()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    before = proc_kib("VmRSS")
    fn()
    peak = proc_kib("VmHWM")
    return None if before is None or peak is None else 1024 * (peak - before)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: bool = False) -> int:
    """Bytes of the distinct tensors autograd keeps from one training forward for the backward
    pass (parameters excluded): the activation memory of a step, exactly, on any device."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_context(x.device, amp):
        F.cross_entropy(model(x), y)
    return sum(storages.values())
