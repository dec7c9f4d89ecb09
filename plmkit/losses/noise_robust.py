"""Noise-robust classification losses for labels that are sometimes wrong (e.g. synthetic data sets).

With logits ``z``, ``p = softmax(z)`` and the given label ``y`` (one-hot ``q``):

- cross-entropy ``CE = -log p_y`` grows without bound on a confidently "wrong" label, so a few noisy
  labels dominate the gradient;
- reverse cross-entropy swaps the roles of ``p`` and ``q``: ``RCE = -sum_k p_k log q_k``. With
  ``log 0`` clamped to ``A < 0`` this is ``RCE = -A (1 - p_y)``, bounded by ``-A``;
- symmetric cross-entropy ``SCE = alpha CE + beta RCE`` keeps CE's fast fitting and RCE's robustness;
- generalised cross-entropy ``GCE = (1 - p_y^q) / q`` for ``q`` in (0, 1]: ``q -> 0`` gives CE,
  ``q = 1`` gives the mean absolute error ``1 - p_y``.

Every loss follows :mod:`plmkit.losses`: ``loss(model, batch)`` returns named terms whose ``"loss"``
is the mean over the batch. Logits are cast to float32 first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from plmkit.errors import ConfigError

NOISE_ROBUST_LOSSES = ("ce", "rce", "sce", "gce")


def _label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(batch, classes), (batch,) -> (batch,) probability of the given label."""
    return torch.softmax(logits.float(), dim=-1).gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def reverse_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, log_zero: float = -4.0) -> torch.Tensor:
    """Mean ``-log_zero * (1 - p_y)``: the reverse cross-entropy with ``log 0`` clamped to ``log_zero``."""
    return (-log_zero * (1.0 - _label_probability(logits, labels))).mean()


def generalized_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Mean ``(1 - p_y^q) / q``."""
    return ((1.0 - _label_probability(logits, labels).clamp_min(1e-12) ** q) / q).mean()


@dataclass
class NoiseRobustLoss:
    """A classification loss robust to label noise, usable as ``train_classifier(..., loss=...)``."""

    kind: str = "sce"
    """'ce' (plain cross-entropy), 'rce' (reverse), 'sce' (symmetric: alpha CE + beta RCE) or 'gce'."""
    alpha: float = 0.1
    """Weight of cross-entropy in 'sce'."""
    beta: float = 1.0
    """Weight of reverse cross-entropy in 'sce'."""
    log_zero: float = -4.0
    """The value log 0 is clamped to in the reverse cross-entropy (negative)."""
    q: float = 0.7
    """Exponent of 'gce' in (0, 1]."""

    def __post_init__(self) -> None:
        if self.kind not in NOISE_ROBUST_LOSSES:
            raise ConfigError(f"loss must be one of {NOISE_ROBUST_LOSSES}, got {self.kind!r}")
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta == 0:
            raise ConfigError(f"sce weights must be >= 0 and not both 0, got alpha={self.alpha}, beta={self.beta}")
        if not self.log_zero < 0:
            raise ConfigError(f"log_zero must be negative (it stands for log 0), got {self.log_zero}")
        if not 0 < self.q <= 1:
            raise ConfigError(f"q must be in (0, 1], got {self.q}")

    def from_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named terms of the loss on computed logits; ``"loss"`` is the total."""
        if logits.shape[-1] < 2:
            raise ConfigError("noise-robust losses are for classification (>= 2 classes); "
                              "use the default loss for regression")
        if self.kind == "ce":
            return {"loss": F.cross_entropy(logits.float(), labels.long())}
        if self.kind == "gce":
            return {"loss": generalized_cross_entropy(logits, labels, self.q)}
        rce = reverse_cross_entropy(logits, labels, self.log_zero)
        if self.kind == "rce":
            return {"loss": rce}
        ce = F.cross_entropy(logits.float(), labels.long())
        return {"loss": self.alpha * ce + self.beta * rce, "ce": ce.detach(), "rce": rce.detach()}

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.from_logits(model(**batch), batch["labels"])
