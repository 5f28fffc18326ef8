"""Backbones from timm with a new head, the paper's CIFAR stem, and base weights from a hub or a file."""
from spa.models.backbones import (
    MODEL_FORMAT,
    WeightsInfo,
    apply_cifar_stem,
    classifier_keys,
    create_backbone,
    load_model_file,
    save_model_file,
)

__all__ = ["MODEL_FORMAT", "WeightsInfo", "apply_cifar_stem", "classifier_keys", "create_backbone",
           "load_model_file", "save_model_file"]
