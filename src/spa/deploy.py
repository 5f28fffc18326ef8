"""A finished run as a classifier: its deployable network (``model.pt``: fused, pruned, plain timm),
its own test-time preprocessing and its class names, and top-k predictions on image files
(``scripts/predict.py``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import yaml
from PIL import Image

from spa.data.transforms import build_transforms
from spa.models.backbones import load_model_file
from spa.records import CONFIG, MODEL, SUMMARY
from spa.saved import load_backbone


@dataclass
class RunModel:
    """What a prediction needs of a run."""
    model: nn.Module
    transform: object               # PIL image -> normalised tensor, the run's test transform
    classes: list[str]
    image_size: int
    normalization: dict
    transform_style: str            # dataset.transform of the run
    timm_name: str


def load_run(run_dir: str | Path, device: torch.device | str = "cpu") -> RunModel:
    """The deployable model of the finished run ``run_dir`` in eval mode, with the run's test transform
    (its transform style and image size, normalised as the run normalised: ``summary.json``)."""
    run = Path(run_dir)
    missing = [name for name in (SUMMARY, CONFIG, MODEL) if not (run / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{run} is not a finished run with a saved model (missing {', '.join(missing)}); "
                                f"point at a run directory under results/runs/ that was run with save_model=true")
    summary = json.loads((run / SUMMARY).read_text())
    config = yaml.safe_load((run / CONFIG).read_text())
    payload = load_model_file(run / MODEL, mmap=True)
    classes = list(payload.get("classes") or summary["data"]["classes"])
    backbone = payload["backbone"]
    model, _ = load_backbone(backbone["timm_name"], len(classes), weights=str(run / MODEL),
                             cifar_stem=backbone["cifar_stem"], kwargs=backbone["kwargs"], load_head=True)
    norm = summary["data"]["normalization"]
    size = int(config["dataset"]["image_size"])
    _, transform = build_transforms(config["dataset"]["transform"], size, (norm["mean"], norm["std"]))
    return RunModel(model.to(device).eval(), transform, classes, size, norm, config["dataset"]["transform"],
                    backbone["timm_name"])


def read_images(paths: list[str | Path], transform) -> torch.Tensor:
    """A batch of image files through ``transform`` (RGB, as the training data was read)."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(transform(image.convert("RGB")))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read {path} as an image ({err})") from err
    return torch.stack(images)


@torch.no_grad()
def top_k(logits: torch.Tensor, classes: list[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """Per row of ``logits``: the ``k`` most probable classes (name, softmax probability), best first."""
    probs = logits.float().softmax(dim=1)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[(classes[i], float(v)) for v, i in zip(row_v, row_i)] for row_v, row_i in zip(values.tolist(),
                                                                                           indices.tolist())]
