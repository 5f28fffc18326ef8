"""The budget study: which laptop-scale budget leaves fine-pruning healthy, on the validation split.

python scripts/budget_study.py [--study imagenet_mini_budget] [--results-dir results] [--set KEY=VALUE ...]
                               [--tables-only]
make budget-study

Walks the axes of configs/studies/<study>.yaml (spa.reporting.budget: the design, the gates, the choice),
running the fine-tuning / fine-pruning runs each setting needs (experiment=<study.experiment>, seed 1,
80 % of the grid's training images, the other 20 % scored; test/ is never read for anything here). After
every run its record goes into results/tables/<table>_runs.csv (commit it): a later run of this script,
on this machine or a fresh clone, skips what is recorded there, and a killed run resumes from its last
step. Then results/tables/<table>.{csv,md}: every setting's validation top-1 at 100 / 30 / 10 % density,
the narrowest unit, its minutes on this machine, the grid's estimated minutes and gates (a)-(c), the walk
and the chosen setting, printed as well.
--tables-only writes the tables from the records without training (settings not yet run stay open).
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import spa  # noqa: F401  (registers the config resolvers)
from spa import config_dir, pipeline, repo_root
from spa.data import SampleDataset
from spa.metrics.collapse import Chance
from spa.metrics.probe import features, fit_probe
from spa.models import create_backbone
from spa.pruning.importance import CRITERIA
from spa.records import RunDir
from spa.reporting.budget import (
    GATES,
    RUN_COLUMNS,
    Setting,
    Study,
    at_density,
    choose,
    gate_rows,
    gates_passed,
    grid_minutes,
    passes,
    verdict,
    write_tables,
)
from spa.reporting.cost import sweep_params
from spa.utils import atomic_write_text, device_description, package_versions

log = logging.getLogger("budget_study")


class Runner:
    """Runs (or finds recorded) the study's runs and keeps their records."""

    def __init__(self, study: Study, results_dir: Path, train: bool):
        self.study, self.train = study, train
        self.records_path = results_dir / "tables" / f"{study.table}_runs.csv"
        self.records = pd.read_csv(self.records_path).reindex(columns=RUN_COLUMNS) if self.records_path.is_file() \
            else pd.DataFrame(columns=RUN_COLUMNS)
        self.results_dir = results_dir
        self.data_free = {c: self._data_free(c) for c in study.criteria}
        self.new_runs = 0

    def _data_free(self, pruning: str) -> bool:
        """Whether the pruning reads no data to score (its ``criterion``'s ``needs_data``; block pruning, which
        has no criterion there: False, which only matters for the channel study's scoring-batches axis)."""
        criterion = OmegaConf.load(config_dir() / "pruning" / f"{pruning}.yaml").get("criterion")
        return criterion is not None and not CRITERIA[str(criterion)].needs_data

    def config(self, setting: Setting, dataset: str, pruning: str):
        return compose("config", [*self.study.overrides(setting, dataset, pruning),
                                  f"paths.results_dir={self.results_dir}"])

    def recorded(self, setting: Setting, dataset: str, pruning: str) -> bool:
        tag = "unpruned" if pruning == "none" else setting.run_tag(self.data_free[pruning])
        r = self.records
        return bool(((r["dataset"] == dataset) & (r["image_size"] == setting.size(dataset)) & (r["tag"] == tag)
                     & (r["pruning"] == pruning)).any())

    def ensure(self, setting: Setting) -> None:
        """Every run of ``setting`` recorded (trained here where missing, unless tables only)."""
        if not self.train:
            return
        for dataset in self.study.datasets:
            for pruning in ("none", *self.study.criteria):
                if not self.recorded(setting, dataset, pruning):
                    self.run(setting, dataset, pruning)

    def run(self, setting: Setting, dataset: str, pruning: str) -> str:
        """Run (or find finished on disk) one study run, record it if it is not; its directory.
        A pruned run starts from the unpruned run of its data set and size, whatever its schedule."""
        cfg = self.config(setting, dataset, pruning)
        pipeline.check_settings(cfg)
        initial = None if pruning == "none" else self.unpruned_dir(setting, dataset)
        log.info("study run: %s, %s, %s", setting.label(), dataset, pruning)
        summary = pipeline.run_single(cfg, initial_run=initial)
        if not self.recorded(setting, dataset, pruning):
            self.record(cfg, summary, setting, dataset, pruning)
        return summary["run_dir"]

    def unpruned_dir(self, setting: Setting, dataset: str) -> str:
        rundir = RunDir(pipeline.with_weights(self.config(setting, dataset, "none")).paths.run_dir)
        return str(rundir.path) if rundir.finished else self.run(setting, dataset, "none")

    def record(self, cfg, summary: dict[str, Any], setting: Setting, dataset: str, pruning: str) -> None:
        rundir = RunDir(summary["run_dir"])
        built = pipeline.build_data(cfg, None)
        chance = Chance.of(label for _, label in built.bundle.val.samples)
        steps = pd.DataFrame(rundir.read_steps()).astype({"density": float, "val_top1": float})
        collapsed = steps[[bool(chance.collapsed(v)) for v in steps["val_top1"]]]
        narrow = steps.sort_values("narrowest_fraction").iloc[0] if pruning != "none" else None
        epochs = [e["val_top1"] for e in rundir.read_epochs() if e.get("phase") == "train" and e.get("step") == 0]
        row = {"dataset": dataset, "image_size": setting.size(dataset),
               "tag": "unpruned" if pruning == "none" else setting.run_tag(self.data_free[pruning]),
               "rule": None if pruning == "none" else setting.rule,
               "score_batches": None if pruning == "none" else setting.score_batches,
               "recovery_epochs": None if pruning == "none" else setting.recovery_epochs,
               "step_fraction": None if pruning == "none" else setting.step_fraction,
               "keys": None if pruning == "none" or not setting.keys else
               ";".join(f"{k}={v}" for k, v in setting.keys),
               "pruning": pruning, "val_top1": round(float(steps["val_top1"].iloc[0]), 2),
               # val_30: at the gate's density (retain_density, 30 % in the committed study); val_10: at 10 %
               "val_30": round(at_density(steps, self.study.retain_density), 2),
               "val_10": round(at_density(steps, 0.1), 2),
               "val_min": round(float(steps["val_top1"].min()), 2), "val_majority": round(chance.majority, 2),
               "val_margin": round(chance.margin, 2), "collapsed": bool(len(collapsed)),
               "collapsed_density": float(collapsed["density"].iloc[0]) if len(collapsed) else None,
               "narrowest_unit": None if narrow is None else narrow["narrowest_unit"],
               "narrowest_fraction": None if narrow is None else float(narrow["narrowest_fraction"]),
               "val_epochs": ";".join(f"{v:.2f}" for v in epochs) if pruning == "none" else None,
               "probe_val_top1": self.probe(cfg, built) if pruning == "none" else None,
               "minutes": round(float(summary["wall_time_s"]) / 60, 2), "run_dir": str(Path(summary["run_dir"])
                                                                                      .relative_to(self.results_dir)),
               "torch": package_versions()["torch"], "cpu": device_description(torch.device("cpu"))}
        self.records = pd.concat([self.records, pd.DataFrame([row])], ignore_index=True)[RUN_COLUMNS]
        atomic_write_text(self.records_path, self.records.to_csv(index=False))
        self.new_runs += 1
        log.info("recorded %s %s %s: val top-1 %.2f (30 %%: %s, 10 %%: %s)%s", dataset, row["tag"], pruning,
                 row["val_top1"], row["val_30"], row["val_10"], ", collapsed" if row["collapsed"] else "")

    def probe(self, cfg, built) -> float:
        """Validation top-1 of a logistic regression on the frozen starting features, at the run's size."""
        b = cfg.backbone
        model, _ = create_backbone(b.timm_name, built.bundle.num_classes, weights=str(b.weights),
                                   pretrained_tag=b.pretrained_tag, cifar_stem=b.cifar_stem,
                                   kwargs=OmegaConf.to_container(b.kwargs), packaged_weights=b.get("packaged_weights"))
        val = built.bundle.val
        train = SampleDataset(built.bundle.train.samples, val.transform)    # no augmentation for features
        (xs, ys), (xv, yv) = features(model, train), features(model, val)
        return round(fit_probe(xs, ys, xv, yv).test_top1, 2)


