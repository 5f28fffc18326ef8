"""A budget study on the validation split: which laptop-scale budget leaves fine-pruning healthy.

A *setting* is a rule (normalisation and guard) and a schedule (scoring batches, recovery epochs,
step size) with an input size per data set. The study (``configs/studies/<name>.yaml``, run by
``scripts/budget_study.py``) walks its axes one at a time from the first value of each, keeping the
best, and judges every setting by three health gates, all on validation top-1 (test/ is never read):

(a) unpruned fine-tuning at least matches a linear probe on the same frozen features at the same
    input size;
(b) fine-pruning at ``retain_density`` keeps at least ``retain`` of its unpruned top-1, for every
    criterion and data set;
(c) no step of any of the setting's runs is collapsed (within max(3 points, 3 binomial standard
    errors) of the validation split's majority-class share, :mod:`spa.metrics.collapse`).

This module holds the study's data and decisions (no training): settings, the per-run records'
columns, the gates, the choice along an axis and the tables. The runs are the script's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from spa.utils import atomic_write_text

RUN_COLUMNS = ["dataset", "image_size", "tag", "rule", "score_batches", "recovery_epochs", "step_fraction",
               "keys", "pruning", "val_top1", "val_30", "val_10", "val_min", "val_majority", "val_margin", "collapsed",
               "collapsed_density", "narrowest_unit", "narrowest_fraction", "val_epochs", "probe_val_top1",
               "minutes", "run_dir", "torch", "cpu"]
SIZE_AXIS = "image_size."       # image_size.<dataset>: one axis per data set
GATES = ("gate_a", "gate_b", "gate_c")


CHANNEL_AXES = ("rule", "score_batches", "recovery_epochs", "step_fraction")
KEY_PREFIXES = ("pruning.", "schedule.")   # config-key axes: settings of the pruned runs only


@dataclass(frozen=True)
class Setting:
    """One budget: the channel rule and schedule (where the study walks them), the values of its
    config-key axes (``pruning.*`` / ``schedule.*``, e.g. block pruning's ``pruning.epochs_per_stage``) and
    the input size of every data set."""
    rule: str | None
    score_batches: int | None
    recovery_epochs: int | None
    step_fraction: float | None
    sizes: tuple[tuple[str, int], ...]
    keys: tuple[tuple[str, Any], ...] = ()

    @property
    def tag(self) -> str:
        """The run directory's name for the rule, schedule and config-key values (the size has its own level)."""
        parts = []
        if self.rule is not None:
            score = "all" if self.score_batches is None else str(self.score_batches)
            parts.append(f"{self.rule}-s{score}-r{self.recovery_epochs}-p{round(self.step_fraction * 100):g}")
        parts += [f"{key.split('.')[-1]}{value}" for key, value in self.keys]
        return "-".join(parts)

    def size(self, dataset: str) -> int:
        return dict(self.sizes)[dataset]

    def value(self, axis: str) -> Any:
        if axis.startswith(SIZE_AXIS):
            return self.size(axis[len(SIZE_AXIS):])
        if axis.startswith(KEY_PREFIXES):
            return dict(self.keys)[axis]
        return getattr(self, axis)

    def with_value(self, axis: str, value: Any) -> Setting:
        if axis.startswith(SIZE_AXIS):
            name = axis[len(SIZE_AXIS):]
            return replace(self, sizes=tuple((d, int(value) if d == name else s) for d, s in self.sizes))
        if axis.startswith(KEY_PREFIXES):
            return replace(self, keys=tuple((k, value if k == axis else v) for k, v in self.keys))
        return replace(self, **{axis: value})

    def label(self) -> str:
        return f"{self.tag}, " + ", ".join(f"{d} {s} px" for d, s in self.sizes)

    def run_tag(self, data_free: bool) -> str:
        """The tag of a criterion's run: a data-free criterion (weight) ignores the scoring batches,
        so its runs are shared by settings that differ only there."""
        return replace(self, score_batches=10).tag if data_free and self.score_batches is None else self.tag


@dataclass
class Study:
    """``configs/studies/<name>.yaml``: what runs, in which order, judged how."""
    experiment: str
    table: str
    grid: str
    seed: int
    datasets: list[str]
    criteria: list[str]
    rules: dict[str, dict[str, Any]]
    axes: dict[str, list[Any]]
    retain_density: float
    retain: float
    grid_minutes: float
    grid_minutes_max: float
    extra: list[str] = field(default_factory=list)     # Hydra overrides for every run (tests: a tiny model)
    equal_cost: tuple[str, ...] = ("rule",)            # axes whose values cost the same

    @classmethod
    def from_dict(cls, spec: dict[str, Any], extra: list[str] | None = None) -> Study:
        axes = spec["axes"]
        channel = [a for a in CHANNEL_AXES if a in axes]
        if channel and len(channel) != len(CHANNEL_AXES):
            raise ValueError(f"axes has {channel} of the channel schedule's axes {list(CHANNEL_AXES)}: give all four "
                             f"(one value each where it is not walked) or none")
        unknown_rules = [r for r in axes.get("rule", []) if r not in spec.get("rules", {})]
        if unknown_rules:
            raise ValueError(f"axes.rule names {unknown_rules}, which rules does not define; "
                             f"define them or use one of {sorted(spec.get('rules', {}))}")
        missing = [d for d in spec["datasets"] if f"{SIZE_AXIS}{d}" not in axes]
        if missing:
            raise ValueError(f"no axis image_size.<dataset> for {missing}: give each data set its input sizes")
        other = [a for a in axes if a not in CHANNEL_AXES and not a.startswith((SIZE_AXIS, *KEY_PREFIXES))]
        if other:
            raise ValueError(f"axes {other}: an axis is one of {list(CHANNEL_AXES)}, image_size.<dataset>, or a "
                             f"config key of the pruned runs (pruning.* or schedule.*; the unpruned run is shared)")
        return cls(experiment=spec["experiment"], table=spec["table"], grid=spec["grid"], seed=int(spec["seed"]),
                   datasets=list(spec["datasets"]), criteria=list(spec["criteria"]), rules=dict(spec.get("rules", {})),
                   axes={k: list(v) for k, v in axes.items()},
                   retain_density=float(spec["gates"]["retain_density"]), retain=float(spec["gates"]["retain"]),
                   grid_minutes=float(spec["grid_minutes"]),
                   grid_minutes_max=float(spec.get("grid_minutes_max", spec["grid_minutes"])), extra=list(extra or []),
                   equal_cost=tuple(spec.get("equal_cost", ["rule"])))

    def start(self) -> Setting:
        """The first value of every axis."""
        first = {axis: values[0] for axis, values in self.axes.items()}
        channel = "rule" in first
        return Setting(rule=first.get("rule"), score_batches=first.get("score_batches"),
                       recovery_epochs=int(first["recovery_epochs"]) if channel else None,
                       step_fraction=float(first["step_fraction"]) if channel else None,
                       sizes=tuple((d, int(first[f"{SIZE_AXIS}{d}"])) for d in self.datasets),
                       keys=tuple((a, v) for a, v in first.items() if a.startswith(KEY_PREFIXES)))

    def same_cost(self, axis: str) -> bool:
        return axis in self.equal_cost

    def dataset_of(self, axis: str) -> str | None:
        """The one data set an axis touches (image_size.<dataset>), else None: judged on its rows only."""
        return axis[len(SIZE_AXIS):] if axis.startswith(SIZE_AXIS) else None

    def gates(self, axis: str) -> tuple[str, ...]:
        """The gates ``axis`` can move: the input size moves the unpruned run, hence (a); the rule and
        the schedule touch pruned runs only, so on their axes a value passes on (b) and (c)."""
        return GATES if axis.startswith(SIZE_AXIS) else GATES[1:]

    def budget_overrides(self, setting: Setting) -> list[str]:
        """What a grid's pruned runs set to have ``setting``'s budget (its rule, schedule and config keys; the
        input size is the data set's)."""
        over = self.overrides(setting, self.datasets[0], self.criteria[0])
        return [o for o in over if o.startswith(KEY_PREFIXES)]

    def overrides(self, setting: Setting, dataset: str, pruning: str) -> list[str]:
        """The Hydra overrides of one study run (``pruning=none``: the unpruned run of the data set's size)."""
        common = [f"experiment={self.experiment}", f"dataset={dataset}", f"seed={self.seed}",
                  f"dataset.image_size={setting.size(dataset)}", *self.extra]
        if pruning == "none":
            return [*common, "pruning=none", "budget_tag=unpruned"]
        channel = []
        if setting.rule is not None:
            score = "null" if setting.score_batches is None else setting.score_batches
            channel = [*(f"{k}={_value(v)}" for k, v in self.rules[setting.rule].items()),
                       f"schedule.score_batches={score}", f"schedule.recovery_epochs={setting.recovery_epochs}",
                       f"schedule.step_fraction={setting.step_fraction}"]
        keys = [f"{k}={_value(v)}" for k, v in setting.keys]
        return [*common, f"pruning={pruning}", *channel, *keys, f"budget_tag={setting.tag}"]


def _value(v: Any) -> str:
    return "null" if v is None else str(v)


def at_density(steps: pd.DataFrame, density: float, column: str = "val_top1") -> float:
    """``column`` at the step whose density is ``density`` (the channel schedule's exact step; a block
    stage's, within half a percent), else NaN."""
    hit = steps[(steps["density"] - density).abs() < 5e-3]
    return float(hit[column].iloc[-1]) if len(hit) else math.nan


def gate_rows(study: Study, setting: Setting, records: pd.DataFrame, data_free: dict[str, bool]) -> pd.DataFrame:
    """One row per data set of ``setting``: its unpruned and probe top-1, each criterion's top-1 at
    100 / 30 / 10 % and retention, the narrowest unit, the minutes, and gates (a)-(c). Missing runs
    give NaN and a gate of None."""
    rows = []
    for dataset in study.datasets:
        size = setting.size(dataset)
        here = records[(records["dataset"] == dataset) & (records["image_size"] == size)]
        unpruned = here[here["pruning"] == "none"]
        row: dict[str, Any] = {"setting": setting.label(), "tag": setting.tag, "rule": setting.rule,
                               "score_batches": "epoch" if setting.score_batches is None else setting.score_batches,
                               "recovery_epochs": setting.recovery_epochs, "step_fraction": setting.step_fraction,
                               "dataset": dataset, "image_size": size}
        u = unpruned.iloc[0] if len(unpruned) else None
        row["unpruned_val"] = u["val_top1"] if u is not None else math.nan
        row["probe_val"] = u["probe_val_top1"] if u is not None else math.nan
        row["last_epoch_gain"] = last_gain(u["val_epochs"]) if u is not None else math.nan
        minutes = u["minutes"] if u is not None else math.nan
        retained, collapsed, narrow = [], [], []
        for criterion in study.criteria:
            run = here[(here["pruning"] == criterion) & (here["tag"] == setting.run_tag(data_free[criterion]))]
            r = run.iloc[0] if len(run) else None
            for col in ("val_30", "val_10"):
                row[f"{criterion}_{col}"] = r[col] if r is not None else math.nan
            ratio = (r["val_30"] / row["unpruned_val"]) if r is not None and row["unpruned_val"] else math.nan
            row[f"{criterion}_retained_30"] = round(ratio, 4) if not math.isnan(ratio) else math.nan
            row[f"{criterion}_narrowest"] = (f"{r['narrowest_unit']} {r['narrowest_fraction']:.1%}"
                                             if r is not None else "")
            retained.append(ratio)
            collapsed.append(None if r is None else bool(r["collapsed"]))
            narrow.append(r)
            minutes += r["minutes"] if r is not None else math.nan
        row["minutes"] = round(minutes, 2) if not math.isnan(minutes) else math.nan
        row["minutes_pruned"] = round(minutes - u["minutes"], 2) if u is not None and not math.isnan(minutes) \
            else math.nan
        complete = u is not None and all(r is not None for r in narrow)
        row["gate_a"] = bool(row["unpruned_val"] >= row["probe_val"]) if u is not None else None
        row["gate_b"] = bool(min(retained) >= study.retain) if complete else None
        row["gate_c"] = (not any(collapsed) and not bool(u["collapsed"])) if complete else None
        rows.append(row)
    return pd.DataFrame(rows)


def last_gain(epochs: Any) -> float:
    """Validation top-1 of the last epoch minus the one before (how flat the start of pruning is)."""
    values = [float(v) for v in str(epochs).split(";") if v not in ("", "nan")]
    return round(values[-1] - values[-2], 2) if len(values) >= 2 else math.nan


def verdict(rows: pd.DataFrame) -> dict[str, Any]:
    """A setting's gates over its data sets: passed (all three, every data set), how many gates pass,
    its worst retention at 30 % and its minutes on the study's runs."""
    gates = {g: (None if rows[g].isna().any() else bool(rows[g].all())) for g in GATES}
    retained = rows[[c for c in rows.columns if c.endswith("_retained_30")]].to_numpy().ravel()
    worst = float(min(retained)) if len(retained) and not any(math.isnan(v) for v in retained) else math.nan
    return {**gates, "passed": all(gates.values()), "gates_passed": sum(bool(v) for v in gates.values()),
            "worst_retained_30": worst, "complete": all(v is not None for v in gates.values())}


def passes(v: dict[str, Any], gates: tuple[str, ...] = GATES) -> bool:
    """Whether a setting's verdict ``v`` passes ``gates``."""
    return all(bool(v[g]) for g in gates)


def choose(candidates: list[tuple[Setting, dict[str, Any]]], same_cost: bool,
           gates: tuple[str, ...] = GATES) -> Setting:
    """The setting kept on an axis, judged on ``gates`` (those the axis can move), preferring a grid within
    the study's minutes (``within_budget``) to one within its most (``within_max``). Same cost: the passing
    one with the highest worst-case retention (ties: the earlier). Rising cost: the first passing one. None
    passing, among those within the most minutes where there are any: on a rising-cost axis the cheapest
    of those passing the most of ``gates`` (a dearer value buys gates, not retention); on the same-cost
    axis the most of ``gates``, then the highest worst-case retention, then the earlier."""
    for limit in ("within_budget", "within_max"):
        passing = [(s, v) for s, v in candidates if passes(v, gates) and v.get(limit, True)]
        if passing:
            if not same_cost:
                return passing[0][0]
            return max(enumerate(passing), key=lambda iv: (iv[1][1]["worst_retained_30"], -iv[0]))[1][0]
    pool = [(s, v) for s, v in candidates if v.get("within_max", True) and v.get("complete", True)] or candidates
    if not same_cost:     # a dearer value is kept only for more gates passed
        return max(enumerate(pool), key=lambda iv: (gates_passed(iv[1][1], gates), -iv[0]))[1][0]
    ranked = max(enumerate(pool), key=lambda iv: (gates_passed(iv[1][1], gates),
                                                   _num(iv[1][1]["worst_retained_30"]), -iv[0]))
    return ranked[1][0]


def gates_passed(v: dict[str, Any], gates: tuple[str, ...] = GATES) -> int:
    return sum(bool(v[g]) for g in gates)


def _num(value: float) -> float:
    return -1.0 if value is None or math.isnan(value) else value


def grid_minutes(rows: pd.DataFrame, learners: int, seeds: int, train_scale: float, pruned_scale: float = 1.0
                 ) -> float:
    """The grid's minutes estimated from a setting's study runs (``rows``' ``minutes``: per data set, the
    unpruned run and one pruned run per criterion, ``minutes_pruned`` the latter): ``learners`` x ``seeds``
    times each, the pruned part times ``pruned_scale`` (the grid's prunings per study criterion), all times
    ``train_scale`` (the grid trains on all of the training images the study splits)."""
    unpruned = float((rows["minutes"] - rows["minutes_pruned"]).sum())
    return round((unpruned + float(rows["minutes_pruned"].sum()) * pruned_scale) * learners * seeds * train_scale, 1)


def write_tables(study: Study, table: pd.DataFrame, path: list[dict[str, Any]], chosen: Setting | None,
                 out_dir: Path, header: str) -> dict[str, Path]:
    """``<table>.csv`` (one row per setting and data set) and ``<table>.md`` (the walk, the gates, the choice)."""
    out_dir = Path(out_dir)
    csv, md = out_dir / f"{study.table}.csv", out_dir / f"{study.table}.md"
    atomic_write_text(csv, table.to_csv(index=False))
    shown = table.copy()
    for g in ("gate_a", "gate_b", "gate_c"):
        shown[g] = shown[g].map({True: "pass", False: "FAIL"}).fillna("-")
    keep = ["axis_no", "axis", "setting", "dataset", "unpruned_val", "probe_val", "last_epoch_gain",
            *[f"{c}_{k}" for c in study.criteria for k in ("val_30", "val_10", "retained_30", "narrowest")],
            "minutes", "grid_minutes", "gate_a", "gate_b", "gate_c", "chosen"]
    shown = shown[[c for c in keep if c in shown.columns]]
    at = f"_{round(study.retain_density * 100)}"          # the gate's density in the column names
    shown = shown.rename(columns={c: c.replace("_30", at) for c in shown.columns if c.endswith(("val_30",
                                                                                                 "retained_30"))})
    lines = [header, "", shown.to_markdown(index=False, floatfmt=".2f"), ""]
    for entry in path:
        lines.append(f"- {entry['text']}")
    lines.append("")
    if chosen is not None:
        lines.append(f"**Chosen:** {chosen.label()}.")
    atomic_write_text(md, "\n".join(lines) + "\n")
    return {"csv": csv, "md": md}
