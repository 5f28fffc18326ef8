"""Speed benchmarks: python scripts/bench.py [--sections ...] [--device auto] [--quick]

Writes results/benchmarks/<section>_<device kind>.{json,md}: the device, versions and settings,
medians over repeated runs after warm-up, and every figure also as a ratio to a baseline measured
in the same run.
  inference  ResNet-50 (224 px; CIFAR stem at 32 px), DeiT-S, EfficientNet-Lite0 and MobileNetV2 (depthwise
             convs, inverted residuals; 224 px) at densities 100/70/50/30/10 % as
             our pruning leaves them: latency, throughput, MACs, the latency ratio next to the MACs
             ratio (the ideal); widths rounded to multiples of 8 (pruning.round_to=8) at 30 %; and
             the masked-only network (what the paper's code ran).
  adapters   SPLoRA-r8/r32 and SPPaRA models at 30 % density in eval mode and after fuse() vs the
             plain pruned model of the same shape.
  training   one SGD step: time, peak memory, optimiser state of fine-tuning vs SPLoRA-r8/r32 vs
             SPPaRA on ResNet-50 and DeiT-S, and the authors' library (pip install
             structured-pruning-adapters; `make bench` does) on the same layers.
  layers     our adapter layers against the authors' on every distinct adapted shape of ResNet-50 and
             DeiT-S (a training forward + backward each, on the input the layer sees), summed over the network.
  pruning    one scoring pass per criterion (LRP included) relative to training on the same batches
             (= a scoring pass over an epoch relative to a training epoch), and the pruning step.
  blocks     DeiT-S's four Linear shapes (batch x 197 tokens, float32, 32 x 32 blocks): y = x W^T with a
             random block mask at 70/50/30/10 % of the blocks, dense vs torch's BSR and CSR layouts (the
             form to deploy per layer); and a SPLoPA training step (64 / 128 prototypes, rank 2) with
             ΔW materialised (the layer's form) vs the exact factored form that never builds it.
  deploy     ResNet-50 and MobileNetV2 pruned to 100/30/10 % in PyTorch eager, torch.compile (inductor) and
             onnxruntime (CPU; the ONNX file scripts/export.py writes), interleaved at one batch: ratios to
             eager dense, next to the MACs ratio (--no-compile leaves torch.compile out).
  tasks      one ResNet-50 base, SPLoRA-r8 task files: switching a task bank's model to another task vs
             loading a full model file, A -> B -> A against a fresh load of A, and the memory of the base
             + N task files vs N full models (N = 1, 4, 16; resident set added in a fresh process, and
             the tensors held).
CPU defaults: batch 8, the machine's torch threads; on CUDA: batch 64, bf16 autocast, channels-last
(blocks: float32 everywhere).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from spa import repo_root
from spa.bench import (
    AUTHORS_LIBRARY,
    DEIT_S,
    DEIT_S_LINEARS,
    DEIT_S_TOKENS,
    DEPLOY_NETS,
    LITE0,
    NETS,
    RESNET50,
    accuracy_rows,
    adapter_overhead,
    authors_available,
    block_sparse_inference,
    checks,
    deploy_latency,
    inference_vs_density,
    layer_speed,
    layer_totals,
    pruning_overhead,
    splopa_training_forms,
    task_switching,
    training_step,
)
from spa.pruning.latency import GRID, RUNTIMES
from spa.pruning.sparse import SPARSE_PRODUCTS
from spa.utils import (
    Precision,
    atomic_write_json,
    atomic_write_text,
    device_description,
    package_versions,
    resolve_device,
)

SECTIONS = ("inference", "adapters", "training", "layers", "pruning", "blocks", "deploy", "tasks", "latency_model",
            "latency_target")
# the authors' library indexes with a list (deprecated in torch); it still computes the right thing
warnings.filterwarnings("ignore", message="Using a non-tuple sequence", module="sp_adapters")


def _ms(series: pd.Series) -> pd.Series:
    return series.map(lambda v: "" if pd.isna(v) else f"{1e3 * v:.1f}")


def _ratio(series: pd.Series, digits: int = 3) -> pd.Series:
    return series.map(lambda v: "" if v is None or pd.isna(v) else f"{v:.{digits}f}")


def _mib(series: pd.Series) -> pd.Series:
    return series.map(lambda v: "n/a" if v is None or pd.isna(v) else f"{v / 2 ** 20:.1f}")


def inference(args, device, batch, cuda) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = pd.DataFrame([r for spec in NETS for r in inference_vs_density(
        spec, batch, device, args.repeats, args.warmup, amp=cuda, channels_last=cuda)])
    shown = table.assign(density=table["density"].map("{:.0%}".format), latency_ms=_ms(table["latency_s"]),
                         throughput=table["throughput_img_s"].map("{:.1f}".format),
                         gmacs=(table["macs"] / 1e9).map("{:.3f}".format), macs_ratio=_ratio(table["macs_ratio"]),
                         latency_ratio=_ratio(table["latency_ratio"]),
                         over=_ratio(table["latency_over_macs_ratio"], 2))
    shown = shown[["network", "variant", "density", "gmacs", "latency_ms", "throughput", "macs_ratio",
                   "latency_ratio", "over"]].rename(columns={
        "gmacs": "GMACs / image", "latency_ms": f"latency (ms, batch {batch})", "throughput": "images / s",
        "macs_ratio": "MACs ratio (ideal)", "latency_ratio": "latency ratio", "over": "latency ratio / MACs ratio"})
    return table, shown


def adapters(args, device, batch, cuda) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = pd.DataFrame([r for spec in (RESNET50, DEIT_S) for r in adapter_overhead(
        spec, args.density, batch, device, args.adapter_repeats, args.warmup, amp=cuda, channels_last=cuda)])
    shown = table.assign(density=table["density"].map("{:.0%}".format), latency_ms=_ms(table["latency_s"]),
                         ratio=_ratio(table["ratio_to_plain"]))
    shown = shown[["network", "adapter", "density", "variant", "latency_ms", "ratio"]].rename(
        columns={"latency_ms": f"latency (ms, batch {batch})", "ratio": "ratio to plain"})
    return table, shown


def training(args, device, batch, cuda) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not authors_available():
        print(f"note: {AUTHORS_LIBRARY} is not installed: the comparison with the authors' library is left out "
              f"(pip install {AUTHORS_LIBRARY})", file=sys.stderr)
    table = pd.DataFrame([r for spec in (RESNET50, DEIT_S) for r in training_step(
        spec, batch, device, args.train_repeats, args.warmup, amp=cuda, channels_last=cuda)])
    shown = table.assign(step_ms=_ms(table["step_s"]), ratio=_ratio(table["ratio_to_finetune"]),
                         ours=_ratio(table["ours_over_authors"]),
                         trainable=table["trainable_params"].map("{:,}".format),
                         optim=_mib(table["optimizer_state_bytes"]), grads=_mib(table["gradient_bytes"]),
                         saved=_mib(table["saved_activation_bytes"]), peak=_mib(table["peak_step_memory_bytes"]))
    shown = shown[["network", "implementation", "learner", "step_ms", "ratio", "ours", "trainable", "optim",
                   "grads", "saved", "peak"]].rename(columns={
        "step_ms": f"step (ms, batch {batch})", "ratio": "ratio to fine-tuning", "ours": "ours / authors' time",
        "trainable": "trainable parameters", "optim": "optimiser state (MiB)",
        "grads": "gradients (MiB)", "saved": "saved activations (MiB)",
        "peak": "peak step memory (MiB, " + ("allocated)" if cuda else "resident set, approximate)")})
    return table, shown


def layers(args, device, batch, cuda) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = [r for spec in (RESNET50, DEIT_S) for r in layer_speed(
        spec, batch, device, args.layer_repeats, args.warmup, amp=cuda, channels_last=cuda)]
    if not rows:
        print(f"note: {AUTHORS_LIBRARY} is not installed: no layer comparison", file=sys.stderr)
    table = pd.DataFrame(rows)
    totals = pd.DataFrame(layer_totals(rows))
    shown = totals.assign(ours=_ms(totals["ours_s"]), theirs=_ms(totals["authors_s"]),
                          ratio=_ratio(totals["ours_over_authors"]),
                          spread=[f"{a:.3f} - {b:.3f}" for a, b in zip(totals["min_ratio"], totals["max_ratio"])])
    shown = shown[["network", "adapter", "layers", "shapes", "ours", "theirs", "ratio", "spread"]].rename(columns={
        "layers": "adapted layers", "shapes": "distinct shapes", "ours": "ours (ms, forward + backward)",
        "theirs": "authors' library (ms)", "ratio": "ours / authors'", "spread": "per-shape ratios"})
    return table, shown


def pruning(args, device, batch, cuda) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = pd.DataFrame([r for spec in (RESNET50, DEIT_S) for r in pruning_overhead(
        spec, batch, device, args.score_batches, args.warmup, amp=cuda, channels_last=cuda)])
    shown = table.assign(seconds=table["seconds"].map(lambda v: "n/a" if pd.isna(v) else f"{v:.2f}"),
                         train=table["train_seconds"].map("{:.2f}".format), ratio=_ratio(table["ratio_to_training"]))
    shown = shown[["network", "criterion", "batches", "seconds", "train", "ratio", "note"]].rename(columns={
        "batches": "batches scored", "seconds": "time (s)",
        "train": f"training on {args.score_batches} batches (s)",
        "ratio": "ratio to training (= scoring pass / epoch)"})
    return table, shown


def deploy(args, device, batch, cuda) -> tuple[pd.DataFrame, pd.DataFrame]:
    with tempfile.TemporaryDirectory() as workdir:
        table = pd.DataFrame([r for spec in DEPLOY_NETS for r in deploy_latency(
            spec, batch, device, args.repeats, args.warmup, Path(workdir), compile_model=not args.no_compile)])
    shown = table.assign(density=table["density"].map("{:.0%}".format), latency_ms=_ms(table["latency_s"]),
                         ratio=_ratio(table["latency_ratio"]), macs=_ratio(table["macs_ratio"]),
                         over=_ratio(table["latency_over_macs_ratio"], 2),
                         same=_ratio(table["ratio_to_same_runtime_dense"]))
    shown = shown[["network", "density", "runtime", "latency_ms", "ratio", "macs", "over", "same"]].rename(columns={
        "latency_ms": f"latency (ms, batch {batch})", "ratio": "latency ratio to eager dense",
        "macs": "MACs ratio (ideal)", "over": "latency ratio / MACs ratio",
        "same": "latency ratio to the same runtime dense"})
    return table, shown


def latency_model(args, device, batch, cuda) -> tuple[pd.DataFrame, str]:
    """The per-layer latency model (spa.pruning.latency) against measurement: random pruned widths of
    ResNet-50 and EfficientNet-Lite0 at 224 px on each runtime (CPU), predicted vs measured latency as a
    fraction of the dense network's. Its tables are cached in results/latency/ (not committed)."""
    runtimes, lat_batch = args.latency_runtimes.split(","), args.latency_batch
    settings = [(runtime, r) for runtime in runtimes for r in args.latency_round_to]
    table = pd.DataFrame([row for runtime, r in settings for spec in (RESNET50, LITE0) for row in accuracy_rows(
        spec, runtime, lat_batch, samples=args.latency_samples, precision=_precision(args, args.repeats),
        cache_dir=repo_root() / "results" / "latency", round_to=r)])
    errors = table.groupby(["runtime", "round_to", "network"], sort=False)
    summary = errors.agg(samples=("sample", "size"), median=("relative_error", "median"),
                         worst=("relative_error", "max"), dense_ms=("dense_ms", "first"),
                         measured_min=("measured_ratio", "min"), measured_max=("measured_ratio", "max")).reset_index()
    summary = summary.assign(median=_pct(summary["median"].values), worst=_pct(summary["worst"].values),
                             dense_ms=summary["dense_ms"].map("{:.1f}".format),
                             measured=[f"{a:.2f}-{b:.2f}" for a, b in zip(summary["measured_min"],
                                                                          summary["measured_max"])])
    summary = summary[["runtime", "round_to", "network", "samples", "dense_ms", "measured", "median",
                       "worst"]].rename(columns={
        "dense_ms": "dense latency (ms)", "measured": "measured latency ratios (min-max)",
        "median": "median relative error", "worst": "worst relative error"})
    shown = table.assign(density=table["density"].map("{:.0%}".format), macs=_ratio(table["macs_ratio"]),
                         measured=_ratio(table["measured_ratio"]), predicted=_ratio(table["predicted_ratio"]),
                         error=_pct(table["relative_error"].values))
    shown = shown[["runtime", "round_to", "network", "sample", "density", "macs", "measured", "predicted",
                   "error"]].rename(
        columns={"density": "filter density", "macs": "MACs ratio", "measured": "latency ratio, measured",
                 "predicted": "latency ratio, predicted", "error": "relative error"})
    text = (f"{device_description(torch.device('cpu'))}; batch {lat_batch}, {torch.get_num_threads()} threads; each "
            f"network pruned in one step to a random filter density (random scores, ranked globally: uneven "
            f"widths; `round_to` > 1: each kept width rounded to a multiple of it) and timed interleaved with the "
            f"dense one, {_precision_text(args, args.repeats)} (onnxruntime sessions without spin-waiting); "
            f"prediction = (c + the table's sum "
            f"at the pruned widths) / (c + its sum at full widths), c = the dense network's measured latency - the "
            f"table's sum where positive, else 0 (spa.pruning.latency.NetworkLatency; grid "
            f"{', '.join(map(str, GRID))} of each width, bilinear, non-decreasing); torch "
            f"{package_versions().get('torch')}, onnxruntime "
            f"{_ort_version()}\n\n" + _markdown(summary) + "\n\n" + _markdown(shown))
    return table, text


