"""The only package that reads the Hydra config: it builds the parts, runs the stages and writes
the records. Everything it calls takes plain arguments.

- ``configs``: plain config logic (no torch): defaults of optional keys, the stage configs a run
  derives from its own; ``stages``: the chain of runs a run starts from
- ``checks``: every setting checked before a run directory is written
- ``parts``: the data, model, loaders and pruning session of a run
- ``method`` / ``methods``: what a pruning method is, and the registry; one module per method:
  ``channels`` (the paper's iterative channel pruning, and no pruning), ``blocks``, ``pear``
- ``steps``: what the methods' stages share (initial state, a steps.csv row, the checkpoint)
- ``writer``: model.pt, task.pt and summary.json; ``runner``: :func:`run` and :func:`run_single`

A config may carry a ``base`` section: a pretraining run (full training, no pruning) that is run
first, once, and whose ``model.pt`` becomes this run's ``backbone.weights``.
"""
from spa.pipeline.checks import check_settings
from spa.pipeline.configs import BASE_WEIGHTS, base_config, method_name, setting, unpruned_config
from spa.pipeline.methods import METHODS, method_of
from spa.pipeline.parts import Parts, build_data, use_channels_last
from spa.pipeline.runner import run, run_single, with_weights
from spa.pipeline.stages import initial_epochs, start_chain, start_config

__all__ = ["BASE_WEIGHTS", "METHODS", "Parts", "base_config", "build_data", "check_settings", "initial_epochs",
           "method_name", "method_of", "run", "run_single", "setting", "start_chain", "start_config",
           "unpruned_config", "use_channels_last", "with_weights"]
