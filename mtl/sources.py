"""N frozen source adapters of one layer, stacked once so they run as one batched computation.

A Python loop over N adapters launches 2N small matmuls per layer and keeps N activations alive;
stacking the weights gives one einsum per projection (fusion needs every u_i) or, for scaling
methods, one wide adapter (see ``folded_down`` / ``scaled_up``): two matmuls whatever N is.
Weights are non-persistent buffers: frozen, never in the optimiser, never saved with the transfer
weights (saved stage-2 setups reference their sources instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.mtl.adapters import ACTIVATIONS


class SourceAdapters(nn.Module):
    """Stacked bottleneck adapters: down (N, b, h), up (N, h, b) in ``nn.Linear`` weight layout."""

    def __init__(self, down_weight: torch.Tensor, down_bias: torch.Tensor, up_weight: torch.Tensor,
                 up_bias: torch.Tensor, non_linearity: str = "relu") -> None:
        super().__init__()
        n, bottleneck, hidden = down_weight.shape
        if up_weight.shape != (n, hidden, bottleneck) or down_bias.shape != (n, bottleneck) or up_bias.shape != (n, hidden):
            raise ConfigError("source adapter tensors do not stack: shapes "
                             f"{tuple(down_weight.shape)}, {tuple(up_weight.shape)} disagree")
        self.num_sources, self.bottleneck, self.hidden_size = n, bottleneck, hidden
        self.act = ACTIVATIONS[non_linearity]()
        self.register_buffer("down_weight", down_weight.detach().clone(), persistent=False)
        self.register_buffer("down_bias", down_bias.detach().clone(), persistent=False)
        self.register_buffer("up_weight", up_weight.detach().clone(), persistent=False)
        self.register_buffer("up_bias", up_bias.detach().clone(), persistent=False)

    @classmethod
    def from_layer_states(cls, states: Sequence[dict[str, torch.Tensor]], non_linearity: str = "relu") -> SourceAdapters:
        """Stack per-source ``{down.weight, down.bias, up.weight, up.bias}`` of one layer."""
        def stack(key: str) -> torch.Tensor:
            return torch.stack([state[key].float() for state in states])

        return cls(stack("down.weight"), stack("down.bias"), stack("up.weight"), stack("up.bias"), non_linearity)

    def hidden(self, adapter_input: torch.Tensor) -> torch.Tensor:
        """(batch, seq, hidden) -> (batch, seq, N, bottleneck)."""
        # (batch, seq, hidden) x (N, bottleneck, hidden) -> (batch, seq, N, bottleneck)
        z = torch.einsum("bsh,nkh->bsnk", adapter_input, self.down_weight) + self.down_bias
        return self.act(z)

    def outputs(self, adapter_input: torch.Tensor) -> torch.Tensor:
        """Every source's u_i: (batch, seq, hidden) -> (batch, seq, N, hidden)."""
        z = self.hidden(adapter_input)
        # (batch, seq, N, bottleneck) x (N, hidden, bottleneck) -> (batch, seq, N, hidden)
        return torch.einsum("bsnk,nhk->bsnh", z, self.up_weight) + self.up_bias

    def folded_hidden(self, adapter_input: torch.Tensor) -> torch.Tensor:
        """All sources' bottlenecks side by side: (batch, seq, hidden) -> (batch, seq, N * bottleneck)."""
        down = self.down_weight.reshape(-1, self.hidden_size)  # (N * bottleneck, hidden)
        return self.act(nn.functional.linear(adapter_input, down, self.down_bias.reshape(-1)))

    def scaled_sum(self, adapter_input: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """Σ_i scales_i ⊙ u_i with two matmuls; ``scales`` is (N, hidden) or (N, 1).

        Σ_i ω_i ⊙ (W_up,i z_i + b_up,i) = [ω_1⊙W_up,1 … ω_N⊙W_up,N] · [z_1; …; z_N] + Σ_i ω_i ⊙ b_up,i,
        with the scales folded into the frozen up-projections inside autograd so only ω gets gradients.
        """
        z = self.folded_hidden(adapter_input)  # (batch, seq, N * bottleneck)
        # (N, hidden, bottleneck) * (N, hidden, 1) -> (hidden, N, bottleneck) -> (hidden, N * bottleneck)
        scaled_up = (self.up_weight * scales.unsqueeze(-1)).permute(1, 0, 2).reshape(self.hidden_size, -1)
        bias = (self.up_bias * scales).sum(0)  # (hidden,)
        return nn.functional.linear(z, scaled_up, bias)
