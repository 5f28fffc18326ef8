"""Runs -> one long pandas frame -> tables (csv/md) and figures. Reads records only."""
from spa.reporting.collect import collect_epochs, collect_runs, collect_steps
from spa.reporting.report import LABELS, experiment_report, summarise

__all__ = ["collect_epochs", "collect_runs", "collect_steps", "LABELS", "experiment_report", "summarise"]
