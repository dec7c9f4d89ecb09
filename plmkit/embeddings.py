"""Sentence embeddings from any encoder: batched encoding, an STS evaluator and a SentenceTransformer export.

Encoding. Sentences are tokenized once (truncated to ``max_length``), sorted by token count so each
batch pads little, run through the encoder without gradients in eval mode, pooled and put back in
input order. Pooling turns token states ``h_1..h_T`` with mask ``m`` into one vector:

    mean:  e = sum_t m_t h_t / sum_t m_t     cls:  e = h_1     last:  e = h_t*, t* = max{t : m_t = 1}

and ``normalize=True`` returns ``e / ||e||_2``. "last" suits decoders (left or right padding both
work); a causal LM is run through its base model, so its final hidden states are pooled. Padding
never changes a sentence's embedding beyond float rounding, so the result does not depend on
``batch_size``.

STS evaluation. For pairs ``(a_i, b_i, y_i)`` the predicted similarity is ``cos(e(a_i), e(b_i))``;
the evaluator reports Pearson and Spearman correlation of the predictions with the gold scores
``y``, as fractions in [-1, 1] (the same scale as ``plmkit.metrics``; multiply by 100 for the usual
STS tables). Spearman is Pearson on ranks (average ranks for ties).

Export. ``export_sentence_transformer`` writes the classic sentence-transformers folder: the HF
model and tokenizer at the root (module 0, ``Transformer``), ``1_Pooling/config.json`` (module 1,
``Pooling``), an optional ``2_Normalize`` (module 2), ``modules.json``, ``sentence_bert_config.json``
and ``config_sentence_transformers.json``. Module types use the ``sentence_transformers.models.*``
names, which every sentence-transformers release from 2.x on resolves.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.anatomy import anatomy_of
from plmkit.errors import ConfigError, PlmkitError
from plmkit.metrics import compute_metrics
from plmkit.models import pool

POOLINGS = ("mean", "cls", "last")
"""Pooling modes ``encode`` and the export support (each maps onto a sentence-transformers Pooling mode)."""
_ST_POOLING_FLAGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                     "last": "pooling_mode_lasttoken"}


class EmbeddingError(PlmkitError):
    """A model or input that cannot be embedded or exported; the message says how to fix it."""


def sentence_transformer_pooling(model: Any, name: str = "the model") -> str:
    """The pooling a loaded ``SentenceTransformer`` applies, as :data:`POOLINGS` names it.

    Read from its Pooling module (module 1): the ``pooling_mode`` of newer configs or the
    ``pooling_mode_*`` flags of older ones. A model without one, or with a mode ``encode`` has no form
    of (max, weighted mean, ...), is an :class:`EmbeddingError`.
    """
    config = model[1].get_config_dict() if len(model) > 1 and hasattr(model[1], "get_config_dict") else {}
    flags = {flag: mode for mode, flag in _ST_POOLING_FLAGS.items()}
    mode = config.get("pooling_mode") or next((m for flag, m in flags.items() if config.get(flag)), None)
    mode = {"lasttoken": "last"}.get(mode, mode)
    if mode not in POOLINGS:
        raise EmbeddingError(f"{name} pools with {mode or 'no Pooling module'!r}, which is not one of {POOLINGS}; "
                             "fix: score it with sentence-transformers directly")
    return mode


def _check_encode_args(sentences: Any, pooling: str, batch_size: int, max_length: int) -> list[str]:
    if isinstance(sentences, str) or not isinstance(sentences, Sequence):
        raise ConfigError(f"sentences must be a list of strings, got {type(sentences).__name__} "
                          "(wrap a single sentence in a list)")
    bad = next((i for i, s in enumerate(sentences) if not isinstance(s, str)), None)
    if bad is not None:
        raise ConfigError(f"sentence {bad} is a {type(sentences[bad]).__name__}, not a string")
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if batch_size < 1 or max_length < 2:
        raise ConfigError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}")
    return list(sentences)


def _hidden_size(model: nn.Module) -> int:
    return anatomy_of(model).hidden_size(model.config)


def _forward_fields(model: nn.Module) -> set[str]:
    """The batch fields the model's forward accepts (DistilBERT and MPNet take no token types)."""
    return set(inspect.signature(model.forward).parameters)


def _last_hidden(model: nn.Module, batch: dict[str, torch.Tensor], left_padded: bool) -> torch.Tensor:
    """(batch, seq, hidden) token states of the last layer; a causal LM runs through its base model.

    With left padding, positions count real tokens only (as in generation), so models with absolute
    position embeddings (GPT-2) see each sentence at the positions it has alone.
    """
    body = getattr(model, "base_model", model)
    fields = _forward_fields(body)
    inputs = {k: v for k, v in batch.items() if k in fields}
    if left_padded and "position_ids" in fields:
        inputs["position_ids"] = (batch["attention_mask"].long().cumsum(-1) - 1).clamp_min(0)  # (batch, seq)
    return body(**inputs).last_hidden_state


