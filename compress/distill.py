"""Distillation loss for fine-tuning a compressed model with its dense original as the teacher.

loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
The T^2 factor keeps the gradient scale of the soft term independent of T (Hinton et al., 2015).
Regression heads (one output) use the mean squared error to the teacher's output instead of KL.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


def distillation_loss(teacher: nn.Module, alpha: float = 0.5,
                      temperature: float = 2.0) -> Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """A trainer ``loss_fn(model, batch)`` mixing the task loss with the frozen teacher's outputs."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation weight must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    teacher.eval().requires_grad_(False)

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(**batch).float()
        with torch.no_grad():
            target = teacher(**batch).float()
        hard = classification_loss_from_logits(logits, batch["labels"])
        if logits.shape[-1] == 1:
            soft = F.mse_loss(logits, target)
        else:
            soft = F.kl_div(F.log_softmax(logits / temperature, -1), F.softmax(target / temperature, -1),
                            reduction="batchmean") * temperature**2
        return (1.0 - alpha) * hard + alpha * soft

    return loss_fn


def classification_loss_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, or MSE for one output: ``plmkit.textclf.classification_loss`` on computed logits."""
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)

