"""Stage 2: the ScaLearn family — learn to scale the N frozen source adapters' outputs.

o = Σ_i ω_i ⊙ u_i + r; layer output LN(o + x). No softmax, no sum-to-one.

| variant            | ω shape      | shared across layers |
| scalearn           | N × hidden   | no (one set per layer) |
| scalearn-uniform   | N × 1        | no |
| scalearn++         | N × hidden   | yes, one set |
| scalearn-uniform++ | N × 1        | yes |

Init ω ~ Normal(2/N, 0.001) (the scales start summing to about 2); dropout 0.3 on ω itself (0 for
uniform++). Computed as one wide adapter (``SourceAdapters.scaled_sum``): two matmuls per layer
whatever N is, gradients only to ω. The optional mean-one regulariser adds
λ · Σ_sets (mean(ω) − 1)², pulling the average scale towards 1; it is off by default (λ = 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from plmkit.errors import ConfigError
from plmkit.mtl.registry import TransferMethod, register_transfer_method
from plmkit.mtl.sources import SourceAdapters

VARIANTS = {  # name -> (per-dimension scales, shared across layers)
    "scalearn": (True, False),
    "scalearn-uniform": (False, False),
    "scalearn++": (True, True),
    "scalearn-uniform++": (False, True),
}


@dataclass
class ScaLearnConfig:
    default_learning_rate: ClassVar[float] = 6e-3
    cli_flags: ClassVar[dict[str, str]] = {"dropout": "scalearn_dropout", "mean_one": "scalearn_mean_one"}

    variant: str = "scalearn"
    """scalearn, scalearn-uniform, scalearn++ or scalearn-uniform++."""
    dropout: float | None = None
    """Dropout on the scales themselves; None: 0.3, or 0 for scalearn-uniform++ (the paper's choice)."""
    init_std: float = 0.001
    """Scales start at Normal(2/N, init_std)."""
    mean_one: float = 0.0
    """Weight λ of the optional regulariser λ · Σ_sets (mean(ω) − 1)²; 0 disables it."""

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown ScaLearn variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.dropout is None:
            self.dropout = 0.0 if self.variant == "scalearn-uniform++" else 0.3
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ScaLearn dropout must be in [0, 1), got {self.dropout}")
        if self.init_std < 0 or self.mean_one < 0:
            raise ConfigError("init_std and mean_one must be >= 0")

    @property
    def per_dimension(self) -> bool:
        return VARIANTS[self.variant][0]

    @property
    def shared(self) -> bool:
        return VARIANTS[self.variant][1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scalearn_parameter_count(variant: str, num_sources: int, hidden: int, num_layers: int) -> int:
    """Trainable transfer parameters of a variant (the head not included)."""
    per_dimension, shared = VARIANTS[variant]
    per_set = num_sources * (hidden if per_dimension else 1)
    return per_set * (1 if shared else num_layers)


def init_scales(num_sources: int, width: int, std: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(num_sources, width).normal_(mean=2.0 / num_sources, std=std))


class ScaleBlock(nn.Module):
    """One layer's ScaLearn; a site block: ``forward(adapter_input, residual) -> o``."""

    def __init__(self, sources: SourceAdapters, config: ScaLearnConfig, scales: nn.Parameter | None = None,
                 owns_scales: bool | None = None) -> None:
        super().__init__()
        self.sources = sources
        self.config = config
        width = sources.hidden_size if config.per_dimension else 1
        # For ++ variants every layer's block registers the same Parameter object; exactly one block
        # (the first) owns it and adds its mean-one term, so the regulariser counts the set once.
        self.owns_scales = scales is None if owns_scales is None else owns_scales
        self.scales = scales if scales is not None else init_scales(sources.num_sources, width, config.init_std)
        self.regularization_term: torch.Tensor | None = None

    def forward(self, adapter_input: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        scales = F.dropout(self.scales, self.config.dropout, self.training)  # dropout on ω itself
        if self.training and self.config.mean_one > 0 and self.owns_scales:
            self.regularization_term = self.config.mean_one * (self.scales.mean() - 1.0).pow(2)
        return self.sources.scaled_sum(adapter_input, scales.to(adapter_input.dtype)) + residual

    def regularization(self) -> torch.Tensor | None:
        term, self.regularization_term = self.regularization_term, None
        return term

    def source_weights(self) -> torch.Tensor:
        """Mean scale per source (over hidden dimensions)."""
        return self.scales.detach().float().mean(-1)


def build_scale_block(sources: SourceAdapters, config: ScaLearnConfig, shared: dict) -> ScaleBlock:
    """One layer's block; ++ variants create the shared scales at the first layer, which owns them."""
    if not config.shared:
        return ScaleBlock(sources, config)
    owner = "scales" not in shared
    if owner:
        width = sources.hidden_size if config.per_dimension else 1
        shared["scales"] = init_scales(sources.num_sources, width, config.init_std)
    return ScaleBlock(sources, config, scales=shared["scales"], owns_scales=owner)


for _variant in VARIANTS:
    register_transfer_method(TransferMethod(_variant, ScaLearnConfig, build_block=build_scale_block,
                                            fixed={"variant": _variant}, weights_label="mean scale ω"))
