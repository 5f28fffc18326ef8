"""Entry point: python scripts/run.py dataset=X backbone=Y adapter=Z pruning=W seed=N [-m for sweeps]."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

import spa  # noqa: F401  (registers the config resolvers)
from spa import pipeline


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> float:
    summary = pipeline.run(cfg)
    return float(summary["metrics"]["test_top1"])


if __name__ == "__main__":
    main()
