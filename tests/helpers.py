"""Helpers that several test modules share: the command line on the fake image folder, and a
synthetic run tree as the pipeline records it (what the reporting reads)."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from spa import repo_root


def cli(results: Path, image_folder: Path, exp_name: str, seeds: str) -> tuple[list[str], dict[str, str]]:
    """``scripts/run.py -m`` on the fake image folder with tiny settings, results under ``results``."""
    env = {**os.environ, "SPA_RESULTS_DIR": str(results), "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, str(repo_root() / "scripts" / "run.py"), "-m", "dataset=image_folder",
            f"dataset.root={image_folder}", "dataset.transform=cifar", "dataset.image_size=32", "backbone=test_resnet",
            "train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=8", "device=cpu", f"exp_name={exp_name}",
            f"seed={seeds}"]
    return args, env


# (adapter, pruning, seed) -> [(density, top1, learned params, MACs at 32 px)], one tuple per step
RUNS = {
    ("finetune", "none", 1): [(1.0, 97.0, 23_520_842, 1_300e6)],
    ("finetune", "none", 2): [(1.0, 96.0, 23_520_842, 1_300e6)],
    ("splora_r8", "none", 1): [(1.0, 95.0, 466_338, 1_300e6)],
    ("splora_r8", "none", 2): [(1.0, 95.5, 466_338, 1_300e6)],
    ("finetune", "taylor", 1): [(1.0, 97.0, 23_520_842, 1_300e6), (0.5, 96.5, 9e6, 800e6),
                                (0.3004, 96.0, 4_000_000, 500e6), (0.0998, 88.0, 600_000, 240e6)],
    ("finetune", "taylor", 2): [(1.0, 96.0, 23_520_842, 1_300e6), (0.5, 96.0, 9e6, 800e6),
                                (0.2998, 95.0, 4_200_000, 520e6), (0.1001, 90.0, 580_000, 236e6)],
    ("splora_r8", "taylor", 1): [(1.0, 95.0, 466_338, 1_300e6), (0.3001, 94.0, 200_000, 560e6),
                                 (0.1, 91.0, 128_000, 243e6)],
    ("splora_r8", "taylor", 2): [(1.0, 95.5, 466_338, 1_300e6), (0.3, 93.0, 210_000, 570e6),
                                 (0.1, 92.0, 129_000, 245e6)],
}


# the ICLR grid adds SPPaRA (kept as "sppara" unpruned: it is no LoRA) to these learners
SPPARA = {
    ("sppara", "none", 1): [(1.0, 94.0, 300_000, 1_300e6)],
    ("sppara", "none", 2): [(1.0, 94.5, 300_000, 1_300e6)],
    ("sppara", "taylor", 1): [(1.0, 94.0, 300_000, 1_300e6), (0.3, 92.0, 150_000, 560e6), (0.1, 90.0, 100_000, 243e6)],
    ("sppara", "taylor", 2): [(1.0, 94.5, 300_000, 1_300e6), (0.3, 93.0, 152_000, 562e6), (0.1, 89.0, 98_000, 241e6)],
}
# top-1 of each dataset of the ICLR grid: RUNS' numbers plus this offset
ICLR_DATASETS = {"cifar10": 0.0, "cifar100": -30.0, "flowers102": -10.0, "cats_vs_dogs": 1.0}


def fake_run(run: Path, dataset: str, adapter: str, pruning: str, seed: int, steps: list[tuple], torch: str) -> None:
    """A finished run as the pipeline records it, as far as the reporting reads it: summary.json,
    steps.csv and the initial training's epochs.jsonl."""
    run.mkdir(parents=True)
    top1 = steps[-1][1]
    (run / "summary.json").write_text(json.dumps({
        "exp_name": run.parents[4].name, "dataset": dataset, "backbone": "resnet50", "adapter": adapter,
        "pruning": pruning, "seed": seed, "epochs": 1, "wall_time_s": 1.0, "device": "cpu", "config_hash": "x",
        "run_dir": str(run), "weights": {"source": "pretrained"}, "data": {"num_classes": 10},
        "metrics": {"density": steps[-1][0], "test_top1": top1, "test_top5": 100.0},
        "params": {"total": 23_520_842, "trainable": steps[-1][2]}, "versions": {"python": "3.11.7", "torch": torch}}))
    pd.DataFrame([{"step": i, "density": d, "top1_before": a, "top1": a, "params_learned": p, "params_deployable": p,
                   "macs": m, "macs_32": m} for i, (d, a, p, m) in enumerate(steps)]).to_csv(run / "steps.csv",
                                                                                          index=False)
    (run / "epochs.jsonl").write_text(json.dumps({"epoch": 1, "phase": "train", "test_top1": steps[0][1]}) + "\n")


def run_tree(root: Path, runs: dict = RUNS, datasets: dict[str, float] | None = None,
             torch: Callable[[str, str, str, int], str] = lambda dataset, adapter, pruning, seed: "2.14.1") -> Path:
    """``runs`` on each of ``datasets`` (name: top-1 offset; default CIFAR-10 alone), in the pipeline's
    layout under ``root``; ``torch(dataset, adapter, pruning, seed)`` is the version a run records."""
    for dataset, offset in (datasets or {"cifar10": 0.0}).items():
        for (adapter, pruning, seed), steps in runs.items():
            fake_run(root / dataset / "resnet50" / pruning / adapter / f"seed_{seed}", dataset, adapter, pruning, seed,
                     [(d, a + offset, p, m) for d, a, p, m in steps], torch(dataset, adapter, pruning, seed))
    return root


def iclr_tree(root: Path, pruned: bool | None = None) -> Path:
    """A ``table1_iclr``-like run tree: four datasets, fine-tuning, SPLoRA-r8 and SPPaRA (only the
    pruned or unpruned runs with ``pruned`` True or False)."""
    runs = {k: v for k, v in {**RUNS, **SPPARA}.items() if pruned is None or (k[1] != "none") == pruned}
    return run_tree(root, runs, ICLR_DATASETS)
