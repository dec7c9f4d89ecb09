"""Glue between tasks, tokenizers, sequence classifiers and the trainer.

Every method that ends in a sentence-level classifier or regressor (adapters, fusion, ScaLearn,
full fine-tuning) tokenises, batches, computes its loss and evaluates the same way; it lives here
once so the methods only decide what is trainable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from plmkit.metrics import compute_metrics, greater_is_better
from plmkit.trainer import Trainer, TrainerConfig, TrainResult, move_to_device


def encode_split(dataset: Any, text_fields: Sequence[str], label_field: str, tokenizer: Any,
                 max_length: int = 128, is_regression: bool = False) -> list[dict[str, Any]]:
    """Tokenise a split once into unpadded features; padding happens per batch."""
    texts = [list(dataset[field]) for field in text_fields]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    labels = dataset[label_field]
    dtype = torch.float32 if is_regression else torch.long
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return [
        {**{k: encoded[k][i] for k in keys}, "labels": torch.tensor(labels[i], dtype=dtype)}
        for i in range(len(labels))
    ]


class PadCollator:
    """Pad a list of features to the longest in the batch."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        batch: dict[str, torch.Tensor] = {}
        for key, pad in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in features[0]:
                rows = [list(f[key]) + [pad] * (length - len(f[key])) for f in features]
                batch[key] = torch.tensor(rows, dtype=torch.long)
        batch["labels"] = torch.stack([f["labels"] for f in features])
        return batch


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy, or mean squared error when the model has one output (regression)."""
    return loss_from_logits(model(**batch), batch["labels"])


def loss_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The task loss on computed outputs (for losses that also need the logits for something else)."""
    logits = logits.float()
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def predict(model: nn.Module, features: list[dict[str, Any]], collator: PadCollator,
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits or scores, labels) for every feature, in order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs, labels = [], []
    for start in range(0, len(features), batch_size):
        batch = move_to_device(collator(features[start:start + batch_size]), device)
        outputs.append(model(**batch).float().cpu())
        labels.append(batch["labels"].cpu())
    model.train(was_training)
    logits = torch.cat(outputs).numpy()
    return (logits[:, 0] if logits.shape[1] == 1 else logits), torch.cat(labels).numpy()


def evaluate(model: nn.Module, features: list[dict[str, Any]], collator: PadCollator, is_regression: bool,
             batch_size: int = 64) -> dict[str, float]:
    predictions, labels = predict(model, features, collator, batch_size)
    return compute_metrics(predictions, labels, is_regression=is_regression)


class TaskData:
    """A task's splits tokenised for one tokenizer, ready for the trainer."""

    def __init__(self, task: Any, tokenizer: Any, max_length: int = 128) -> None:
        self.task = task
        self.collator = PadCollator(tokenizer.pad_token_id or 0)
        args = (task.text_fields, task.label_field, tokenizer, max_length, task.is_regression)
        self.train = encode_split(task.train, *args)
        self.validation = encode_split(task.validation, *args)
        self.test = encode_split(task.test, *args)

    def evaluate(self, model: nn.Module, split: str = "validation", batch_size: int = 64) -> dict[str, float]:
        return evaluate(model, getattr(self, split), self.collator, self.task.is_regression, batch_size)


def train_classifier(model: nn.Module, data: TaskData, config: TrainerConfig,
                     regularizer: Callable[[], torch.Tensor | None] | None = None,
                     loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor] = classification_loss,
                     ) -> TrainResult:
    """Train whatever in ``model`` requires grad on the task, selecting on its validation metric.

    ``loss(model, batch)`` defaults to the task loss (e.g. a distillation loss replaces it);
    ``regularizer()`` is called after each forward and its value (if any) added to that step's loss.
    """
    if config.metric is None:
        config.metric = data.task.metric
        config.greater_is_better = greater_is_better(config.metric)

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        value = loss(m, batch)
        extra = regularizer() if regularizer is not None else None
        return value if extra is None else value + extra

    trainer = Trainer(
        model, loss_fn, data.train, config, collate_fn=data.collator,
        evaluate_fn=lambda m: data.evaluate(m, "validation", batch_size=max(64, config.batch_size)),
    )
    return trainer.train()
