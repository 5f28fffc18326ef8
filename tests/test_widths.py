"""Pruning you can watch (issue 26): widths.csv per step and unit, the narrowest unit in steps.csv, and
collapsed results flagged (spa.pruning.widths, spa.metrics.collapse)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from spa import pipeline
from spa.metrics.collapse import Chance
from spa.models import load_model_file
from spa.pipeline import channels, parts
from spa.pruning.widths import narrowest

PRUNED = ["pruning=weight", "schedule.step_fraction=0.25", "schedule.target_density=0.5", "schedule.recovery_epochs=1",
          "train.epochs=1", "train.max_steps_per_epoch=2"]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_widths_csv_records_every_step_and_the_last_matches_the_pruned_models_layers(compose_cfg):
    summary = pipeline.run(compose_cfg(*PRUNED))
    run_dir = Path(summary["run_dir"])
    widths = rows(run_dir / "widths.csv")
    assert list(widths[0]) == ["step", "density", "unit", "kind", "original", "kept"]
    assert sorted({int(w["step"]) for w in widths}) == [0, 1, 2]
    units = [w["unit"] for w in widths if w["step"] == "0"]
    assert all([w["unit"] for w in widths if w["step"] == s] == units for s in ("1", "2"))   # one row per unit
    assert all(w["original"] == w["kept"] for w in widths if w["step"] == "0")
    state = load_model_file(run_dir / "model.pt")["state_dict"]         # the deployed, pruned weights
    for w in (w for w in widths if w["step"] == "2"):
        assert w["kind"] == "channels" and int(w["kept"]) == state[f"{w['unit']}.weight"].shape[0], w
    assert sum(int(w["kept"]) for w in widths if w["step"] == "2") < sum(int(w["original"]) for w in widths
                                                                          if w["step"] == "2")
    steps = rows(run_dir / "steps.csv")
    for step in steps:
        mine = [{"unit": w["unit"], "original": int(w["original"]), "kept": int(w["kept"])} for w in widths
                if w["step"] == step["step"]]
        unit, fraction = narrowest(mine)
        assert (step["narrowest_unit"], float(step["narrowest_fraction"])) == (unit, fraction)
        assert float(step["density"]) == pytest.approx(float(next(w["density"] for w in widths
                                                                   if w["step"] == step["step"])))
    # the heatmap: one row per unit, one column per step; the script names the narrowest units
    import matplotlib.image
    from scripts_path import load_script
    out = run_dir / "widths.png"
    import sys
    argv, sys.argv = sys.argv, ["widths.py", str(run_dir), "--out", str(out)]
    try:
        assert load_script("widths").main() == 0
    finally:
        sys.argv = argv
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 200 and image.std() > 0.05
    from spa.reporting.widths import experiment_widths
    figures = experiment_widths(run_dir.parents[4], run_dir / "figs", "test")
    assert [p.name for p in figures] == ["test_widths_weight_finetune.png"] and figures[0].is_file()


def test_a_run_killed_after_writing_a_steps_widths_redoes_it_with_the_same_rows(compose_cfg, monkeypatch):
    reference = Path(pipeline.run(compose_cfg(*PRUNED, "exp_name=uninterrupted"))["run_dir"])
    original = channels.save_checkpoint

    def killed_at_step_2(rundir, model, session, step, *args, **kwargs):
        if step == 2:        # steps.csv and widths.csv of step 2 are written, its checkpoint is not
            raise KeyboardInterrupt("killed")
        return original(rundir, model, session, step, *args, **kwargs)
    monkeypatch.setattr(channels, "save_checkpoint", killed_at_step_2)   # after a pruning step
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(compose_cfg(*PRUNED, "exp_name=killed"))
    killed = Path(str(reference).replace("uninterrupted", "killed"))
    assert {w["step"] for w in rows(killed / "widths.csv")} == {"0", "1", "2"}
    monkeypatch.setattr(channels, "save_checkpoint", original)
    pipeline.run(compose_cfg(*PRUNED, "exp_name=killed"))
    assert rows(killed / "widths.csv") == rows(reference / "widths.csv")


def test_an_unpruned_run_writes_no_widths_and_a_block_run_records_its_matrices(compose_cfg):
    plain = Path(pipeline.run(compose_cfg("train.epochs=1", "train.max_steps_per_epoch=1"))["run_dir"])
    assert not (plain / "widths.csv").exists()
    assert rows(plain / "steps.csv")[0]["narrowest_unit"] == ""
    blocks = Path(pipeline.run(compose_cfg(
        "backbone=test_vit", "pruning=block_magnitude", "pruning.block_shape=[16,16]", "pruning.densities=[0.5]",
        "pruning.epochs_per_stage=1", "train.epochs=1", "train.max_steps_per_epoch=2"))["run_dir"])
    widths = rows(blocks / "widths.csv")
    assert {w["kind"] for w in widths} == {"blocks"} and {w["step"] for w in widths} == {"0", "1"}
    last = [w for w in widths if w["step"] == "1"]
    # magnitude keeps half of every matrix's blocks: each unit at 0.5, and the total is the steps.csv count
    assert all(int(w["kept"]) * 2 == int(w["original"]) for w in last)
    assert sum(int(w["kept"]) for w in last) == int(rows(blocks / "steps.csv")[1]["kept_units"])


def test_a_vit_records_its_heads_and_mlp_channels(compose_cfg):
    run = Path(pipeline.run(compose_cfg("backbone=test_vit", *PRUNED))["run_dir"])
    widths = [w for w in rows(run / "widths.csv") if w["step"] == "2"]
    assert {w["kind"] for w in widths} == {"heads", "mlp"}
    assert [w["unit"] for w in widths][:2] == ["blocks.0.attn.qkv", "blocks.0.mlp.fc1"]


# ----------------------------------------------------------------------------- collapse
def test_the_collapse_margin_is_3_points_or_3_binomial_standard_errors():
    ten = Chance.of([i % 10 for i in range(1000)])             # 10 balanced classes, 1,000 images
    assert ten.majority == 10.0 and ten.margin == 3.0           # 3 SE = 2.85 points
    assert ten.collapsed(12.9) and not ten.collapsed(13.1) and ten.collapsed(4.0)
    small = Chance.of([0] * 12 + [1] * 4)                      # 16 images, 75 % one class
    assert small.majority == 75.0 and small.margin == pytest.approx(300 * (0.75 * 0.25 / 16) ** 0.5)
    assert small.collapsed(100.0 - 1e-9) is True and Chance.of([0, 1]).collapsed(None) is None


def test_a_run_forced_to_chance_is_marked_collapsed(compose_cfg, monkeypatch):
    """The head zeroed and frozen: every logit is 0, every prediction class 0, top-1 its share."""
    real = parts.load_backbone

    def zero_head(*args, **kwargs):
        model, info = real(*args, **kwargs)
        with torch.no_grad():
            for p in model.get_classifier().parameters():
                p.zero_()
        return model, info
    monkeypatch.setattr(parts, "load_backbone", zero_head)
    summary = pipeline.run(compose_cfg(*PRUNED, "backbone.frozen=[fc]"))
    steps = rows(Path(summary["run_dir"]) / "steps.csv")
    assert [float(s["top1"]) for s in steps] == [25.0] * 3 and [s["chance"] for s in steps] == ["25.0"] * 3
    assert [s["collapsed"] for s in steps] == ["True"] * 3
    assert summary["data"]["majority"] == 25.0


def test_a_depthwise_group_pruned_to_one_channel_keeps_its_name_and_is_counted_once():
    """Torch-Pruning stops coupling a one-channel depthwise conv to the conv before it, and the group
    came back twice (from dw alone, and from pw with dw): dw's filter was counted twice and the unit
    changed its name in widths.csv."""
    import torch.nn as nn

    from spa.pruning.session import PruningSession
    from spa.pruning.widths import session_widths

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.pw, self.bn1 = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
            self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
            self.pwl, self.bn3 = nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)
            self.pretrained_cfg = {"classifier": "fc"}

        def forward(self, x):
            return self.fc(self.bn3(self.pwl(self.bn2(self.dw(self.bn1(self.pw(x)))))).mean((2, 3)))
    session = PruningSession(Block().eval(), torch.randn(1, 3, 8, 8))
    assert [(g.root, sorted(g.producers), g.size) for g in session.groups] == [("dw", ["dw", "pw"], 8),
                                                                              ("pwl", ["pwl"], 4)]
    session.apply(1, {"dw": list(range(7))})
    assert session.kept_filters == 2 * 1 + 4 and session.density == pytest.approx(6 / 20)
    assert session_widths(session) == [{"unit": "dw", "kind": "channels", "original": 8, "kept": 1},
                                       {"unit": "pwl", "kind": "channels", "original": 4, "kept": 4}]
    assert session.floors(0.5, [])[session.groups[0].root] == 4          # the floor follows the renamed group
