"""The speed targets, checked on the rows of the benchmark sections at hand."""
from __future__ import annotations

from typing import Any

from spa.bench.deployment import DEPLOY_TARGET
from spa.bench.nets import INFERENCE_TARGETS
from spa.bench.training import layer_totals


def checks(sections: dict[str, list[dict[str, Any]]], density: float = 0.3) -> list[dict[str, Any]]:
    """The speed targets, evaluated on the rows of the sections at hand ({section: rows}):
    one row per check with the measured value, the target and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(check: str, value: float, target: str, met: bool) -> None:
        out.append({"check": check, "measured": value, "target": target, "met": bool(met)})
    for row in sections.get("inference", []):
        if row["network"] in INFERENCE_TARGETS and row["variant"] == "pruned (channels removed)" \
                and abs(row["density"] - density) < 0.02:
            add(f"{row['network']} at {row['density']:.0%}: latency ratio / MACs ratio",
                row["latency_over_macs_ratio"], "<= 1.3", row["latency_over_macs_ratio"] <= 1.3)
    for row in sections.get("adapters", []):
        if row["adapter"].startswith("splora") and row["variant"] != "plain pruned model (baseline)":
            add(f"{row['network']}, {row['adapter']} {row['variant']}: latency / plain pruned model",
                row["ratio_to_plain"], "<= 1.03", row["ratio_to_plain"] <= 1.03)
    rows = sections.get("training", [])
    for row in rows:
        if row["implementation"] != "spa" or not row["learner"].startswith("splora"):
            continue
        finetune = next(r for r in rows if r["network"] == row["network"] and r["learner"] == "finetune")
        add(f"{row['network']}, {row['learner']}: step time / fine-tuning step", row["ratio_to_finetune"], "<= 1.0",
            row["ratio_to_finetune"] <= 1.0)
        add(f"{row['network']}, {row['learner']}: optimiser state / fine-tuning's",
            row["optimizer_state_bytes"] / finetune["optimizer_state_bytes"], "< 1",
            row["optimizer_state_bytes"] < finetune["optimizer_state_bytes"])
    for row in layer_totals(sections.get("layers", [])):
        add(f"{row['network']}, {row['adapter']}: our adapted layers' time / the authors' on the same shapes",
            row["ours_over_authors"], "<= 1.0", row["ours_over_authors"] <= 1.0)
    deployed = [r for r in sections.get("deploy", []) if abs(r["density"] - density) < 0.02]
    for network in dict.fromkeys(r["network"] for r in deployed):
        best = min((r for r in deployed if r["network"] == network), key=lambda r: r["latency_s"])
        add(f"{network} at {best['density']:.0%}: best runtime ({best['runtime']}) latency ratio / MACs ratio",
            best["latency_over_macs_ratio"], f"<= {DEPLOY_TARGET}", best["latency_over_macs_ratio"] <= DEPLOY_TARGET)
    for row in sections.get("tasks", []):
        if row["measurement"] == "time" and row["what"] == "switch a task":
            add(f"{row['network']}: task switch time / loading a full model file", row["ratio"], "< 1",
                row["ratio"] < 1)
            add(f"{row['network']}: outputs after switching A -> B -> A equal a fresh load of A (1 = yes)",
                float(row["exact_after_switching"]), "= 1", row["exact_after_switching"])
    return out
