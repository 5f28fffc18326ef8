"""``create_backbone``: a timm model with a head for the task's classes and base weights that are
(a) timm's pretrained weights from the hub, (b) ImageNet weights shipped inside a registry package
(``spa.models.weights``, offline), (c) a ``model.pt`` saved by one of our runs, or (d) none.

Weights may declare the input normalisation they were trained with (packaged weights do, and a
``model.pt`` descending from them carries it on); a run then normalises its images with it instead
of the data set's transform style (:func:`declared_normalization`)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from spa.models.heads import classifier_keys, head_names
from spa.utils import atomic_torch_save, sha256_file

log = logging.getLogger(__name__)

MODEL_FORMAT = "spa.model/1"

# gives a fresh model the pruned shape a saved structure records (spa.saved.restore)
Restore = Callable[[nn.Module, dict[str, Any]], Any]


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone as the budget tables and benchmarks name it: a label, the timm model, its class
    count, the CIFAR stem and extra timm keyword arguments (as a tuple of pairs, so it hashes)."""
    label: str
    timm_name: str
    num_classes: int
    cifar_stem: bool = False
    kwargs: tuple = ()


@dataclass
class WeightsInfo:
    """Where a model's starting weights came from (recorded in ``summary.json``)."""
    source: str                 # "pretrained" (hub) | "packaged" | "file" | "none"
    name: str | None = None     # timm tag, e.g. resnet50.tv_in1k, or the packaged entry
    path: str | None = None
    sha256: str | None = None
    package: str | None = None  # packaged weights: the distribution and release that carry the file
    version: str | None = None
    file: str | None = None     # ... and the file inside the package
    license: str | None = None
    normalization: dict[str, Any] | None = None   # {"mean", "std", "source"} when the weights declare one
    head_loaded: bool = False   # the classifier came with the weights (same classes), not new

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_cifar_stem(model: nn.Module) -> nn.Module:
    """The paper's "miniaturised" ResNet stem for 32-px inputs, in place.

    A 7×7/2 ``conv1`` becomes a 3×3/1 conv (padding 1) whose weights are the 7×7 weights
    average-pooled by 2 (7 → 3 taps); a deep stem (timm ``stem_type='deep'``, a Sequential of 3×3
    convs) keeps its weights and gets stride 1 in its first conv. The stem max-pool is removed.
    """
    if not (hasattr(model, "conv1") and hasattr(model, "maxpool")):
        raise ValueError(f"backbone.cifar_stem=true needs a ResNet (conv1 + maxpool); {type(model).__name__} has none")
    conv = model.conv1
    if isinstance(conv, nn.Conv2d):
        if conv.kernel_size != (7, 7):
            raise ValueError(f"CIFAR stem expects a 7x7 conv1, got {conv.kernel_size}")
        new = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1,
                        bias=conv.bias is not None).to(conv.weight.device, conv.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(F.avg_pool2d(conv.weight, kernel_size=2))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        model.conv1 = new
    elif isinstance(conv, nn.Sequential) and isinstance(conv[0], nn.Conv2d):
        conv[0].stride = (1, 1)
    else:
        raise ValueError(f"unsupported ResNet stem {type(conv).__name__}")
    model.maxpool = nn.Identity()
    return model


def _timm_model(timm_name: str, num_classes: int, pretrained_tag: str | None, pretrained: bool,
                kwargs: dict[str, Any]) -> nn.Module:
    name = f"{timm_name}.{pretrained_tag}" if pretrained and pretrained_tag else timm_name
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except Exception as err:  # offline hub, missing file, HTTP errors
        raise RuntimeError(
            f"could not fetch the pretrained weights {name} ({type(err).__name__}: {err}). Fix one of: "
            f"connect to the internet once (timm caches the weights), set backbone.weights=PATH to a model.pt "
            f"saved by one of our runs, or backbone.weights=none to train from random weights."
        ) from err


def load_packaged(model: nn.Module, name: str) -> WeightsInfo:
    """Load the packaged weights ``name`` (an entry of ``spa.models.weights.PACKAGED``) into ``model``,
    strictly, after checking the file's SHA-256. The ImageNet head is kept only at 1,000 classes."""
    from spa.models import weights as packaged_weights
    entry = packaged_weights.packaged(name)
    state, path = packaged_weights.read(entry)
    mapped, head_loaded = packaged_weights.map_state(entry, state, model, classifier_keys(model))
    model.load_state_dict(mapped, strict=False)
    log.info("loaded %s ImageNet weights from %s (%d of %d tensors; head %s)", name, path, len(mapped), len(state),
             "ImageNet" if head_loaded else "new")
    return WeightsInfo("packaged", name=name, path=str(path), sha256=entry.sha256, package=entry.package,
                       version=entry.version, file=entry.file, license=entry.license, head_loaded=head_loaded,
                       normalization=entry.normalization)


def declared_normalization(weights: str, packaged_weights: str | None = None) -> dict[str, Any] | None:
    """The input normalisation that ``weights`` declare, or None (then the data set's transform style
    decides): packaged weights declare theirs; a ``model.pt`` carries the one of the weights it
    descends from, if those declared one. Hub weights declare none (the paper normalises CIFAR with
    CIFAR statistics whatever the backbone)."""
    if weights == "pretrained":
        if not packaged_weights:
            return None
        from spa.models.weights import packaged
        return packaged(packaged_weights).normalization
    if weights in ("none", None, ""):
        return None
    payload = load_model_file(weights, mmap=True)
    return payload.get("normalization")


def check_packaged(weights: str, packaged_weights: str | None) -> None:
    """Before a run directory is written: the packaged weights named by the config are installed."""
    if weights == "pretrained" and packaged_weights:
        from spa.models.weights import locate, packaged
        locate(packaged(packaged_weights))


def check_head_init(head_init: str) -> None:
    """``backbone.head_init`` is ``timm`` or ``torch`` (checked before a run directory is written too)."""
    if head_init not in ("timm", "torch"):
        raise ValueError(f"backbone.head_init={head_init!r}: use timm (timm's own) or torch (nn.Linear's default)")


def create_backbone(timm_name: str, num_classes: int, *, weights: str = "none", pretrained_tag: str | None = None,
                    cifar_stem: bool = False, kwargs: dict[str, Any] | None = None,
                    load_head: bool = False, packaged_weights: str | None = None,
                    head_init: str = "timm", torchvision_weights: str | None = None,
                    restore: Restore | None = None) -> tuple[nn.Module, WeightsInfo]:
    """Build ``timm_name`` with a fresh ``num_classes`` head.

    ``head_init``: ``timm`` keeps timm's initialisation of the new head; ``torch`` redraws it as
    PyTorch's ``nn.Linear`` does, U(±1/√in_features). (timm's EfficientNet family draws its head from
    U(±1/√num_classes), fitted to 1,000 classes: for 2 classes that is U(±0.71), logits in the tens.)

    ``weights``: ``"pretrained"`` (the packaged file ``packaged_weights`` if given, offline; else the
    timm hub, ``<timm_name>.<pretrained_tag>``), ``"none"``, or a path to a ``model.pt`` written by
    :func:`save_model_file` (or a plain state dict). From a file, the head is re-initialised unless
    ``load_head`` (and the class count matches). ``torchvision_weights`` (with ``"pretrained"``):
    torchvision's ViT weights of that name on timm's ViT (``spa.models.torchvision_vit``).
    ``restore``: how a pruned file's shape is rebuilt (this package knows no pruning; use
    :func:`spa.saved.load_backbone`, which passes it).
    """
    kwargs = dict(kwargs or {})
    if weights == "pretrained" and torchvision_weights:
        from spa.models.torchvision_vit import load_torchvision_vit
        model = _timm_model(timm_name, num_classes, None, False, kwargs)
        url = load_torchvision_vit(model, torchvision_weights)
        info = WeightsInfo("pretrained", name=f"torchvision:{torchvision_weights}", path=url)
    elif weights == "pretrained" and packaged_weights:
        model = _timm_model(timm_name, num_classes, None, False, kwargs)
        info = load_packaged(model, packaged_weights)
    elif weights == "pretrained":
        model = _timm_model(timm_name, num_classes, pretrained_tag, True, kwargs)
        info = WeightsInfo("pretrained", name=f"{timm_name}.{pretrained_tag}" if pretrained_tag else timm_name)
    else:
        model = _timm_model(timm_name, num_classes, None, False, kwargs)
        info = WeightsInfo("none")
    if cifar_stem:
        apply_cifar_stem(model)
    if weights not in ("pretrained", "none", None, ""):
        info = load_weights_file(model, weights, load_head=load_head, expect_cifar_stem=cifar_stem,
                                 restore=restore)
    check_head_init(head_init)
    if head_init == "torch" and not info.head_loaded:
        for name in head_names(model):
            module = model.get_submodule(name)
            if isinstance(module, nn.Linear):
                module.reset_parameters()
    return model, info


def save_model_file(model: nn.Module, path: str | Path, *, timm_name: str, cifar_stem: bool,
                    kwargs: dict[str, Any] | None, classes: list[str], structure: dict[str, Any] | None = None,
                    normalization: dict[str, Any] | None = None) -> Path:
    """Write a model reusable as ``backbone.weights=PATH`` (loads with the safe ``torch.load``).
    ``structure`` (a pruning history, see ``spa.pruning.session``) lets a fresh timm model take the
    pruned shape before the weights are loaded; ``normalization`` (the one its weights declared)
    travels with the weights."""
    payload = {
        "format": MODEL_FORMAT,
        "backbone": {"timm_name": timm_name, "cifar_stem": bool(cifar_stem), "kwargs": dict(kwargs or {})},
        "classes": list(classes),
        "structure": structure,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if normalization is not None:
        payload["normalization"] = dict(normalization)
    atomic_torch_save(payload, path)
    return Path(path)


def load_model_file(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a ``model.pt``; a plain state dict is wrapped as ``{"state_dict": ...}``. ``mmap``: map
    the tensors instead of reading them (cheap when only the metadata is needed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone.weights={path} does not exist. Point it at the model.pt of a finished run "
            f"(results/runs/.../model.pt) or use backbone.weights=pretrained or none.")
    payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    if isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT:
        return payload
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return {"state_dict": payload}
    raise ValueError(f"{path} is neither a model.pt written by spa nor a state dict")


def load_weights_file(model: nn.Module, path: str | Path, *, load_head: bool = False,
                      expect_cifar_stem: bool | None = None, restore: Restore | None = None) -> WeightsInfo:
    """Load a ``model.pt`` (or a plain state dict) into ``model``. A pruned file (one that records a
    ``structure``) needs ``restore``, which gives the fresh model the saved shape first
    (:func:`spa.saved.restore`; :func:`spa.saved.load_backbone` passes it)."""
    payload = load_model_file(path)
    saved = payload.get("backbone", {})
    if expect_cifar_stem is not None and "cifar_stem" in saved and saved["cifar_stem"] != expect_cifar_stem:
        raise ValueError(
            f"the weights in {path} were saved with backbone.cifar_stem={str(saved['cifar_stem']).lower()}; "
            f"run with backbone.cifar_stem={str(saved['cifar_stem']).lower()}"
        )
    if payload.get("structure"):             # a pruned model: give the fresh model the same channels first
        if restore is None:
            raise ValueError(f"{path} holds a pruned network: load it with spa.saved.load_backbone, which "
                             f"rebuilds its pruned shape before loading the weights")
        restore(model, payload["structure"])
    state = dict(payload["state_dict"])
    head = set(classifier_keys(model))
    own = model.state_dict()
    if not load_head or any(k in state and state[k].shape != own[k].shape for k in head):
        state = {k: v for k, v in state.items() if k not in head}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state) - head)
    unexpected = sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        raise ValueError(
            f"the weights in {path} do not fit backbone {saved.get('timm_name', '?')} as configured: "
            f"shape mismatch {mismatched[:4]}, missing {missing[:4]}, unexpected {unexpected[:4]}. "
            f"Use the same backbone (and backbone.kwargs / cifar_stem) that saved them: {saved}"
        )
    model.load_state_dict(state, strict=False)
    log.info(
        "loaded base weights from %s (%d tensors, head %s)", path, len(state), "loaded" if head <= set(state) else "new"
    )
    return WeightsInfo(
        "file",
        name=saved.get("timm_name"),
        path=str(Path(path).resolve()),
        sha256=sha256_file(path),
        normalization=payload.get("normalization"),
        head_loaded=bool(head) and head <= set(state),
    )
