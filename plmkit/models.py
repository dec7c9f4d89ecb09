"""Task heads on top of an encoder or a decoder: the model every classification/regression method trains.

Pooling turns token states (batch, seq, hidden) into one vector per row:

* 'mean': sum_t m_t h_t / sum_t m_t over the attention mask m (the encoders' default);
* 'cls': h_0, the first token;
* 'last': h_t at t = the last position with m_t = 1 (the decoders' default: with causal attention only
  the last token has read the whole text). With seq positions 0..S-1 that is
  t = S - 1 - argmax(flip(m)), right for left and right padding alike.

A decoder backbone gets position ids counted over real tokens (cumsum(m) - 1), so a left-padded row
computes what the same row without padding computes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from plmkit.anatomy import anatomy_of
from plmkit.errors import ConfigError

POOLINGS = ("mean", "cls", "last")


@dataclass
class HeadConfig:
    """A sentence-level head; saved beside the weights so it can be rebuilt exactly."""

    hidden_size: int
    num_labels: int
    """Number of classes; 1 means regression."""
    pooling: str = "mean"
    """How token states become one vector: 'mean' over real tokens, 'cls' (first token) or 'last' (last real token)."""
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.num_labels < 1 or self.hidden_size < 1:
            raise ConfigError("num_labels and hidden_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        seq = attention_mask.shape[1]
        last = seq - 1 - attention_mask.flip(1).int().argmax(1)  # (batch,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class ClassificationHead(nn.Module):
    """Pool, then dense -> tanh -> dropout -> output (the RoBERTa-style head)."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.dropout(pool(hidden, attention_mask, self.config.pooling))
        return self.out_proj(self.dropout(torch.tanh(self.dense(pooled))))


class SequenceClassifier(nn.Module):
    """An encoder plus a head: ``forward(**batch) -> logits`` of shape (batch, num_labels)."""

    def __init__(self, encoder: nn.Module, head: ClassificationHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        anatomy = anatomy_of(encoder)
        self._accepts_token_types = anatomy.token_type_ids
        self._counts_positions = anatomy.kind == "decoder"

    def encoder_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       token_type_ids: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        """The batch fields this backbone takes (token types only where the anatomy says so; decoders
        get position ids over real tokens)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._accepts_token_types:
            kwargs["token_type_ids"] = token_type_ids
        if self._counts_positions:
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (batch, seq)
        return kwargs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        hidden = self.encoder(**self.encoder_inputs(input_ids, attention_mask, token_type_ids)).last_hidden_state
        return self.head(hidden, attention_mask)


def build_classifier(encoder: nn.Module, num_labels: int, pooling: str | None = None,
                     dropout: float = 0.1) -> SequenceClassifier:
    """A head on ``encoder``; ``pooling`` defaults to the anatomy's ('mean' for encoders, 'last' for decoders)."""
    anatomy = anatomy_of(encoder)
    hidden = anatomy.hidden_size(encoder.config)
    pooling = pooling or anatomy.pooling
    return SequenceClassifier(encoder, ClassificationHead(HeadConfig(hidden, num_labels, pooling, dropout)))