def walk(runner: Runner, study: Study, train_scale: float, learners: int, seeds: int, pruned_scale: float = 1.0):
    """The sequential design (spa.reporting.budget); returns the table, the walk's lines and the choice."""
    current, lines, seen = study.start(), [], {}
    for number, (axis, values) in enumerate(study.axes.items(), start=1):
        evaluated = []
        for value in values:
            candidate = current.with_value(axis, value)
            if candidate not in seen and evaluated and not study.same_cost(axis):
                bound, unpruned = _bound(runner, study, axis, candidate)
                best = max(gates_passed(v, study.gates(axis)) for _, v in evaluated)
                if bound is not None and bound <= best:    # cannot be kept: its unpruned run already fails (a)
                    lines.append(f"axis {axis}: {candidate.value(axis)} not pruned: its unpruned run fails gate (a) "
                                 f"({unpruned}), so it can pass at most {bound} of the axis's gates, as many as a "
                                 f"cheaper value")
                    continue
            if candidate not in seen:
                runner.ensure(candidate)
                g = gate_rows(study, candidate, runner.records, runner.data_free)
                v = verdict(g)
                minutes = grid_minutes(g, learners, seeds, train_scale, pruned_scale) if v["complete"] else math.nan
                seen[candidate] = (g.assign(axis_no=number, axis=axis, grid_minutes=minutes),
                                   {**v, **_budget(study, minutes)})
            if not seen[candidate][1]["complete"]:
                lines.append(f"axis {axis}: open, runs missing for {candidate.label()} (run the study to go on)")
                return _table(study, seen, None), lines, None
            evaluated.append((candidate, _on_axis(study, axis, *seen[candidate])))
            v = evaluated[-1][1]
            if not study.same_cost(axis) and passes(v, study.gates(axis)) and v["within_max"]:
                break     # the first passing value on a rising-cost axis is the cheapest: a dearer one is no nearer
                # the preferred minutes
        kept = choose(evaluated, study.same_cost(axis), study.gates(axis))
        tried = ", ".join(f"{c.value(axis)} ({_summary(v, study.retain_density)})" for c, v in evaluated)
        judged = ", ".join(g[-1] for g in study.gates(axis)) + (
            f" of {study.dataset_of(axis)}" if study.dataset_of(axis) else "")
        lines.append(f"axis {number}, {axis} (judged on {judged}): tried {tried}; kept {kept.value(axis)}")
        current = kept
    final = seen[current][1]
    if not final["passed"]:
        lines.append(f"no setting passes every gate: the chosen one is the best the walk found (gates failed: "
                     f"{', '.join(g[-1] for g in GATES if not final[g])})")
    elif not final["within_budget"]:
        lines.append(f"the chosen setting passes every gate with the grid over {study.grid_minutes:.0f} minutes "
                     f"(~{final['grid_minutes']:.0f}; nothing within {study.grid_minutes:.0f} passed)")
    return _table(study, seen, current), lines, current


