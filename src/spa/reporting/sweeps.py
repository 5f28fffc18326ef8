"""Does every committed table come from its make target alone? The runs a make target's sweeps launch,
listed without training, against the rows of the table it claims to write.

A make target's commands are read from ``make -n`` (the Makefile itself, not a copy of it); each
``scripts/run.py -m`` line is expanded as Hydra's basic sweeper expands it (the experiment's
``hydra.sweeper.params``, overridden key by key by the command line, every combination), each job
composed, and each job's chain of start runs added (a pruned run's shared unpruned run, Pear's
warm-up: :func:`spa.pipeline.start_chain`), since those write rows too. A :class:`Committed` entry
names the make invocation, the committed CSV and the columns that identify a row in it.
"""
from __future__ import annotations

import itertools
import shlex
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from spa import config_dir, repo_root
from spa.reporting.cost import sweep_params

IGNORED_KEYS = ("launcher", "shard")     # where and which part of a sweep runs, not which runs it has


@dataclass(frozen=True)
class Committed:
    """A committed table and the make invocation that writes it. ``keys``: the columns that identify a
    row; with ``seeds_column`` the table aggregates seeds, and a row's seed count is compared instead."""
    table: str                                   # file name under results/tables
    make: tuple[str, ...]                        # make target and its variables
    keys: tuple[str, ...]
    identify: Callable[[DictConfig], dict | None] = field(default=lambda cfg: run_identity(cfg))
    seeds_column: str | None = None
    wide_datasets: bool = False                  # Table 1's layout: one <dataset>_seeds column per dataset
    finish: Callable[[pd.DataFrame], pd.DataFrame] = field(default=lambda runs: runs)   # columns over all runs


def run_identity(cfg: DictConfig) -> dict:
    """The columns every run's summary records: what it ran on, with which learner and method, which seed."""
    return {"dataset": cfg.dataset.name, "backbone": cfg.backbone.name, "adapter": cfg.adapter.name,
            "pruning": cfg.pruning.name, "seed": int(cfg.seed)}


def _pruned_only(cfg: DictConfig) -> dict | None:
    return None if cfg.pruning.name == "none" else run_identity(cfg)


def _table1(cfg: DictConfig) -> dict | None:
    from spa.pipeline import method_name
    from spa.reporting.table1 import _learning
    if method_name(cfg) != "iterative":
        return None
    return {**run_identity(cfg), "learning": _learning(cfg.adapter.name, cfg.pruning.name)}


def _selection(cfg: DictConfig) -> dict:
    return {**run_identity(cfg), "optim.lr": float(cfg.optim.lr)}


def _pear(cfg: DictConfig) -> dict | None:
    """What names a Pear run's table row, from its config; the learner itself comes in :func:`_pear_learners`."""
    from spa.pipeline import method_name
    if method_name(cfg) != "pear":
        return None
    return {**run_identity(cfg), "ratio": float(cfg.pruning.ratio), "rank": int(cfg.adapter.options.rank),
            "sharing": cfg.pruning.sharing, "checkpoint": cfg.pruning.checkpoint, "after": cfg.pruning.get("after")}


def _pear_learners(runs: pd.DataFrame) -> pd.DataFrame:
    """The learner of each Pear run as :func:`spa.reporting.pear.pear_runs` names it: the full rank is the
    largest rank of a data set's runs, and a run after channel pruning is named against its own rank."""
    from spa.reporting.pear import learner
    full = runs.groupby("dataset")["rank"].transform("max")
    names = []
    for r, f in zip(runs.itertuples(), full):
        record = {"plan": {"pruned": [] if r.ratio == 0 else ["some"], "ratio": r.ratio}, "sharing": r.sharing,
                  "checkpoint": r.checkpoint}
        after = r.after if isinstance(r.after, str) else None      # None comes back from pandas as NaN
        names.append(f"after {after}: {learner(record, r.rank, r.rank)}" if after else learner(record, r.rank, f))
    return runs.assign(learner=names)


COMMITTED = (
    Committed("demo_runs.csv", ("demo",), ("dataset", "backbone", "adapter", "pruning", "seed")),
    Committed("table1_mini.csv", ("reproduce-table1", "T1=table1_mini"), ("dataset", "pruning", "learning"),
              _table1, seeds_column="seeds", wide_datasets=True),
    Committed("table1_imagenet_mini.csv", ("reproduce-table1", "T1=table1_imagenet_mini"),
              ("dataset", "pruning", "learning"), _table1, seeds_column="seeds", wide_datasets=True),
    Committed("table1_imagenet_mini_lr.csv", ("select-lr", "LR=table1_imagenet_mini_lr"),
              ("dataset", "adapter", "optim.lr"), _selection, seeds_column="seeds"),
    Committed("block_spa_mini_steps.csv", ("block-spa-mini",), ("dataset", "pruning", "adapter", "seed"),
              _pruned_only),
    Committed("pear_mini_runs.csv", ("pear-mini",), ("dataset", "learner", "ratio", "seed"), _pear,
              finish=_pear_learners),
    Committed("vit_iclr_mini_runs.csv", ("vit-iclr-mini",), ("dataset", "adapter", "pruning", "seed"),
              _pruned_only),
)


