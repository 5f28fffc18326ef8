"""The benchmark measures what it says: pruned networks at each density with their MACs, the
masked-only contrast at dense cost, adapter models against the plain model of their shape, training
steps of every learner (and of the authors' library on the same layers), and scoring costs."""
from __future__ import annotations

import sys
import time

import pytest
import torch
import torch.nn as nn
from numerics import assert_exact

from spa import utils
from spa.adapters import adapter_layers, apply_adapter
from spa.bench import (
    NetSpec,
    adapter_overhead,
    authors_model,
    dense_model,
    inference_vs_density,
    latency,
    peak_memory,
    pruned_versions,
    pruning_overhead,
    saved_activation_bytes,
    training_step,
)
from spa.utils import Precision, median_interval, timed, timed_ratio

TINY = NetSpec("tiny", "test_resnet", size=32)
TINY_VIT = NetSpec("tiny vit", "test_vit", size=32)
CPU = torch.device("cpu")
R8 = (("splora_r8", "splora", {"rank": 8}),)


def test_pruned_versions_reach_each_density_and_are_reproducible():
    got = [(d, sum(p.numel() for p in m.parameters())) for d, m, _ in pruned_versions(TINY, (1.0, 0.5, 0.3))]
    assert [d for d, _ in got] == pytest.approx([1.0, 0.5, 0.3], abs=0.01)
    assert got[0][1] > got[1][1] > got[2][1]
    again = [(d, sum(p.numel() for p in m.parameters())) for d, m, _ in pruned_versions(TINY, (1.0, 0.5, 0.3))]
    assert again == got                      # seeded weights: the same channels go every run


def test_inference_rows_carry_ratios_to_the_dense_network():
    rows = inference_vs_density(TINY, batch=2, device=CPU, repeats=1, warmup=0)
    pruned = [r for r in rows if r["variant"] == "pruned (channels removed)"]
    rounded = [r for r in rows if "rounded" in r["variant"]]
    masked = [r for r in rows if r["variant"].startswith("masked")]
    assert [round(r["density"], 1) for r in pruned] == [1.0, 0.7, 0.5, 0.3, 0.1] and len(masked) == len(rounded) == 1
    assert pruned[0]["macs_ratio"] == pruned[0]["latency_ratio"] == 1.0
    assert all(a["macs"] > b["macs"] for a, b in zip(pruned, pruned[1:]))
    assert masked[0]["macs_ratio"] == 1.0 and masked[0]["density"] == pruned[-1]["density"]
    assert rounded[0]["density"] == pytest.approx(0.3, abs=0.1) and rounded[0]["macs"] != pruned[3]["macs"]
    assert all(r["latency_s"] > 0 and r["throughput_img_s"] == pytest.approx(2 / r["latency_s"]) for r in rows)


def test_adapter_overhead_compares_with_the_plain_model_of_the_same_shape():
    rows = adapter_overhead(TINY, 0.5, batch=2, device=CPU, repeats=1, warmup=0, adapters=R8)
    assert [r["variant"] for r in rows] == ["plain pruned model (baseline)", "adapter model, eval mode",
                                            "adapter model after fuse()"]
    assert rows[0]["ratio_to_plain"] == 1.0 and all(r["ratio_to_plain"] > 0 for r in rows)
    assert all(r["density"] == pytest.approx(0.5, abs=0.01) for r in rows)