def latency_target(args, device, batch, cuda) -> tuple[pd.DataFrame, str]:
    """Latency-targeted pruning (schedule.target=latency) against density-targeted pruning stopped at
    the same measured latency: ResNet-50 and EfficientNet-Lite0 at 224 px on onnxruntime (CPU), each
    batch of --latency-target-batches, each target of --latency-targets."""
    from spa.bench.latency_target import STEP, target_rows
    rows = []
    for b in args.latency_target_batches:
        for spec in (RESNET50, LITE0):
            rows += target_rows(spec, "onnxruntime", b, tuple(args.latency_targets),
                                _precision(args, args.latency_target_repeats), repo_root() / "results" / "latency")
    table = pd.DataFrame(rows)
    if "not_reached" not in table:
        table["not_reached"] = False
    within = (table["measured"] / table["target"] - 1).abs()
    shown = table.assign(
        target=table["target"].map("{:.2f}".format), schedule=table["schedule"] + ", round_to " +
        table["round_to"].astype(str), measured=_ratio(table["measured"]), predicted=_ratio(table["predicted"]),
        ms=table["measured_ms"].map("{:.1f}".format), macs=_ratio(table["macs_ratio"]),
        interval=table["interval"].map(lambda v: f"±{v:.1%}" if pd.notna(v) else ""),
        density=table["density"].map("{:.1%}".format), steps=table["step"].astype(str),
        off=[f"{100 * w:+.1f} %" if s == "latency" else "" for w, s in zip(
            table["measured"] / table["target"] - 1, table["schedule"])])
    shown.loc[table["not_reached"].fillna(False).astype(bool), "measured"] += " (not reached)"
    shown = shown[["network", "batch", "target", "schedule", "steps", "measured", "interval", "off", "predicted", "ms",
                   "macs", "density"]].rename(columns={
        "measured": "latency, measured (of dense)", "interval": "±", "off": "off the target",
        "predicted": "latency, predicted",
        "ms": "latency (ms)", "macs": "MACs ratio", "density": "filter density"})
    worst = within[table["schedule"] == "latency"].max()
    text = (f"{device_description(torch.device('cpu'))}; onnxruntime {_ort_version()}, "
            f"{torch.get_num_threads()} threads, CPU; networks with seeded random weights pruned without training (the "
            f"data-free weight criterion: only widths matter to latency). `latency`: schedule.target=latency, steps "
            f"of {STEP:.0%} of the dense latency, widths rounded to the runtime's preferred multiple, stopped at the "
            f"first step measured at or below the target. `density`: today's schedule, {STEP:.0%} of the filters a "
            f"step, stopped at the first step measured at or below the latency-targeted network's measured latency. "
            f"Latency measured interleaved with the dense network, "
            f"{_precision_text(args, args.latency_target_repeats)}; `±`: that interval at the step shown. Largest "
            f"distance of a latency-targeted network from its target: {100 * worst:.1f} %.\n\n" + _markdown(shown))
    return table, text


