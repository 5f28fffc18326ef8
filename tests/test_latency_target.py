"""Pruning to a latency target (schedule.target=latency, docs/method.md §9): the greedy selection by
importance per predicted latency saved, the settings' errors before anything is written, and a run
that records its latency every step and stops at the first step at or below the target."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
from scripts_path import load_script

from spa import pipeline
from spa.adapters import apply_adapter
from spa.pipeline import latency as run_latency
from spa.pruning import latency, latency_target
from spa.pruning.groups import ChannelGroup
from spa.pruning.importance import CRITERIA
from spa.pruning.latency import NetworkLatency, monotone
from spa.pruning.schedule import select_latency
from spa.pruning.session import PruningSession, example_input
from spa.records import RunDir
from spa.reporting.latency import comparison
from spa.settings import SettingError

LATENCY = ["pruning=weight", "schedule.step_fraction=0.1", "schedule.recovery_epochs=1", "train.epochs=1",
           "train.max_steps_per_epoch=2", "schedule.target=latency", "schedule.runtime=torch", "pruning.round_to=2"]


def two_groups(floors=None, round_to=1, saving=10.0):
    """Group a (8 channels, each saving 1 s, scored 1) and group b (8 channels, each saving 4 s,
    scored 2): per second saved, b's channels are the cheaper ones (0.5 against 1)."""
    groups = [ChannelGroup("a", ["a"], 8), ChannelGroup("b", ["b"], 8)]
    scores = {"a": torch.ones(8), "b": torch.tensor([2.0, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6, 1.9])}
    widths = {"a": (3, 8), "b": (8, 8)}
    layers = {"a": {("a", "out")}, "b": {("b", "out")}}

    def cost(name, kept_in, kept_out):
        return kept_out * (1.0 if name == "a" else 4.0)
    return select_latency(groups, scores, widths, layers, cost, saving, floors, round_to)


def test_the_channels_of_least_importance_per_second_saved_go_first_until_the_saving_is_reached():
    # b's channels first (lowest scores first); its third would overshoot the 10 s (12), so a fills the rest
    assert two_groups() == {"a": [0, 1], "b": [0, 7]}
    assert two_groups(saving=8.0) == {"b": [0, 7]}
    assert two_groups(saving=3.5) == {"a": [0, 1, 2]}                 # b's 4 s would overshoot
    assert two_groups(saving=0.5) == {"a": [0]}                       # nothing fits: the smallest cut
    # b may lose one channel (the guard's floor of 7): the rest of the saving comes from a, by its scores
    assert two_groups(floors={"b": 7}) == {"a": [0, 1, 2, 3, 4, 5], "b": [7]}
    assert two_groups(saving=1e9) == {"a": list(range(7)), "b": [0, 1, 2, 3, 4, 5, 7]}   # one channel each kept


def test_rounded_cuts_take_whole_multiples_and_never_go_below_one():
    # round_to 4: b's cut from 8 to 4 (its four lowest-scored channels, 16 s) fits in 20 s, and a's 4 s after it
    assert two_groups(round_to=4, saving=20.0) == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 7]}
    assert two_groups(round_to=4) == {"a": [0, 1, 2, 3]}              # b's 16 s would overshoot 10 s
    assert two_groups(round_to=4, saving=1e9) == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 7]}


def test_a_table_is_made_non_decreasing_in_both_widths():
    points = {"0.5,0.5": 2.0, "0.5,1.0": 1.0, "1.0,0.5": 3.0, "1.0,1.0": 2.5}
    assert monotone(points) == {"0.5,0.5": 2.0, "0.5,1.0": 2.0, "1.0,0.5": 3.0, "1.0,1.0": 3.0}


@pytest.mark.parametrize(("override", "message"), [
    ("schedule.target_latency=1.5", "schedule.target_latency=1.5"),
    ("schedule.target_latency=0", "schedule.target_latency=0"),
    ("schedule.runtime=null", "set schedule.runtime=onnxruntime"),
    ("schedule.runtime=tensorrt", "schedule.runtime='tensorrt'"),
    ("pruning.scope=local", "pruning.scope=global"),
])
def test_bad_latency_settings_stop_before_anything_is_written(compose_cfg, tmp_path, override, message):
    with pytest.raises(SettingError, match=message.replace("[", r"\[").replace("(", r"\(")):
        pipeline.run(compose_cfg(*LATENCY, override))
    assert not (tmp_path / "results" / "runs").exists()