def test_timing_is_a_median_after_warmup_interleaved():
    calls = []

    # seconds per call: two warm-up calls, then three timed (margins of 10 ms: a busy machine adds a few)
    sleeps = [0.05, 0.05, 0.02, 0.01, 0.0]

    class Counting(nn.Module):
        def forward(self, x):
            time.sleep(sleeps[len(calls)])
            calls.append(1)
            return x

    assert 0.01 <= latency(Counting(), torch.zeros(1), repeats=3, warmup=2) < 0.02 and len(calls) == 5   # median
    order = []
    timed({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, CPU, repeats=2, warmup=1)
    assert order == ["a", "b", "b", "a", "a", "b"]
    calls.clear()
    sleeps[:] = [0.004] * 200
    timed({"net": lambda: Counting()(torch.zeros(1))}, CPU, repeats=1, warmup=0, min_seconds=0.04)
    assert 10 <= len(calls) <= 11          # rounds until the timed ones add up to min_seconds


def scripted_rounds(monkeypatch, times):
    """spa.utils' rounds replaced by ``times`` ((fn, reference) seconds a round, in turn); the rounds taken."""
    taken = []

    def one(fns, device, reverse):
        taken.append(times[len(taken)])
        return dict(zip(("fn", "reference"), taken[-1]))
    monkeypatch.setattr(utils, "_round", one)
    return taken


def test_a_ratio_is_the_median_of_per_round_ratios_measured_until_its_interval_is_tight(monkeypatch):
    # the machine slows down 3x half-way: both calls of a round move alike, and the per-round ratios stay 0.5
    steady = [(0.5 * r, r) for r in (1.0, 1.0, 3.0, 3.0)]
    taken = scripted_rounds(monkeypatch, [(0.0, 0.0)] * 2 + steady * 10)
    got = timed_ratio(None, None, CPU, Precision(rounds=4, warmup=2, tolerance=0.01, min_seconds=0.0))
    assert got.ratio == pytest.approx(0.5) and got.interval == 0.0 and got.rounds == 4 and len(taken) == 6
    assert got.seconds == pytest.approx(1.0) and got.reference_s == pytest.approx(2.0)
    # noisy rounds: more rounds until the 95 % interval of the median is within 1 % of it
    noisy = [(r, 1.0) for r in (0.49, 0.5, 0.51, 0.495, 0.505)] * 40        # MAD 0.005: 14 rounds or more
    taken = scripted_rounds(monkeypatch, noisy)
    got = timed_ratio(None, None, CPU, Precision(rounds=4, warmup=0, tolerance=0.01, min_seconds=0.0))
    assert 14 <= got.rounds == len(taken) < 20 and got.interval <= 0.01
    ratios = [f for f, _ in taken]
    assert median_interval(ratios[:-1]) / 0.5 > 0.01 and got.interval == median_interval(ratios) / got.ratio
    # ... or until max_seconds: with none left, the least rounds
    scripted_rounds(monkeypatch, noisy)
    got = timed_ratio(None, None, CPU, Precision(rounds=4, warmup=0, tolerance=0.01, min_seconds=0.0, max_seconds=0.0))
    assert got.rounds == 4 and got.interval > 0.01


def test_the_interval_of_a_median_is_normal_theory_from_the_median_absolute_deviation():
    # median 3, deviations 2 1 0 1 2: MAD 1
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(1.96 * 1.2533 * 1.4826 / 5 ** 0.5)
    assert median_interval([1.0, 2.0, 3.0, 4.0, 100.0]) == median_interval([1.0, 2.0, 3.0, 4.0, 5.0])   # robust
    assert median_interval([1.0]) == float("inf")


@pytest.mark.numerics
@pytest.mark.parametrize("kind,options", [("splora", {"rank": 4}), ("sppara", {})])
def test_the_authors_library_runs_the_same_layers_and_function(kind, options):
    """Same adapted layers, same trainable count, and with our factors copied in, the same outputs
    in training and eval mode: the timing comparison is like for like."""
    ours = apply_adapter(dense_model(TINY, CPU), kind, **options)
    theirs = authors_model(ours, dense_model(TINY, CPU), kind, options)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)   # noqa: E731
    assert count(theirs) == count(ours)
    with torch.no_grad():
        for name, layer in adapter_layers(ours).items():
            target = theirs.get_submodule(name)
            assert type(target).__module__.startswith("sp_adapters")
            if kind == "sppara":
                target.adapter.copy_(layer.P + 0.01)
                layer.P.add_(0.01)
            else:
                target.adapter.rows.copy_(layer.A[None])
                target.adapter.cols.copy_(layer.B[None] + 0.01)
                layer.B.add_(0.01)
    x = torch.randn(2, 3, 32, 32).double()       # the same function written twice: exact, so in float64
    ours.double(), theirs.double()
    for mode in (True, False):
        ours.train(mode), theirs.train(mode)
        assert_exact(ours(x), theirs(x), what=f"train={mode}")


