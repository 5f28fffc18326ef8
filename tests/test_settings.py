"""Bad input never leaves a trap (issue 13): a wrong value stops before the run directory is
written, with one line naming the key; a run that failed before its first epoch does not block
the corrected command; the data a run saw decides "the same run" together with its config."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from spa import config_dir, pipeline, repo_root
from spa.data import UnreadableImagesError, fake
from spa.data import fingerprint as fingerprint_module
from spa.records import FINGERPRINT, ConfigChangedError, RunDir
from spa.settings import SettingError

QUICK = ("train.epochs=1", "train.max_steps_per_epoch=1")


def written(cfg) -> list[str]:
    """Files under the config's run directory (none: nothing was written)."""
    run_dir = Path(cfg.paths.run_dir)
    return sorted(p.name for p in run_dir.rglob("*") if p.is_file()) if run_dir.exists() else []


# ----------------------------------------------------------------------------- 1. ranks
def test_a_rank_no_layer_can_use_is_refused_naming_the_largest_sensible_one(compose_cfg):
    cfg = compose_cfg("adapter=splora_r8", "adapter.options.rank=100000", *QUICK)
    with pytest.raises(SettingError) as err:
        pipeline.run(cfg)
    message = str(err.value)
    # test_resnet's widest layer, layer4.0.conv1, has min(in / groups, out) = 96
    assert "adapter.options.rank=100000" in message and "rank<=96" in message and "layer4.0.conv1" in message
    assert "rank_limit=clamp" in message and written(cfg) == []


def test_rank_limit_clamp_caps_each_layer_counts_what_is_learned_and_records_it(compose_cfg):
    paper = pipeline.run(compose_cfg("adapter=splora_r8", "adapter.options.rank=32", *QUICK))
    clamp = pipeline.run(compose_cfg("adapter=splora_r8", "adapter.options.rank=32",
                                     "adapter.options.rank_limit=clamp", "exp_name=clamp", *QUICK))
    above = clamp["ranks"]["layers_above_usable"]
    assert clamp["ranks"]["rank_limit"] == "clamp" and above == paper["ranks"]["layers_above_usable"]
    assert above == {"conv1.0": 3, "conv1.3": 16, "conv1.6": 16}    # the deep stem: 3 input, 16 output channels
    task = torch.load(Path(clamp["run_dir"]) / "task.pt", weights_only=True)["state"]
    assert task["conv1.0.A"].shape == (3, 3) and task["conv1.0.B"].shape[1] == 3
    # learned parameters shrink by exactly the factors' rows and columns that the cap removed
    saved = 0
    for name, usable in above.items():
        a, b = task[f"{name}.A"], task[f"{name}.B"]
        saved += (32 - usable) * (a.shape[1] + b.shape[0])
    assert paper["params"]["trainable"] - clamp["params"]["trainable"] == saved > 0


def test_an_unknown_rank_limit_names_the_choices(compose_cfg):
    cfg = compose_cfg("adapter=splora_r8", "adapter.options.rank_limit=cap")
    with pytest.raises(SettingError, match="rank_limit='cap': use paper .* or clamp"):
        pipeline.run(cfg)
    assert written(cfg) == []


# ----------------------------------------------------------------------------- 2. checked before the directory
@pytest.mark.parametrize("override, expected", [
    ("schedule.target_density=0", "schedule.target_density=0: use a number in (0, 1)"),
    ("schedule.step_fraction=1.5", "schedule.step_fraction=1.5: use a number in (0, 1)"),
    ("pruning.group_reduction=median", "pruning.group_reduction='median': use one of mean, sum, max"),
    ("pruning.max_group_pruning=1.0", "pruning.max_group_pruning=1.0: use null (a layer keeps at least one"),
    ("pruning.normalization=median", "pruning.normalization='median': use null (the criterion's own) or one of"),
    ("pruning.round_to=0", "pruning.round_to=0: use a positive int"),
    ("train.scheduler=linear", "train.scheduler='linear' is unknown"),
    ("dataset.transform=fancy", "dataset.transform"),
    ("optim.lr=-1", "optim: Invalid learning rate"),
    ("+adapter.options.rnk=3", "adapter.options: "),
    ("train.select=best_val", "dataset.val_fraction > 0"),
])
def test_a_bad_setting_of_a_pruned_run_stops_before_anything_is_written(compose_cfg, override, expected):
    cfg = compose_cfg("pruning=taylor", "adapter=splora_r8", override, *QUICK)
    with pytest.raises(SettingError) as err:
        pipeline.run(cfg)
    assert expected in str(err.value)
    # not even the unpruned run it starts from was written
    assert written(cfg) == [] and written(pipeline.unpruned_config(cfg)) == []


