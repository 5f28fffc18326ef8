"""logger=tensorboard: every epoch record and pruning step as TensorBoard scalars, offline; none by default."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from spa import pipeline
from spa.settings import SettingError

PRUNED = ("pruning=weight", "schedule.step_fraction=0.3", "schedule.target_density=0.4", "schedule.recovery_epochs=1",
          "train.epochs=2")


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_every_epoch_and_every_pruning_step(compose_cfg):
    summary = pipeline.run(compose_cfg(*PRUNED, "logger=tensorboard"))
    run = Path(summary["run_dir"])
    scalars = _scalars(run / "tensorboard")
    epochs = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    steps = pd.read_csv(run / "steps.csv")
    # the pruned run's records: the unpruned run's epochs (copied in), then one recovery epoch per step
    assert [v for _, v in scalars["train/train_loss"]] == pytest.approx(
        [e["train_loss"] for e in epochs if e["phase"] == "train"], rel=1e-6)
    assert [v for _, v in scalars["recover/test_top1"]] == pytest.approx(
        [e["test_top1"] for e in epochs if e["phase"] == "recover"], rel=1e-6)
    assert [s for s, _ in scalars["recover/lr"]] == [3, 4]               # the run's epoch count, across phases
    assert scalars["pruning/density"] == [(int(r.step), pytest.approx(r.density)) for r in steps.itertuples()]
    assert [v for _, v in scalars["pruning/params_learned"]] == list(steps["params_learned"])
    assert (Path(summary["run_dir"]).parents[2] / "none").is_dir()          # its unpruned start logged its own
    assert (Path(summary["run_dir"]).parents[2] / "none" / "finetune" / "seed_1" / "tensorboard").is_dir()


def test_no_logger_by_default_one_tree_on_request_and_a_typo_refused(compose_cfg, tmp_path):
    plain = pipeline.run(compose_cfg("train.epochs=1"))
    assert not (Path(plain["run_dir"]) / "tensorboard").exists()
    tree = tmp_path / "tb"
    again = pipeline.run(compose_cfg("train.epochs=1", "logger=tensorboard", f"logger.dir={tree}", "seed=2"))
    relative = Path(again["run_dir"]).relative_to(tmp_path / "results" / "runs")
    assert _scalars(tree / relative)["train/test_top1"]
    assert pipeline.run(compose_cfg("train.epochs=1", "logger=tensorboard")) == plain     # the logger is not the config
    with pytest.raises(SettingError, match="logger='wandb' is unknown"):
        pipeline.check_settings(compose_cfg("train.epochs=1", "+logger.name=wandb", "~logger"))
