"""Task heads on top of an encoder: the model every classification/regression method trains."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError


@dataclass
class HeadConfig:
    """A sentence-level head; saved beside the weights so it can be rebuilt exactly."""

    hidden_size: int
    num_labels: int
    """Number of classes; 1 means regression."""
    pooling: str = "mean"
    """How token states become one vector: 'mean' over real tokens or 'cls' (first token)."""
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ConfigError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.num_labels < 1 or self.hidden_size < 1:
            raise ConfigError("num_labels and hidden_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden)."""
    if pooling == "cls":
        return hidden[:, 0]
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
        self._accepts_token_types = encoder.config.model_type not in ("distilbert", "mpnet")

    def encoder_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       token_type_ids: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        """The batch fields this encoder takes (DistilBERT and MPNet have no token types)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._accepts_token_types:
            kwargs["token_type_ids"] = token_type_ids
        return kwargs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        hidden = self.encoder(**self.encoder_inputs(input_ids, attention_mask, token_type_ids)).last_hidden_state
        return self.head(hidden, attention_mask)


def build_classifier(encoder: nn.Module, num_labels: int, pooling: str = "mean",
                     dropout: float = 0.1) -> SequenceClassifier:
    hidden = int(getattr(encoder.config, "hidden_size", getattr(encoder.config, "dim", 0)))
    return SequenceClassifier(encoder, ClassificationHead(HeadConfig(hidden, num_labels, pooling, dropout)))