def _bound(runner: Runner, study: Study, axis: str, candidate: Setting) -> tuple[int | None, str]:
    """The most of an axis's gates ``candidate`` could pass, known from its unpruned run alone: gate (a)
    (image_size axes; None elsewhere: nothing to know before the pruned runs), and that run's figures."""
    dataset = study.dataset_of(axis)
    if dataset is None:
        return None, ""
    if not runner.recorded(candidate, dataset, "none"):
        if not runner.train:
            return None, ""
        runner.run(candidate, dataset, "none")
    g = gate_rows(study, candidate, runner.records, runner.data_free)
    row = g[g["dataset"] == dataset].iloc[0]
    figures = f"fine-tuning {row['unpruned_val']:.2f} against the probe's {row['probe_val']:.2f}"
    return (None if row["gate_a"] is None else int(bool(row["gate_a"])) + len(study.gates(axis)) - 1), figures


def _budget(study: Study, minutes: float) -> dict[str, bool]:
    return {"grid_minutes": minutes, "within_budget": bool(minutes <= study.grid_minutes),
            "within_max": bool(minutes <= study.grid_minutes_max)}


def _on_axis(study: Study, axis: str, g, v: dict[str, Any]) -> dict[str, Any]:
    """The verdict an axis is judged by: on its one data set's rows for image_size.<dataset>, else ``v``."""
    dataset = study.dataset_of(axis)
    return v if dataset is None else {**verdict(g[g["dataset"] == dataset]),
                                      **{k: v[k] for k in ("grid_minutes", "within_budget", "within_max")}}


