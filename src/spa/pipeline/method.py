"""What a pruning method is to the pipeline: one :class:`Method` object per module
(``channels``, ``blocks``, ``pear``), registered in :mod:`spa.pipeline.methods`. A new method is one
more module and one registry line; the stage chain, the checks and the records writer ask the
method, never its name."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from spa.pipeline.configs import training_epochs

if TYPE_CHECKING:
    from spa.pipeline.parts import Parts

Rows = list[dict[str, Any]]


def _nothing(*args: Any) -> None:
    return None


def _no_extras(parts: Parts) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Method:
    """``name``: what ``pruning.structure`` maps to. ``check(cfg)``: the method's settings, before any
    file is written (raises SettingError). ``start_config(cfg)``: the run this one starts from, or
    None. ``initial_epochs(cfg)``: the epochs of the initial training. ``channel_session(cfg)``:
    whether the run prunes channels (gets a PruningSession). ``ignored(cfg)``: the ``pruning.ignore``
    layers the adapter check must know of (None: not read). ``run(parts, status, initial_run)``: from
    the starting weights to the final model; returns the steps.csv rows and the last selection.
    ``task_structure(parts, channels)``: what task.pt records to rebuild the task (``channels``: the
    channel structure model.pt records). ``summary_params(parts)``: extra parameter counts for
    summary.json."""
    name: str
    run: Callable[[Parts, str, str | None], tuple[Rows, dict[str, Any]]]
    check: Callable[[DictConfig], None] = _nothing
    start_config: Callable[[DictConfig], DictConfig | None] = _nothing
    initial_epochs: Callable[[DictConfig], int] = training_epochs
    channel_session: Callable[[DictConfig], bool] = lambda cfg: False
    ignored: Callable[[DictConfig], list[str] | None] = _nothing
    task_structure: Callable[[Parts, dict[str, Any] | None], dict[str, Any] | None] = lambda parts, channels: channels
    summary_params: Callable[[Parts], dict[str, Any]] = _no_extras
