"""Distillation for fine-tuning a compressed model with its dense original as the teacher.

The loss itself lives in :mod:`plmkit.losses.distillation` (shared by every method); this module keeps
the compress family's original signature, where ``alpha`` in [0, 1] mixes the two terms:

    loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + hidden_weight * L_hidden
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from plmkit.losses.distillation import DistillationLoss, hidden_state_loss, logits_and_hidden

__all__ = ["distillation_loss", "hidden_state_loss", "logits_and_hidden"]


def distillation_loss(teacher: nn.Module, alpha: float = 0.5, temperature: float = 2.0,
                      hidden_weight: float = 0.0) -> Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """A trainer ``loss_fn(model, batch) -> total`` mixing the task loss with the frozen teacher's outputs."""
    loss = DistillationLoss.mixed(teacher, alpha, temperature=temperature, hidden_weight=hidden_weight)

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss(model, batch)["loss"]

    return loss_fn