def test_an_ignore_glob_that_matches_no_layer_stops_before_a_run_directory_exists(compose_cfg):
    cfg = compose_cfg("pruning=weight", "pruning.ignore=[nothing*]", *QUICK)
    with pytest.raises(SettingError, match=r"pruning.ignore=\['nothing\*'\] matches no conv or Linear layer of the "
                                           r"backbone; its layers are \['conv1.0', 'conv1.3', "):
        pipeline.run(cfg)
    assert written(cfg) == [] and written(pipeline.unpruned_config(cfg)) == []
    # a layer that exists but no pruning group produces (the head): refused by the real model's check
    head = compose_cfg("pruning=weight", "pruning.ignore=[fc]", *QUICK)
    with pytest.raises(SettingError, match=r"pruning.ignore=\['fc'\] matches no prunable layer"):
        pipeline.run(head)
    assert not any(name in written(head) for name in ("epochs.jsonl", "steps.csv", "model.pt"))


@pytest.mark.parametrize("override, expected", [
    ("train.epochs=0", "train.epochs=0: use an int >= 1"),
    ("schedule.recovery_epochs=0", "schedule.recovery_epochs=0: use an int >= 1 (each step's accuracy right after"),
    ("+train.epochs_by_adapter.splora=0", "train.epochs_by_adapter.splora=0: use an int >= 1"),
])
def test_zero_epochs_are_refused_naming_the_smallest_valid_value(compose_cfg, override, expected):
    """Zero training or recovery epochs once passed the checks and ended in a bare StopIteration
    inside the training stage, after the run directory existed."""
    cfg = compose_cfg("pruning=taylor", "adapter=splora_r8", "train.max_steps_per_epoch=1", override)
    with pytest.raises(SettingError) as err:
        pipeline.run(cfg)
    assert expected in str(err.value)
    assert written(cfg) == [] and written(pipeline.unpruned_config(cfg)) == []


def test_a_run_that_failed_before_its_first_epoch_does_not_block_the_corrected_command(compose_cfg):
    cfg = compose_cfg(*QUICK)
    rundir = RunDir(cfg.paths.run_dir)
    from omegaconf import OmegaConf
    stale = OmegaConf.to_container(compose_cfg("optim.lr=0.5", *QUICK), resolve=True)
    assert rundir.prepare(stale) == ("fresh", None)          # an older version failed right after this
    summary = pipeline.run(cfg)                               # the corrected command runs (no overwrite=true)
    assert summary["metrics"]["test_top1"] is not None
    with pytest.raises(ConfigChangedError, match="overwrite=true"):   # a trained run is still protected
        pipeline.run(compose_cfg("optim.lr=0.5", *QUICK))


# ----------------------------------------------------------------------------- 3. types
@pytest.mark.parametrize("override, expected", [
    ("seed=abc", "seed='abc': use an int >= 0, e.g. seed=1"),
    ("train.batch_size=eight", "train.batch_size='eight': use an int >= 1"),
    ("train.amp=yes", "train.amp='yes': use true or false"),
    ("dataset.image_size=3.5", "dataset.image_size=3.5: use an int >= 8"),
    ("adapter.options.rank=-2", "adapter.options.rank=-2: use an int >= 1, or a fraction in (0, 1)"),
])
def test_a_type_error_names_the_key_and_what_it_accepts(compose_cfg, override, expected):
    cfg = compose_cfg("adapter=splora_r8", override)
    with pytest.raises(SettingError) as err:
        pipeline.run(cfg)
    assert str(err.value).startswith(expected) and written(cfg) == []


