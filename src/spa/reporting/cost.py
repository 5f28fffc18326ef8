"""What a sweep costs: its epochs counted exactly from the experiment's configs, times the measured
(or stated) time of one epoch per dataset.

Per (dataset, learner, seed) the unpruned training runs once (``train.epochs``, or
``train.epochs_by_adapter``); per criterion a pruned run then takes, at every step, one scoring pass
(a full training epoch when ``schedule.score_batches`` is null, else that many batches) and
``schedule.recovery_epochs`` recovery epochs at the step's density (``train.head_epochs`` count as
initial epochs; a weight-density schedule, :func:`pruning_steps`). An epoch's time is the time of
one full-density training epoch with its test evaluation. Pruned epochs are charged at that full
time (an upper bound: launch-bound small-batch GPU runs and data loading barely speed up with
pruning) and, where the MACs of each density are known, also at the MACs ratio (a lower bound).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from spa import config_dir
from spa.pruning.importance import CRITERIA
from spa.pruning.schedule import Plan, schedule_plan
from spa.records import EPOCHS, STEPS, SUMMARY

# training images of the official splits (docs/method.md §3), for scoring passes given in batches
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "flowers102": 2_040, "cats_vs_dogs": 8_005,
                "stanford_cars": 8_144}
FILTERS = 1000      # any filter count: only the densities of the plan matter here


def sweep_params(exp_name: str) -> dict[str, list[str]]:
    """The sweeper's parameters of ``configs/experiment/<exp_name>.yaml`` as lists of values."""
    path = config_dir() / "experiment" / f"{exp_name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no configs/experiment/{exp_name}.yaml")
    params = OmegaConf.load(path).get("hydra", {}).get("sweeper", {}).get("params", {})
    return {k: [v.strip() for v in str(values).split(",") if v.strip()] for k, values in params.items()}


def sweep_epochs(exp_name: str, overrides: tuple[str, ...] = (), train_images: dict[str, int] | None = None
                 ) -> pd.DataFrame:
    """One row per (dataset, adapter, phase, density) with the epochs the whole sweep spends there.
    Phases: ``base`` (a base stage, once), ``initial`` (the shared unpruned trainings), ``score``
    (criteria that read data) and ``recover`` (pruned runs). ``train_images`` (per dataset name,
    default: the official splits) sizes the scoring passes given in batches."""
    from spa.pipeline import base_config, initial_epochs
    grid = sweep_params(exp_name)
    seeds, swept = len(grid.get("seed", ["1"])), grid.get("pruning")
    rows = []
    with initialize_config_dir(str(config_dir()), version_base=None):
        for dataset in grid.get("dataset", [None]):
            for adapter in grid.get("adapter", [None]):
                chosen = [f"{k}={v}" for k, v in (("dataset", dataset), ("adapter", adapter)) if v is not None]
                cfg = compose("config", [f"experiment={exp_name}", *chosen, *overrides])
                if cfg.get("base") and not any(r["phase"] == "base" for r in rows):
                    base = base_config(cfg)
                    rows.append({"dataset": base.dataset.name, "adapter": "finetune", "phase": "base",
                                 "density": 1.0, "epochs": float(base.train.epochs)})
                name, t, s = cfg.dataset.name, cfg.train, cfg.schedule
                # the swept prunings, else the experiment's own (experiment=vit_iclr sets pruning=weight)
                criteria = [p for p in (swept or [cfg.pruning.get("criterion", cfg.pruning.name)]) if p != "none"]
                rows.append({"dataset": name, "adapter": cfg.adapter.name, "phase": "initial", "density": 1.0,
                             "epochs": float((initial_epochs(cfg) + int(t.get("head_epochs", 0))) * seeds)})
                if not criteria or not cfg.adapter.get("prunable", True):
                    continue
                if train_images and name in train_images:       # measured: the fraction is applied already
                    images = float(train_images[name])
                else:
                    images = TRAIN_IMAGES.get(name, 0) * float(cfg.dataset.train_fraction)
                batches = images / int(t.batch_size)
                score = 1.0 if s.score_batches is None or not batches else min(1.0, int(s.score_batches) / batches)
                scoring = sum(CRITERIA[c].needs_data for c in criteria) * seeds
                runs = len(criteria) * seeds
                plan, kept = Plan(FILTERS, float(s.step_fraction), float(s.target_density)), FILTERS
                steps = pruning_steps(plan, s.get("density", "filters"))
                filters = schedule_plan(FILTERS, plan.step_fraction, plan.target_density, s.get("density", "filters"))
                for step in range(1, steps + 1):
                    before, kept = kept / FILTERS, filters.kept_after(step)
                    if scoring:      # criteria that read data (weight magnitude reads none)
                        rows.append({"dataset": name, "adapter": cfg.adapter.name, "phase": "score",
                                     "density": round(before, 4), "epochs": score * scoring})
                    rows.append({"dataset": name, "adapter": cfg.adapter.name, "phase": "recover",
                                 "density": round(kept / FILTERS, 4), "epochs": float(s.recovery_epochs) * runs})
    return pd.DataFrame(rows)


