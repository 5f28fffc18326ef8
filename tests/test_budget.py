"""The budget study: its settings, gates and choices (spa.reporting.budget) and the script on fake data."""
from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from scripts_path import load_script

from spa import config_dir, repo_root
from spa.reporting.budget import RUN_COLUMNS, Setting, Study, choose, gate_rows, grid_minutes, passes, verdict

SPEC = {"experiment": "imagenet_mini_budget", "table": "t_budget", "grid": "table1_imagenet_mini", "seed": 1,
        "datasets": ["cifar10", "cats_vs_dogs"], "criteria": ["weight", "taylor"],
        "rules": {"paper": {}, "mean": {"pruning.normalization": "mean"}},
        "axes": {"rule": ["paper", "mean"], "score_batches": [10, None], "recovery_epochs": [1, 2],
                 "step_fraction": [0.1, 0.05], "image_size.cifar10": [64, 96], "image_size.cats_vs_dogs": [96]},
        "gates": {"retain_density": 0.3, "retain": 0.9}, "grid_minutes": 150}
DATA_FREE = {"weight": True, "taylor": False}


def study() -> Study:
    return Study.from_dict(SPEC)


def test_the_committed_study_loads_and_starts_from_todays_grid_setting():
    spec = yaml.safe_load((config_dir() / "studies" / "imagenet_mini_budget.yaml").read_text())
    start = Study.from_dict(spec).start()
    assert start == Setting("paper", 10, 1, 0.1, (("cifar10", 64), ("cats_vs_dogs", 96)))
    assert start.tag == "paper-s10-r1-p10"


def test_a_setting_changes_one_axis_and_names_its_runs():
    s = study().start()
    bigger = s.with_value("image_size.cifar10", 96)
    assert bigger.size("cifar10") == 96 and bigger.size("cats_vs_dogs") == 96 and bigger.tag == s.tag
    full = s.with_value("score_batches", None)
    assert full.tag == "paper-sall-r1-p10"
    # the weight criterion reads no data: its run is the one of the 10-batch setting
    assert full.run_tag(data_free=True) == "paper-s10-r1-p10" and full.run_tag(data_free=False) == full.tag
    assert s.with_value("step_fraction", 0.05).tag == "paper-s10-r1-p5"


def test_a_run_gets_the_rule_and_schedule_on_its_command_line():
    st = study()
    s = st.start().with_value("rule", "mean").with_value("score_batches", None)
    over = st.overrides(s, "cifar10", "taylor")
    assert {"pruning=taylor", "pruning.normalization=mean", "schedule.score_batches=null", "dataset.image_size=64",
            "schedule.recovery_epochs=1", "budget_tag=mean-sall-r1-p10", "experiment=imagenet_mini_budget"} <= set(over)
    assert st.overrides(s, "cats_vs_dogs", "none")[-2:] == ["pruning=none", "budget_tag=unpruned"]


@pytest.mark.parametrize("change, message", [
    ({"axes": {**SPEC["axes"], "rule": ["paper", "median"]}}, "median"),
    ({"datasets": ["cifar10", "flowers102"]}, "flowers102"),
])
def test_a_study_that_names_what_it_does_not_define_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        Study.from_dict({**SPEC, **change})


def records(unpruned=80.0, probe=60.0, weight_30=75.0, taylor_30=74.0, collapsed=False, tag="paper-s10-r1-p10"):
    rows = []
    for dataset, size in (("cifar10", 64), ("cats_vs_dogs", 96)):
        rows.append({"dataset": dataset, "image_size": size, "tag": "unpruned", "pruning": "none",
                     "val_top1": unpruned, "probe_val_top1": probe, "val_epochs": "70.0;79.0;80.0",
                     "collapsed": False, "minutes": 1.0})
        for criterion, v30 in (("weight", weight_30), ("taylor", taylor_30)):
            rows.append({"dataset": dataset, "image_size": size, "tag": tag, "pruning": criterion,
                         "val_top1": unpruned, "val_30": v30, "val_10": v30 - 10, "collapsed": collapsed,
                         "narrowest_unit": "conv_head", "narrowest_fraction": 0.1, "minutes": 2.0})
    return pd.DataFrame(rows).reindex(columns=RUN_COLUMNS)


def test_healthy_runs_pass_every_gate():
    g = gate_rows(study(), study().start(), records(), DATA_FREE)
    assert list(g["dataset"]) == ["cifar10", "cats_vs_dogs"]
    assert g["weight_retained_30"].tolist() == [0.9375, 0.9375] and g["taylor_retained_30"].iloc[0] == 0.925
    assert g["last_epoch_gain"].tolist() == [1.0, 1.0] and g["minutes"].tolist() == [5.0, 5.0]
    v = verdict(g)
    assert v["passed"] and v["gates_passed"] == 3 and v["worst_retained_30"] == pytest.approx(0.925)
    # 3 learners x 2 seeds x (1 + 2 + 2 minutes) per data set, x 1.25 for the larger training split
    assert grid_minutes(g, 3, 2, 1.25) == 75.0


