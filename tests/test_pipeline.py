"""A run writes all its records; a finished run is skipped; a changed config is refused; the base
stage runs once and feeds the transfer run; the command line works, sweeps included."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from helpers import cli
from omegaconf import OmegaConf
from scripts_path import load_script

from spa import pipeline, repo_root
from spa.data import DatasetNotFoundError
from spa.records import ConfigChangedError, RunDir, config_hash
from spa.saved import load_backbone

RECORDS = ["config.yaml", "run.log", "epochs.jsonl", "summary.json", "model.pt"]


def test_smoke_run_writes_all_records(compose_cfg):
    cfg = compose_cfg("train.max_steps_per_epoch=3")
    summary = pipeline.run(cfg)
    run_dir = Path(summary["run_dir"])
    assert run_dir == Path(cfg.paths.results_dir) / "runs/test/image_folder/test_resnet/none/finetune/seed_1"
    for name in RECORDS:
        assert (run_dir / name).is_file(), name
    epochs = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(e["test_top1"] is not None for e in epochs)
    stored = json.loads((run_dir / "summary.json").read_text())
    assert stored == summary
    assert stored["metrics"]["test_top1"] == epochs[-1]["test_top1"]
    assert stored["data"]["train"] == 48 and stored["data"]["test"] == 16 and stored["data"]["num_classes"] == 4
    assert stored["config_hash"] == config_hash(yaml.safe_load((run_dir / "config.yaml").read_text()))
    if (repo_root() / ".git").exists():                                   # a checkout: the commit is recorded
        assert len(stored["git"]["sha"]) == 40 and isinstance(stored["git"]["dirty"], bool)
    else:
        assert stored["git"]["sha"] is None
    assert stored["data"]["fingerprint"]["train"] == 48 and len(stored["data"]["fingerprint"]["digest"]) == 16
    assert torch.__version__.startswith(stored["versions"]["torch"]) and stored["versions"]["timm"]
    # which kernels made it (float32 results differ between kernel sets): CPU, torch's and oneDNN's sets, threads
    assert stored["versions"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert stored["versions"]["threads"] == torch.get_num_threads() and stored["versions"]["cpu"]
    assert "onednn_max_cpu_isa" in stored["versions"]
    assert stored["params"]["trainable"] == stored["params"]["total"] > 0
    assert stored["weights"]["source"] == "none" and stored["wall_time_s"] > 0
    log = (run_dir / "run.log").read_text()
    assert "epoch 2/2" in log and "finished" in log
    # the saved model is a base for another run, with the same features
    model, _ = load_backbone("test_resnet", 4, weights=str(run_dir / "model.pt"), load_head=True)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_second_launch_skips_and_changed_config_is_refused(compose_cfg, caplog):
    first = pipeline.run(compose_cfg("train.epochs=1", "train.max_steps_per_epoch=1"))
    summary_file = Path(first["run_dir"]) / "summary.json"
    mtime = summary_file.stat().st_mtime_ns
    caplog.set_level("INFO")
    again = pipeline.run(compose_cfg("train.epochs=1", "train.max_steps_per_epoch=1", "device=auto"))
    assert again == first and summary_file.stat().st_mtime_ns == mtime
    assert "skipping" in caplog.text
    with pytest.raises(ConfigChangedError) as err:
        pipeline.run(compose_cfg("train.epochs=1", "train.max_steps_per_epoch=1", "optim.lr=0.5"))
    assert "optim.lr: 0.0025 -> 0.5" in str(err.value) and "overwrite=true" in str(err.value)
    assert json.loads(summary_file.read_text()) == first                     # finished work untouched
    replaced = pipeline.run(compose_cfg("train.epochs=1", "train.max_steps_per_epoch=1", "optim.lr=0.5",
                                        "overwrite=true"))
    assert replaced["config_hash"] != first["config_hash"]
    assert yaml.safe_load((Path(first["run_dir"]) / "config.yaml").read_text())["optim"]["lr"] == 0.5


def test_committed_records_alone_skip_a_finished_run_and_retrain_a_start_run_only_when_needed(compose_cfg, caplog):
    """A fresh clone has the runs' records (summary, config, steps) and no weights: a finished pruned run
    is skipped without its unpruned start run; a new pruned run retrains the start run it needs."""
    tiny = ("train.epochs=1", "train.max_steps_per_epoch=1", "schedule.step_fraction=0.5",
            "schedule.target_density=0.5", "schedule.recovery_epochs=1")
    weight = pipeline.run(compose_cfg("pruning=weight", *tiny))
    unpruned = Path(pipeline.unpruned_config(compose_cfg("pruning=weight", *tiny)).paths.run_dir)
    for path in [*Path(weight["run_dir"]).glob("*.pt"), *unpruned.glob("*.pt")]:
        path.unlink()
    caplog.set_level("INFO")
    assert pipeline.run(compose_cfg("pruning=weight", *tiny)) == weight
    assert not (unpruned / "checkpoint.pt").exists() and "training it again" not in caplog.text
    taylor = pipeline.run(compose_cfg("pruning=taylor", *tiny))
    assert "training it again" in caplog.text and (unpruned / "checkpoint.pt").is_file()
    assert taylor["base_run"] is None and len(RunDir(taylor["run_dir"]).read_steps()) == 2
    # a finished run replaced with overwrite=true starts from its unpruned run again, not from scratch
    caplog.clear()
    pipeline.run(compose_cfg("pruning=weight", *tiny, "optim.lr=0.005", "overwrite=true"))
    assert "starting from the unpruned run" in caplog.text


def test_unfinished_run_is_started_again(compose_cfg):
    cfg = compose_cfg("train.epochs=1", "train.max_steps_per_epoch=1")
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True)
    from omegaconf import OmegaConf
    (run_dir / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    (run_dir / "epochs.jsonl").write_text('{"epoch": 1, "stale": true}\n')
    summary = pipeline.run(cfg)
    lines = (run_dir / "epochs.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "stale" not in lines[0] and summary["epochs"] == 1


def test_run_killed_after_its_checkpoint_finishes_without_training_again(compose_cfg):
    first = pipeline.run(compose_cfg("train.epochs=2", "train.max_steps_per_epoch=2"))
    run_dir = Path(first["run_dir"])
    epochs = (run_dir / "epochs.jsonl").read_text()
    (run_dir / "summary.json").unlink()                      # died while writing its outputs
    again = pipeline.run(compose_cfg("train.epochs=2", "train.max_steps_per_epoch=2"))
    assert (run_dir / "epochs.jsonl").read_text() == epochs   # no epoch trained twice
    assert again["metrics"] == first["metrics"]


def test_base_stage_runs_once_and_feeds_the_transfer_run(compose_cfg):
    overrides = ["train.epochs=1", "train.max_steps_per_epoch=2", "dataset.classes=[2,3]", "dataset.name=last2",
                 "+base.dataset.classes=[0,1]", "+base.dataset.name=first2", "+base.seed=1", "report=true"]
    cfg = compose_cfg(*overrides)
    summary = pipeline.run(cfg)
    load_script("run").report(cfg)                                             # what scripts/run.py does next
    assert cfg.backbone.weights == "none"                                     # the caller's config is untouched
    stored = yaml.safe_load((Path(summary["run_dir"]) / "config.yaml").read_text())
    assert stored["backbone"]["weights"] == "base"                            # location-free: hash survives a move
    base_dir = Path(summary["base_run"])
    assert base_dir.parts[-5] == "first2" and (base_dir / "model.pt").is_file()
    assert summary["weights"]["source"] == "file" and summary["weights"]["path"] == str(base_dir / "model.pt")
    assert json.loads((base_dir / "summary.json").read_text())["data"]["classes"] == ["ant", "bee"]
    assert summary["data"]["classes"] == ["cat", "dog"] and not summary["warnings"]
    base_mtime = (base_dir / "summary.json").stat().st_mtime_ns
    second = pipeline.run(compose_cfg(*overrides[:-1], "seed=2"))
    assert second["base_run"] == str(base_dir) and (base_dir / "summary.json").stat().st_mtime_ns == base_mtime
    results = Path(summary["run_dir"]).parents[6]
    table = (results / "tables" / "test.md").read_text()
    assert "first2" in table and "last2" in table
    assert (results / "figures" / "test_curves.png").stat().st_size > 1000


def test_a_typo_in_the_base_section_is_refused(compose_cfg):
    with pytest.raises(ValueError, match="base.train.epochz"):
        pipeline.base_config(compose_cfg("+base.train.epochz=3"))


def test_a_base_section_on_another_source_starts_from_that_dataset_config(compose_cfg):
    cfg = compose_cfg("dataset=cats_vs_dogs", "+base.dataset.source=cifar10", "+base.dataset.name=cifar10_subset")
    base = pipeline.base_config(cfg).dataset
    # cifar10.yaml's keys, not the PetImages split options of the run's dataset
    assert (base.source, base.transform, base.image_size, dict(base.options)) == ("cifar10", "cifar", 32, {})
    assert base.name == "cifar10_subset" and dict(cfg.dataset.options)["train_size"] == 8005
    with pytest.raises(ValueError, match="configs/dataset/imagenet.yaml"):
        pipeline.base_config(compose_cfg("+base.dataset.source=imagenet"))


def test_where_the_data_lives_is_not_part_of_the_config_hash(compose_cfg, tmp_path):
    a = OmegaConf.to_container(compose_cfg(), resolve=True)
    b = OmegaConf.to_container(compose_cfg(f"dataset.root={tmp_path}/moved", "dataset.download=false"), resolve=True)
    c = OmegaConf.to_container(compose_cfg("dataset.image_size=64"), resolve=True)
    assert config_hash(a) == config_hash(b) != config_hash(c)


@pytest.mark.numerics
def test_channels_last_everywhere_is_a_setting_of_its_own(compose_cfg):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [pipeline.use_channels_last(v, cpu) for v in (True, "always", False)] == [False, True, False]
    assert [pipeline.use_channels_last(v, cuda) for v in (True, "always", False)] == [True, True, False]
    with pytest.raises(ValueError, match="always"):
        pipeline.use_channels_last("yes", cpu)
    # a pruned run in channels-last on CPU: same steps as the default layout, accuracy within noise
    over = ["pruning=weight", "schedule.step_fraction=0.3", "schedule.target_density=0.4",
            "schedule.recovery_epochs=1", "train.epochs=1"]
    plain = pipeline.run(compose_cfg(*over))
    fast = pipeline.run(compose_cfg(*over, "train.channels_last=always", "exp_name=cl"))
    assert fast["config_hash"] != plain["config_hash"] and fast["metrics"]["density"] == plain["metrics"]["density"]
    # float32 by nature (two layouts' kernels, through a short training and pruning): relative to the loss
    assert abs(fast["metrics"]["test_loss"] - plain["metrics"]["test_loss"]) <= 1e-3 * plain["metrics"]["test_loss"]


def test_random_weights_transfer_warns_and_is_recorded(compose_cfg):
    summary = pipeline.run(compose_cfg("train.epochs=1", "train.max_steps_per_epoch=1", "backbone.allow_random=false"))
    assert any("random weights" in w for w in summary["warnings"])


def test_missing_dataset_raises_the_clear_error(compose_cfg, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="SPA_DATA_DIR"):
        pipeline.run(compose_cfg("dataset=cifar10", f"dataset.root={tmp_path}/none", "dataset.download=false"))


def test_command_line_run_and_sweep(tmp_path, image_folder):
    args, env = cli(tmp_path, image_folder, "cli", "1,2")
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for seed in (1, 2):
        assert (tmp_path / f"runs/cli/image_folder/test_resnet/none/finetune/seed_{seed}/summary.json").is_file()
    # a finished run's model.pt is a valid command-line value (no '=' in run paths)
    base = tmp_path / "runs/cli/image_folder/test_resnet/none/finetune/seed_1/model.pt"
    reuse = subprocess.run(args[:2] + args[3:-2] + ["exp_name=reuse", f"backbone.weights={base}"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert reuse.returncode == 0, reuse.stdout + reuse.stderr
    run = tmp_path / "runs/reuse/image_folder/test_resnet/none/finetune/seed_1"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["weights"]["path"] == str(base)
    bad = subprocess.run(
        args[:2] + ["dataset=image_folder", f"dataset.root={tmp_path}/missing", "exp_name=bad"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "dataset.root=PATH" in bad.stdout + bad.stderr


def test_initial_epochs_can_depend_on_the_adapter(compose_cfg):
    over = ["train.epochs=1", "train.max_steps_per_epoch=1", "+train.epochs_by_adapter.splora=2"]
    lora = pipeline.run(compose_cfg(*over, "adapter=splora_r8"))
    tuned = pipeline.run(compose_cfg(*over, "adapter=finetune"))
    assert (lora["epochs"], tuned["epochs"]) == (2, 1)
    assert len((Path(lora["run_dir"]) / "epochs.jsonl").read_text().splitlines()) == 2


def test_shards_split_a_sweep_without_overlap(tmp_path, image_folder):
    base, env = cli(tmp_path, image_folder, "shards", "1,2,3")
    out = subprocess.run(base + ["shard=1/2"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    done = sorted(p.parent.name for p in (tmp_path / "runs/shards").rglob("summary.json"))
    assert done == ["seed_2"]  # job 1 of jobs 0, 1, 2
    bad = subprocess.run(base + ["shard=2/2"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "i must be in 0..n-1" in bad.stdout + bad.stderr


def test_keys_added_at_their_neutral_default_keep_finished_runs_valid(compose_cfg):
    """pruning.round_to and train.compile came after runs existed: at 1 / false a config hashes as
    it did without them, at any other value it is another run."""
    cfg = OmegaConf.to_container(compose_cfg("pruning=weight"), resolve=True)
    assert cfg["pruning"]["round_to"] == 1 and cfg["train"]["compile"] is False
    older = json.loads(json.dumps(cfg))
    del older["pruning"]["round_to"], older["train"]["compile"]
    assert config_hash(cfg) == config_hash(older)
    rounded = OmegaConf.to_container(compose_cfg("pruning=weight", "pruning.round_to=8"), resolve=True)
    compiled = OmegaConf.to_container(compose_cfg("pruning=weight", "train.compile=true"), resolve=True)
    assert len({config_hash(cfg), config_hash(rounded), config_hash(compiled)}) == 3


def test_compiled_training_trains_the_same_model(compose_cfg):
    """train.compile: the training forward goes through torch.compile (here a backend that runs the
    captured graph eagerly and counts compilations: no C++ toolchain needed), evaluation and pruning
    through the model itself; a fresh compile per training call (the pruned shapes differ)."""
    from torch._dynamo import list_backends, register_backend

    graphs = []
    if "spa_counting" not in list_backends(exclude_tags=()):

        @register_backend(name="spa_counting")
        def counting(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

    over = [
        "pruning=weight",
        "schedule.step_fraction=0.3",
        "schedule.target_density=0.7",
        "schedule.recovery_epochs=1",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
    ]
    plain = pipeline.run(compose_cfg(*over))
    fast = pipeline.run(compose_cfg(*over, "train.compile=spa_counting", "exp_name=compiled"))
    assert len(graphs) >= 2  # the unpruned training and the recovery after the step
    assert fast["config_hash"] != plain["config_hash"] and fast["metrics"]["density"] == plain["metrics"]["density"]
    assert fast["metrics"]["test_loss"] == pytest.approx(plain["metrics"]["test_loss"], abs=1e-4)
    with pytest.raises(ValueError, match="train.compile"):
        pipeline.run(compose_cfg(*over, "train.compile=3", "exp_name=bad"))
