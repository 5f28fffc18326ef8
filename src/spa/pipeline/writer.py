"""The records a finished run leaves: model.pt (fused) and task.pt, then summary.json, written
last because it marks the run finished."""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from spa import repo_root
from spa.adapters import adapter_layers, fuse
from spa.metrics import count_parameters
from spa.models import save_model_file
from spa.pipeline.configs import setting
from spa.pipeline.methods import method_of
from spa.pipeline.parts import Parts
from spa.records import FINGERPRINT, MODEL, TASK, RunSummary, config_hash
from spa.saved import save_task
from spa.utils import device_description, git_state, package_versions

log = logging.getLogger(__name__)


def write_records(parts: Parts, resolved: dict[str, Any], rows: list[dict[str, Any]], selection: dict[str, Any],
                  base_run: str | None, started: datetime, t0: float) -> RunSummary:
    """model.pt (fused) and task.pt, then summary.json, written last: it marks the run finished."""
    cfg, model, rundir, session, device = parts.cfg, parts.model, parts.rundir, parts.session, parts.device
    method = method_of(cfg)
    b, d, data = cfg.backbone, cfg.dataset, parts.data.bundle
    params = count_parameters(model)
    last = rows[-1]
    metrics = {"test_top1": last["top1"], "test_top5": last["top5"], "test_loss": last["test_loss"],
               "val_top1": last["val_top1"], "train_loss": last["train_loss"], "train_top1": last["train_top1"],
               "density": last["density"]}
    files: dict[str, int] = {}
    if cfg.save_model:
        # model.pt: the fused, plain model (reusable as backbone.weights); task.pt: what the task learned
        structure = None if session is None else {"history": session.history, "input_size": list(parts.size),
                                                  "original_filters": session.original_filters}
        deployable = fuse(model) if adapter_layers(model) else model
        save_model_file(deployable, rundir.file(MODEL), timm_name=b.timm_name, cifar_stem=b.cifar_stem,
                        kwargs=OmegaConf.to_container(b.kwargs), classes=data.classes, structure=structure,
                        normalization=parts.data.declared)
        files[MODEL] = rundir.file(MODEL).stat().st_size
        if cfg.adapter.kind != "finetune":
            save_task(model, rundir.file(TASK),
                      adapter={"kind": cfg.adapter.kind, "options": OmegaConf.to_container(cfg.adapter.options)},
                      classes=data.classes, structure=method.task_structure(parts, structure),
                      frozen=list(setting(cfg, "backbone.frozen") or []),
                      base={"timm_name": b.timm_name, "weights": parts.weights.name or parts.weights.source,
                            "sha256": parts.weights.sha256})
            files[TASK] = rundir.file(TASK).stat().st_size
    summary = RunSummary(
        run_dir=str(rundir.path), exp_name=cfg.exp_name, dataset=d.name, backbone=b.name, adapter=cfg.adapter.name,
        pruning=cfg.pruning.name, seed=int(cfg.seed), config_hash=config_hash(resolved), git=git_state(repo_root()),
        versions=package_versions(), device=str(device), device_name=device_description(device),
        data={**data.sizes(), "num_classes": data.num_classes, "majority": round(parts.chance.majority, 4),
              "classes": data.classes, "layout": data.layout, "root": str(Path(d.root).expanduser().resolve()),
              **data.stats, "normalization": parts.data.norm, "fingerprint": resolved[FINGERPRINT]},
        weights=parts.weights.to_dict(), files=files, ranks=parts.ranks,
        params={"total": params.total, "trainable": params.trainable, "deployable": params.deployable,
                **method.summary_params(parts)},
        epochs=method.initial_epochs(cfg), selection=selection["selection"], selected_epoch=selection["selected_epoch"],
        metrics=metrics, pruning_steps=len(rows) - 1,
        wall_time_s=round(time.perf_counter() - t0, 2), started_at=started.isoformat(timespec="seconds"),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), base_run=base_run,
        warnings=parts.warnings)
    rundir.write_summary(summary)
    log.info("finished %s: test top-1 %.2f%%, top-5 %.2f%% at density %.3f in %.0fs", rundir.path,
             metrics["test_top1"], metrics["test_top5"], metrics["density"], summary.wall_time_s)
    return summary
