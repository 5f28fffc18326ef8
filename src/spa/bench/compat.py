"""Which timm models the whole chain works on, stage by stage: build (random init) -> adapt -> count
-> prune (one 30 % step, weight criterion; and Taylor on a random batch) -> forward -> fuse -> export
(ONNX) -> ort (onnxruntime against PyTorch) -> speed (onnxruntime latency, dense against pruned,
beside the MACs ratio). A stage that fails records its error's class and first line; the model's
later stages are not run. ``scripts/compat.py`` writes the matrix."""
from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from spa.adapters import adapter_layers, apply_adapter, fuse
from spa.adapters.convert import DEFAULT_EXCLUDE
from spa.bench.deployment import onnx_session
from spa.metrics import count_parameters
from spa.models.heads import head_names
from spa.pruning.importance import CRITERIA
from spa.pruning.schedule import Plan
from spa.pruning.session import PruningSession, count_macs
from spa.utils import timed

log = logging.getLogger(__name__)

STAGES = ("build", "adapt", "count", "prune", "forward", "fuse", "export", "ort", "speed")
COLUMNS = ["model", "family", "adapter", *STAGES[:6], "fuse_max_abs", "export", "ort", "ort_max_abs", "macs_ratio",
           "latency_ratio", "left_out", "error"]
STAGE_COLUMNS = [s for s in STAGES if s in COLUMNS]     # speed: its ratios, or its error
TOLERANCE = 1e-4          # fuse and ort: max abs difference of the logits, fp32
FLEXIBLE_SIZE = 96        # a model that takes any input size is measured at this size
CLASSES, BATCH, PRUNE_FRACTION = 10, 2, 0.3
# (adapter column, adapter kind, options, whether it is channel-pruned)
ADAPTERS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "splora_r8": ("splora", {"rank": 8}, True),
    "sppara": ("sppara", {}, True),
    "lora_r8": ("splora", {"rank": 8}, False),
    "splopa": ("splopa", {"num_prototypes": 8, "block_shape": [16, 16]}, False),
}
# (family, timm name): at least one model of every family the matrix covers; small variants
MODELS: tuple[tuple[str, str], ...] = (
    ("ResNet", "resnet18"), ("ResNet", "resnet26d"), ("ResNeXt", "resnext26ts"), ("Wide-ResNet", "wide_resnet50_2"),
    ("RegNet", "regnetx_002"), ("RegNet", "regnety_002"), ("VGG", "vgg11_bn"), ("DenseNet", "densenet121"),
    ("EfficientNet", "efficientnet_b0"), ("EfficientNet", "tf_efficientnet_lite0"), ("MobileNet", "mobilenetv2_050"),
    ("MobileNet", "mobilenetv3_small_050"), ("MNASNet", "mnasnet_050"), ("GhostNet", "ghostnet_050"),
    ("RexNet", "rexnet_100"), ("ConvNeXt", "convnext_atto"), ("ConvNeXt", "convnextv2_atto"),
    ("RepVGG / MobileOne", "repvgg_a0"), ("RepVGG / MobileOne", "mobileone_s0"), ("ViT", "vit_tiny_patch16_224"),
    ("DeiT", "deit_tiny_patch16_224"), ("DeiT", "deit_tiny_distilled_patch16_224"),
    ("Swin", "swin_tiny_patch4_window7_224"), ("LeViT", "levit_128s"), ("MobileViT", "mobilevit_xxs"),
    ("EfficientFormer", "efficientformer_l1"), ("PoolFormer", "poolformer_s12"), ("MLP-Mixer", "mixer_s16_224"),
    ("CoaT / PVT", "coat_lite_tiny"), ("CoaT / PVT", "pvt_v2_b0"), ("EdgeNeXt", "edgenext_xx_small"),
    ("DLA", "dla34"), ("CSPNet", "cspresnet50"), ("Res2Net", "res2net50_26w_4s"), ("LCNet", "lcnet_050"),
    ("FBNet", "fbnetc_100"), ("MixNet", "mixnet_s"), ("TinyNet", "tinynet_e"), ("EfficientViT", "efficientvit_b0"),
    ("FastViT", "fastvit_t8"), ("TinyViT", "tiny_vit_5m_224"), ("XCiT", "xcit_nano_12_p16_224"),
    ("ConViT", "convit_tiny"), ("ResMLP", "resmlp_12_224"),
)


