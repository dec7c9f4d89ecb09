"""Training SCT and its baselines through the one trainer, the teacher-embedding cache and STS pair sources.

Every method trains a copy of the same student on the same sentences with the same trainer settings:

- ``sct``: self-supervised cross-view training (:mod:`plmkit.compress.sct`);
- ``sct-distill``: the same, with reference distributions from the teacher's cached embeddings;
- ``simcse``: unsupervised SimCSE, in-batch contrastive on (s, s) pairs;
- ``mse``: the student's pooled embedding (linearly mapped to the teacher's size when they differ)
  regressed onto the teacher's embedding.

Teacher embeddings are computed once per (teacher, texts, max length) and cached as safetensors under
``<plmkit cache>/teacher-embeddings/`` (or a chosen folder), keyed by a sha256 of those inputs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.compress.sct import CrossViewModel, PooledEncoder, SCTConfig, make_views
from plmkit.errors import ConfigError, PlmkitError
from plmkit.losses.cross_view import CrossViewLoss, EmbeddingMSELoss, SimCSELoss
from plmkit.trainer import Trainer, TrainerConfig, TrainResult

logger = logging.getLogger("plmkit")
METHODS = ("sct", "sct-distill", "simcse", "mse")
TEACHER_METHODS = ("sct-distill", "mse")
LEE = "lee"
"""The embedded default evaluation: the Lee document-similarity pairs of the ``lee-similarity`` asset."""


class SCTDataError(PlmkitError):
    """Training sentences or evaluation pairs that cannot be used; the message says how to fix them."""


# ------------------------------------------------------------------------------ evaluation pairs
def lee_pairs(folder: str | Path | None = None) -> list[tuple[str, str, float]]:
    """The 1,225 Lee pairs (doc_i, doc_j, mean human similarity) for i < j, from the upper triangle."""
    if folder is None:
        from plmkit.assets import fetch

        folder = fetch("lee-similarity", quiet=True)
    folder = Path(folder)
    try:
        docs = [line.strip() for line in (folder / "lee.cor").read_text(encoding="latin-1").splitlines()]
        matrix = [[float(x) for x in line.split()] for line in
                  (folder / "similarities0-1.txt").read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as error:
        raise SCTDataError(f"{folder}: the Lee files are missing or damaged ({error}); "
                           "fix: plmkit assets fetch lee-similarity --force") from error
    n = len(docs)
    if len(matrix) != n or any(len(row) != n for row in matrix):
        raise SCTDataError(f"{folder}: {n} documents but a {len(matrix)}-row similarity matrix; "
                           "fix: plmkit assets fetch lee-similarity --force")
    return [(docs[i], docs[j], matrix[i][j]) for i in range(n) for j in range(i + 1, n)]


def load_eval_pairs(spec: str) -> list[tuple[str, str, float]]:
    """``lee``, a scored-pair file (TSV/CSV/JSONL...) or a folder holding validation/test JSONL."""
    if spec == LEE:
        return lee_pairs()
    from plmkit.tasks import load_scored_pairs

    path = Path(spec).expanduser()
    if path.is_dir():
        found = [path / f"{name}.jsonl" for name in ("validation", "test") if (path / f"{name}.jsonl").is_file()]
        if not found:
            raise SCTDataError(f"{path}: a folder of scored pairs needs validation.jsonl or test.jsonl; "
                               "fix: name the file itself")
        path = found[0]
    return list(load_scored_pairs(path))


# ------------------------------------------------------------------------------ teacher
def _teacher_folder(spec: str) -> str:
    from plmkit.assets import REGISTRY, fetch

    return str(fetch(spec, quiet=True)) if spec in REGISTRY else spec


def load_teacher(spec: str, device: str = "cpu"):
    """A ``SentenceTransformer`` from a bundled asset name or any SentenceTransformer / HF model path."""
    from sentence_transformers import SentenceTransformer

    folder = _teacher_folder(spec)
    try:
        return SentenceTransformer(folder, device=device)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--teacher {spec!r} is not a SentenceTransformer or model folder ({error}); "
                          "fix: pass a bundled asset name (mpnet-base) or a local model folder") from error


def teacher_embeddings(teacher: Any, name: str, texts: Sequence[str], cache: str | Path, max_length: int = 128,
                       batch_size: int = 64) -> torch.Tensor:
    """(len(texts), teacher dim) L2-normalised teacher embeddings, computed once and cached by content."""
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(json.dumps([name, max_length, list(texts)]).encode()).hexdigest()[:24]
    path = Path(cache) / f"{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["embeddings"]
    teacher.max_seq_length = max_length
    vectors = teacher.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                             normalize_embeddings=True, show_progress_bar=False).float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": vectors.contiguous()}, str(path))
    return vectors


# ------------------------------------------------------------------------------ data
class ViewCollator:
    """Tokenizes a batch of (view1, view2, index) into what the method's model takes."""

    def __init__(self, tokenizer: Any, max_length: int, method: str, teacher: tuple | None = None) -> None:
        self.tokenizer, self.max_length, self.method, self.teacher = tokenizer, max_length, method, teacher

    def _tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))

    def __call__(self, rows: list[tuple[str, str, int]]) -> dict[str, Any]:
        index = torch.tensor([i for _, _, i in rows])
        if self.method in ("simcse", "mse"):
            batch = {"view": self._tokens([a for a, _, _ in rows])}
            if self.method == "mse":
                batch["teacher"] = self.teacher[0][index]
            return batch
        batch = {"view1": self._tokens([a for a, _, _ in rows]), "view2": self._tokens([b for _, b, _ in rows])}
        if self.method == "sct-distill":
            batch["teacher1"], batch["teacher2"] = self.teacher[0][index], self.teacher[1][index]
        return batch


