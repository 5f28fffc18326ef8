"""Accuracy and parameter counting."""
from spa.metrics.accuracy import topk_correct, topk_hits
from spa.metrics.params import ParamCounts, count_parameters

__all__ = ["topk_correct", "topk_hits", "ParamCounts", "count_parameters"]
