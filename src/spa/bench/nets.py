"""The networks the benchmarks measure (seeded random weights) and the pruned versions of them
that a run's schedule leaves."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from spa.models import BackboneSpec, create_backbone
from spa.pruning.dry_run import weight_pruned
from spa.pruning.session import PruningSession
from spa.training.engine import apply_channels_last

SEED = 0    # the random weights every benchmark model starts from (so runs prune the same channels)
@dataclass(frozen=True)
class NetSpec(BackboneSpec):
    """A backbone (10 classes unless said) and the input size it is measured at."""
    num_classes: int = 10
    size: int = 224
RESNET50 = NetSpec("ResNet-50, 224 px", "resnet50", size=224)
RESNET50_CIFAR = NetSpec("ResNet-50, CIFAR stem, 32 px", "resnet50", cifar_stem=True, size=32)
DEIT_S = NetSpec("DeiT-S/16, 224 px", "deit_small_patch16_224", size=224)
LITE0 = NetSpec("EfficientNet-Lite0, 224 px", "tf_efficientnet_lite0", size=224)
MOBILENETV2 = NetSpec("MobileNetV2, 224 px", "mobilenetv2_100", size=224)
NETS = (RESNET50, RESNET50_CIFAR, DEIT_S, LITE0, MOBILENETV2)
# the inference target (latency ratio within TARGET x the MACs ratio at 30 % density) is checked on these
INFERENCE_TARGETS = (RESNET50.label, LITE0.label, MOBILENETV2.label)
DENSITIES = (1.0, 0.7, 0.5, 0.3, 0.1)
# (name, adapter kind, options) of the adapter comparisons
ADAPTERS = (("splora_r8", "splora", {"rank": 8}), ("splora_r32", "splora", {"rank": 32}), ("sppara", "sppara", {}))
AUTHORS_LIBRARY = "structured-pruning-adapters"


def bench_input(spec: NetSpec, batch: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, 3, spec.size, spec.size, generator=torch.Generator().manual_seed(SEED)).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def with_layout(model: nn.Module, channels_last: bool) -> nn.Module:
    """The run's layout: :func:`apply_channels_last` where asked (its CPU exceptions included)."""
    return apply_channels_last(model, next(model.parameters()).device) if channels_last else model


def dense_model(spec: NetSpec, device: torch.device) -> nn.Module:
    torch.manual_seed(SEED)
    model, _ = create_backbone(spec.timm_name, spec.num_classes, cifar_stem=spec.cifar_stem,
                               kwargs=dict(spec.kwargs))
    return model.to(device)


def adapter_applies(kind: str, spec: NetSpec) -> bool:
    """SPPaRA adapts convolutions only: not a ViT/DeiT."""
    return not (kind == "sppara" and spec.timm_name.startswith(("deit", "vit")))


def pruned_versions(spec: NetSpec, densities=DENSITIES, adapter: str = "finetune", adapter_options: dict | None = None,
                    device: torch.device | None = None, round_to: int = 1,
                    tolerance: float = 0.01) -> Iterator[tuple[float, nn.Module, PruningSession]]:
    """Yield ``(density, model, session)`` at each density of ``densities`` as :func:`weight_pruned`
    prunes ``spec`` in 10 % steps (the same groups and budgets as a run; seeded random weights, so
    which channels go differs from a trained network, but not how many). A density is taken at
    the first step within ``tolerance`` of it; one the schedule cannot reach gets the last model."""
    wanted = sorted(densities, reverse=True)
    session = model = None
    for _, session, model in weight_pruned(spec, adapter, adapter_options, 0.1, min(wanted), (spec.size, spec.size),
                                           device, round_to=round_to, seed=SEED):
        while wanted and session.density <= wanted[0] + tolerance:
            wanted.pop(0)
            yield round(session.density, 3), model, session
    for _ in wanted:
        yield round(session.density, 3), model, session


def masked_copy(model: nn.Module, masked: nn.Module) -> nn.Module:
    """What the paper's code ran: the dense network with the pruned filters' weights zeroed (same
    shapes, same cost): ``masked`` (a dense network) with, layer by layer, as many conv/linear
    output rows zeroed as ``model`` removed."""
    widths = {n: m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    with torch.no_grad():
        for name, module in masked.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and name in widths:
                module.weight[widths[name]:] = 0
    return masked