def _module_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(module, module.training) for module in model.modules()]


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of ``batch_size``, longest first, so each batch pads little.

    Callers scatter each batch's outputs back with ``out[batch] = ...``, which keeps input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def encode(model: nn.Module, tokenizer: Any, sentences: Sequence[str], pooling: str = "mean",
           batch_size: int = 64, max_length: int = 128, normalize: bool = False) -> torch.Tensor:
    """Embed ``sentences`` as a float32 CPU tensor of shape (len(sentences), hidden), in input order.

    Runs without gradients in eval mode; every sub-module's train/eval mode is restored afterwards.
    """
    sentences = _check_encode_args(sentences, pooling, batch_size, max_length)
    if not sentences:
        return torch.empty(0, _hidden_size(model))
    features = tokenizer(sentences, truncation=True, max_length=max_length)
    rows = [{k: features[k][i] for k in features} for i in range(len(sentences))]
    device = next(model.parameters()).device
    out = torch.empty(len(sentences), _hidden_size(model))
    left_padded = getattr(tokenizer, "padding_side", "right") == "left"
    modes = _module_modes(model)
    model.eval()
    try:
        with torch.no_grad():
            for chosen in length_batches([len(row["input_ids"]) for row in rows], batch_size):
                batch = tokenizer.pad([rows[i] for i in chosen], return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                hidden = _last_hidden(model, batch, left_padded).float()  # (batch, seq, hidden)
                out[chosen] = pool(hidden, batch["attention_mask"], pooling).cpu()
    finally:
        for module, was_training in modes:
            module.train(was_training)
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def _check_pairs(pairs: Any) -> list[tuple[str, str, float]]:
    checked = []
    for i, row in enumerate(pairs):
        if not (isinstance(row, (tuple, list)) and len(row) == 3):
            raise ConfigError(f"STS pair {i} must be (sentence_a, sentence_b, score), got {row!r}")
        a, b, score = row
        if not (isinstance(a, str) and isinstance(b, str)):
            raise ConfigError(f"STS pair {i}: both sentences must be strings, got {a!r} and {b!r}")
        try:
            checked.append((a, b, float(score)))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"STS pair {i}: score {score!r} is not a number") from error
    if len(checked) < 2:
        raise ConfigError(f"an STS evaluation needs at least 2 scored pairs, got {len(checked)}")
    return checked


class STSEvaluator:
    """``evaluator(model) -> {"spearman": s, "pearson": p}``: correlations of cosine similarity with gold scores.

    Both values are fractions in [-1, 1] (x100 for the usual STS tables). Each distinct sentence is
    encoded once. Works on any encoder ``encode`` accepts. ``pairs`` may be any iterable of
    ``(a, b, score)``, e.g. ``plmkit.tasks.load_scored_pairs(path)``. Follows the
    ``plmkit.evaluation.Evaluator`` contract.
    """

    primary_metric = "spearman"
    greater_is_better = True

    def __init__(self, pairs: Sequence[tuple[str, str, float]], tokenizer: Any, pooling: str = "mean",
                 batch_size: int = 64, max_length: int = 128, name: str = "sts") -> None:
        self.pairs = _check_pairs(pairs)
        _check_encode_args([], pooling, batch_size, max_length)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = name

    def similarities(self, model: nn.Module) -> torch.Tensor:
        """(n_pairs,) cosine similarity of each pair's two embeddings."""
        unique = list(dict.fromkeys(s for a, b, _ in self.pairs for s in (a, b)))
        index = {s: i for i, s in enumerate(unique)}
        emb = encode(model, self.tokenizer, unique, self.pooling, self.batch_size, self.max_length, normalize=True)
        left = emb[[index[a] for a, _, _ in self.pairs]]  # (n_pairs, hidden)
        right = emb[[index[b] for _, b, _ in self.pairs]]  # (n_pairs, hidden)
        return (left * right).sum(-1)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        gold = [score for _, _, score in self.pairs]
        scores = compute_metrics(self.similarities(model).double().numpy(), gold, is_regression=True)
        return {"spearman": scores["spearman"], "pearson": scores["pearson"]}


def _check_exportable(model: nn.Module) -> None:
    """Refuse a model whose weights a plain ``AutoModel`` of the same config would not load."""
    from transformers import AutoModel

    with torch.device("meta"):
        plain = AutoModel.from_config(model.config)
    extra = sorted(set(model.state_dict()) - set(plain.state_dict()))
    if extra:
        raise EmbeddingError(
            f"cannot export: the model has {len(extra)} parameters a plain {type(plain).__name__} does not "
            f"(e.g. {extra[0]!r}); merge or detach the attached method first, then export the bare encoder"
        )


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _st_modules(normalize: bool) -> list[dict[str, Any]]:
    kinds = [("", "Transformer"), ("1_Pooling", "Pooling")] + ([("2_Normalize", "Normalize")] if normalize else [])
    return [{"idx": i, "name": str(i), "path": folder, "type": f"sentence_transformers.models.{kind}"}
            for i, (folder, kind) in enumerate(kinds)]


def export_sentence_transformer(model: nn.Module, tokenizer: Any, path: str | Path, pooling: str = "mean",
                                normalize: bool = False, max_length: int = 128) -> Path:
    """Write a folder ``SentenceTransformer(path)`` loads and that embeds like ``encode`` with these settings."""
    _check_encode_args([], pooling, 1, max_length)
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise EmbeddingError(f"cannot export a {type(model).__name__}: pass the Hugging Face encoder itself")
    _check_exportable(model)
    import sentence_transformers
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "1_Pooling").mkdir(exist_ok=True)
    pooling_config = {"word_embedding_dimension": _hidden_size(model), "include_prompt": True}
    pooling_config.update({flag: mode == pooling for mode, flag in _ST_POOLING_FLAGS.items()})
    _write_json(path / "1_Pooling" / "config.json", pooling_config)
    if normalize:
        (path / "2_Normalize").mkdir(exist_ok=True)
    _write_json(path / "modules.json", _st_modules(normalize))
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    versions = {"sentence_transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__, "pytorch": torch.__version__}
    _write_json(path / "config_sentence_transformers.json",
                {"__version__": versions, "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    return path
