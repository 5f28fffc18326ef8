"""Training curves where people look for them (``logger=``): observers of a run's records. A run
directory hands every epoch record (``epochs.jsonl``) and every ``steps.csv`` write to its observers;
``logger=tensorboard`` turns them into TensorBoard scalars, offline. ``none`` (the default) observes
nothing; the records themselves are always written."""
from __future__ import annotations

from pathlib import Path
from typing import Any

LOGGERS = ("none", "tensorboard")
EPOCH_SCALARS = ("train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "val_top1", "lr")
STEP_SCALARS = ("density", "weight_density", "top1", "top1_before", "params_learned", "params_deployable", "macs")


class TensorBoardLogger:
    """Scalars ``<phase>/<key>`` per epoch record, against the run's epoch count (every phase in turn:
    head, train, recover ... so the curves line up), and ``pruning/<key>`` per step row, against the step."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:     # tensorboard is a dependency; a stripped environment may lack it
            raise ImportError("logger=tensorboard needs the tensorboard package: pip install tensorboard, or "
                              "logger=none") from err
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))
        self.epochs = 0
        self.logged_steps: set[int] = set()

    def epoch(self, record: dict[str, Any]) -> None:
        self.epochs += 1
        for key in EPOCH_SCALARS:
            value = record.get(key)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"{record.get('phase', 'train')}/{key}", value, self.epochs)
        self.writer.flush()

    def steps(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            step = int(row["step"])
            if step in self.logged_steps:
                continue
            self.logged_steps.add(step)
            for key in STEP_SCALARS:
                value = row.get(key)
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"pruning/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def make_logger(settings: dict[str, Any] | None, run_path: Path, runs_dir: Path) -> TensorBoardLogger | None:
    """The observer ``logger`` asks for (None for ``none``); ``dir`` null writes into the run's folder."""
    name = (settings or {}).get("name", "none")
    if name not in LOGGERS:
        raise ValueError(f"logger={name!r} is unknown; use one of {', '.join(LOGGERS)}")
    if name == "none":
        return None
    root = (settings or {}).get("dir")
    if root is None:
        return TensorBoardLogger(run_path / "tensorboard")
    try:
        relative = run_path.resolve().relative_to(runs_dir.resolve())
    except ValueError:
        relative = Path(run_path.name)
    return TensorBoardLogger(Path(root).expanduser() / relative)