def test_training_step_rows_compare_learners_and_memory():
    rows = training_step(TINY, batch=4, device=CPU, repeats=1, warmup=0, adapters=R8)
    by = {(r["implementation"], r["learner"]): r for r in rows}
    assert set(by) == {("spa", "finetune"), ("spa", "splora_r8"), ("structured-pruning-adapters", "splora_r8")}
    ft, ours, theirs = by["spa", "finetune"], by["spa", "splora_r8"], by["structured-pruning-adapters", "splora_r8"]
    assert ft["ratio_to_finetune"] == 1.0 and ours["ours_over_authors"] is None
    assert theirs["ours_over_authors"] == pytest.approx(ours["step_s"] / theirs["step_s"])
    assert ours["trainable_params"] == theirs["trainable_params"] < ft["trainable_params"]
    # SGD with momentum: one buffer per trainable parameter, fp32
    assert ours["optimizer_state_bytes"] == 4 * ours["trainable_params"] < ft["optimizer_state_bytes"]
    assert ft["saved_activation_bytes"] > 0


def test_saved_activations_scale_with_the_batch_and_peak_memory_sees_an_allocation():
    model = dense_model(TINY, CPU)
    one, two = (saved_activation_bytes(model, torch.randn(b, 3, 32, 32), torch.zeros(b, dtype=torch.long))
                for b in (4, 8))
    assert two == pytest.approx(2 * one, rel=0.05)
    peak = peak_memory(lambda: torch.ones(64, 2 ** 20).sum(), CPU)    # 256 MiB, freed at once
    if sys.platform != "linux":
        assert peak is None                                             # nothing to read it from there
        return
    assert peak is not None and 200 * 2 ** 20 < peak < 400 * 2 ** 20


@pytest.mark.parametrize("spec", [TINY, TINY_VIT], ids=["resnet", "vit"])
def test_pruning_overhead_times_each_criterion_and_the_step(spec):
    rows = pruning_overhead(spec, batch=2, device=CPU, batches=2, warmup=0)
    by = {r["criterion"]: r for r in rows}
    assert list(by)[:4] == ["weight", "gradient", "taylor", "lrp"] and "pruning step" in list(by)[4]
    assert by["weight"]["batches"] == 0 and by["taylor"]["batches"] == 2
    assert all(r["seconds"] > 0 and r["ratio_to_training"] == pytest.approx(r["seconds"] / r["train_seconds"])
               for r in rows if r["seconds"] is not None)


def test_checks_compare_each_target_with_its_measurement():
    from spa.bench import RESNET50, checks
    sections = {
        "inference": [{"network": RESNET50.label, "variant": "pruned (channels removed)", "density": 0.301,
                       "latency_over_macs_ratio": 1.35},
                      {"network": RESNET50.label, "variant": "masked only (paper's code)", "density": 0.1,
                       "latency_over_macs_ratio": 5.0}],
        "adapters": [{"network": "n", "adapter": "splora_r8", "variant": "adapter model after fuse()",
                      "ratio_to_plain": 1.01},
                     {"network": "n", "adapter": "sppara", "variant": "adapter model after fuse()",
                      "ratio_to_plain": 1.5}],
        "training": [{"network": "n", "implementation": "spa", "learner": "finetune", "ratio_to_finetune": 1.0,
                      "optimizer_state_bytes": 100, "ours_over_authors": None},
                     {"network": "n", "implementation": "spa", "learner": "splora_r8", "ratio_to_finetune": 1.1,
                      "optimizer_state_bytes": 2, "ours_over_authors": None},
                     {"network": "n", "implementation": "lib", "learner": "splora_r8", "ratio_to_finetune": 1.2,
                      "optimizer_state_bytes": 2, "ours_over_authors": 0.9}],
        # two shapes: 3 layers at 1.0 vs 2.0 ms and 1 layer at 4.0 vs 1.0 ms: 7 ms against 7 ms in all
        "layers": [{"network": "n", "adapter": "splora_r8", "count": 3, "ours_s": 1.0, "authors_s": 2.0,
                    "ours_over_authors": 0.5},
                   {"network": "n", "adapter": "splora_r8", "count": 1, "ours_s": 4.0, "authors_s": 1.0,
                    "ours_over_authors": 4.0}]}
    got = {(r["check"].split(": ")[-1], r["measured"]): r["met"] for r in checks(sections)}
    assert got == {("latency ratio / MACs ratio", 1.35): False, ("latency / plain pruned model", 1.01): True,
                   ("step time / fine-tuning step", 1.1): False, ("optimiser state / fine-tuning's", 0.02): True,
                   ("our adapted layers' time / the authors' on the same shapes", 1.0): True}


