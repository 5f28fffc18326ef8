"""Checks of a run's settings, made before its directory is written: a value that cannot work stops
the run with one line naming the key, what it got and what it accepts (``seed=abc`` ->
``seed='abc': use an int >= 0, e.g. seed=1``), instead of a traceback mid-run or a run directory
that the corrected command would then refuse. Takes the resolved config as a plain dict.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
import torch
from hydra.utils import instantiate

from spa.adapters import apply_adapter
from spa.adapters.convert import freeze
from spa.data.sources import TEST_SPLITS
from spa.models import apply_cifar_stem
from spa.pruning.importance import NORMALIZATIONS
from spa.records import flatten
from spa.utils import resolve_device

log = logging.getLogger(__name__)


class SettingError(ValueError):
    """A config value that cannot work; the message names the key and what it accepts."""


@dataclass(frozen=True)
class Rule:
    accepts: str                          # what the user reads: "an int >= 0"
    test: Callable[[Any], bool]
    example: str


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def int_at_least(low: int, example: int, optional: bool = False) -> Rule:
    what = f"an int >= {low}" + (" or null" if optional else "")
    return Rule(what, lambda v: (optional and v is None) or (_int(v) and v >= low), str(example))


def number_in(low: float, high: float, example: float, low_open: bool = True, high_open: bool = True) -> Rule:
    brackets = ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")

    def test(v: Any) -> bool:
        return _number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return Rule(f"a number in {brackets}", test, str(example))


def choice(*values: Any) -> Rule:
    return Rule("one of " + ", ".join(str(v) for v in values), lambda v: v in values, str(values[0]))


BOOL = Rule("true or false", lambda v: isinstance(v, bool), "true")
POSITIVE = Rule("a number > 0", lambda v: _number(v) and v > 0, "0.2")
RANK = Rule("an int >= 1, or a fraction in (0, 1) of each layer's outputs",
            lambda v: (_int(v) and v >= 1) or (isinstance(v, float) and (0 < v < 1 or v.is_integer() and v >= 1)), "8")

# Keys every run reads, with what they accept. Choices that code owns (schedulers, criteria,
# transform styles, ...) are checked where they live, by the functions the pipeline calls.
RULES: dict[str, Rule] = {
    "seed": int_at_least(0, 1),
    "save_model": BOOL,
    "overwrite": BOOL,
    # zero epochs would leave the run nothing to evaluate and select (it once ended in a bare StopIteration)
    "train.epochs": Rule("an int >= 1 (a run evaluates and selects among its trained epochs)",
                         lambda v: _int(v) and v >= 1, "1"),
    "train.batch_size": int_at_least(1, 64),
    "train.eval_batch_size": int_at_least(1, 256),
    "train.gamma": POSITIVE,
    "train.eval_every": int_at_least(1, 1),
    "train.amp": BOOL,
    "train.deterministic": BOOL,
    "train.max_steps_per_epoch": int_at_least(1, 10, optional=True),
    "train.num_workers": Rule("auto or an int >= 0", lambda v: v == "auto" or (_int(v) and v >= 0), "auto"),
    "train.select": choice("last", "best_val"),
    "train.head_epochs": int_at_least(0, 10),
    "train.clip_grad_norm": Rule("a number > 0 or null", lambda v: v is None or (_number(v) and v > 0), "1.0"),
    "dataset.image_size": int_at_least(8, 32),
    "dataset.download": BOOL,
    "dataset.train_fraction": number_in(0, 1, 0.5, high_open=False),
    "dataset.val_fraction": number_in(0, 1, 0.1, low_open=False),
    "dataset.max_per_class": int_at_least(1, 100, optional=True),
    "dataset.test_max_per_class": int_at_least(1, 100, optional=True),
    "dataset.split_seed": int_at_least(0, 0),
    "dataset.test_split": choice(*TEST_SPLITS),
    "backbone.cifar_stem": BOOL,
    "backbone.allow_random": BOOL,
    "adapter.prunable": BOOL,
    "adapter.options.rank": RANK,
    "adapter.options.init_range": Rule("a number >= 0", lambda v: _number(v) and v >= 0, "1e-4"),
    "adapter.options.train_norm": BOOL,
    "adapter.options.num_prototypes": int_at_least(1, 64),
    "adapter.options.prototype_rank": int_at_least(1, 2),
    "adapter.options.shared": BOOL,
}
# Read by pruned runs only (an unpruned run ignores the schedule).
PRUNING_RULES: dict[str, Rule] = {
    "schedule.step_fraction": number_in(0, 1, 0.05),
    "schedule.target_density": number_in(0, 1, 0.05),
    "schedule.recovery_epochs": Rule("an int >= 1 (each step's accuracy right after pruning, before any recovery, "
                                     "is already steps.csv's top1_before)", lambda v: _int(v) and v >= 1, "1"),
    "schedule.score_batches": int_at_least(1, 10, optional=True),
    "schedule.reuse_unpruned": BOOL,
    "schedule.density": choice("filters", "weights"),
    "schedule.target": choice("density", "latency"),
    "schedule.target_latency": number_in(0, 1, 0.5),
    "schedule.runtime": Rule("null, torch or onnxruntime", lambda v: v in (None, "torch", "onnxruntime"),
                             "onnxruntime"),
    "schedule.latency_batch": int_at_least(1, 1),
    "schedule.recovery_lr_scale": POSITIVE,
    "pruning.group_reduction": choice("mean", "sum", "max"),
    "pruning.max_group_pruning": Rule("null (a layer keeps at least one channel) or a number in (0, 1)",
                                      lambda v: v is None or (_number(v) and 0 < v < 1), "0.9"),
    "pruning.normalization": Rule(f"null (the criterion's own) or one of {', '.join(NORMALIZATIONS)}",
                                  lambda v: v is None or v in NORMALIZATIONS, "mean"),
    # block pruning (its stages; the ordered targets, the warm-ups' sum and the block are checked by
    # spa.pipeline.blocks.check_block_pruning)
    "pruning.epochs_per_stage": int_at_least(1, 2),
    "pruning.initial_warmup": number_in(0, 1, 0.1, low_open=False),
    "pruning.final_warmup": number_in(0, 1, 0.2, low_open=False),
    # soft movement: Adam's lr on the block scores, and the L1 penalty's lambda on sigmoid(scores)
    "pruning.score_lr": Rule("null (the paper's 1e-2, raised for short stages) or a number > 0",
                             lambda v: v is None or (_number(v) and v > 0), "null"),
    "pruning.l1": Rule("a number >= 0", lambda v: _number(v) and v >= 0, "1.0"),
}


def check_values(cfg: dict[str, Any]) -> None:
    """Every key of :data:`RULES` (and, for a pruned run, :data:`PRUNING_RULES`) that ``cfg`` holds
    has a value its rule accepts; else :class:`SettingError` naming the key."""
    flat = flatten(cfg)
    rules = dict(RULES)
    if (cfg.get("pruning") or {}).get("name", "none") != "none":
        rules.update(PRUNING_RULES)
    for key, rule in rules.items():
        if key in flat and not rule.test(flat[key]):
            raise SettingError(f"{key}={flat[key]!r}: use {rule.accepts}, e.g. {key}={rule.example}")
    train = cfg.get("train") or {}
    if train.get("select") == "best_val" and not (cfg.get("dataset") or {}).get("val_fraction"):
        raise SettingError("train.select=best_val needs a validation split: set dataset.val_fraction > 0 "
                           "(e.g. dataset.val_fraction=0.1)")
    for name, epochs in (train.get("epochs_by_adapter") or {}).items():
        if not (_int(epochs) and epochs >= 1):
            raise SettingError(f"train.epochs_by_adapter.{name}={epochs!r}: use an int >= 1, "
                               f"e.g. train.epochs_by_adapter.{name}=1")


def checked(key: str, check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``check(*args, **kwargs)``, its ValueError / TypeError turned into a :class:`SettingError` that names ``key``
    (a message that already names the key is kept as it is)."""
    try:
        return check(*args, **kwargs)
    except SettingError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        message = str(err).strip("'\"")
        raise SettingError(message if key.split(".")[0] in message else f"{key}: {message}") from err


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SettingError(f"{key}={value!r} is unknown; use one of {', '.join(allowed)}")


