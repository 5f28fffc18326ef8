"""What the evidence says (spa.reporting.evidence): one row per claim from the committed tables, with health."""
from __future__ import annotations

import math

import pandas as pd
import yaml
from helpers import fake_run

from spa.reporting.blocks import block_steps
from spa.reporting.evidence import (
    UNTABLED,
    block_row,
    budget_health,
    evidence_table,
    sentence,
    table_from_records,
    write_evidence,
)
from spa.reporting.paper import load_table1


def curves(collapsed: bool | None) -> pd.DataFrame:
    rows = []
    for dataset in ("cifar10", "cats_vs_dogs"):
        for pruning in ("weight", "taylor"):
            for learning, top1 in (("finetune", 80.0), ("splora_r32", 83.0), ("splora_r8", 78.0)):
                for density in (1.0, 0.3, 0.1):
                    rows.append({"dataset": dataset, "pruning": pruning, "learning": learning, "density": density,
                                 "top1": top1 - (1 - density) * 10, "params_k": 100.0, "flops_m": 1.0})
    frame = pd.DataFrame(rows)
    if collapsed is not None:
        frame["collapsed"] = False
        if collapsed:
            frame.loc[(frame["dataset"] == "cifar10") & (frame["learning"] == "finetune")
                      & (frame["density"] == 0.1) & (frame["pruning"] == "weight"), "collapsed"] = True
    return frame


def budget(passed: bool) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": d, "chosen": True, "gate_a": True, "gate_b": passed or d == "cifar10",
                          "gate_c": True, "overrides": "pruning.max_group_pruning=0.95;schedule.recovery_epochs=4"}
                         for d in ("cifar10", "cats_vs_dogs")])


def run_records(root, recovery: int) -> None:
    """The committed records of a grid's runs: the configs the evidence checks the budget against."""
    for pruning in ("none", "weight", "taylor", "taylor_paper_rule"):
        path = root / "t1" / "cifar10" / pruning / "seed_1" / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        guard = None if pruning.endswith("_paper_rule") else 0.95
        path.write_text(yaml.safe_dump({"pruning": {"name": pruning, "max_group_pruning": guard},
                                        "schedule": {"recovery_epochs": recovery}}))


def test_table1_claims_are_computed_and_judged_by_the_budget_gates_and_the_marks(tmp_path):
    curves(False).to_csv(tmp_path / "t1_curves.csv", index=False)
    budget(True).to_csv(tmp_path / "imagenet_mini_budget.csv", index=False)
    runs = tmp_path / "runs"
    run_records(runs, recovery=1)            # the table's runs are of another budget: nothing is judged healthy
    stale = evidence_table(tmp_path, load_table1(), table1="t1", runs=runs)
    assert stale["healthy"].isna().all() and stale["health"].str.contains("not at the budget study").all()
    run_records(runs, recovery=4)
    table = evidence_table(tmp_path, load_table1(), table1="t1", runs=runs)
    assert table["claim"].str.startswith("SPLoRA").sum() == 2
    r32 = table.iloc[0]
    assert r32["ours"] == 3.0 and r32["paper_value"] == 6.91 and r32["healthy"]
    assert "the same direction" in r32["reading"] and "healthy budget" in r32["reading"]
    r8 = table.iloc[1]
    assert r8["ours"] == -2.0 and "-1.60" in r8["reading"]
    # a collapsed fine-pruning cell at 10 %: the r32 claim is no evidence; the r8 claim at 30 % still is
    curves(True).to_csv(tmp_path / "t1_curves.csv", index=False)
    table = evidence_table(tmp_path, load_table1(), table1="t1", runs=runs)
    assert table.iloc[0]["healthy"] == False and table.iloc[0]["reading"].startswith("Not evidence")  # noqa: E712
    # ... except on the data set without the collapse, which the reading gives on its own
    assert table.iloc[0]["reading"].endswith(" Healthy on Cats & Dogs alone: SPLoRA-r32 against fine-pruning there: "
                                             "+3.00 points here against the paper's +1.48, the same direction, at a "
                                             "healthy budget.")
    assert table.iloc[1]["healthy"] == True and "alone" not in table.iloc[1]["reading"]  # noqa: E712
    # the chosen budget failing a gate: no claim is healthy, each healthy only where every gate passed
    budget(False).to_csv(tmp_path / "imagenet_mini_budget.csv", index=False)
    assert budget_health(tmp_path) == (False, "budget study: the chosen setting fails gate(s) b on Cats & Dogs")
    table = evidence_table(tmp_path, load_table1(), table1="t1", runs=runs)
    assert not table["healthy"].any()
    assert "alone" not in table.iloc[0]["reading"]            # CIFAR-10 collapsed there, Cats & Dogs failed (b)
    assert table.iloc[1]["reading"].endswith(" Healthy on CIFAR-10 alone: SPLoRA-r8 against fine-pruning there: "
                                             "-2.00 points here against the paper's -2.02, the same direction, at a "
                                             "healthy budget.")


