"""Speed benchmarks: python scripts/bench.py [--sections inference adapters] [--device auto]

Writes results/benchmarks/<section>_<device kind>.{json,md}: the device, versions and settings,
medians over --repeats runs after --warmup, and every figure also as a ratio to a baseline measured
in the same run.
  inference  ResNet-50 (224 px; CIFAR stem at 32 px) at densities 100/70/50/30/10 % as
             our pruning leaves them: latency, throughput, MACs, the latency ratio next to the MACs
             ratio (the ideal), and the masked-only network (what the paper's code ran).
  adapters   SPLoRA-r8/r32 and SPPaRA models in eval mode vs the plain pruned model of the same shape.
CPU defaults: batch 8, the machine's torch threads; on CUDA: batch 64, bf16 autocast, channels-last.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

import pandas as pd
import torch

from spa import repo_root
from spa.benchmarks import NETS, adapter_overhead, inference_vs_density
from spa.utils import atomic_write_json, atomic_write_text, device_description, package_versions, resolve_device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="*", default=["inference", "adapters"], choices=["inference", "adapters"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--density", type=float, default=0.3, help="density of the adapter-overhead models")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (64 if cuda else 8)
    settings = {"device": str(device), "device_name": device_description(device), "batch": batch,
                "repeats": args.repeats, "warmup": args.warmup, "threads": torch.get_num_threads(),
                "amp_bf16": cuda, "channels_last": cuda, "versions": package_versions(),
                "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = repo_root() / "results" / "benchmarks"
    for section in args.sections:
        if section == "inference":
            rows = [r for spec in NETS for r in inference_vs_density(spec, batch, device, args.repeats, args.warmup,
                                                                     amp=cuda, channels_last=cuda)]
            table = pd.DataFrame(rows)
            shown = table.assign(density=table["density"].map("{:.0%}".format),
                                 latency_ms=(1e3 * table["latency_s"]).map("{:.1f}".format),
                                 throughput_img_s=table["throughput_img_s"].map("{:.1f}".format),
                                 gmacs=(table["macs"] / 1e9).map("{:.3f}".format),
                                 macs_ratio=table["macs_ratio"].map("{:.3f}".format),
                                 latency_ratio=table["latency_ratio"].map("{:.3f}".format),
                                 latency_over_macs_ratio=table["latency_over_macs_ratio"].map("{:.2f}".format))
            shown = shown[["network", "variant", "density", "gmacs", "latency_ms", "throughput_img_s", "macs_ratio",
                           "latency_ratio", "latency_over_macs_ratio"]].rename(columns={
                "gmacs": "GMACs / image", "latency_ms": f"latency (ms, batch {batch})",
                "throughput_img_s": "images / s", "macs_ratio": "MACs ratio (ideal)",
                "latency_ratio": "latency ratio", "latency_over_macs_ratio": "latency ratio / MACs ratio"})
        else:
            table = pd.DataFrame(adapter_overhead(NETS[0], args.density, batch, device, args.repeats, args.warmup))
            shown = table.assign(density=table["density"].map("{:.0%}".format),
                                 latency_ms=(1e3 * table["latency_s"]).map("{:.1f}".format),
                                 ratio_to_plain=table["ratio_to_plain"].map("{:.3f}".format))
            shown = shown[["network", "adapter", "density", "variant", "latency_ms", "ratio_to_plain"]].rename(
                columns={"latency_ms": f"latency (ms, batch {batch})", "ratio_to_plain": "ratio to plain"})
        stem = out / f"{section}_{device.type}"
        atomic_write_json(stem.with_suffix(".json"), {"settings": settings, "rows": table.to_dict(orient="records")})
        header = (f"{settings['device_name']}; batch {batch}; {settings['threads']} threads; median of "
                  f"{args.repeats} after {args.warmup} warm-up; torch {settings['versions'].get('torch')}\n\n")
        atomic_write_text(stem.with_suffix(".md"), header + shown.to_markdown(index=False, disable_numparse=True) + "\n")
        print(header + shown.to_markdown(index=False, disable_numparse=True))
        print(f"written: {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
