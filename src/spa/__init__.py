"""spa: Structured Pruning Adapters, reproduced.

Importing the package registers the OmegaConf resolvers the Hydra configs use
(``${spa_repo_root:}``, ``${spa_cuda_count:}``), so configs compose the same from scripts, tests and notebooks.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"


def repo_root() -> Path:
    """The repository root (the folder holding ``configs/``), or the working directory.

    With the editable install the package lives in ``<repo>/src/spa``; a non-editable install
    falls back to the current working directory, which is where users run the scripts.
    """
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "configs").is_dir():
        return candidate
    return Path.cwd().resolve()


def config_dir() -> Path:
    """Absolute path of the Hydra config directory."""
    return repo_root() / "configs"


def cuda_count() -> int:
    """Visible CUDA GPUs, at least 1 (the worker count of launcher=gpus)."""
    import torch
    return max(1, torch.cuda.device_count())


if not OmegaConf.has_resolver("spa_repo_root"):
    OmegaConf.register_new_resolver("spa_repo_root", lambda: str(repo_root()))
if not OmegaConf.has_resolver("spa_cuda_count"):
    OmegaConf.register_new_resolver("spa_cuda_count", cuda_count)