def test_layer_comparison_covers_every_adapted_layer_once_per_shape():
    from spa.bench import layer_speed, layer_totals
    rows = layer_speed(TINY, batch=2, device=CPU, repeats=1, warmup=0, adapters=R8)
    adapted = len(adapter_layers(apply_adapter(dense_model(TINY, CPU), "splora", rank=8)))
    assert sum(r["count"] for r in rows) == adapted and len(rows) <= adapted
    assert len({(r["weight_shape"], r["input_shape"], r["stride"]) for r in rows}) == len(rows)
    assert all(r["ours_over_authors"] == pytest.approx(r["ours_s"] / r["authors_s"]) for r in rows)
    (total,) = layer_totals(rows)
    assert total["layers"] == adapted and total["ours_over_authors"] == pytest.approx(
        sum(r["count"] * r["ours_s"] for r in rows) / sum(r["count"] * r["authors_s"] for r in rows))


# ----------------------------------------------------------------------------- block-sparse layers
BLOCK = (16, 16)


def test_block_sparse_rows_keep_exactly_the_asked_blocks_and_compare_the_forms():
    from spa.bench import block_sparse_inference
    from spa.pruning.sparse import FORMS
    rows = block_sparse_inference(tokens=32, device=CPU, repeats=1, warmup=0, shapes=(("w", 64, 64),),
                                  densities=(0.7, 0.5, 0.3, 0.1), block=BLOCK)
    assert [r["density"] for r in rows] == [0.7, 0.5, 0.3, 0.1]
    assert {"layer", "weight_shape", "tokens", "density", "blocks", "kept_blocks", "bsr_blocks", "dense_s", "bsr_s",
            "csr_s", "bsr_product", "csr_product", "dense_over_bsr", "dense_over_csr", "deploy"} <= set(rows[0])
    for r in rows:
        assert r["blocks"] == 16 and r["kept_blocks"] == r["bsr_blocks"] == round(r["density"] * 16)
        assert r["dense_over_bsr"] == pytest.approx(r["dense_s"] / r["bsr_s"]) and r["deploy"] in FORMS
        assert r["bsr_product"] is not None and r["csr_product"] is not None    # one product of each runs on CPU


@pytest.mark.numerics
def test_block_mask_and_sparse_forms_give_the_dense_product():
    from spa.pruning.sparse import SPARSE_PRODUCTS, block_sparse_weight, sparse_forms
    weight, mask = block_sparse_weight(64, 64, BLOCK, 0.3)
    assert mask.shape == (4, 4) and int(mask.sum()) == 5
    blocks = weight.view(4, 16, 4, 16).abs().sum((1, 3))
    assert torch.equal(blocks > 0, mask)                             # zero exactly outside the kept blocks
    again, _ = block_sparse_weight(64, 64, BLOCK, 0.3)
    assert torch.equal(weight, again)                                # seeded
    x, weight = torch.randn(20, 64).double(), weight.double()       # dropping zero blocks is exact: float64
    forms = sparse_forms(weight, BLOCK)
    assert forms["bsr"].layout == torch.sparse_bsr and forms["csr"].layout == torch.sparse_csr
    with torch.no_grad():
        for layout in ("bsr", "csr"):
            for name, product in SPARSE_PRODUCTS.items():
                assert_exact(product(forms[layout], x), x @ weight.T, what=f"{layout} {name}")


def test_fastest_form_names_one_of_the_forms():
    from spa.pruning.sparse import FORMS, block_sparse_weight, deploy_form, fastest_form
    weight, _ = block_sparse_weight(64, 64, BLOCK, 0.5)
    assert fastest_form(weight, BLOCK, torch.randn(16, 64), repeats=1, warmup=0) in FORMS
    assert deploy_form({"dense_s": 2.0, "bsr_s": 1.0, "csr_s": None}) == "bsr"
    assert deploy_form({"dense_s": 1.0, "bsr_s": 1.0, "csr_s": 1.0}) == "dense"


