"""Every committed table comes from its make target alone (spa.reporting.sweeps): the runs a target's
sweeps launch, listed with ``make -n`` and Hydra's expansion, against the committed rows."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from spa import repo_root
from spa.reporting.sweeps import COMMITTED, Committed, check_committed, compare, expand, make_sweeps, sweep_runs

TABLES = repo_root() / "results" / "tables"
DEMO = next(s for s in COMMITTED if s.table == "demo_runs.csv")


def test_every_committed_table_has_a_run_in_its_make_target_and_every_run_a_row():
    assert [s.table for s in COMMITTED if not (TABLES / s.table).is_file()] == []
    assert check_committed(TABLES) == []


def test_make_targets_are_read_from_the_makefile():
    assert make_sweeps(("pear-mini",)) == [
        ["experiment=pear_mini"],
        ["experiment=pear_mini", "pruning=pear_baseline", "pruning.ratio=0.0", "adapter=pear_lora_r8,pear_lora_r4"],
        ["experiment=pear_mini", "dataset=cifar10", "pruning=pear_after_taylor", "pruning.ratio=0.0,0.5"]]
    assert make_sweeps(("reproduce-table1", "T1=table1_mini"))[0] == [
        "experiment=table1_mini", "launcher=local", "pruning=none"]


def test_the_command_line_replaces_the_experiments_sweeper_values_key_by_key():
    jobs = expand(["experiment=pear_mini", "dataset=cifar10", "pruning=pear_after_taylor", "pruning.ratio=0.0,0.5"])
    # pear_mini sweeps dataset x pruning x pruning.ratio x seed: the command line fixes two, sweeps one
    assert len(jobs) == 2 * 3
    assert {j for job in jobs for j in job if j.startswith(("dataset=", "pruning="))} == {
        "dataset=cifar10", "pruning=pear_after_taylor"}
    assert sorted({j for job in jobs for j in job if j.startswith("pruning.ratio")}) == [
        "pruning.ratio=0.0", "pruning.ratio=0.5"]
    assert len(expand(["experiment=pear_mini"])) == 2 * 4 * 2 * 3


def test_a_pruned_job_brings_its_shared_unpruned_run():
    runs = sweep_runs(DEMO.make)
    assert sorted(zip(runs["adapter"], runs["pruning"])) == [
        ("finetune", "none"), ("finetune", "taylor"), ("splora_r8", "none"), ("splora_r8", "taylor")]


@pytest.fixture
def demo_tables(tmp_path):
    shutil.copy(TABLES / DEMO.table, tmp_path / DEMO.table)
    return tmp_path


def test_a_committed_row_without_a_run_is_named(demo_tables):
    rows = pd.read_csv(demo_tables / DEMO.table)
    extra = rows.iloc[[0]].assign(seed=7)
    pd.concat([rows, extra]).to_csv(demo_tables / DEMO.table, index=False)
    problems = compare(DEMO, demo_tables)
    assert problems == ["demo_runs.csv: row (dataset, backbone, adapter, pruning, seed) = "
                        "('cifar10', 'efficientnet_lite0', 'finetune', 'none', 7) has no run in `make demo`"]


def test_a_run_without_a_row_is_named(demo_tables):
    rows = pd.read_csv(demo_tables / DEMO.table)
    rows[rows["pruning"] != "taylor"].to_csv(demo_tables / DEMO.table, index=False)
    problems = compare(DEMO, demo_tables)
    assert len(problems) == 2 and all("which has no row" in p and "'taylor'" in p for p in problems)


def test_an_aggregated_table_compares_seed_counts(tmp_path):
    spec = Committed("demo.csv", ("demo",), ("dataset", "adapter", "pruning"), seeds_column="seeds")
    table = pd.read_csv(TABLES / "demo.csv")
    table.to_csv(tmp_path / "demo.csv", index=False)
    assert compare(spec, tmp_path) == []
    table.assign(seeds=3).to_csv(tmp_path / "demo.csv", index=False)
    problems = compare(spec, tmp_path)
    assert len(problems) == 8 and sum("has no run" in p for p in problems) == 4
