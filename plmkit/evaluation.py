"""Evaluators: ``evaluator(model) -> dict[str, float]`` with a declared primary metric.

An evaluator is any callable taking the model and returning named scores. It may declare

- ``primary_metric``: the key the trainer selects the best checkpoint and early-stops on when the
  trainer's ``metric`` setting is None, and
- ``greater_is_better``: whether a larger ``primary_metric`` is better.

A plain function without these attributes still works: the trainer then selects on its first key,
larger being better (the trainer's ``greater_is_better`` setting). :func:`selection` is the one place
that resolves which key and direction a run selects on, so no caller needs to edit a config for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from torch import nn

from plmkit.errors import ConfigError
from plmkit.metrics import greater_is_better as _greater_is_better

EVAL_SPLITS = ("train", "validation", "test")


@runtime_checkable
class Evaluator(Protocol):
    """The evaluator contract; see the module docstring."""

    primary_metric: str
    greater_is_better: bool

    def __call__(self, model: nn.Module) -> dict[str, float]: ...


class TaskEvaluator:
    """Scores a labelled task split (a :class:`plmkit.textclf.TaskData`) with :mod:`plmkit.metrics`."""

    def __init__(self, data: Any, split: str = "validation", batch_size: int = 64) -> None:
        if split not in EVAL_SPLITS:
            raise ConfigError(f"evaluation split must be one of {EVAL_SPLITS}, got {split!r}")
        if batch_size < 1:
            raise ConfigError(f"evaluation batch size must be >= 1, got {batch_size}")
        self.data = data
        self.split = split
        self.batch_size = batch_size
        self.primary_metric: str = data.task.metric
        self.greater_is_better: bool = _greater_is_better(self.primary_metric)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return self.data.evaluate(model, self.split, batch_size=self.batch_size)

    def __repr__(self) -> str:
        return f"TaskEvaluator({self.data.task.name!r}, split={self.split!r}, primary={self.primary_metric!r})"


def selection(evaluator: Callable[[nn.Module], dict[str, float]] | None, metric: str | None,
              greater_is_better: bool, first_key: str | None = None) -> tuple[str | None, bool]:
    """(key, greater_is_better) a run selects on: an explicit ``metric`` wins, then the evaluator's
    declared primary metric, then ``first_key`` of its results."""
    if metric is not None:
        return metric, greater_is_better
    primary = getattr(evaluator, "primary_metric", None)
    if primary is not None:
        return primary, bool(getattr(evaluator, "greater_is_better", _greater_is_better(primary)))
    return first_key, greater_is_better