def passes(row: dict[str, Any]) -> bool:
    """Every stage ok (or not applicable) and no error recorded."""
    return all(row[s] in ("ok", "n/a") for s in STAGE_COLUMNS) and not row["error"]


class StageError(Exception):
    """A stage that ran but got the wrong answer (a difference above tolerance, a count that differs)."""


@dataclass
class Row:
    model: str
    family: str
    adapter: str
    cells: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "family": self.family, "adapter": self.adapter,
                **{c: self.cells.get(c, "") for c in COLUMNS[3:]}}


def input_size(model: nn.Module) -> int:
    """The model's own input size where it is fixed (timm's ``fixed_input_size``), else :data:`FLEXIBLE_SIZE`."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1]) if cfg.get("fixed_input_size") else FLEXIBLE_SIZE


def perturb(model: nn.Module, seed: int = 0, scale: float = 0.01) -> None:
    """Move every trainable tensor off its initial value (seeded), so that an adapter's update is not
    near zero and fusing it is tested on real numbers."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def left_out(model: nn.Module, adapted: set[str]) -> list[str]:
    """Conv / Linear layers outside the head and the default exclusions that carry no adapter."""
    skip = [*head_names(model), *DEFAULT_EXCLUDE]
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in adapted
            and not any(n == s or n.startswith(s + ".") for s in skip)]


def formula_terms(layer: nn.Module, rank: int | None) -> int | None:
    """A channel SPA's learned update as the formula counts it from the layer's weight (out × in per
    group): SPLoRA r·(in + out), SPPaRA out·in (docs/method.md §1); None for other kinds."""
    out, inp = int(layer.weight.shape[0]), int(layer.weight.shape[1])
    if hasattr(layer, "P"):
        return out * inp
    if rank is not None and hasattr(layer, "A") and hasattr(layer, "B") and not hasattr(layer, "bank"):
        return rank * (inp + out)
    return None


def independent_count(model: nn.Module, rank: int | None) -> int:
    """Learned parameters counted without :func:`spa.metrics.count_parameters`: each adapted layer's
    update by :func:`formula_terms` (its tensors where no formula applies), plus every other distinct
    trainable tensor once."""
    total, counted = 0, set()
    for layer in adapter_layers(model).values():
        terms = formula_terms(layer, rank)
        tensors = layer.adapter_parameters()
        total += terms if terms is not None else sum(t.numel() for t in tensors if id(t) not in counted)
        counted.update(id(t) for t in tensors)
    return total + sum(p.numel() for p in {id(p): p for p in model.parameters()
                                           if p.requires_grad and id(p) not in counted}.values())


def prune_step(model: nn.Module, size: int, criterion: str, batch: tuple[torch.Tensor, torch.Tensor]) -> PruningSession:
    """One step removing :data:`PRUNE_FRACTION` of the filters (global ranking); the session after it."""
    session = PruningSession(model, torch.zeros(1, 3, size, size))
    plan = Plan(session.original_filters, PRUNE_FRACTION, 1 - PRUNE_FRACTION)
    session.step(1, plan, CRITERIA[criterion](), [batch], torch.device("cpu"), 1)
    return session


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def check_model(name: str, family: str, adapter: str, workdir: Path, repeats: int = 10,
                progress: Callable[[str], None] = lambda stage: None) -> Row:
    """Every stage of one (model, adapter); the first failure ends the row. ``progress(stage)`` is
    called as each stage starts."""
    row = Row(name, family, adapter)
    state: dict[str, Any] = {}
    for stage in STAGES:
        if stage == "prune" and not ADAPTERS[adapter][2]:
            row.cells[stage] = "n/a"
            continue
        progress(stage)
        try:
            STAGE_FUNCTIONS[stage](row, state, workdir, repeats)
            row.cells.setdefault(stage, "ok")
        except Exception as err:      # noqa: BLE001 (recorded, and the matrix goes on to the next model)
            first = (str(err).strip().splitlines() or ["out of the process's capped address space"
                                                        if isinstance(err, MemoryError) else ""])[0][:160]
            row.cells[stage] = type(err).__name__
            row.cells["error"] = f"{stage}: {type(err).__name__}: {first}"
            log.warning("%s / %s: %s", name, adapter, row.cells["error"])
            break
    return row


