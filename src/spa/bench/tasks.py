"""One base, many tasks: switching a task bank's model against loading full model files, and the
memory of each."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from spa.adapters import apply_adapter, fuse
from spa.bench.nets import NetSpec, bench_input, dense_model
from spa.bench.timing import proc_kib, trim_malloc
from spa.models import create_backbone
from spa.utils import timed

TASK_COUNTS = (1, 4, 16)


def task_files(spec: NetSpec, count: int, workdir: Path) -> tuple[nn.Module, list[Path], list[Path]]:
    """The dense base of ``spec`` (seeded random weights), ``count`` SPLoRA-r8 task files trained on it
    (drawn at random: only their sizes and shapes matter here) and each task's full model file."""
    import logging

    from spa.models.backbones import save_model_file
    from spa.saved import save_task
    base = dense_model(spec, torch.device("cpu")).eval()
    tasks, fulls = [], []
    adapters_log = logging.getLogger("spa.adapters")
    level = adapters_log.level
    for i in range(count):
        adapters_log.setLevel(logging.ERROR if i else level)      # the stem's rank note once, not once per task
        try:
            model = apply_adapter(copy.deepcopy(base), "splora", rank=8)
        finally:
            adapters_log.setLevel(level)
        generator = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn(p.shape, generator=generator))
        tasks.append(save_task(model.eval(), workdir / f"task_{i}.pt", base={"timm_name": spec.timm_name},
                               adapter={"kind": "splora", "options": {"rank": 8}}))
        fulls.append(save_model_file(fuse(model), workdir / f"model_{i}.pt", timm_name=spec.timm_name,
                                     cifar_stem=spec.cifar_stem, kwargs=dict(spec.kwargs),
                                     classes=[str(c) for c in range(spec.num_classes)]))
    return base, tasks, fulls


def resident_after(kind: str, spec: NetSpec, paths: list[str], queue) -> None:
    """Child process: the resident set added by holding ``paths`` as a task bank (one base + the task
    files) or as full models, after importing everything; put on ``queue``."""
    from spa.saved import TaskBank
    trim_malloc()
    before = proc_kib("VmRSS")
    if kind == "bank":
        bank = TaskBank(dense_model(spec, torch.device("cpu")))
        for i, path in enumerate(paths):
            bank.register(str(i), path)
        held = [bank, bank.model("0")]
    else:
        held = [create_backbone(spec.timm_name, spec.num_classes, weights=path)[0] for path in paths]
    trim_malloc()
    queue.put(1024 * (proc_kib("VmRSS") - before))
    del held


def task_switching(spec: NetSpec, device: torch.device, repeats: int, warmup: int, workdir: Path,
                   counts=TASK_COUNTS) -> list[dict[str, Any]]:
    """One base, many tasks: the time of switching a bank's model to another task against loading a
    full model file, whether A -> B -> A gives A's outputs exactly, and the memory of a bank with N task
    files against N full models (the resident set each adds in a fresh process, and the exact bytes of
    the tensors each holds)."""
    import multiprocessing

    from spa.saved import TaskBank, load_task
    base, tasks, fulls = task_files(spec, max(counts), workdir)
    bank = TaskBank(base)
    for i, path in enumerate(tasks):
        bank.register(str(i), path)
    x = bench_input(spec, 2, torch.device("cpu"), False)
    a = bank.predict("0", x)
    bank.predict("1", x)
    exact = torch.equal(bank.predict("0", x), a) and torch.equal(a, load_task(base, tasks[0]).eval()(x).detach())
    turn = {"i": 0}

    def switch():
        turn["i"] = 1 - turn["i"]
        bank.model(str(turn["i"]))
    times = timed({"switch a task": switch,
                   "load a full model file": lambda: create_backbone(spec.timm_name, spec.num_classes,
                                                                     weights=str(fulls[0]))},
                  torch.device("cpu"), repeats, warmup)
    param_bytes = sum(t.numel() * t.element_size() for t in base.state_dict().values())
    task_bytes = [sum(t.numel() * t.element_size() for t in torch.load(p, weights_only=True)["state"].values())
                  for p in tasks]
    context = multiprocessing.get_context("spawn")
    rows = [{"network": spec.label, "measurement": "time", "what": name, "tasks": None, "seconds": seconds,
             "ratio": seconds / times["load a full model file"], "exact_after_switching": exact}
            for name, seconds in times.items()]
    for count in counts:
        resident = {}
        for kind, paths in (("bank", tasks[:count]), ("full", fulls[:count])):
            queue = context.Queue()
            child = context.Process(target=resident_after, args=(kind, spec, [str(p) for p in paths], queue))
            child.start()
            resident[kind] = queue.get(timeout=600)
            child.join()
        held = {"bank": param_bytes + sum(task_bytes[:count]), "full": param_bytes * count}
        for kind, label in (("bank", f"base + {count} task files"), ("full", f"{count} full models")):
            rows.append({"network": spec.label, "measurement": "memory", "what": label, "tasks": count,
                         "resident_bytes": resident[kind], "tensor_bytes": held[kind],
                         "ratio": held[kind] / held["full"], "exact_after_switching": exact})
    return rows
