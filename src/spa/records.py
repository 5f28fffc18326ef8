"""What one run leaves behind, and the rules that make a sweep trustworthy.

``config.yaml`` (resolved), ``run.log``, ``epochs.jsonl`` and ``summary.json``, written last: its
presence marks the run finished. A finished run with the same config is skipped; a different
config in the same directory is refused unless ``overwrite=true``, except where that run stopped
before its first epoch (a setting that failed early: nothing is lost by replacing it).

"The same run" means the same config (:func:`config_hash`) and the same data: the resolved config
carries ``data_fingerprint`` (``spa.data.fingerprint``), so the same command on other data (another
``dataset.root``) is refused instead of skipped with the other data's numbers.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spa.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

# Keys that say where or how fast a run goes, not what it computes: left out of the config hash.
VOLATILE_KEYS = ("overwrite", "paths", "device", "report", "shard", "cost", "logger", "train.num_workers",
                 "dataset.root", "dataset.download", "base.dataset.root", "base.dataset.download")
# Keys added after runs existed, at the value that computes what those runs computed: left out of
# the hash at that value, so adding a key with its neutral default keeps every finished run valid.
NEUTRAL_DEFAULTS = {"pruning.round_to": 1, "train.compile": False, "dataset.skip_unreadable": None,
                    "adapter.options.rank_limit": "paper", "base.dataset.skip_unreadable": None,
                    "pruning.columns": [], "train.clip_grad_norm": None, "train.head_epochs": 0,
                    "schedule.recovery_lr_scale": 1.0, "schedule.density": "filters", "pruning.scope": "global",
                    "backbone.frozen": [], "backbone.torchvision_weights": None, "dataset.test_split": "test",
                    "base.dataset.test_split": "test", "pruning.normalization": None,
                    "pruning.max_group_pruning": None, "pruning.ignore": [], "schedule.target": "density",
                    "schedule.target_latency": 0.5, "schedule.runtime": None, "schedule.latency_batch": 1}
CONFIG, LOG, EPOCHS, SUMMARY, MODEL, TASK, LOCK = ("config.yaml", "run.log", "epochs.jsonl", "summary.json", "model.pt",
                                                    "task.pt", ".lock")
STEPS, CHECKPOINT, HISTORY, WIDTHS = "steps.csv", "checkpoint.pt", "pruning.json", "widths.csv"
FINGERPRINT = "data_fingerprint"   # top-level key of the resolved config: what data the run saw


def _csv_text(rows: list[dict[str, Any]], fields: list[str]) -> str:
    """``rows`` as CSV text with the header ``fields`` (a record file is written whole, atomically)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """A record CSV's rows, cells back to int / float / None (:func:`_number`); [] where there is no file."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(value: str) -> Any:
    """CSV cell back to int / float / None where it was one."""
    if value == "":
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


class ConfigChangedError(RuntimeError):
    """A run directory holds a run with another config."""


def _drop(cfg: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(leaf, None)


WARMUP = "warmup"   # pruning.structure of a Pear warm-up run: trained, not pruned


def is_unpruned(pruning: Any) -> bool:
    """Whether a ``pruning`` config prunes nothing: ``none``, or a Pear warm-up."""
    return pruning.get("name") == "none" or pruning.get("structure") == WARMUP


def hashable_config(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = json.loads(json.dumps(cfg, default=str))
    for key in VOLATILE_KEYS:
        _drop(cfg, key)
    flat = flatten(cfg)
    for key, neutral in NEUTRAL_DEFAULTS.items():
        if flat.get(key, neutral) == neutral:
            _drop(cfg, key)
    if is_unpruned(cfg.get("pruning", {})):
        cfg.pop("schedule", None)      # the pruning schedule does not touch an unpruned run (nor Pear's warm-up)
    return cfg


def config_hash(cfg: dict[str, Any]) -> str:
    """SHA-256 (16 hex digits) of the resolved config without :data:`VOLATILE_KEYS`."""
    blob = json.dumps(hashable_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for key, value in cfg.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: cfg}


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten(hashable_config(old)), flatten(hashable_config(new))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


@dataclass
class RunSummary:
    """``summary.json``: everything needed to trust and tabulate one run."""
    run_dir: str
    exp_name: str
    dataset: str
    backbone: str
    adapter: str
    pruning: str
    seed: int
    config_hash: str
    git: dict[str, Any]
    versions: dict[str, Any]
    device: str
    device_name: str
    data: dict[str, Any]
    weights: dict[str, Any]
    params: dict[str, int]          # total, trainable (= learned per task), deployable (fused)
    epochs: int
    selection: str
    selected_epoch: int
    metrics: dict[str, float | None]
    wall_time_s: float
    started_at: str
    finished_at: str
    base_run: str | None = None
    pruning_steps: int = 0
    files: dict[str, int] = field(default_factory=dict)   # bytes of model.pt (fused) and task.pt
    warnings: list[str] = field(default_factory=list)
    ranks: dict[str, Any] | None = None   # SPLoRA: asked rank, rank_limit, layers above min(in / groups, out)
    status: str = "finished"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunDir:
    """One run's directory and its records."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.observers: list[Any] = []     # e.g. spa.loggers.TensorBoardLogger: each record also goes to them

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def finished(self) -> bool:
        return self.file(SUMMARY).is_file()

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.file(SUMMARY).read_text())

    def read_config(self) -> dict[str, Any] | None:
        path = self.file(CONFIG)
        return yaml.safe_load(path.read_text()) if path.is_file() else None

    def read_epochs(self) -> list[dict[str, Any]]:
        path = self.file(EPOCHS)
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    @contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the run (a second process waits, then sees the finished run)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.file(LOCK), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def prepare(self, cfg: dict[str, Any], overwrite: bool = False) -> tuple[str, dict[str, Any] | None]:
        """``("done", summary)`` if this exact run is finished; ``("resume", None)`` if it stopped
        after a completed pruning step (``checkpoint.pt``); else ``("fresh", None)`` with the
        directory made ready. Refuses (:class:`ConfigChangedError`) a different stored config
        unless ``overwrite`` or unless the stored run never trained (it failed on a setting)."""
        old = self._with_legacy_fingerprint(self.read_config(), cfg)
        if old is not None and config_hash(old) != config_hash(cfg):
            if not overwrite and not self.trained:
                log.info("%s holds a run with another config that stopped before its first epoch: replacing it (%s)",
                         self.path, "; ".join(config_diff(old, cfg)[:6]))
                self.clear()
            elif not overwrite:
                changes = config_diff(old, cfg)
                other_data = " (the same settings on other data: dataset.root holds other files)" \
                    if all(c.startswith(FINGERPRINT + ".") for c in changes) else ""
                raise ConfigChangedError(
                    f"{self.path} already holds a {'finished' if self.finished else 'started'} run with another "
                    f"config{other_data} ({len(changes)} change(s): {'; '.join(changes[:6])}). Fix: pass "
                    f"overwrite=true to replace it, or exp_name=NEW to keep both.")
            else:
                log.warning("overwrite=true: replacing the run in %s (%s)", self.path,
                            "; ".join(config_diff(old, cfg)[:6]))
                self.clear()
        elif old is not None and self.finished:
            return "done", self.read_summary()
        elif old is not None and self.file(CHECKPOINT).is_file():
            return "resume", None
        elif old is not None:
            log.info("%s holds an unfinished run with this config: starting it again", self.path)
            self.clear()
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.file(CONFIG), yaml.safe_dump(cfg, sort_keys=False))
        return "fresh", None

    @property
    def trained(self) -> bool:
        """Whether the stored run got as far as one epoch (records, a checkpoint or a summary)."""
        epochs = self.file(EPOCHS)
        return self.finished or self.file(CHECKPOINT).is_file() or (epochs.is_file() and epochs.stat().st_size > 0)

    def _with_legacy_fingerprint(self, old: dict[str, Any] | None, cfg: dict[str, Any]) -> dict[str, Any] | None:
        """A config stored before runs recorded their data's fingerprint takes the new one where the
        run's records agree with it (a finished run: the split sizes and class count of its summary;
        an unfinished one records none), and one stored before the fingerprint had all of today's keys
        (``content``: the files' bytes) takes it where every key it has agrees, so that upgrading keeps
        finished runs valid."""
        if old is None or FINGERPRINT not in cfg:
            return old
        fp = cfg[FINGERPRINT]
        if FINGERPRINT in old:     # recorded before some of today's keys (content): matched on the rest
            stored = old[FINGERPRINT]
            if isinstance(stored, dict) and set(stored) < set(fp) and all(fp[k] == v for k, v in stored.items()):
                return {**old, FINGERPRINT: fp}
            return old
        data = self.read_summary().get("data", {}) if self.finished else fp
        if all(data.get(k) == fp.get(k) for k in ("train", "val", "test", "num_classes")):
            return {**old, FINGERPRINT: fp}
        return {**old, FINGERPRINT: {k: data.get(k) for k in ("train", "val", "test", "num_classes")}}

    def clear(self) -> None:
        for child in self.path.iterdir():
            if child.name == LOCK:
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()

    def append_epoch(self, record: Any) -> None:
        row = asdict(record) if not isinstance(record, dict) else record
        with open(self.file(EPOCHS), "a") as handle:
            handle.write(json.dumps(row) + "\n")
        for observer in self.observers:
            observer.epoch(row)

    def keep_epochs_until(self, step: int) -> None:
        """Drop epoch records of steps after ``step`` (a resumed run redoes them)."""
        rows = [r for r in self.read_epochs() if r.get("step", 0) <= step]
        atomic_write_text(self.file(EPOCHS), "".join(json.dumps(r) + "\n" for r in rows))

    def write_steps(self, rows: list[dict[str, Any]]) -> None:
        """``steps.csv``, rewritten whole (atomically) after every step."""
        if not rows:
            return
        fields = list(dict.fromkeys(k for row in rows for k in row))   # rows copied from older runs may lack a column
        atomic_write_text(self.file(STEPS), _csv_text(rows, fields))
        for observer in self.observers:
            observer.steps(rows)

    def write_widths(self, step: int, density: float, widths: list[dict[str, Any]]) -> None:
        """``widths.csv`` (``spa.pruning.widths``): the rows of steps before ``step`` as they are, then
        ``step``'s, one per unit, rewritten whole (atomically) like steps.csv. A resumed run redoes the
        steps after its checkpoint, and so replaces any rows a killed step left."""
        from spa.pruning.widths import COLUMNS
        rows = [r for r in self.read_widths() if int(r["step"]) < step]
        rows += [{"step": step, "density": density, **w} for w in widths]
        atomic_write_text(self.file(WIDTHS), _csv_text(rows, COLUMNS))

    def read_widths(self) -> list[dict[str, Any]]:
        return _read_csv(self.file(WIDTHS))

    def read_steps(self) -> list[dict[str, Any]]:
        return _read_csv(self.file(STEPS))

    def write_summary(self, summary: RunSummary) -> None:
        atomic_write_json(self.file(SUMMARY), summary.to_dict())

    @contextmanager
    def logging_to_file(self) -> Iterator[None]:
        """Mirror the root logger into ``run.log`` for the duration of the run."""
        handler = logging.FileHandler(self.file(LOG), mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        try:
            yield
        finally:
            root.removeHandler(handler)
            handler.close()