def pruning_steps(plan: Plan, density: str) -> int:
    """Steps of a pruned run. ``schedule.density=weights`` stops at the first step at or below the target
    in weights, which the first step with the filters below the target reaches: the layers no step prunes
    (a ViT's patch embedding, tokens, norms and head) keep the weight density above the filter density
    (ViT-B/16: by ~1 % of its weights; scripts/vit_params.py stops at step 16 of 5 %, vit_iclr_mini's runs
    at step 8 of 10 %); the filter plan ends at step_fraction."""
    if density != "weights":
        return plan.steps
    below = math.floor(round((1.0 - plan.target_density) / plan.step_fraction, 9)) + 1   # filters below the target
    return min(below, round((1.0 - plan.step_fraction) / plan.step_fraction))


def stated_epoch_seconds(exp_name: str) -> tuple[dict[str, float], str]:
    """The ``cost`` section of ``configs/experiment/<exp_name>.yaml`` (read by this module only): stated
    seconds per full-density epoch by data set, and the note that says where they come from."""
    cost = OmegaConf.load(config_dir() / "experiment" / f"{exp_name}.yaml").get("cost") or {}
    return {k: float(v) for k, v in (cost.get("epoch_seconds") or {}).items()}, str(cost.get("note") or "")


def measured_epochs(*runs_roots: str | Path) -> tuple[dict[str, float], pd.DataFrame, dict[str, int]]:
    """From the finished runs under ``runs_roots``: per dataset, the median time of a full-density
    training epoch (with its test evaluation), the MACs ratio to the unpruned network of every
    density the runs' steps.csv recorded, and the training-set size."""
    times, macs, sizes = [], [], {}
    for summary_path in (p for root in runs_roots for p in Path(root).rglob(SUMMARY)):
        run = summary_path.parent
        summary = json.loads(summary_path.read_text())
        sizes[summary["dataset"]] = int(summary["data"]["train"])
        if summary["pruning"] == "none" and (run / EPOCHS).is_file():
            for line in (run / EPOCHS).read_text().splitlines():
                record = json.loads(line)
                if record.get("phase") == "train":
                    times.append({"dataset": summary["dataset"], "epoch_s": record["time_s"]})
        if summary["pruning"] != "none" and (run / STEPS).is_file():
            steps = pd.read_csv(run / STEPS)
            macs.append(steps.assign(dataset=summary["dataset"], ratio=steps["macs"] / steps["macs"].iloc[0]))
    epoch_s = pd.DataFrame(times, columns=["dataset", "epoch_s"]).groupby("dataset")["epoch_s"].median().to_dict()
    ratios = pd.concat(macs)[["dataset", "density", "ratio"]] if macs else pd.DataFrame(
        columns=["dataset", "density", "ratio"])
    return epoch_s, ratios, sizes


def _macs_lookup(ratios: pd.DataFrame) -> Callable[[str, float], float]:
    """ratio(dataset, density): the median MACs ratio recorded at the nearest density (1 without data)."""
    table = ratios.assign(density=ratios["density"].astype(float).round(2)).groupby(
        ["dataset", "density"])["ratio"].median()

    def ratio(dataset: str, density: float) -> float:
        if density >= 1.0 or dataset not in table.index.get_level_values(0):
            return 1.0
        part = table.loc[dataset]
        return float(part.iloc[int(abs(part.index.to_numpy() - density).argmin())])
    return ratio


def sweep_cost(
    epochs: pd.DataFrame, epoch_seconds: dict[str, float], ratios: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Hours per dataset and phase: ``hours`` = epochs × the full-density epoch time (an upper bound:
    no speed-up from pruning) and, with ``ratios``, ``hours_macs`` = each epoch scaled by the MACs
    ratio of its density (a lower bound: as if time followed compute alone)."""
    missing = sorted(set(epochs["dataset"]) - set(epoch_seconds))
    if missing:
        raise ValueError(f"no epoch time for {missing}: pass --epoch-seconds {missing[0]}=SECONDS or --from-runs DIR")
    full = epochs["epochs"] * epochs["dataset"].map(epoch_seconds) / 3600
    costed = epochs.assign(hours=full)
    columns = {"epochs": ("epochs", "sum"), "hours": ("hours", "sum")}
    if ratios is not None and not ratios.empty:
        ratio = _macs_lookup(ratios)
        costed["hours_macs"] = full * [ratio(d, r) for d, r in zip(epochs["dataset"], epochs["density"])]
        columns["hours_macs"] = ("hours_macs", "sum")
    return costed.groupby(["dataset", "phase"], sort=False).agg(**columns).reset_index()