def _precision(args, rounds: int) -> Precision:
    return Precision(rounds=rounds, warmup=args.warmup, tolerance=args.latency_tolerance,
                     max_seconds=args.latency_max_seconds)


def _precision_text(args, rounds: int) -> str:
    p = _precision(args, rounds)
    return (f"the median of per-round ratios after {p.warmup} warm-up rounds, over at least {p.rounds} rounds and "
            f"{p.min_seconds:g} s, then until its 95 % interval is within ±{p.tolerance:.0%} of it or "
            f"{p.max_seconds:g} s have passed")


def _ort_version() -> str | None:
    return package_versions(("onnxruntime",)).get("onnxruntime")


def _pct(values) -> list[str]:
    return [f"{100 * v:.1f} %" for v in values]


def tasks(args, device, batch, cuda) -> tuple[pd.DataFrame, pd.DataFrame]:
    with tempfile.TemporaryDirectory() as workdir:
        table = pd.DataFrame(task_switching(RESNET50, device, args.repeats, args.warmup, Path(workdir)))
    mib = table.get("resident_bytes", pd.Series(dtype=float))
    shown = table.assign(
        ms=table["seconds"].map(lambda v: "" if pd.isna(v) else f"{1e3 * v:.1f}") if "seconds" in table else "",
        resident=_mib(mib) if "resident_bytes" in table else "",
        tensors=_mib(table["tensor_bytes"]) if "tensor_bytes" in table else "",
        ratio=_ratio(table["ratio"]), tasks=table["tasks"].map(lambda v: "" if pd.isna(v) else f"{int(v)}"),
        exact=table["exact_after_switching"].map({True: "yes", False: "**no**"}))
    shown.loc[shown["measurement"] == "time", ["resident", "tensors"]] = ""
    shown.loc[shown["measurement"] == "memory", "ms"] = ""
    shown = shown[["network", "measurement", "what", "tasks", "ms", "resident", "tensors", "ratio", "exact"]].rename(
        columns={"ms": "time (ms)", "resident": "resident set added (MiB, fresh process)",
                 "tensors": "tensors held (MiB)", "ratio": "ratio (time: to a full load; memory: to N full models)",
                 "exact": "A -> B -> A = fresh A"})
    return table, shown