def make_sweeps(make: Iterable[str], root: Path | None = None) -> list[list[str]]:
    """The Hydra overrides of every ``scripts/run.py`` command that ``make -n <make...>`` prints."""
    listing = subprocess.run(["make", "-n", "--no-print-directory", *make, "ARGS="], cwd=root or repo_root(),
                             capture_output=True, text=True, check=True).stdout
    sweeps = []
    for line in listing.splitlines():
        words = shlex.split(line)
        if "scripts/run.py" in words:
            sweeps.append([w for w in words[words.index("scripts/run.py") + 1:] if w != "-m"])
    return sweeps


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs of one multirun: the experiment's sweeper parameters, each replaced by the command
    line's value (or values) for the same key, every combination, as Hydra's basic sweeper runs them."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    experiment = next((p.value() for p in parsed if p.key_or_group == "experiment"), None)
    grid: dict[str, list[str]] = dict(sweep_params(experiment)) if experiment else {}
    fixed = []
    for p in parsed:
        key = p.get_key_element()
        if p.key_or_group in IGNORED_KEYS:
            continue
        if p.is_sweep_override():
            grid[key] = list(p.sweep_string_iterator())
        elif key in grid:
            grid[key] = [p.get_value_element_as_str()]
        else:
            fixed.append(f"{key}={p.get_value_element_as_str()}")
    return [fixed + [f"{k}={v}" for k, v in zip(grid, values)] for values in itertools.product(*grid.values())]


def sweep_runs(make: Iterable[str], identify: Callable[[DictConfig], dict | None] = run_identity,
               root: Path | None = None) -> pd.DataFrame:
    """One row per distinct run the make invocation's sweeps write (start runs included), as ``identify``
    names it (None: a run the table does not read)."""
    from spa.pipeline import start_chain
    rows = {}
    with initialize_config_dir(str(config_dir()), version_base=None):
        for sweep in make_sweeps(make, root):
            for job in expand(sweep):
                cfg = compose("config", job)
                for run in [*start_chain(cfg), cfg]:
                    row = identify(run)
                    if row is not None:
                        rows[tuple(sorted(row.items()))] = row
    return pd.DataFrame(list(rows.values()))


def committed_rows(spec: Committed, tables_dir: Path) -> pd.DataFrame:
    """The identifying columns (and seed counts) of the committed table's rows, one row per key."""
    table = pd.read_csv(tables_dir / spec.table)
    if spec.wide_datasets:       # pruning, learning, density, <dataset>, <dataset>_std, <dataset>_seeds, ...
        datasets = [c[: -len("_seeds")] for c in table.columns if c.endswith("_seeds")]
        table = pd.concat([table.assign(dataset=d, seeds=table[f"{d}_seeds"]) for d in datasets], ignore_index=True)
        table = table[table["seeds"].notna() & (table["seeds"] > 0)]
    if spec.seeds_column:
        return table.groupby(list(spec.keys), dropna=False)[spec.seeds_column].max().rename("seeds").reset_index()
    return table[list(spec.keys)].drop_duplicates()


def _normalised(frame: pd.DataFrame, keys: Iterable[str]) -> set[tuple]:
    return {tuple(round(v, 6) if isinstance(v, float) else v for v in row)
            for row in frame[list(keys)].itertuples(index=False)}


def compare(spec: Committed, tables_dir: Path, root: Path | None = None) -> list[str]:
    """What does not match between the committed table and its make target's sweeps: committed rows
    no sweep run writes, sweep runs with no row, and (aggregated tables) seed counts that differ."""
    runs = spec.finish(sweep_runs(spec.make, spec.identify, root))
    committed = committed_rows(spec, tables_dir)
    keys = list(spec.keys)
    target = "make " + " ".join(spec.make)
    problems = []
    if spec.seeds_column:
        runs = runs.groupby(keys)["seed"].nunique().rename("seeds").reset_index()
        keys_seeds = [*keys, "seeds"]
        have, want = _normalised(committed, keys_seeds), _normalised(runs, keys_seeds)
    else:
        have, want = _normalised(committed, keys), _normalised(runs, keys)
    label = ", ".join(keys + (["seeds"] if spec.seeds_column else []))
    for row in sorted(have - want, key=str):
        problems.append(f"{spec.table}: row ({label}) = {row} has no run in `{target}`")
    for row in sorted(want - have, key=str):
        problems.append(f"{spec.table}: `{target}` runs ({label}) = {row}, which has no row")
    return problems


def check_committed(tables_dir: Path | None = None, specs: Iterable[Committed] = COMMITTED,
                    root: Path | None = None) -> list[str]:
    """Every mismatch of every committed table present under ``tables_dir`` (default results/tables)."""
    tables_dir = tables_dir or repo_root() / "results" / "tables"
    problems = []
    for spec in specs:
        if (tables_dir / spec.table).is_file():
            problems.extend(compare(spec, tables_dir, root))
    return problems
