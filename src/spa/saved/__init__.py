"""Saved networks read back: a backbone from any weights (a pruned ``model.pt`` included), per-task
files on a shared base, and a bank that serves many tasks from one base. This package sits above
models, adapters and pruning: rebuilding a saved network needs all three."""
from spa.saved.bank import TaskBank
from spa.saved.restore import load_backbone, restore
from spa.saved.tasks import load_task, read_task, save_task, switch_task, task_state

__all__ = ["TaskBank", "load_backbone", "load_task", "read_task", "restore", "save_task", "switch_task", "task_state"]
