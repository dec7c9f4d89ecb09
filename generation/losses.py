"""Noise-robust losses for synthetic labels; they live in the core (:mod:`plmkit.losses.noise_robust`)."""

from plmkit.losses.noise_robust import (
    NOISE_ROBUST_LOSSES,
    NoiseRobustLoss,
    generalized_cross_entropy,
    reverse_cross_entropy,
)

__all__ = ["NOISE_ROBUST_LOSSES", "NoiseRobustLoss", "generalized_cross_entropy", "reverse_cross_entropy"]
