"""Learned / total / deployable parameters of backbones × adapters, without training."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from spa.adapters import apply_adapter
from spa.metrics import count_parameters
from spa.models import BackboneSpec, create_backbone, save_model_file
from spa.pruning.dry_run import weight_pruned
from spa.saved import save_task
from spa.utils import package_versions


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    kind: str
    options: tuple = ()


DEFAULT_BACKBONES = (
    BackboneSpec("ResNet-50, CIFAR stem, 10 classes (Table 1)", "resnet50", 10, cifar_stem=True),
    BackboneSpec("ResNet-50, 102 classes (Flowers)", "resnet50", 102),
    BackboneSpec("VGG-16, 10 classes", "vgg16", 10),
    BackboneSpec("DeiT-S/16, 10 classes", "deit_small_patch16_224", 10),
    BackboneSpec("EfficientNet-Lite0, 10 classes", "tf_efficientnet_lite0", 10),
    BackboneSpec("MobileNetV2, 10 classes", "mobilenetv2_100", 10),
)
DEFAULT_ADAPTERS = (
    AdapterSpec("finetune", "finetune"),
    AdapterSpec("splora_r32", "splora", (("rank", 32),)),
    AdapterSpec("splora_r8", "splora", (("rank", 8),)),
    AdapterSpec("sppara", "sppara"),
)
# the parameter table adds the block SPA, which is not channel-pruned (budget curves use DEFAULT_ADAPTERS)
TABLE_ADAPTERS = (*DEFAULT_ADAPTERS, AdapterSpec("splopa_r64", "splopa", (("num_prototypes", 64),)))


def parameter_table(backbones=DEFAULT_BACKBONES, adapters=TABLE_ADAPTERS, file_sizes: bool = True) -> pd.DataFrame:
    """One row per (backbone, adapter): learned / total / deployable parameters and, with
    ``file_sizes``, the bytes of the plain model file and of the per-task file (fine-tuning's task
    is the whole model)."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for bb in backbones:
            model_bytes = None
            for ad in adapters:
                model, _ = create_backbone(bb.timm_name, bb.num_classes, cifar_stem=bb.cifar_stem,
                                           kwargs=dict(bb.kwargs))
                if file_sizes and model_bytes is None:
                    model_bytes = save_model_file(model, Path(tmp) / "model.pt", timm_name=bb.timm_name,
                                                  cifar_stem=bb.cifar_stem, kwargs=dict(bb.kwargs),
                                                  classes=[]).stat().st_size
                try:
                    apply_adapter(model, ad.kind, **dict(ad.options))
                except ValueError:          # e.g. SPPaRA (convs only) on a transformer
                    continue
                counts = count_parameters(model)
                row = {"backbone": bb.label, "adapter": ad.name, "learned": counts.learned,
                       "total": counts.total, "deployable": counts.deployable,
                       "learned_pct": 100.0 * counts.learned / counts.deployable}
                if file_sizes:
                    task_bytes = model_bytes if ad.kind == "finetune" else save_task(
                        model, Path(tmp) / "task.pt", adapter={"kind": ad.kind, "options": dict(ad.options)}
                    ).stat().st_size
                    row.update(model_mb=model_bytes / 2**20, task_mb=task_bytes / 2**20,
                               model_to_task=model_bytes / task_bytes)
                rows.append(row)
    return pd.DataFrame(rows)


def parameter_markdown(table: pd.DataFrame) -> str:
    shown = table.assign(**{c: table[c].map("{:,}".format) for c in ("learned", "total", "deployable")},
                         learned_pct=table["learned_pct"].map("{:.2f}".format))
    if "task_mb" in table:
        shown = shown.assign(model_mb=table["model_mb"].map("{:.1f}".format),
                             task_mb=table["task_mb"].map("{:.2f}".format),
                             model_to_task=table["model_to_task"].map("{:.1f}×".format))
    shown = shown.rename(columns={"learned_pct": "learned / deployable (%)", "model_mb": "model file (MiB)",
                                  "task_mb": "task file (MiB)", "model_to_task": "model / task file"})
    # MACs and the model files depend on the installed torch: say which one made them
    return f"torch {package_versions()['torch']}\n\n" + shown.to_markdown(index=False, disable_numparse=True) + "\n"


def budget_curve(backbone: BackboneSpec = DEFAULT_BACKBONES[0], adapters=DEFAULT_ADAPTERS, step_fraction: float = 0.1,
                 target_density: float = 0.1, input_size: tuple[int, int] = (32, 32)) -> pd.DataFrame:
    """Learned / deployable parameters and MACs of each adapter on ``backbone`` at every density of
    a pruning schedule, without training or data (:func:`weight_pruned`). One row per (adapter, step)."""
    from spa.pruning.session import count_macs

    rows: list[dict[str, Any]] = []
    for ad in adapters:
        try:
            for step, session, model in weight_pruned(backbone, ad.kind, dict(ad.options), step_fraction,
                                                      target_density, input_size):
                counts = count_parameters(model)
                rows.append({"backbone": backbone.label, "adapter": ad.name, "step": step,
                             "density": round(session.density, 4), "learned": counts.learned,
                             "deployable": counts.deployable, "macs": count_macs(model, input_size)})
        except ValueError:          # e.g. SPPaRA (convs only) on a transformer
            continue
    return pd.DataFrame(rows)
