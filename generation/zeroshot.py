"""Zero-shot prompting of the generator itself: the baseline a synthetic data set has to beat.

For a text ``x`` and each label ``l``, fill the spec's zero-shot template (``{label}`` -> the label's
word, ``{text}`` -> x, and ``{condition}`` -> the premise for pair tasks) and compute the causal LM's
loss of the whole filled string, ``L(l) = -sum_t log p(w_t | w_<t)``. The prediction is
``argmin_l L(l)``. Summing (not averaging) over tokens compares the same text under each label.
Texts are batched in order of token count (little padding), right-padded; padded positions are
left out of the sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from plmkit.embeddings import length_batches
from plmkit.errors import ConfigError
from plmkit.generation.spec import TaskSpec


@torch.no_grad()
def sequence_losses(backbone: Any, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
    """(len(texts),) summed next-token negative log-likelihood of each text under the causal LM."""
    model, tokenizer = backbone.model, backbone.tokenizer
    side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "right"
    model.eval()
    device = next(model.parameters()).device
    texts = list(texts)
    out = np.empty(len(texts))
    try:
        for rows in length_batches([len(ids) for ids in tokenizer(texts)["input_ids"]], batch_size):
            batch = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (batch, seq, vocab)
            logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (batch, seq-1, vocab): predicts tokens 1..
            token_logp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (batch, seq-1)
            out[rows] = -(token_logp * mask[:, 1:]).sum(-1).double().cpu().numpy()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def zero_shot_predict(backbone: Any, spec: TaskSpec, texts: Sequence[str],
                      conditions: Sequence[str] | None = None, batch_size: int = 16) -> np.ndarray:
    """(len(texts),) label ids: the label whose filled zero-shot template the LM finds most likely."""
    if spec.zero_shot is None:
        raise ConfigError(f"spec {spec.name!r} has no 'zero_shot' template; add one with {{label}} and {{text}} "
                          "to get the zero-shot baseline")
    if spec.pair and (conditions is None or len(conditions) != len(texts)):
        raise ConfigError("a pair task's zero-shot baseline needs one premise (condition) per text")
    filled = [spec.zero_shot.format(label=spec.label_word(label), text=text,
                                    condition=conditions[i] if conditions is not None else "")
              for i, text in enumerate(texts) for label in spec.labels]
    losses = sequence_losses(backbone, filled, batch_size).reshape(len(texts), len(spec.labels))  # (texts, labels)
    return losses.argmin(-1)


def label_agreement(backbone: Any, spec: TaskSpec, samples: Sequence[dict[str, Any]],
                    batch_size: int = 16) -> np.ndarray:
    """(len(samples),) bool: the zero-shot prediction for each kept sample's ``text`` (with its
    ``condition`` for pair tasks) is the label it was generated for (``--consistency``)."""
    if not samples:
        return np.zeros(0, dtype=bool)
    texts = [sample["text"] for sample in samples]
    conditions = [sample.get("condition") or "" for sample in samples] if spec.pair else None
    predicted = zero_shot_predict(backbone, spec, texts, conditions, batch_size)  # (samples,) label ids
    return np.array([spec.labels[p] == sample["label"] for p, sample in zip(predicted, samples, strict=True)])


def zero_shot_accuracy(backbone: Any, spec: TaskSpec, task: Any, split: str = "validation",
                       batch_size: int = 16) -> dict[str, float]:
    """Accuracy of :func:`zero_shot_predict` on a split of a task whose labels are the spec's."""
    data = getattr(task, split)
    fields = task.text_fields
    texts = list(data[fields[-1]])
    conditions = list(data[fields[0]]) if spec.pair else None
    predictions = zero_shot_predict(backbone, spec, texts, conditions, batch_size)
    labels = np.asarray(data[task.label_field])
    return {"accuracy": float((predictions == labels).mean()), "examples": len(labels)}