def check_device(name: str) -> None:
    """``device`` names a device this machine has (``gpu_slot`` is claimed when the run starts)."""
    if name not in ("auto", "gpu_slot"):
        try:
            resolve_device(name)
        except RuntimeError as err:
            raise SettingError(str(err)) from err


def check_optimizer(optim: dict[str, Any]) -> None:
    """The optimiser config builds an optimiser (on a dummy parameter: a negative lr fails here)."""
    instantiate(optim)([torch.zeros(1, requires_grad=True)])


def check_ignore_globs(model: torch.nn.Module, ignore: list[str]) -> None:
    """Every glob of ``pruning.ignore`` matches a conv or Linear layer of ``model`` (those hold the channels
    pruning removes; that a matched layer is prunable is checked again on the real model), else an error
    listing the candidates, before a run directory exists."""
    import fnmatch
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    unmatched = [g for g in ignore if not any(fnmatch.fnmatch(n, g) for n in names)]
    if unmatched:
        raise SettingError(f"pruning.ignore={unmatched} matches no conv or Linear layer of the backbone; its "
                           f"layers are {names[:12]}{' ...' if len(names) > 12 else ''} (globs: e.g. 'conv_head', "
                           f"'blocks.0.*')")


def check_adapter_options(timm_name: str, kwargs: dict[str, Any], cifar_stem: bool, kind: str,
                          options: dict[str, Any], frozen: list[str] | None = None,
                          ignore: list[str] | None = None) -> None:
    """The adapter kind and its options, applied to the backbone built on the meta device (no weights,
    no memory): unknown options, a rank no layer can use, layers the adapter cannot stand in for; the
    modules ``backbone.frozen`` names exist; every ``pruning.ignore`` glob (``ignore``) matches a layer."""
    if not timm.is_model(timm_name):
        raise SettingError(f"backbone.timm_name={timm_name!r} is not a timm model; see timm.list_models()")
    try:
        with torch.device("meta"):
            model = timm.create_model(timm_name, pretrained=False, num_classes=2, **kwargs)
            if cifar_stem:
                apply_cifar_stem(model)
    except TypeError as err:
        raise SettingError(f"backbone.kwargs={kwargs}: {err}") from err
    except (RuntimeError, NotImplementedError) as err:   # an op the meta device lacks: the real build checks again
        log.info("adapter options not checked before the run: %s cannot be built on the meta device (%s: %s); "
                 "the run's own build checks them", timm_name, type(err).__name__, err)
        return
    if ignore:
        check_ignore_globs(model, ignore)
    adapters_log = logging.getLogger("spa.adapters")
    level = adapters_log.level
    adapters_log.setLevel(logging.ERROR)        # the real conversion logs what it does
    try:
        with torch.device("meta"):
            checked("adapter.options", apply_adapter, model, kind, **options)
    finally:
        adapters_log.setLevel(level)
    checked("backbone.frozen", freeze, model, frozen or [])
