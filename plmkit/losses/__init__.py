"""Losses: one file per loss, one contract shared by every method and the trainer.

A loss is a callable ``loss(model, batch)`` that returns either

- a scalar tensor (the total to minimise), or
- a dict of named scalar terms whose ``"loss"`` entry is the total to minimise; the other entries
  (e.g. ``"task"``, ``"soft"``, ``"hidden"``) are what the total is made of. They are logged, never
  differentiated, by the trainer.

The trainer backpropagates ``loss`` only and logs running means of every term to ``train_log.jsonl``
and the progress bar. :func:`total_and_terms` is the one place that reads either form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from plmkit.errors import PlmkitError
from plmkit.losses.distillation import (
    DistillationLoss,
    MultiTeacherDistillationLoss,
    Teacher,
    hidden_state_loss,
    soft_target_loss,
    uniform_layer_pairs,
)
from plmkit.losses.task import classification_loss, loss_from_logits

LossOutput = "torch.Tensor | dict[str, torch.Tensor]"
Loss = Callable[[torch.nn.Module, Any], Any]

__all__ = ["DistillationLoss", "Loss", "LossContractError", "MultiTeacherDistillationLoss", "Teacher",
           "classification_loss", "hidden_state_loss", "loss_from_logits", "soft_target_loss", "total_and_terms",
           "uniform_layer_pairs"]


class LossContractError(PlmkitError, TypeError):
    """A loss returned something other than a tensor or a dict with a ``"loss"`` entry."""


def total_and_terms(output: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total, named terms) of a loss output; a bare tensor is one term named ``"loss"``."""
    if isinstance(output, torch.Tensor):
        return output, {"loss": output}
    if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
        return output["loss"], dict(output)
    raise LossContractError(
        f"a loss must return a tensor or a dict of tensors with a 'loss' entry (the total), got "
        f"{type(output).__name__}{sorted(output) if isinstance(output, dict) else ''}"
    )