@pytest.mark.parametrize("kwargs, failed", [
    ({"probe": 81.0}, "gate_a"),                  # the probe beats fine-tuning
    ({"taylor_30": 71.9}, "gate_b"),              # 89.9 % retained
    ({"collapsed": True}, "gate_c"),
])
def test_each_gate_fails_on_its_own(kwargs, failed):
    v = verdict(gate_rows(study(), study().start(), records(**kwargs), DATA_FREE))
    assert v[failed] is False and not v["passed"] and v["gates_passed"] == 2


def test_a_setting_with_runs_missing_is_not_judged():
    g = gate_rows(study(), study().start(), records(tag="mean-s10-r1-p10"), DATA_FREE)
    v = verdict(g)
    assert not v["complete"] and v["gate_b"] is None and v["gate_a"] is True and not v["passed"]
    assert math.isnan(g["weight_val_30"].iloc[0])


def test_the_full_scoring_epoch_setting_reuses_the_weight_run():
    s = study().start().with_value("score_batches", None)
    r = records()
    taylor = r[r["pruning"] == "taylor"].assign(tag="paper-sall-r1-p10", val_30=79.0)
    g = gate_rows(study(), s, pd.concat([r, taylor]), DATA_FREE)
    assert g["weight_val_30"].tolist() == [75.0, 75.0] and g["taylor_val_30"].tolist() == [79.0, 79.0]


def _v(passed, worst, gates=3):
    """A verdict: ``gates`` of (a), (b), (c) passed, in that order."""
    flags = {g: i < gates for i, g in enumerate(("gate_a", "gate_b", "gate_c"))}
    return {**flags, "passed": passed, "worst_retained_30": worst, "gates_passed": gates, "within_budget": True}


def test_the_choice_on_an_axis():
    a, b, c = (study().start().with_value("recovery_epochs", n) for n in (1, 2, 4))
    # rising cost: the first passing value, even where a dearer one retains more
    assert choose([(a, _v(False, 0.8, 2)), (b, _v(True, 0.91)), (c, _v(True, 0.97))], same_cost=False) == b
    # same cost: the best passing one
    assert choose([(a, _v(True, 0.91)), (b, _v(True, 0.95)), (c, _v(False, 0.99, 2))], same_cost=True) == b
    # none passes, rising cost: the cheapest with the most gates (a dearer value buys gates, not retention)
    assert choose([(a, _v(False, 0.5, 1)), (b, _v(False, 0.7, 2)), (c, _v(False, 0.9, 1))], same_cost=False) == b
    assert choose([(a, _v(False, 0.5, 2)), (b, _v(False, 0.9, 2))], same_cost=False) == a
    # none passes, same cost: the most gates, then the best worst-case retention, then the earlier
    assert choose([(a, _v(False, 0.5, 2)), (b, _v(False, 0.7, 2)), (c, _v(False, 0.9, 1))], same_cost=True) == b
    assert choose([(a, _v(False, 0.7, 2)), (b, _v(False, 0.7, 2))], same_cost=True) == a
    # over the preferred minutes: taken only where nothing within them passes; over the most: never as passing
    over = {**_v(True, 0.99), "within_budget": False, "within_max": True}
    assert choose([(a, _v(False, 0.5, 2)), (b, over)], same_cost=False) == b
    assert choose([(a, _v(True, 0.9)), (b, over)], same_cost=True) == a
    too_dear = {**_v(True, 0.99), "within_budget": False, "within_max": False}
    assert choose([(a, _v(False, 0.5, 2)), (b, too_dear)], same_cost=False) == a


def test_a_schedule_axis_is_judged_on_the_gates_it_can_move():
    st = study()
    assert st.gates("recovery_epochs") == ("gate_b", "gate_c") and st.gates("rule") == ("gate_b", "gate_c")
    assert st.gates("image_size.cifar10") == ("gate_a", "gate_b", "gate_c")
    assert st.dataset_of("image_size.cats_vs_dogs") == "cats_vs_dogs" and st.dataset_of("rule") is None
    a, b, c = (st.start().with_value("recovery_epochs", n) for n in (1, 2, 4))
    probe_wins = {"gate_a": False, "gate_b": True, "gate_c": True}      # (a) fails at every value: the size's doing
    one = {**_v(False, 0.85, 2), "gate_a": False, "gate_b": False, "gate_c": True}
    assert passes({**_v(False, 0.93, 2), **probe_wins}, st.gates("recovery_epochs"))
    assert not passes({**_v(False, 0.93, 2), **probe_wins})
    assert choose([(a, one), (b, {**_v(False, 0.93, 2), **probe_wins}), (c, {**_v(False, 0.97, 2), **probe_wins})],
                  same_cost=False, gates=st.gates("recovery_epochs")) == b


