"""Train/test transforms as in the paper (docs/method.md §3), parametrised by image size.

``cifar``: RandomCrop(size, pad size/8) + HFlip / identity, CIFAR mean and std.
``imagenet``: RandomResizedCrop(size) + HFlip / Resize(size·256/224) + CenterCrop(size), ImageNet mean/std.
Weights that declare their normalisation (packaged ImageNet weights) replace the style's mean/std.
"""
from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STYLES = ("cifar", "imagenet")


def normalization(style: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the input normalisation of a transform style (LRP needs these bounds)."""
    _check(style)
    return (CIFAR_MEAN, CIFAR_STD) if style == "cifar" else (IMAGENET_MEAN, IMAGENET_STD)


def build_transforms(style: str, image_size: int, mean_std: tuple[Sequence[float], Sequence[float]] | None = None
                     ) -> tuple[T.Compose, T.Compose]:
    """Return ``(train_transform, test_transform)`` for PIL images. ``mean_std`` replaces the style's
    normalisation (pretrained weights that declare their own, see ``spa.models.declared_normalization``)."""
    _check(style)
    mean, std = normalization(style) if mean_std is None else (tuple(mean_std[0]), tuple(mean_std[1]))
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    if style == "cifar":
        train = [T.Resize(image_size), T.CenterCrop(image_size),
                 T.RandomCrop(image_size, padding=max(1, image_size // 8)), T.RandomHorizontalFlip()]
        test = [T.Resize(image_size), T.CenterCrop(image_size)]
    else:
        train = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
        test = [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)]
    return T.Compose(train + tail), T.Compose(test + tail)


def _check(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"dataset.transform={style!r} is unknown; use one of {list(STYLES)}")