def _summary(v: dict[str, Any], density: float) -> str:
    gates = "".join(k[-1] for k in ("gate_a", "gate_b", "gate_c") if v[k])
    return (f"gates passed: {gates or 'none'}, worst retention at {density:.0%} {v['worst_retained_30']:.3f}, "
            f"grid ~{v['grid_minutes']:.0f} min")


def _table(study: Study, seen: dict, chosen: Setting | None) -> pd.DataFrame:
    parts = [g.assign(passed=v["passed"], chosen=(s == chosen), overrides=";".join(study.budget_overrides(s)))
             for s, (g, v) in seen.items()]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="imagenet_mini_budget",
                        help="a name in configs/studies/ or a path to a study .yaml")
    parser.add_argument("--results-dir", type=Path, default=repo_root() / "results")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override for every run (e.g. dataset.root=...); changes the runs' configs")
    parser.add_argument("--tables-only", action="store_true", help="write the tables from the records, train nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    path = Path(args.study) if args.study.endswith(".yaml") else config_dir() / "studies" / f"{args.study}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
        print(f"--study {args.study}: no {path}; use one of {choices}", file=sys.stderr)
        return 2
    try:
        study = Study.from_dict(OmegaConf.to_container(OmegaConf.load(path), resolve=True), extra=args.set)
    except (KeyError, ValueError) as err:
        print(f"{path}: {err}", file=sys.stderr)
        return 2
    results_dir = args.results_dir.resolve()
    grid = sweep_params(study.grid)
    learners, seeds = len(grid.get("adapter", ["finetune"])), len(grid.get("seed", ["1"]))
    pruned_scale = len(grid.get("pruning", study.criteria)) / len(study.criteria)   # the grid's prunings per criterion
    with initialize_config_dir(str(config_dir()), version_base=None):
        runner = Runner(study, results_dir, train=not args.tables_only)
        val_fraction = float(runner.config(study.start(), study.datasets[0], "none").dataset.val_fraction)
        table, lines, chosen = walk(runner, study, 1.0 / (1.0 - val_fraction), learners, seeds, pruned_scale)
    command = "make budget-study" + ("" if args.study == "imagenet_mini_budget" else f' ARGS="--study {args.study}"')
    header = (f"Budget study of `{study.grid}` ({path.name}, `{command}`): fine-tuning "
              f"and fine-pruning only, seed {study.seed}, validation top-1 (%) on the held-out "
              f"{val_fraction:.0%} of the training images; test/ is not read. Gates: (a) unpruned fine-tuning "
              f">= a linear probe on the same frozen features and size; (b) fine-pruning at "
              f"{study.retain_density:.0%} density keeps >= {study.retain:.0%} of its unpruned top-1, every "
              f"criterion and data set; (c) no step of any run collapsed (validation majority share + max(3 points, "
              f"3 SE)). `minutes`: the data set's study runs (unpruned + one per criterion) on this machine; "
              f"`grid_minutes`: the grid ({learners} learners x {seeds} seeds x {pruned_scale:g} prunings per "
              f"criterion) estimated from them, scaled by "
              f"1/(1-{val_fraction:g}) for its larger training split (SPLoRA runs costed as fine-tuning ones).\n\n"
              f"torch {package_versions()['torch']}")
    if table.empty:
        print("no setting has all its runs recorded yet")
        return 0
    out = write_tables(study, table, [{"text": line} for line in lines], chosen, results_dir / "tables", header)
    print(out["md"].read_text())
    print(f"{runner.new_runs} new run(s); records: {runner.records_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