def test_the_script_walks_the_axes_records_every_run_and_skips_them_when_run_again(tmp_path, image_folder):
    spec = {**SPEC, "table": "tiny_budget", "datasets": ["cifar10"],
            "axes": {"rule": ["paper", "mean"], "score_batches": [2], "recovery_epochs": [1, 2],
                     "step_fraction": [0.35], "image_size.cifar10": [32]}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    results = tmp_path / "results"
    tiny = ["backbone=test_resnet", f"dataset.root={image_folder}", "train.epochs=2", "train.batch_size=8",
            "train.max_steps_per_epoch=2", "schedule.target_density=0.3", "device=cpu", "train.channels_last=false",
            "dataset.val_fraction=0.25"]
    cmd = [sys.executable, str(repo_root() / "scripts" / "budget_study.py"), "--study", str(path),
           "--results-dir", str(results), *[f"--set={o}" for o in tiny]]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = pd.read_csv(results / "tables" / "tiny_budget_runs.csv")
    # the unpruned run once; weight and Taylor under both rules; the recovery axis tried 2 epochs only
    # where 1 failed a gate (a fake 4-class set at 32 px cannot pass them)
    assert (runs["pruning"] == "none").sum() == 1
    assert set(runs.loc[runs["pruning"] != "none", "tag"]) == {"paper-s2-r1-p35", "mean-s2-r1-p35", "paper-s2-r2-p35"}
    pruned = runs[runs["pruning"] != "none"]
    assert pruned["val_30"].notna().all() and pruned["narrowest_unit"].notna().all()
    assert runs.loc[runs["pruning"] == "none", "probe_val_top1"].between(0, 100).all()
    table = pd.read_csv(results / "tables" / "tiny_budget.csv")
    assert table["chosen"].sum() == 1 and set(table["axis"]) == {"rule", "recovery_epochs"}
    md = (results / "tables" / "tiny_budget.md").read_text()
    assert "**Chosen:**" in md and "axis 3, recovery_epochs (judged on b, c): tried 1" in md
    assert "test/ is not read" in md
    # again, with the run directories gone (a fresh clone with the committed records): nothing trains
    import shutil
    shutil.rmtree(results / "runs")
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0 and "0 new run(s)" in again.stdout
    assert pd.read_csv(results / "tables" / "tiny_budget.csv").equals(table)


def test_a_missing_study_is_named_with_the_choices(capsys, monkeypatch):
    script = load_script("budget_study")
    monkeypatch.setattr(sys, "argv", ["budget_study.py", "--study", "nope"])
    assert script.main() == 2
    assert "imagenet_mini_budget" in capsys.readouterr().err


def test_a_study_of_config_keys_walks_pruned_run_settings_and_refuses_others():
    """The block study's axes are config keys of the pruned runs; its tags name them, the channel study's stay."""
    spec = yaml.safe_load((config_dir() / "studies" / "block_spa_mini_budget.yaml").read_text())
    st = Study.from_dict(spec)
    start = st.start()
    assert start.rule is None and start.tag == "final_warmup0.2-epochs_per_stage1"
    assert st.same_cost("pruning.final_warmup") and not st.same_cost("pruning.epochs_per_stage")
    assert st.gates("pruning.epochs_per_stage") == ("gate_b", "gate_c")
    two = start.with_value("pruning.epochs_per_stage", 2)
    assert two.value("pruning.epochs_per_stage") == 2 and two.tag == "final_warmup0.2-epochs_per_stage2"
    over = st.overrides(two, "cifar10", "block_magnitude")
    assert "pruning.epochs_per_stage=2" in over and not any(o.startswith("schedule.") for o in over)
    with pytest.raises(ValueError, match="config key of the pruned runs"):
        Study.from_dict({**spec, "axes": {**spec["axes"], "train.epochs": [4, 8]}})
    with pytest.raises(ValueError, match="give all four"):
        Study.from_dict({**SPEC, "axes": {k: v for k, v in SPEC["axes"].items() if k != "step_fraction"}})


def test_the_grid_estimate_scales_the_pruned_runs_by_the_grids_prunings_per_criterion():
    g = gate_rows(study(), study().start(), records(), DATA_FREE)
    assert g["minutes_pruned"].tolist() == [4.0, 4.0]
    # 3 learners x 2 seeds x (1 + 4 x 2) per data set x 1.25: a grid with two prunings per study criterion
    assert grid_minutes(g, 3, 2, 1.25, pruned_scale=2.0) == 135.0
