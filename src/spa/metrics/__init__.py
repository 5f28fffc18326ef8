"""Accuracy and parameter counting."""
from spa.metrics.accuracy import topk_correct
from spa.metrics.params import ParamCounts, count_parameters

__all__ = ["topk_correct", "ParamCounts", "count_parameters"]
