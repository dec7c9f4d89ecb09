"""The task loss on a sequence classifier's logits.

Classification (``num_labels`` > 1 outputs): mean cross-entropy ``-log softmax(z)_y``.
Regression (one output): mean squared error ``(z - y)^2``, the GLUE convention for STS-B.
Logits are cast to float32 first, so bf16 models get a float32 loss.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def loss_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The task loss on computed outputs (for losses that also need the logits for something else)."""
    logits = logits.float()
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy, or mean squared error when the model has one output (regression)."""
    return loss_from_logits(model(**batch), batch["labels"])
