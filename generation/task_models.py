"""Tiny task models trained on the synthetic set: a BiLSTM, a small random transformer, or a pretrained encoder.

All follow ``SequenceClassifier``'s contract, ``forward(**batch) -> logits`` of shape (batch, labels),
so ``plmkit.textclf.train_classifier`` trains them and ``TaskData`` feeds them.

BiLSTM. Token embeddings ``e_t`` (dim ``embedding_dim``) run through a bidirectional LSTM (hidden
``hidden_size`` per direction) over the real tokens only (packed sequences); the sentence vector is
the max over time of the outputs ``[h_fwd_t; h_bwd_t]``, then dropout and a linear layer to the
labels. The vocabulary is the ``max_vocab`` most frequent lower-cased words of the training texts
(:func:`plmkit.backbones.word_tokenizer`); other words map to ``[UNK]``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from plmkit.errors import ConfigError

TASK_MODELS = ("lstm", "transformer")
_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class TaskModelConfig:
    """Which tiny model to train and its size."""

    task_model: str = "lstm"
    """'lstm' (BiLSTM), 'transformer' (a small random BERT), or an encoder to fine-tune (asset, folder, hub id)."""
    max_vocab: int = 20000
    """Words in the vocabulary of 'lstm' and 'transformer' (most frequent in the training texts)."""
    embedding_dim: int = 100
    """BiLSTM word embedding size."""
    hidden_size: int = 300
    """BiLSTM hidden size per direction; the transformer's hidden size is embedding_dim x 2 (rounded to heads)."""
    layers: int = 1
    """BiLSTM layers (the small transformer has 2)."""
    dropout: float = 0.3
    """Dropout before the output layer."""

    def __post_init__(self) -> None:
        if not self.task_model:
            raise ConfigError(f"--task-model must be one of {TASK_MODELS} or an encoder name/folder")
        if self.max_vocab < 10 or self.embedding_dim < 1 or self.hidden_size < 1 or self.layers < 1:
            raise ConfigError("--max-vocab must be >= 10 and --embedding-dim, --hidden-size, --layers >= 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")


def vocabulary(texts: Iterable[str], max_vocab: int) -> list[str]:
    """The ``max_vocab`` most frequent lower-cased words and punctuation marks (ties by first seen)."""
    counts = Counter(token for text in texts for token in _WORD.findall(text.lower()))
    return [word for word, _ in counts.most_common(max_vocab)]


class BiLSTMClassifier(nn.Module):
    """Embedding -> BiLSTM over real tokens -> max pool over time -> dropout -> linear."""

    def __init__(self, vocab_size: int, num_labels: int, embedding_dim: int = 100, hidden_size: int = 300,
                 layers: int = 1, dropout: float = 0.3, pad_token_id: int = 0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_token_id)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=layers, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        lengths = attention_mask.sum(1).clamp_min(1).cpu()  # (batch,)
        embedded = self.embedding(input_ids)  # (batch, seq, embedding_dim)
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                        total_length=input_ids.shape[1])  # (batch, seq, 2 * hidden)
        mask = attention_mask.unsqueeze(-1).bool()  # (batch, seq, 1)
        pooled = states.masked_fill(~mask, float("-inf")).max(1).values  # (batch, 2 * hidden)
        return self.out(self.dropout(pooled))


def build_task_model(config: TaskModelConfig, texts: Iterable[str], num_labels: int,
                     max_length: int = 128, seed: int = 0) -> tuple[nn.Module, Any]:
    """(model, tokenizer) for ``config.task_model``; word vocabularies come from ``texts``."""
    from plmkit.backbones import load_encoder, word_tokenizer
    from plmkit.models import build_classifier

    torch.manual_seed(seed)
    if config.task_model not in TASK_MODELS:
        backbone = load_encoder(config.task_model)
        return build_classifier(backbone.model, num_labels, dropout=config.dropout), backbone.tokenizer
    tokenizer = word_tokenizer(vocabulary(texts, config.max_vocab), model_max_length=max_length)
    if config.task_model == "lstm":
        model = BiLSTMClassifier(len(tokenizer), num_labels, config.embedding_dim, config.hidden_size,
                                 config.layers, config.dropout, tokenizer.pad_token_id)
        return model, tokenizer
    return _small_transformer(config, tokenizer, num_labels, max_length), tokenizer


def _small_transformer(config: TaskModelConfig, tokenizer: Any, num_labels: int, max_length: int) -> nn.Module:
    """A randomly initialised 2-layer BERT over the word vocabulary, with a mean-pooling head."""
    from transformers import BertConfig, BertModel

    from plmkit.models import build_classifier

    heads = 4
    hidden = max(heads, (2 * config.embedding_dim) // heads * heads)
    bert = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                      intermediate_size=2 * hidden, max_position_embeddings=max_length + 2, pad_token_id=0,
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return build_classifier(BertModel(bert), num_labels, pooling="mean", dropout=config.dropout)