def test_a_runtime_that_is_not_installed_names_the_fix(compose_cfg, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install onnxruntime"):
        pipeline.run(compose_cfg(*LATENCY, "schedule.runtime=onnxruntime"))
    assert not (tmp_path / "results" / "runs").exists()


def test_a_target_the_guard_makes_unreachable_stops_before_any_training(compose_cfg, tmp_path, monkeypatch):
    seen = {}

    def floor(model, size, runtime, batch, max_group_pruning, ignore, round_to):
        seen.update(size=size, guard=max_group_pruning, round_to=round_to)
        return 0.7
    monkeypatch.setattr(run_latency, "floor_latency", floor)
    with pytest.raises(SettingError, match=r"down to 0\.700 .* raise the target to 0\.74"):
        pipeline.run(compose_cfg(*LATENCY, "schedule.target_latency=0.5", "pruning.max_group_pruning=0.5"))
    assert seen == {"size": (32, 32), "guard": 0.5, "round_to": 2}
    assert not (tmp_path / "results" / "runs").exists()


def test_a_latency_run_records_every_step_and_stops_at_the_first_step_at_or_below_its_target(compose_cfg,
                                                                                            monkeypatch):
    """A MACs-like table and its prediction as the measured latency (a tiny network's timings are
    noise): the schedule must step towards the target and stop at the first step at or below it."""
    monkeypatch.setattr(run_latency, "floor_latency", lambda *args: 0.2)
    monkeypatch.setattr(latency, "timed", lambda fns, *args: {name: 1e-6 for name in fns})   # no constant: c = 0
    monkeypatch.setattr(latency, "measure_shape", lambda shape, runtime, batch, repeats=15: {
        f"{fi},{fo}": 1e-9 * math.prod(shape.spatial or (1,)) * shape.in_ch * fi * (shape.out_ch * fo if shape.kind
                                                                                    != "depthwise" else 9)
        for fi, fo in latency.grid_points(shape)})                  # MACs-like: every channel saves time
    monkeypatch.setattr(NetworkLatency, "measure", lambda self, model: (1e3 * self.dense_s * self.predict(model),
                                                                        self.predict(model)))
    summary = pipeline.run(compose_cfg(*LATENCY, "schedule.target_latency=0.75"))
    rows = RunDir(summary["run_dir"]).read_steps()
    assert rows[0]["latency_measured"] == pytest.approx(1.0) and rows[0]["latency_runtime"] == "torch"
    measured = [r["latency_measured"] for r in rows]
    assert measured[-1] <= 0.75 and all(m > 0.75 for m in measured[:-1])
    assert all(b < a for a, b in zip(measured, measured[1:])) and len(rows) >= 3     # steps of about 10 %
    assert all(r["latency_pred"] == r["latency_measured"] for r in rows)
    assert rows[-1]["density"] < 1.0 and all(r["latency_measured_ms"] > 0 for r in rows)


def _steps_run(run, rows):
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    pd.DataFrame(rows).to_csv(run / "steps.csv", index=False)


def test_the_comparison_sets_each_latency_run_beside_the_density_run_at_the_same_measured_latency(tmp_path):
    exp = tmp_path / "latency_mini" / "cifar10" / "efficientnet_lite0"
    step = {"macs": 100, "collapsed": False, "latency_pred": 1.0, "latency_measured_ms": 1.0}
    _steps_run(exp / "weight_latency" / "finetune" / "seed_1", [
        {**step, "step": 0, "top1": 70.0, "density": 1.0, "latency_measured": 1.0},
        {**step, "step": 1, "top1": 66.0, "density": 0.8, "macs": 50, "latency_measured": 0.49}])
    _steps_run(exp / "weight" / "finetune" / "seed_1", [
        {**step, "step": i, "top1": 70.0 - 3 * i, "density": 1 - 0.1 * i, "latency_measured": m}
        for i, m in enumerate((1.0, 0.8, 0.6, 0.45, 0.4))])
    _steps_run(exp / "weight_latency" / "splora_r8" / "seed_1", [
        {**step, "step": 0, "top1": 60.0, "density": 1.0, "latency_measured": 1.0},
        {**step, "step": 1, "top1": 50.0, "density": 0.5, "latency_measured": 0.3}])
    _steps_run(exp / "weight" / "splora_r8" / "seed_1", [
        {**step, "step": 0, "top1": 60.0, "density": 1.0, "latency_measured": 1.0},
        {**step, "step": 1, "top1": 55.0, "density": 0.1, "latency_measured": 0.7}])
    table = comparison(tmp_path / "latency_mini")
    got = table[["learner", "schedule", "step", "latency_measured", "top1", "top1_unpruned", "macs_ratio"]]
    assert got.values.tolist() == [["finetune", "latency", 1, 0.49, 66.0, 70.0, 0.5],
                                   ["finetune", "density", 3, 0.45, 61.0, 70.0, 1.0],
                                   ["splora_r8", "latency", 1, 0.3, 50.0, 60.0, 1.0],
                                   ["splora_r8", "density (not reached)", 1, 0.7, 55.0, 60.0, 1.0]]
    with pytest.raises(FileNotFoundError, match="make latency-mini"):
        comparison(tmp_path / "nothing")


def test_a_finished_run_is_re_measured_from_its_onnx_export_against_its_dense_backbone(compose_cfg, capsys):
    pytest.importorskip("onnxruntime")
    summary = pipeline.run(compose_cfg("train.epochs=1", "train.max_steps_per_epoch=1"))
    args = ["--repeats", "3", "--warmup", "1", "--max-seconds", "1"]
    assert load_script("latency").main([summary["run_dir"], *args]) == 0
    result = json.loads((Path(summary["run_dir"]) / "latency.json").read_text())
    assert result["rounds"] >= 3 and result["interval"] >= 0
    assert (Path(summary["run_dir"]) / "model.onnx").is_file() and result["batch"] == 1
    assert result["dense_ms"] > 0 and result["pruned_ms"] > 0 and 0.3 < result["ratio"] < 3.0   # unpruned: about 1
    assert "ratio" in capsys.readouterr().out
    assert load_script("latency").main([str(Path(summary["run_dir"]).parent / "missing")]) == 2


def land(measure, saving=10.0, measured_now=0.6, target=0.5, last=True):
    """The last step of a latency run with a cut of ``int(saving)`` channels of one group and a
    measured latency ``measure(channels cut)``: the cuts tried and the one taken."""
    tried = []

    def select(groups, scores, floors, saving):
        return {"a": list(range(int(saving)))}

    def measured(cut):
        tried.append(len(cut["a"]))
        return measure(len(cut["a"]))
    cut = latency_target._land([], {}, {}, select=select, measure=measured, saving=saving,
                               measured_now=measured_now, target=target, last=last)
    return tried, len(cut["a"])


def test_the_last_step_measures_its_cut_and_rescales_it_into_the_window_below_the_target():
    # 0.02 a channel: 10 channels overshoot to 0.40; the secant aims at 0.4875, 10 x 0.1125 / 0.2 = 5.6 -> 5
    assert land(lambda n: 0.6 - 0.02 * n) == ([10, 5], 5)
    assert land(lambda n: 0.6 - 0.0105 * n) == ([10], 10)                 # 0.495: inside [0.475, 0.5]
    assert land(lambda n: 0.6 - 0.0095 * n) == ([10, 11], 11)             # 0.505 is above: 11.8 -> 11, 0.4955
    # too small a cut (0.55): the secant takes a larger one, 10 x 0.1125 / 0.05 = 22.5 -> 22 (0.49)
    assert land(lambda n: 0.6 - 0.005 * n) == ([10, 22], 22)


def test_a_step_before_the_last_takes_its_cut_unless_it_would_overshoot_the_target():
    assert land(lambda n: 0.6 - 0.005 * n, last=False) == ([10], 10)      # 0.55: above the target, one measure
    assert land(lambda n: 0.6 - 0.0105 * n, last=False) == ([10], 10)     # 0.495: in the window, the run stops
    assert land(lambda n: 0.6 - 0.02 * n, last=False) == ([10, 5], 5)     # 0.40 would overshoot: landed


def test_without_a_cut_in_the_window_the_last_step_takes_the_closest_below_the_target_and_the_smallest():
    # a step change: 6 channels or more measure 0.44, fewer 0.52 (never in the window)
    assert land(lambda n: 0.44 if n >= 6 else 0.52) == ([10, 7, 4], 7)
    assert land(lambda n: 0.52) == ([10, 14, 19], 10)                  # never below: the lowest, smallest
    assert land(lambda n: 0.3 if n >= 10 else 0.7) == ([10, 3], 10)    # 0.7 saves nothing: stop, take 0.3
    assert land(lambda n: 0.44) == ([10, 7, 4], 4)


def adapted_resnet():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=3, layers=[1, 1, 1, 1], channels=[16, 16, 32, 32])
    return apply_adapter(model, "splora", rank=2, init_range=0.05)


