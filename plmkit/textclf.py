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

from plmkit.embeddings import length_batches
from plmkit.errors import ConfigError
from plmkit.evaluation import TaskEvaluator
from plmkit.losses import classification_loss, loss_from_logits, total_and_terms
from plmkit.metrics import compute_metrics
from plmkit.trainer import Trainer, TrainerConfig, TrainResult, move_to_device

__all__ = ["PadCollator", "TaskData", "classification_loss", "encode_split", "evaluate", "loss_from_logits",
           "position_limit", "predict", "train_classifier"]

# Tokenizers without a known limit report a huge sentinel (int(1e30)) as their model_max_length.
_NO_LIMIT = 1_000_000


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


@torch.no_grad()
def predict(model: nn.Module, features: list[dict[str, Any]], collator: PadCollator,
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits or scores, labels) for every feature, in order.

    Batches are formed in order of length (longest first) so that each pads little, and the
    outputs are put back in input order: padding is masked, so only float rounding can differ
    from batching in input order, while the padded tokens computed fall sharply on mixed lengths.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = gold = None
    for chosen in length_batches([len(f["input_ids"]) for f in features], batch_size):
        batch = move_to_device(collator([features[i] for i in chosen]), device)
        out, labels = model(**batch).float().cpu().numpy(), batch["labels"].cpu().numpy()
        if logits is None:  # the output width is known after the first batch
            logits = np.empty((len(features), *out.shape[1:]), dtype=out.dtype)
            gold = np.empty((len(features), *labels.shape[1:]), dtype=labels.dtype)
        logits[chosen], gold[chosen] = out, labels
    model.train(was_training)
    return (logits[:, 0] if logits.shape[1] == 1 else logits), gold


def evaluate(model: nn.Module, features: list[dict[str, Any]], collator: PadCollator, is_regression: bool,
             batch_size: int = 64) -> dict[str, float]:
    predictions, labels = predict(model, features, collator, batch_size)
    return compute_metrics(predictions, labels, is_regression=is_regression)


def position_limit(tokenizer: Any, model_config: Any = None) -> int | None:
    """The longest input (in tokens) the tokenizer and, when given, the model's positions allow."""
    limits = []
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < _NO_LIMIT:
        limits.append(tokenizer_limit)
    positions = getattr(model_config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style position ids start after the padding index: padding_idx + 1 slots are unusable.
        offset = (model_config.pad_token_id or 0) + 1 if "roberta" in str(model_config.model_type) else 0
        limits.append(positions - offset)
    return min(limits) if limits else None


def check_max_length(max_length: Any, limit: int | None) -> None:
    """Refuse a ``--max-length`` that would disable truncation (<= 0) or overflow the positions."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"--max-length must be a whole number >= 1, got {max_length!r}")
    if limit is not None and max_length > limit:
        raise ConfigError(f"--max-length {max_length} is above this model's position limit of {limit} tokens; "
                          f"use --max-length {limit} or less")


class TaskData:
    """A task's splits tokenised for one tokenizer, ready for the trainer.

    ``max_length`` must be >= 1 and within :func:`position_limit` of the tokenizer (and of
    ``model_config`` when given), else a ``ConfigError`` names ``--max-length`` and the limit.
    """

    def __init__(self, task: Any, tokenizer: Any, max_length: int = 128, model_config: Any = None) -> None:
        check_max_length(max_length, position_limit(tokenizer, model_config))
        self.task = task
        self.collator = PadCollator(tokenizer.pad_token_id or 0)
        args = (task.text_fields, task.label_field, tokenizer, max_length, task.is_regression)
        self.train = encode_split(task.train, *args)
        self.validation = encode_split(task.validation, *args)
        self.test = encode_split(task.test, *args)

    def evaluate(self, model: nn.Module, split: str = "validation", batch_size: int = 64) -> dict[str, float]:
        return evaluate(model, getattr(self, split), self.collator, self.task.is_regression, batch_size)

    def predict(self, model: nn.Module, split: str = "validation", batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, labels) on ``split`` in its order: class ids (argmax) or regression scores."""
        outputs, labels = predict(model, getattr(self, split), self.collator, batch_size)
        return (outputs if self.task.is_regression else outputs.argmax(axis=-1)), labels

    def evaluator(self, split: str = "validation", batch_size: int = 64) -> TaskEvaluator:
        """This split as an evaluator whose primary metric is the task's."""
        return TaskEvaluator(self, split, batch_size)


def train_classifier(model: nn.Module, data: TaskData, config: TrainerConfig,
                     regularizer: Callable[[], torch.Tensor | None] | None = None,
                     loss: Callable[[nn.Module, dict[str, torch.Tensor]], Any] = classification_loss,
                     ) -> TrainResult:
    """Train whatever in ``model`` requires grad on the task, selecting on its validation metric.

    ``loss(model, batch)`` defaults to the task loss (e.g. a distillation loss replaces it) and may
    return named terms (see :mod:`plmkit.losses`); ``regularizer()`` is called after each forward and
    its value (if any) is added to that step's total and logged as ``regularizer``. Selection uses
    ``config.metric`` when set, else the task's primary metric; ``config`` itself is never modified.
    """

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        total, terms = total_and_terms(loss(m, batch))
        extra = regularizer() if regularizer is not None else None
        if extra is None:
            return terms if len(terms) > 1 else total
        named = terms if len(terms) > 1 else {"task": total}
        return {**named, "loss": total + extra, "regularizer": extra}

    evaluator = data.evaluator("validation", batch_size=max(64, config.batch_size))
    trainer = Trainer(model, loss_fn, data.train, config, collate_fn=data.collator, evaluate_fn=evaluator)
    return trainer.train()