def _check_sentences(sentences: Sequence[str]) -> list[str]:
    kept = [s.strip() for s in sentences if isinstance(s, str) and s.strip()]
    if not kept:
        raise SCTDataError("no training sentences (every line was empty); fix: give a file with one sentence "
                           "per line, a table with a text column, or a built-in task name")
    return kept


# ------------------------------------------------------------------------------ training
def fit_queue(config: SCTConfig, views_per_epoch: int) -> SCTConfig:
    """``config`` with K capped at the reference embeddings one queue receives per epoch (logged when capped).

    Each queue receives one view of every training sentence per epoch, so a longer queue would only hold
    earlier epochs' references of the same sentences again (stale copies of the encoder's own, or exact
    duplicates of the teacher's) and cost memory: 2 x K x dim float32 buffers, in every checkpoint too.
    """
    if config.queue_size <= views_per_epoch:
        return config
    logger.info("SCT queue size %d -> %d: each queue receives %d reference embeddings per epoch",
                config.queue_size, views_per_epoch, views_per_epoch)
    return replace(config, queue_size=views_per_epoch)


def align_width_map(model: nn.Module, tokenizer: Any, texts: Sequence[str], targets: torch.Tensor,
                    max_length: int = 128) -> bool:
    """Set ``model.width_map`` to the ridge regression of ``targets`` (len(texts), teacher dim) on the
    untrained encoder's pooled embeddings of ``texts``; False (nothing done) when the model has no such map.

    A random map from the student's width to the teacher's sends the distillation gradients into the
    encoder along random directions until it has learnt to align the two spaces, which a few dozen
    steps at lr 1e-4 do not achieve; the regression starts it aligned (docs/sct.md).
    """
    from plmkit.compress.sct import ridge_map
    from plmkit.embeddings import encode

    layer = model.width_map
    if layer is None:
        return False
    inputs = encode(model.encoder, tokenizer, list(texts), model.pooling, max_length=max_length)
    weight, bias = ridge_map(inputs, targets)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    logger.info("%s: map %d -> %d fitted to the teacher on %d texts", type(model).__name__, weight.shape[1],
                weight.shape[0], len(texts))
    return True


def build_method(method: str, encoder: nn.Module, config: SCTConfig, teacher_dim: int | None):
    """(trainable model, loss) for ``method`` on a copy of ``encoder``."""
    student = copy.deepcopy(encoder)
    if method in ("sct", "sct-distill"):
        mode = "distill" if method == "sct-distill" else "self"
        t, t_ref = config.temperatures(mode)
        model = CrossViewModel(student, config, teacher_dim if mode == "distill" else None)
        return model, CrossViewLoss(t, t_ref)
    if method == "simcse":
        return PooledEncoder(student, config.pooling), SimCSELoss()
    if method == "mse":
        return PooledEncoder(student, config.pooling, teacher_dim), EmbeddingMSELoss()
    raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def train_method(method: str, encoder: nn.Module, tokenizer: Any, sentences: Sequence[str], config: SCTConfig,
                 trainer: TrainerConfig, teacher: tuple[torch.Tensor, torch.Tensor] | None = None,
                 max_length: int = 128, view_seed: int = 0) -> tuple[nn.Module, TrainResult]:
    """Train a copy of ``encoder`` with ``method``; returns (the trained encoder, the trainer's result).

    ``teacher`` holds the teacher's embeddings of view 1 and view 2 (row i: sentence i) for ``sct-distill``
    (views from :func:`method_views`), or of the sentences themselves twice for ``mse``.
    """
    sentences = _check_sentences(sentences)
    if method in TEACHER_METHODS and teacher is None:
        raise ConfigError(f"method {method!r} needs a teacher: give --teacher (e.g. mpnet-base)")
    views = make_views(sentences, config.augment, config.augment_prob, view_seed) if method.startswith("sct") \
        else (sentences, sentences)
    rows = [(a, b, i) for i, (a, b) in enumerate(zip(*views, strict=True))]
    if method.startswith("sct"):
        config = fit_queue(config, len(rows))
    model, loss = build_method(method, encoder, config, teacher[0].shape[-1] if teacher is not None else None)
    if teacher is not None and config.align_teacher_map:
        texts = list(views[0]) + list(views[1]) if method == "sct-distill" else list(views[0])
        targets = torch.cat(teacher) if method == "sct-distill" else teacher[0]
        align_width_map(model, tokenizer, texts, targets, max_length)
    model.train()
    collate = ViewCollator(tokenizer, max_length, method, teacher)
    result = Trainer(model, loss, rows, trainer, collate_fn=collate).train()
    return model.encoder, result


def method_views(sentences: Sequence[str], config: SCTConfig, view_seed: int = 0) -> tuple[list[str], list[str]]:
    """The two views ``train_method`` builds for SCT (teacher embeddings must be computed on these)."""
    return make_views(_check_sentences(sentences), config.augment, config.augment_prob, view_seed)