def test_the_command_line_prints_one_line_and_exits_2(tmp_path, image_folder):
    proc = subprocess.run(
        [
            sys.executable,
            str(repo_root() / "scripts" / "run.py"),
            "dataset=image_folder",
            f"dataset.root={image_folder}",
            "backbone=test_resnet",
            f"paths.results_dir={tmp_path}",
            "seed=abc",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: seed='abc': use an int >= 0, e.g. seed=1"]
    assert not (tmp_path / "runs").exists() or not any(p.is_file() for p in (tmp_path / "runs").rglob("*"))


# ----------------------------------------------------------------------------- 4. unreadable images
def test_a_corrupt_image_stops_the_run_before_its_directory_and_skipping_records_it(
    compose_cfg, tmp_path, image_folder
):
    root = tmp_path / "damaged"
    shutil.copytree(image_folder, root)
    fake.write_broken_image(root / "train" / "ant" / "text.png", "text")
    cfg = compose_cfg(f"dataset.root={root}", *QUICK)
    with pytest.raises(UnreadableImagesError, match=r"train/ant/text.png.*dataset.skip_unreadable=true"):
        pipeline.run(cfg)
    assert written(cfg) == []
    summary = pipeline.run(compose_cfg(f"dataset.root={root}", "+dataset.skip_unreadable=true", *QUICK))
    assert summary["data"]["unreadable_removed"] == 1 and summary["data"]["train"] == 48


# ----------------------------------------------------------------------------- 9. the data decides too
def test_the_same_data_moved_is_the_same_run_and_other_data_never_is(compose_cfg, tmp_path, image_folder, caplog):
    first = pipeline.run(compose_cfg(*QUICK))
    moved = tmp_path / "moved"
    shutil.copytree(image_folder, moved)
    caplog.set_level("INFO")
    assert pipeline.run(compose_cfg(f"dataset.root={moved}", *QUICK)) == first  # skipped: same data
    assert "finished with the same config and data" in caplog.text
    subset = tmp_path / "subset"
    shutil.copytree(image_folder, subset)
    for image in sorted((subset / "train" / "ant").iterdir())[:3]:
        image.unlink()
    with pytest.raises(ConfigChangedError) as err:
        pipeline.run(compose_cfg(f"dataset.root={subset}", *QUICK))
    assert "other data" in str(err.value) and f"{FINGERPRINT}.train: 48 -> 45" in str(err.value)
    # a file replaced by another of the same name and class but other content size: other data too
    other = tmp_path / "other"
    shutil.copytree(image_folder, other)
    victim = sorted((other / "test" / "bee").iterdir())[0]
    fake.write_image_folder(tmp_path / "big", ["bee"], n_train=1, n_test=1, size=48)
    shutil.copy(next((tmp_path / "big" / "test" / "bee").iterdir()), victim)
    with pytest.raises(ConfigChangedError, match=f"{FINGERPRINT}.digest"):
        pipeline.run(compose_cfg(f"dataset.root={other}", *QUICK))


def test_files_replaced_by_others_of_the_same_name_and_size_are_other_data(compose_cfg, tmp_path, monkeypatch):
    """BMP files of one image size all have one byte size: swapping two keeps every path and size."""
    root = fake.write_image_folder(tmp_path / "bmp", ["ant", "bee"], n_train=24, n_test=4, size=32, ext="bmp")
    a, b = sorted((root / "test" / "bee").iterdir())[:2]
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    first = pipeline.run(compose_cfg(f"dataset.root={root}", *QUICK))
    hashed = []
    real = fingerprint_module.file_digest
    monkeypatch.setattr(fingerprint_module, "file_digest", lambda path: hashed.append(path) or real(path))
    assert pipeline.run(compose_cfg(f"dataset.root={root}", *QUICK)) == first    # skipped: same data
    assert hashed == []                         # every digest came from the cache (path, size, mtime)
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    with pytest.raises(ConfigChangedError) as err:
        pipeline.run(compose_cfg(f"dataset.root={root}", *QUICK))
    assert "other data" in str(err.value) and f"{FINGERPRINT}.content" in str(err.value)
    assert f"{FINGERPRINT}.digest" not in str(err.value)       # paths and sizes alone saw no change
    assert sorted(hashed) == sorted([a, b])                    # only the two changed files were read again


def test_a_run_recorded_before_content_digests_stays_valid_where_the_rest_agrees(compose_cfg):
    first = pipeline.run(compose_cfg(*QUICK))
    config = Path(first["run_dir"]) / "config.yaml"
    stored = yaml.safe_load(config.read_text())
    stored[FINGERPRINT].pop("content")
    config.write_text(yaml.safe_dump(stored))
    assert pipeline.run(compose_cfg(*QUICK)) == first       # skipped, not refused
    stored[FINGERPRINT]["digest"] = "0" * 16                  # it saw other files
    config.write_text(yaml.safe_dump(stored))
    with pytest.raises(ConfigChangedError, match="other data"):
        pipeline.run(compose_cfg(*QUICK))


def test_a_run_finished_before_fingerprints_stays_valid_where_its_summary_agrees(compose_cfg):
    first = pipeline.run(compose_cfg(*QUICK))
    config = Path(first["run_dir"]) / "config.yaml"
    legacy = yaml.safe_load(config.read_text())
    legacy.pop(FINGERPRINT)
    config.write_text(yaml.safe_dump(legacy))
    assert pipeline.run(compose_cfg(*QUICK)) == first  # skipped, not refused
    summary = Path(first["run_dir"]) / "summary.json"
    stored = json.loads(summary.read_text())
    stored["data"]["train"] = 40  # it saw other data
    summary.write_text(json.dumps(stored))
    with pytest.raises(ConfigChangedError, match="other data"):
        pipeline.run(compose_cfg(*QUICK))


# ----------------------------------------------------------------------------- every shipped config passes
def shipped(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


@pytest.mark.parametrize("override", [f"experiment={n}" for n in shipped("experiment")]
                         + [f"adapter={n}" for n in shipped("adapter")]
                         + [f"pruning={n}" for n in shipped("pruning")]
                         + [f"backbone={n}" for n in shipped("backbone")
                            if n not in ("efficientnet_lite1", "efficientnet_lite2")])     # optional packages
def test_every_shipped_config_passes_the_checks(override, tmp_path):
    """The checks accept what we ship (interpolated optimiser settings, base stages, sweeps' defaults)."""
    pair = ["adapter=pear_lora_r8"] if override.startswith("pruning=pear") else []    # Pear prunes LoRA adapters
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("config", overrides=[override, *pair, f"paths.data_dir={tmp_path}", "device=cpu"])
    if cfg.get("base"):
        pipeline.check_settings(pipeline.base_config(cfg))
    pipeline.check_settings(cfg)


def test_the_meta_device_check_skips_only_what_the_meta_device_cannot_build(monkeypatch, caplog):
    """The adapter-options check once swallowed any error of the model build; now only the meta
    device's own failures (RuntimeError, NotImplementedError) are skipped, and said in the log."""
    from spa import settings

    def fails_with(err):
        def create(*args, **kwargs):
            raise err
        return create
    monkeypatch.setattr(settings.timm, "create_model", fails_with(NotImplementedError("no meta kernel for op")))
    with caplog.at_level("INFO", logger="spa.settings"):
        settings.check_adapter_options("resnet18", {}, False, "splora", {"rank": 8})
    assert "cannot be built on the meta device" in caplog.text and "no meta kernel" in caplog.text
    monkeypatch.setattr(settings.timm, "create_model", fails_with(ValueError("a bug in the build")))
    with pytest.raises(ValueError, match="a bug in the build"):
        settings.check_adapter_options("resnet18", {}, False, "splora", {"rank": 8})


def test_macs_at_32_px_are_left_out_only_for_a_fixed_input_size(monkeypatch):
    """steps.csv's macs_32 once swallowed any error of the count; only timm's input-size assertion
    (a ViT with a fixed input size) leaves it empty now."""
    from types import SimpleNamespace

    import timm

    from spa.pipeline import steps as pl
    final = SimpleNamespace(test_top1=50.0, test_top5=100.0, test_loss=1.0, val_top1=None, train_loss=1.0,
                            train_top1=50.0)
    model = timm.create_model("deit_tiny_patch16_224", num_classes=2, depth=1)
    row = pl.step_row(0, model, None, None, final, (224, 224), 1.0)
    assert row["macs_32"] is None and row["macs"] > 0

    def broken(*args, **kwargs):
        raise ValueError("a counting bug")
    monkeypatch.setattr(pl, "count_macs", broken)
    with pytest.raises(ValueError, match="a counting bug"):
        pl.step_row(0, model, None, None, final, (224, 224), 1.0)