def _header(device, batch, amp, timing, warmup) -> str:
    """The settings line every report starts with."""
    return (f"{device_description(device)}; batch {batch}; {torch.get_num_threads()} threads; "
            f"{'bf16 autocast, channels-last; ' if amp else ''}{timing} after {warmup} warm-up; "
            f"random weights (seed 0); torch {package_versions().get('torch')}")


def _markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True)


def blocks(args, device, batch, cuda) -> tuple[pd.DataFrame, str]:
    tokens = batch * DEIT_S_TOKENS
    sparse_rows = [{"measurement": "block-sparse inference", **r}
                   for r in block_sparse_inference(tokens, device, args.block_repeats, args.warmup)]
    form_rows = [{"measurement": "SPLoPA training step", **r}
                 for r in splopa_training_forms(tokens, device, args.block_repeats, args.warmup)]
    sparse, forms = pd.DataFrame(sparse_rows), pd.DataFrame(form_rows)
    table = pd.DataFrame(sparse_rows + form_rows, dtype=object)   # ints stay ints in the JSON,
    table = table.where(table.notna(), None)                      # the other measurement's columns null
    names = dict((f"{o}x{i}", f"{n} ({o} x {i})") for n, o, i in DEIT_S_LINEARS)
    first = sparse.assign(layer=sparse["weight_shape"].map(names), density=sparse["density"].map("{:.0%}".format),
                          kept=[f"{k} / {n}" for k, n in zip(sparse["kept_blocks"], sparse["blocks"])],
                          dense=_ms(sparse["dense_s"]), bsr=_ms(sparse["bsr_s"]), csr=_ms(sparse["csr_s"]),
                          over_bsr=_ratio(sparse["dense_over_bsr"], 2), over_csr=_ratio(sparse["dense_over_csr"], 2))
    first = first[["layer", "density", "kept", "dense", "bsr", "csr", "over_bsr", "over_csr", "deploy"]].rename(
        columns={"layer": "layer (out x in)", "density": "block density", "kept": "blocks kept",
                 "dense": "dense (ms)", "bsr": "BSR (ms)", "csr": "CSR (ms)", "over_bsr": "dense / BSR",
                 "over_csr": "dense / CSR", "deploy": "deploy"})
    second = forms.assign(layer=forms["weight_shape"].map(names), mat=_ms(forms["materialised_s"]),
                          fac=_ms(forms["factored_s"]), ratio=_ratio(forms["factored_over_materialised"], 2))
    second = second[["layer", "prototypes", "mat", "fac", "ratio"]].rename(columns={
        "layer": "layer (out x in)", "mat": "ΔW materialised (ms)", "fac": "factored (ms)",
        "ratio": "factored / materialised"})

    def used(column: str) -> str:
        counts = sparse[column].value_counts()
        return ", ".join(f"`{name}`" + ("" if n == len(sparse) else f" ({n} of {len(sparse)} rows)")
                         for name, n in counts.items()) or "none supported"
    unsupported = sorted({k for u in sparse["unsupported"] for k in u})
    text = (
        "# Block-sparse DeiT-S layers: deployment form and SPLoPA training form\n\n"
        + _header(device, batch, False, f"median of {args.block_repeats} interleaved runs", args.warmup) + "\n\n"
        f"Measured on the shapes of DeiT-S's Linear layers ({', '.join(names.values())}), on x of batch {batch} x "
        f"{DEIT_S_TOKENS} = {tokens} tokens, float32, 32 x 32 blocks, {torch.get_num_threads()} threads. "
        "(1) y = x W^T with a seeded random block mask keeping exactly round(density x blocks) blocks: the dense "
        "weight (zeros included, F.linear) against torch's BSR (`W.to_sparse_bsr((32, 32))`) and CSR "
        "(`W.to_sparse_csr()`) layouts, each sparse result checked against the dense one first; per layout the "
        f"fastest of {', '.join(f'`{p}`' for p in SPARSE_PRODUCTS)} is shown (BSR: {used('bsr_product')}; "
        f"CSR: {used('csr_product')}"
        + (f"; unsupported here: {', '.join(unsupported)}" if unsupported else "") + "). "
        "Ratios > 1: faster than dense; deploy: the fastest form for that layer and density. "
        "(2) One training step of a SPLoPA layer (rank-2 prototypes, base frozen, forward + backward of the "
        "outputs' sum, input requiring grad): ΔW = Σ B_i ⊗ C_i R_i materialised once then F.linear (the layer's "
        "form) against the exact factored form that never builds ΔW (`spa.bench.splopa_factored_forward`; "
        "outputs checked equal); ratio > 1: factored is slower.\n\n"
        "## Block-sparse inference\n\n" + _markdown(first) + "\n\n"
        "## SPLoPA training step\n\n" + _markdown(second))
    return table, text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per model (inference)")
    parser.add_argument("--adapter-repeats", type=int, default=20,
                        help="timed passes per model (adapters: a 3 %% target needs tight medians)")
    parser.add_argument("--train-repeats", type=int, default=5, help="timed steps per learner (training)")
    parser.add_argument("--layer-repeats", type=int, default=10, help="timed passes per layer shape (layers)")
    parser.add_argument("--score-batches", type=int, default=3, help="batches scored per criterion (pruning)")
    parser.add_argument("--block-repeats", type=int, default=10,
                        help="timed runs per form (blocks: sparse products, SPLoPA training steps)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--latency-runtimes", default=",".join(RUNTIMES[::-1]),
                        help=f"latency_model: comma-separated, of {RUNTIMES}")
    parser.add_argument("--latency-batch", type=int, default=1, help="latency_model: batch")
    parser.add_argument("--latency-round-to", type=int, nargs="+", default=[1, 16],
                        help="latency_model: kept widths rounded to multiples of each (1 = not rounded)")
    parser.add_argument("--latency-samples", type=int, default=20, help="latency_model: random pruned networks each")
    parser.add_argument("--latency-targets", type=float, nargs="+", default=[0.5, 0.3],
                        help="latency_target: fractions of the dense latency")
    parser.add_argument("--latency-target-batches", type=int, nargs="+", default=[1, 32], help="latency_target")
    parser.add_argument("--latency-target-repeats", type=int, default=10,
                        help="latency_target: timed rounds per measurement, at least")
    parser.add_argument("--latency-tolerance", type=float, default=0.01,
                        help="latency_model, latency_target: measure until the ratio's 95 %% interval is within it")
    parser.add_argument("--latency-max-seconds", type=float, default=10.0,
                        help="latency_model, latency_target: the most seconds one measurement takes")
    parser.add_argument("--density", type=float, default=0.3, help="density of the adapter-overhead models")
    parser.add_argument("--out", default=None, help="default: results/benchmarks")
    parser.add_argument("--no-compile", action="store_true", help="deploy: leave torch.compile out (slow to compile)")
    args = parser.parse_args()
    unknown = [r for r in args.latency_runtimes.split(",") if r not in RUNTIMES]
    if unknown:
        parser.error(f"--latency-runtimes {unknown}: use names of {RUNTIMES}")

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (64 if cuda else 8)
    settings = {"device": str(device), "device_name": device_description(device), "batch": batch,
                "repeats": args.repeats, "adapter_repeats": args.adapter_repeats, "train_repeats": args.train_repeats,
                "layer_repeats": args.layer_repeats, "block_repeats": args.block_repeats,
                "score_batches": args.score_batches,
                "warmup": args.warmup, "threads": torch.get_num_threads(), "amp_bf16": cuda, "channels_last": cuda,
                "authors_library": authors_available(), "versions": package_versions(),
                "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = repo_root() / "results" / "benchmarks" if args.out is None else Path(args.out)
    for section in args.sections:
        table, shown = globals()[section](args, device, batch, cuda)
        stem = out / f"{section}_{device.type}"
        atomic_write_json(stem.with_suffix(".json"), {"settings": settings, "rows": table.to_dict(orient="records")})
        if isinstance(shown, str):         # a section that writes its own report (blocks)
            text = shown + "\n"
        else:
            timing = {"training": f"median of {args.train_repeats} steps", "pruning": "one timed pass",
                      "layers": f"median of {args.layer_repeats} forward + backward passes per shape",
                      "adapters": f"median of {args.adapter_repeats} passes",
                      "tasks": f"median of {args.repeats} calls"}.get(section,
                                                                                 f"median of {args.repeats} passes")
            text = _header(device, batch, cuda, timing, args.warmup) + "\n\n" + _markdown(shown) + "\n"
        atomic_write_text(stem.with_suffix(".md"), text)
        print(text + f"written: {stem.with_suffix('.md')}\n", flush=True)
    write_checks(out, device, settings)
    return 0


def write_checks(out: Path, device: torch.device, settings: dict) -> None:
    """checks_<device>.md: the speed targets against the latest report of every section."""
    sections = {}
    for section in SECTIONS:
        path = out / f"{section}_{device.type}.json"
        if path.is_file():
            sections[section] = json.loads(path.read_text())["rows"]
    rows = checks(sections)
    if not rows:
        return
    table = pd.DataFrame(rows)
    shown = table.assign(measured=table["measured"].map("{:.3f}".format),
                         met=table["met"].map({True: "yes", False: "**no**"}))
    text = (f"{settings['device_name']}; torch {settings['versions'].get('torch')}; "
            f"from the reports in this folder ({', '.join(sections)})\n\n"
            + shown.to_markdown(index=False, disable_numparse=True) + "\n")
    atomic_write_text(out / f"checks_{device.type}.md", text)
    print(text + f"written: {out / f'checks_{device.type}.md'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
