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
from scripts_path import load_script

from spa import pipeline
from spa.adapters import TaskBank, adapter_layers, apply_adapter, load_task, save_task
from spa.pruning.importance import WeightImportance
from spa.pruning.schedule import Plan
from spa.pruning.session import PruningSession

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