def test_a_cut_is_measured_on_a_copy_as_it_would_be_on_the_network_itself():
    model = adapted_resnet()
    session = PruningSession(model, example_input(model, (16, 16)))

    class Params:       # a latency that is the network's parameter count (deterministic)
        x = torch.zeros(1, 3, 16, 16)

        def measure(self, net):
            return 0.0, float(sum(p.numel() for p in net.parameters()))
    cut = {g.root: [0, 1] for g in session.groups if not g.whole}
    before = [p.shape for p in model.parameters()]
    measured = latency_target.measure_cut(session, Params(), cut)
    assert [p.shape for p in model.parameters()] == before and session.history == []
    session.apply(1, cut)
    assert measured == Params().measure(model)[1] < sum(math.prod(s) for s in before)


def test_a_selection_with_nothing_to_cut_is_no_step():
    model = adapted_resnet()
    session = PruningSession(model, example_input(model, (16, 16)))
    result = session.step(1, None, CRITERIA["weight"](), None, torch.device("cpu"), select=lambda *args: {})
    assert result.removed_filters == 0 and session.history == [] and result.density == 1.0


def test_what_is_timed_is_the_deployed_network_in_the_default_memory_format():
    model = adapted_resnet().to(memory_format=torch.channels_last)
    weight = model.conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    deployed = latency.deployable(model)
    assert all(p.is_contiguous() for p in deployed.parameters())
    assert type(deployed.conv1) is torch.nn.Conv2d and type(model.conv1) is not torch.nn.Conv2d   # fused, on a copy
