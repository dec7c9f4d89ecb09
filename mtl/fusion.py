"""Stage 2: AdapterFusion — attention over the N frozen source adapters' outputs at every layer.

With adapter input a, residual r and source outputs u_i: q = W_q a + b_q, k_i = W_k u_i + b_k,
v_i = W_v u_i; s_i = q·k_i, dropout on s, p = softmax(s / T), o = Σ_i p_i v_i + r.
Computed in the fast form with the same function: q·k_i = (W_kᵀ q)·u_i + q·b_k projects the query
once, and Σ_i p_i W_v u_i = W_v Σ_i p_i u_i mixes first and projects once — three d×d products per
token instead of 1 + 2N. Init: W_q, W_k ~ Normal(0, 0.02), zero biases, W_v = identity (1e-6 off the
diagonal). 0.01 · Σ_layers ‖I − W_v‖²_F is added to the same step's loss (the reference code applies
its gradient one step late). ``value=False`` is the "static" variant (no value matrix).
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


@dataclass
class FusionConfig:
    default_learning_rate: ClassVar[float] = 5e-5
    cli_flags: ClassVar[dict[str, str]] = {"value": "fusion_value", "temperature": "fusion_temperature"}

    value: bool = True
    """Learn a value matrix W_v ('dynamic', the default); False is 'static' fusion."""
    dropout: float = 0.1
    """Dropout on the attention scores."""
    temperature: bool = False
    """Anneal the softmax temperature from 50 to 1 over the first ~1000 training forwards."""
    regularization: float = 0.01
    """Weight of Σ_layers ‖I − W_v‖²_F in the loss."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"fusion dropout must be in [0, 1), got {self.dropout}")
        if self.regularization < 0:
            raise ConfigError(f"fusion regularization must be >= 0, got {self.regularization}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fusion_parameter_count(hidden: int, num_layers: int, value: bool = True) -> int:
    """3·d² + 2·d per layer (query and key with bias, value without); 2·d² + 2·d when static."""
    per_layer = 2 * hidden * hidden + 2 * hidden + (hidden * hidden if value else 0)
    return per_layer * num_layers


class FusionBlock(nn.Module):
    """One layer's fusion; a site block: ``forward(adapter_input, residual) -> o``.

    Parameters are attributes of this module itself (no sub-modules) so that ZeRO-3 gathers them
    in this module's forward.
    """

    def __init__(self, sources: SourceAdapters, config: FusionConfig) -> None:
        super().__init__()
        hidden = sources.hidden_size
        self.sources = sources
        self.config = config
        self.query_weight = nn.Parameter(torch.empty(hidden, hidden).normal_(std=0.02))
        self.query_bias = nn.Parameter(torch.zeros(hidden))
        self.key_weight = nn.Parameter(torch.empty(hidden, hidden).normal_(std=0.02))
        self.key_bias = nn.Parameter(torch.zeros(hidden))
        self.value_weight = (
            nn.Parameter(torch.full((hidden, hidden), 1e-6).fill_diagonal_(1.0)) if config.value else None
        )
        start = 50.0 if config.temperature else 1.0
        self.register_buffer("temperature", torch.tensor(start, dtype=torch.float32))
        self.temperature_step = start / 1000.0
        self.regularization_term: torch.Tensor | None = None
        self.recording = False
        self.register_buffer("recorded_probs", torch.zeros(sources.num_sources), persistent=False)
        self.register_buffer("recorded_tokens", torch.zeros(()), persistent=False)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's own signature
        """Cast like any module, but keep the temperature in float32: in bf16, 50 − 0.05 rounds back to 50."""
        temperature = self.temperature.float().clone()
        super()._apply(fn, recurse)
        self.temperature = temperature.to(self.temperature.device)
        return self

    def attention(self, adapter_input: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """Softmax weights over sources, (batch, seq, N), from the fast form of q·k_i."""
        query = F.linear(adapter_input, self.query_weight, self.query_bias)  # (batch, seq, hidden)
        projected = query @ self.key_weight  # W_kᵀ q: (batch, seq, hidden)
        # (batch, seq, hidden) . (batch, seq, N, hidden) -> (batch, seq, N)
        scores = torch.einsum("bsh,bsnh->bsn", projected, outputs) + (query * self.key_bias).sum(-1, keepdim=True)
        scores = F.dropout(scores, self.config.dropout, self.training)
        return torch.softmax(scores / self.temperature, dim=-1)

    def forward(self, adapter_input: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        outputs = self.sources.outputs(adapter_input)  # (batch, seq, N, hidden)
        probs = self.attention(adapter_input, outputs)
        mixed = torch.einsum("bsn,bsnh->bsh", probs, outputs)  # Σ_i p_i u_i
        fused = F.linear(mixed, self.value_weight) if self.value_weight is not None else mixed
        self._after_forward(probs)
        return fused + residual

    def _after_forward(self, probs: torch.Tensor) -> None:
        if self.value_weight is not None and self.training:
            eye = torch.eye(self.value_weight.shape[0], device=self.value_weight.device, dtype=self.value_weight.dtype)
            self.regularization_term = (eye - self.value_weight).pow(2).sum()
        if self.training and self.config.temperature:
            self.temperature.fill_(max(float(self.temperature) - self.temperature_step, 1.0))
        if self.recording:
            self.recorded_probs += probs.detach().float().sum((0, 1))
            self.recorded_tokens += probs.shape[0] * probs.shape[1]

    def start_recording(self) -> None:
        """Zero the accumulated attention and record it in the following forwards."""
        self.recorded_probs.zero_()
        self.recorded_tokens.zero_()
        self.recording = True

    def regularization(self) -> torch.Tensor | None:
        """This step's ‖I − W_v‖²_F (computed inside forward, where ZeRO-3 has the weight)."""
        term, self.regularization_term = self.regularization_term, None
        return None if term is None else self.config.regularization * term

    def source_weights(self) -> torch.Tensor:
        """Mean attention per source over the tokens seen while recording."""
        return self.recorded_probs / self.recorded_tokens.clamp_min(1.0)


def build_fusion_block(sources: SourceAdapters, config: FusionConfig, shared: dict) -> FusionBlock:
    return FusionBlock(sources, config)


register_transfer_method(TransferMethod("fusion", FusionConfig, build_block=build_fusion_block,
                                        weights_label="mean attention (validation)"))
