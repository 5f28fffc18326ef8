"""Training engine: optimisers and LR schedules, one epoch of training, evaluation, ``fit``."""
from spa.training.engine import (
                                 EpochRecord,
                                 FitResult,
                                 apply_channels_last,
                                 autocast_context,
                                 check_compile,
                                 compiled,
                                 evaluate,
                                 fit,
                                 train_one_epoch,
)
from spa.training.schedulers import SCHEDULERS, build_scheduler

__all__ = ["EpochRecord", "FitResult", "apply_channels_last", "autocast_context", "check_compile", "compiled",
           "evaluate", "fit", "train_one_epoch", "SCHEDULERS", "build_scheduler"]