@pytest.mark.numerics
def test_factored_splopa_forward_equals_the_layer_with_the_same_gradients():
    from spa.bench import splopa_factored_forward, splopa_layer
    layer = splopa_layer(64, 32, prototypes=4, rank=2, block=BLOCK).double()     # exact: float64
    with torch.no_grad():
        layer.bank.C.normal_()                          # a visible update (C starts at ±1e-4)
    x = torch.randn(3, 5, 32).double()
    grads = []
    for forward in (layer, lambda v: splopa_factored_forward(layer, v)):
        layer.zero_grad(set_to_none=True)
        inp = x.clone().requires_grad_(True)
        out = forward(inp)
        (out * torch.linspace(-1, 1, out.numel()).double().view_as(out)).sum().backward()
        grads.append((out.detach(), inp.grad, layer.B.grad, layer.bank.C.grad, layer.bank.R.grad, layer.bias.grad))
    assert grads[0][0].shape == (3, 5, 64) and layer.weight.grad is None      # base frozen
    for what, a, b in zip(("out", "x", "B", "C", "R", "bias"), *grads):
        assert_exact(b, a, what=what)


@pytest.mark.numerics
@pytest.mark.parametrize("columns", [[], ["layer"]])
def test_factored_splopa_forward_drops_the_masked_blocks_as_the_layer_does(columns):
    """Square blocks and hybrid column strips (a mask block a multiple of the prototypes')."""
    from spa.bench import splopa_factored_forward, splopa_layer
    from spa.pruning.blocks import attach_blocks
    model = nn.Sequential()
    model.pretrained_cfg = {"classifier": "none"}
    model.add_module("layer", splopa_layer(64, 32, prototypes=4, rank=2, block=BLOCK))
    attach_blocks(model, BLOCK, dense=False, columns=columns)
    model.double()                                                  # exact: float64
    layer = model.layer
    with torch.no_grad():
        layer.bank.C.normal_()
        layer.block_mask.view(-1)[::2] = 0
    x = torch.randn(3, 5, 32).double()
    assert_exact(splopa_factored_forward(layer, x), layer(x))


def test_splopa_training_rows_time_both_forms():
    from spa.bench import splopa_training_forms
    rows = splopa_training_forms(tokens=8, device=CPU, repeats=1, warmup=0, shapes=(("w", 64, 32),),
                                 prototypes=(2, 4), block=BLOCK)
    assert [r["prototypes"] for r in rows] == [2, 4]
    assert all(r["factored_over_materialised"] == pytest.approx(r["factored_s"] / r["materialised_s"]) for r in rows)


def test_deploy_rows_time_each_runtime_at_each_density(tmp_path):
    from spa.bench import deploy_latency
    rows = deploy_latency(TINY, batch=2, device=CPU, repeats=1, warmup=0, workdir=tmp_path, densities=(1.0, 0.3),
                          compile_model=False)
    assert [(round(r["density"], 1), r["runtime"]) for r in rows] == [(1.0, "eager"), (1.0, "onnxruntime"),
                                                                       (0.3, "eager"), (0.3, "onnxruntime")]
    assert rows[0]["latency_ratio"] == rows[0]["macs_ratio"] == rows[0]["ratio_to_same_runtime_dense"] == 1.0
    assert rows[1]["ratio_to_same_runtime_dense"] == 1.0 and rows[2]["macs_ratio"] < 1.0
    assert all(r["latency_over_macs_ratio"] == pytest.approx(r["latency_ratio"] / r["macs_ratio"]) for r in rows)


def test_task_rows_compare_switching_and_memory_with_full_models(tmp_path):
    from spa.bench import checks, task_switching
    rows = task_switching(TINY, CPU, repeats=2, warmup=0, workdir=tmp_path, counts=(1, 3))
    times = {r["what"]: r for r in rows if r["measurement"] == "time"}
    assert set(times) == {"switch a task", "load a full model file"} and times["load a full model file"]["ratio"] == 1
    assert all(r["exact_after_switching"] for r in rows)
    memory = {(r["what"], r["tasks"]): r for r in rows if r["measurement"] == "memory"}
    assert len(memory) == 4 and all(r["resident_bytes"] is not None for r in memory.values())
    base = memory[("1 full models", 1)]["tensor_bytes"]
    assert memory[("3 full models", 3)]["tensor_bytes"] == 3 * base
    assert base < memory[("base + 3 task files", 3)]["tensor_bytes"] < 2 * base      # one base, three small tasks
    found = {c["check"]: c for c in checks({"tasks": rows})}
    assert found["tiny: outputs after switching A -> B -> A equal a fresh load of A (1 = yes)"]["met"]