@torch.no_grad()
def calibrate(model: nn.Module, size: int, batches: int = 2, batch: int = 8) -> None:
    """BatchNorm statistics from a few random batches (their plain average), as training would leave
    them: at init (mean 0, variance 1) activations of a deep residual net grow layer by layer, and
    logits of 1e5 and more make any fp32 difference meaningless (MobileOne's reached 1e9)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None           # a cumulative average over the batches
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(batches):
        model(torch.randn(batch, 3, size, size, generator=generator))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def _build(row: Row, state: dict[str, Any], workdir: Path, repeats: int) -> None:
    torch.manual_seed(0)
    model = timm.create_model(row.model, pretrained=False, num_classes=CLASSES).eval()
    size = input_size(model)
    calibrate(model, size)
    state.update(base=model, size=size, x=torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0)))


def _adapt(row: Row, state: dict[str, Any], workdir: Path, repeats: int) -> None:
    kind, options, _ = ADAPTERS[row.adapter]
    model = apply_adapter(copy.deepcopy(state["base"]), kind, **options)
    perturb(model)
    missing = left_out(model, set(adapter_layers(model)))
    row.cells["left_out"] = len(missing)
    if missing:
        log.info("%s / %s: %d layers left without an adapter: %s", row.model, row.adapter, len(missing), missing[:8])
    state["model"] = model.eval()


def _count(row: Row, state: dict[str, Any], workdir: Path, repeats: int) -> None:
    rank = ADAPTERS[row.adapter][1].get("rank")
    ours, independent = count_parameters(state["model"]).trainable, independent_count(state["model"], rank)
    if ours != independent:
        raise StageError(f"learned parameters {ours} != {independent} trainable tensor elements")


def _prune(row: Row, state: dict[str, Any], workdir: Path, repeats: int) -> None:
    x, size = state["x"], state["size"]
    batch = (x, torch.arange(BATCH) % CLASSES)
    prune_step(copy.deepcopy(state["model"]), size, "taylor", batch)      # Taylor on a random batch, on a copy
    state["dense"] = fuse(copy.deepcopy(state["model"])).eval()
    session = prune_step(state["model"], size, "weight", batch)
    unpruned = session.left_out()
    row.cells["left_out"] = row.cells.get("left_out", 0) + len(unpruned)
    if unpruned:
        log.info("%s / %s: %d layers or channel groups never pruned (%s structure): %s", row.model, row.adapter,
                 len(unpruned), session.structure.name, unpruned[:8])
    if not session.density < 1:
        raise StageError("the step removed nothing")


def _forward(row: Row, state: dict[str, Any], workdir: Path, repeats: int) -> None:
    """The adapted model's logits with its adapters in their training form (``W x + B(A x)``, not the
    fused weight they cache in eval) and everything else in eval: the reference fuse and ort are
    checked against, so that a wrong fusion cannot agree with itself."""
    model = state["model"].eval()
    for layer in adapter_layers(model).values():
        layer.train()
    with torch.no_grad():
        out = model(state["x"])
    model.eval()
    if out.shape != (BATCH, CLASSES) or not torch.isfinite(out).all():
        raise StageError(f"output {tuple(out.shape)}, finite: {bool(torch.isfinite(out).all())}")
    state["out"] = out


def _fuse(row: Row, state: dict[str, Any], workdir: Path, repeats: int) -> None:
    state["fused"] = fuse(copy.deepcopy(state["model"])).eval()
    with torch.no_grad():
        diff = max_abs(state["fused"](state["x"]), state["out"])
    row.cells["fuse_max_abs"] = f"{diff:.2e}"
    if diff > TOLERANCE:
        raise StageError(f"fused model differs by {diff:.2e} > {TOLERANCE:g}")


def _export(row: Row, state: dict[str, Any], workdir: Path, repeats: int) -> None:
    state["run"] = onnx_session(state["fused"], state["x"], workdir)


def _ort(row: Row, state: dict[str, Any], workdir: Path, repeats: int) -> None:
    diff = max_abs(torch.from_numpy(state["run"]()), state["out"])
    row.cells["ort_max_abs"] = f"{diff:.2e}"
    if diff > TOLERANCE:
        raise StageError(f"onnxruntime differs from PyTorch by {diff:.2e} > {TOLERANCE:g}")


def _speed(row: Row, state: dict[str, Any], workdir: Path, repeats: int) -> None:
    if "dense" not in state:          # not pruned (LoRA, SPLoPA): nothing to compare
        row.cells["macs_ratio"] = row.cells["latency_ratio"] = "n/a"
        return
    size = (state["size"], state["size"])
    dense_run = onnx_session(state["dense"], state["x"], workdir)
    seconds = timed({"dense": dense_run, "pruned": state["run"]}, torch.device("cpu"), repeats, 2)
    row.cells["macs_ratio"] = f"{count_macs(state['fused'], size) / count_macs(state['dense'], size):.3f}"
    row.cells["latency_ratio"] = f"{seconds['pruned'] / seconds['dense']:.3f}"


STAGE_FUNCTIONS: dict[str, Callable[[Row, dict[str, Any], Path, int], None]] = {
    "build": _build, "adapt": _adapt, "count": _count, "prune": _prune, "forward": _forward, "fuse": _fuse,
    "export": _export, "ort": _ort, "speed": _speed}


def _child(name: str, family: str, adapter: str, workdir: str, repeats: int, memory_gib: float, queue) -> None:
    """One (model, adapter) in its own process, its address space capped: a model whose tracing
    explodes fails with MemoryError instead of taking the machine down."""
    import resource
    limit = int(memory_gib * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    row = check_model(name, family, adapter, Path(workdir), repeats, lambda stage: queue.put(("stage", stage)))
    queue.put(("row", row.as_dict()))


def isolated(name: str, family: str, adapter: str, workdir: Path, repeats: int = 10, timeout_s: float = 300,
             memory_gib: float = 12.0) -> dict[str, Any]:
    """:func:`check_model` in a child process with ``timeout_s`` and ``memory_gib`` of address space:
    a child that dies or runs out of time gives a row that names the stage it was in."""
    import multiprocessing
    import queue as queues
    import time
    context = multiprocessing.get_context("spawn")
    channel = context.Queue()
    child = context.Process(target=_child, args=(name, family, adapter, str(workdir), repeats, memory_gib, channel))
    child.start()
    stage, deadline = "build", time.monotonic() + timeout_s
    while True:
        try:
            kind, value = channel.get(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        except queues.Empty:
            if child.is_alive() and time.monotonic() < deadline:
                continue
            reason = (f"TimeoutError: no answer within {timeout_s:.0f} s" if child.is_alive()
                      else f"ChildProcessError: the process died (exit code {child.exitcode})")
            child.kill()
            child.join()
            row = Row(name, family, adapter, {**{s: "" for s in STAGES}, stage: reason.split(":")[0],
                                              "error": f"{stage}: {reason}"})
            for done in STAGES[:STAGES.index(stage)]:
                row.cells[done] = "n/a" if done == "prune" and not ADAPTERS[adapter][2] else "ok"
            log.warning("%s / %s: %s", name, adapter, row.cells["error"])
            return row.as_dict()
        if kind == "stage":
            stage = value
        else:
            child.join()
            return value


def matrix(models=MODELS, adapters=("splora_r8",), workdir: Path | None = None, repeats: int = 10,
           timeout_s: float = 300, memory_gib: float = 12.0) -> list[dict]:
    """One row per (model, adapter), in the order given, each checked in its own process."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, name in models:
            for adapter in adapters:
                if adapter not in ADAPTERS:
                    raise ValueError(f"adapter {adapter!r}: use one of {list(ADAPTERS)}")
                rows.append(isolated(name, family, adapter, Path(workdir or tmp), repeats, timeout_s, memory_gib))
                log.info("%s / %s: %s", name, adapter, {k: v for k, v in rows[-1].items() if k in STAGE_COLUMNS})
    return rows
