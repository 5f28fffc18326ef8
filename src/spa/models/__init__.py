"""Backbones from timm with a new head, the paper's CIFAR stem, and base weights from a hub, a package or a file."""
from spa.models.backbones import (
    MODEL_FORMAT,
    BackboneSpec,
    WeightsInfo,
    apply_cifar_stem,
    check_head_init,
    check_packaged,
    classifier_keys,
    create_backbone,
    declared_normalization,
    load_model_file,
    load_packaged,
    save_model_file,
)

__all__ = ["MODEL_FORMAT", "BackboneSpec", "WeightsInfo", "apply_cifar_stem", "check_head_init", "check_packaged",
           "classifier_keys", "create_backbone", "declared_normalization", "load_model_file", "load_packaged",
           "save_model_file"]