def test_tables_from_before_the_marks_are_not_checked_rather_than_healthy(tmp_path):
    curves(None).to_csv(tmp_path / "t1_curves.csv", index=False)
    table = evidence_table(tmp_path, load_table1(), table1="t1")
    assert table["healthy"].isna().all() and table["health"].str.contains("predates the collapse marks").all()
    paths = write_evidence(table, tmp_path)
    md = paths["md"].read_text()
    assert md.count("| not checked |") == 2 and "| +3.00 " in md and "| +6.91 " in md


def test_the_sentence_says_the_direction_and_how_far():
    assert sentence("X", 2.0, 6.9, True) == ("X: +2.00 points here against the paper's +6.90, the same direction, "
                                             "4.9 points from it, at a healthy budget.")
    assert "the opposite direction" in sentence("X", -1.0, 1.0, True)
    assert sentence("X", -1.0, 1.0, False).startswith("Not evidence: X is -1.00 points")
    assert sentence("X", math.nan, 1.0, True).startswith("No number yet")
    assert sentence("X", 0.5, None, None, paper_text="better").endswith(
        "(the paper: better); the same direction (the runs' health is not checked yet).")


def test_the_iclr_claim_is_untested_whatever_our_number(tmp_path):
    pd.DataFrame([{"dataset": "cifar10", "adapter": a, "top1_at": t} for a, t in (("finetune", 60.0),
                                                                                   ("splora_r8", 70.0))]
                 ).to_csv(tmp_path / "vit_iclr_mini_runs.csv", index=False)
    row = evidence_table(tmp_path, load_table1()).iloc[0]
    assert row["ours"] == 10.0 and row["reading"].startswith("Untested here") and "Dsvttr9BUf" in row["reading"]


def test_a_block_table_counts_as_healthy_only_when_it_is_remade_from_the_committed_records(tmp_path):
    """The block claim's budget check reads the run records; a table left from other runs (a rerun under way,
    its records replaced) must not be judged by them."""
    tables, runs = tmp_path / "tables", tmp_path / "runs"
    tables.mkdir()
    pd.DataFrame([{"dataset": "cifar10", "pruning": "block_magnitude", "adapter": a, "density": 0.5, "delta": d,
                   "fewer": f, "collapsed": False, "ft_collapsed": False}
                  for a, d, f in (("splopa_64", -20.0, 8.0), ("splopa_128", -10.0, 6.0))]
                 ).to_csv(tables / "b_vs_fine_pruning.csv", index=False)
    pd.DataFrame([{"dataset": "cifar10", "chosen": True, "gate_b": True,
                   "overrides": "pruning.epochs_per_stage=4"}]).to_csv(tables / "b_budget.csv", index=False)
    steps = {"finetune": [(1.0, 76.0, 10, 1.0), (0.5, 74.0, 5, 1.0)], "splopa_64": [(1.0, 63.0, 1, 1.0),
                                                                                    (0.5, 50.0, 1, 1.0)]}
    for adapter, rows in steps.items():
        run = runs / "b" / "cifar10" / "mobilenetv2_100" / "block_magnitude" / adapter / "seed_1"
        fake_run(run, "cifar10", adapter, "block_magnitude", 1, rows, "2.14.1")
        (run / "config.yaml").write_text(yaml.safe_dump({"pruning": {"name": "block_magnitude",
                                                                    "epochs_per_stage": 4}}))
    table = block_steps(runs / "b")
    table.to_csv(tables / "b_steps.csv", index=False)
    assert table_from_records(tables, runs, "b")
    row = block_row(tables, runs, name="b")[0]
    assert row["healthy"] == True and row["ours"] == -15.0 and "passes (b)" in row["health"]  # noqa: E712
    # the records move on (a rerun replaced one run) and the table is not remade: not checked, and said so
    table.loc[table["adapter"] == "splopa_64", "top1"] += 1.5
    table.to_csv(tables / "b_steps.csv", index=False)
    assert not table_from_records(tables, runs, "b")
    row = block_row(tables, runs, name="b")[0]
    assert row["healthy"] is None and UNTABLED in row["health"] and "not checked" in row["reading"]
    # a run of the table with no record (removed when its rerun started) is the same case
    block_steps(runs / "b").iloc[:3].pipe(lambda t: t.to_csv(tables / "b_steps.csv", index=False))
    assert not table_from_records(tables, runs, "b")
