"""Shipping a result (issue 17, first part): the task bank that switches one base between tasks, and
predictions of a finished run on image files with its own preprocessing."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from conftest import CLASSES
from numerics import assert_close_rel
from scripts_path import load_script

from spa import pipeline
from spa.adapters import adapter_layers, apply_adapter
from spa.pruning.importance import WeightImportance
from spa.pruning.schedule import Plan
from spa.pruning.session import PruningSession
from spa.saved import TaskBank, load_task, save_task

predict = load_script("predict")

BASE = {"timm_name": "test_resnet", "weights": "test", "sha256": "a" * 64}


def _base() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=4).eval()


def _task(tmp_path: Path, name: str, seed: int, prune: bool = False, base: dict = BASE) -> Path:
    """A task trained (here: drawn at random) on _base(), optionally channel-pruned one step."""
    model = apply_adapter(copy.deepcopy(_base()), "splora", rank=4)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    structure = None
    if prune:
        session = PruningSession(model, torch.zeros(1, 3, 32, 32))
        session.step(1, Plan(session.original_filters, 0.3, 0.5), WeightImportance(), None, torch.device("cpu"))
        structure = {"history": session.history, "input_size": [32, 32], "original_filters": session.original_filters}
    path = tmp_path / f"{name}.pt"
    save_task(model.eval(), path, adapter={"kind": "splora", "options": {"rank": 4}}, classes=CLASSES,
              structure=structure, base=base)
    return path


@pytest.mark.numerics
def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    """Same tensors, devices, dtypes and values as ``before``."""
    now = model.state_dict()
    return now.keys() == before.keys() and all(
        now[k].device == v.device and now[k].dtype == v.dtype and torch.equal(now[k], v) for k, v in before.items())


def test_a_task_bank_on_another_device_moves_the_batch_there_and_leaves_the_base_untouched(tmp_path):
    """A bank on ``cuda`` once failed on a CPU batch: ``predict`` moves ``x`` to the bank's device
    (here ``meta``, which any machine has); the base given to the bank or to ``load_task`` keeps its
    device, dtype and values through loading elsewhere and through every switch."""
    base = _base()
    before = _snapshot(base)
    paths = {"a": _task(tmp_path, "a", 1), "b": _task(tmp_path, "b", 2), "pruned": _task(tmp_path, "p", 3, True)}
    bank = TaskBank(base, identity=BASE, device="meta")
    for name, path in paths.items():
        bank.register(name, path)
    for name in ("a", "b", "pruned", "a"):
        out = bank.predict(name, torch.randn(2, 3, 32, 32))          # a CPU batch
        assert out.device.type == "meta" and out.shape == (2, 4)
        assert _untouched(base, before), name
    load_task(base, paths["a"]).double()                             # another dtype
    load_task(base, paths["pruned"], device="meta")                  # another device
    assert _untouched(base, before)
    cpu = TaskBank(base, identity=BASE)                              # and on the base's own device
    cpu.register("a", paths["a"])
    assert cpu.predict("a", torch.randn(2, 3, 32, 32)).device.type == "cpu" and _untouched(base, before)


def test_a_task_bank_switches_one_base_between_tasks_exactly(tmp_path):
    base = _base()
    paths = {"a": _task(tmp_path, "a", 1), "b": _task(tmp_path, "b", 2), "pruned": _task(tmp_path, "p", 3, True)}
    bank = TaskBank(base, identity=BASE)
    for name, path in paths.items():
        bank.register(name, path)
    x = torch.randn(3, 3, 32, 32)
    fresh = {name: load_task(_base(), path).eval()(x).detach() for name, path in paths.items()}
    first_a = bank.predict("a", x)
    assert torch.equal(first_a, fresh["a"])
    assert torch.equal(bank.predict("b", x), fresh["b"]) and not torch.equal(fresh["a"], fresh["b"])
    assert torch.equal(bank.predict("pruned", x), fresh["pruned"])
    assert torch.equal(bank.predict("a", x), fresh["a"])            # A -> B -> pruned -> A: A exactly again
    # a and b share one adapted model whose frozen weights are the base's own tensors; the pruned task has its own
    assert bank.model("a") is bank.model("b") and bank.model("pruned") is not bank.model("a")
    layer_name, layer = next(iter(adapter_layers(bank.model("a")).items()))
    assert layer.weight.data_ptr() == base.get_submodule(layer_name).weight.data_ptr()
    with pytest.raises(KeyError, match="registered: \\['a', 'b', 'pruned'\\]"):
        bank.predict("c", x)


def test_a_task_for_another_base_is_refused_naming_both(tmp_path):
    bank = TaskBank(_base(), identity=BASE)
    other = _task(tmp_path, "other", 1, base={"timm_name": "resnet50", "weights": "resnet50.tv_in1k", "sha256": None})
    with pytest.raises(ValueError, match="trained on base resnet50 .*this bank's base is test_resnet"):
        bank.register("other", other)
    reweighted = _task(tmp_path, "rw", 1, base={**BASE, "sha256": "b" * 64})
    with pytest.raises(ValueError, match="SHA-256 b{64}.*SHA-256 a{64}"):
        bank.register("rw", reweighted)
    bank.register("a", _task(tmp_path, "a", 1))
    with pytest.raises(ValueError, match="registered already"):
        bank.register("a", _task(tmp_path, "a2", 2))


def test_predict_prints_the_runs_top_classes_with_its_own_preprocessing(compose_cfg, image_folder, capsys):
    summary = pipeline.run(compose_cfg("adapter=splora_r8", "train.epochs=1"))
    run = Path(summary["run_dir"])
    assert torch.load(run / "task.pt", weights_only=True)["base"]["timm_name"] == "test_resnet"
    test = image_folder / "test"
    images = sorted((test / "cat").iterdir())[:2] + sorted((test / "dog").iterdir())[:1]
    assert predict.main([str(run), *map(str, images), "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(str(path)) for line, path in zip(lines, images))
    for line in lines:
        shown = [item.rsplit(" ", 1) for item in line.split(": ", 1)[1].split(", ")]
        assert len(shown) == 3 and {name for name, _ in shown} <= set(CLASSES)
        probs = [float(p.rstrip("%")) for _, p in shown]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.05
    # the script's numbers are the run's model on the run's test transform
    from spa.deploy import load_run, read_images, top_k
    loaded = load_run(run)
    best = top_k(loaded.model(read_images(images[:1], loaded.transform)), loaded.classes, 1)[0][0]
    assert lines[0].split(": ", 1)[1].startswith(f"{best[0]} {100 * best[1]:.1f}%")
    assert predict.main([str(run.parent), str(images[0])]) == 2
    assert "not a finished run" in capsys.readouterr().err


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset"


def _real_images(count: int = 8) -> list[Path]:
    images = sorted(p for p in (DATA / "test").rglob("*.png"))
    return images[:: len(images) // count][:count]


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/cifar10-subset (real images)")
@pytest.mark.numerics
@pytest.mark.parametrize("backbone,extra", [("test_resnet", ()), ("test_vit", ("pruning.scope=local",))])
def test_a_pruned_run_exports_to_every_format_and_matches_pytorch_on_real_images(compose_cfg, backbone, extra,
                                                                                   tmp_path):
    from spa.deploy import load_run, read_images
    from spa.export import FORMATS, export_run, load_export
    summary = pipeline.run(compose_cfg(f"backbone={backbone}", "adapter=splora_r8", "pruning=weight", "train.epochs=1",
                                       "schedule.step_fraction=0.3", "schedule.target_density=0.4",
                                       "schedule.recovery_epochs=1", *extra))
    assert summary["metrics"]["density"] < 0.75                     # channels (heads) really removed
    run = Path(summary["run_dir"])
    loaded = load_run(run)
    batch = read_images(_real_images(), loaded.transform)
    with torch.no_grad():
        reference = loaded.model(batch).numpy()
    for fmt, suffix in FORMATS.items():
        path, diff = export_run(run, fmt, tmp_path / f"model{suffix}", check=batch)
        forward, meta = load_export(path)
        assert (meta["classes"], meta["image_size"], meta["mean"]) == (CLASSES, 32, loaded.normalization["mean"])
        got = forward(batch.numpy())
        assert got.shape == (8, 4), fmt
        # float32 by nature (onnxruntime's kernels against PyTorch's): relative to the logits' magnitude
        assert_close_rel(torch.from_numpy(got), torch.from_numpy(reference), 1e-4, fmt)
        assert diff <= 1e-4 * max(1.0, float(abs(reference).max())), fmt
        assert forward(batch[:3].numpy()).shape == (3, 4)             # dynamic batch


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/cifar10-subset (real images)")
def test_export_and_predict_from_the_command_line_and_bad_input(compose_cfg, capsys, monkeypatch, tmp_path):
    from spa import export
    summary = pipeline.run(compose_cfg("adapter=splora_r8", "pruning=weight", "train.epochs=1",
                                       "schedule.step_fraction=0.3", "schedule.target_density=0.4",
                                       "schedule.recovery_epochs=1"))
    run = Path(summary["run_dir"])
    script = load_script("export")
    assert script.main([str(run), "--format", "onnx"]) == 0
    assert (run / "model.onnx").is_file() and (run / "model.onnx.json").is_file()
    capsys.readouterr()
    images = [str(p) for p in _real_images(3)]
    assert predict.main([str(run), *images]) == 0
    from_run = capsys.readouterr().out
    assert predict.main([str(run / "model.onnx"), *images]) == 0
    from_onnx = capsys.readouterr().out
    tops = [[line.split(": ", 1)[1].split(", ")[0].split(" ")[0] for line in out.splitlines()]
            for out in (from_run, from_onnx)]
    assert tops[0] == tops[1] and len(tops[0]) == 3
    with pytest.raises(ValueError, match="use one of onnx, exported, torchscript"):
        export.export_run(run, "tflite")
    with pytest.raises(ValueError, match="must end in .pt2"):
        export.export_run(run, "exported", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(RuntimeError, match="differs from PyTorch.*removed"):
        export.export_run(run, "exported", tmp_path / "m.pt2", tolerance=-1.0)
    assert not (tmp_path / "m.pt2").exists()

    def broken(*args):
        raise NotImplementedError()          # no message at all: the error still names the other formats
    monkeypatch.setitem(export._EXPORTERS, "onnx", broken)
    assert script.main([str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "try --format exported or torchscript" in capsys.readouterr().err


@pytest.mark.slow      # full-size networks (random weights), pruned one step, exported to ONNX and run in onnxruntime
@pytest.mark.numerics
@pytest.mark.parametrize("name", ["resnet50", "vgg16", "deit_small_patch16_224"])
def test_full_size_pruned_networks_export_to_onnx(name, tmp_path):
    from spa.export import export_model
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    session = PruningSession(model, torch.zeros(1, 3, 224, 224))
    session.step(1, Plan(session.original_filters, 0.3, 0.5), WeightImportance(), None, torch.device("cpu"),
                 scope="local" if "deit" in name else "global")
    assert session.density < 0.75
    check = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        scale = max(1.0, float(model(check).abs().max()))
    # float32 by nature (onnxruntime's kernels against PyTorch's): relative to the logits' magnitude
    assert export_model(model, "onnx", tmp_path / "m.onnx", {"classes": list("abcdefghij")}, check) <= 1e-4 * scale
