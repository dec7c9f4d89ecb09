"""Cross-view losses for sentence embeddings: SCT's queue KL, in-batch contrastive (SimCSE), embedding MSE.

SCT (self-supervised cross-view training). Each sentence has two views x1, x2. The online branch gives
z_i = normalize(h(f(x_i))) (encoder f, projector h); the reference branch gives r_i = normalize(g(x_i))
without gradient (g: the same encoder f, or a frozen teacher). D1, D2 are FIFO queues of past reference
embeddings r_1 and r_2 (K rows each, L2-normalised). The similarity distribution of a query q over a
queue D at temperature t is

    SR(q, D, t) = softmax(q . D^T / t)                      (one row of K probabilities per query)

and the loss crosses the views, with a sharper reference temperature t_ref < t:

    L = 1/2 KL(SR(r_2, D2, t_ref) || SR(z_1, D2, t)) + 1/2 KL(SR(r_1, D1, t_ref) || SR(z_2, D1, t))

with KL(P || Q) = sum_k P_k (log P_k - log Q_k), averaged over the batch. The reference distribution is
a constant target (computed from detached tensors), so gradient reaches only z.

SimCSE baseline. sentence-transformers' ``MultipleNegativesRankingLoss`` on pairs (s, s): embeddings of
the same batch twice (dropout differs), cross-entropy of scale * cos(a_i, b_j) over j with target i.

MSE distillation baseline. mean_(batch, dim) (normalize(W e_s) - e_t)^2: the student's pooled embedding,
mapped to the teacher's dimension when they differ and L2-normalised, against the teacher's (L2-normalised)
embedding of the same sentence. Without the normalisation the loss is dominated by the norm: a student
whose raw embeddings are ~7x longer than the unit-length targets is first driven to shrink them, which
wrecks the encoder (a 3-layer MiniLM cut fell from 55.9 to 15.1 STS-B Spearman when distilled from the
normalised full MiniLM that way, docs/sct.md), while cosine is all the embeddings are scored by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from plmkit.errors import ConfigError


def similarity_log_probs(queries: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """log SR(q, D, t): (batch, K) log-softmax of ``queries @ queue.T / temperature`` (rows pre-normalised)."""
    # (batch, dim) x (K, dim)^T -> (batch, K)
    return F.log_softmax(queries.float() @ queue.float().T / temperature, dim=-1)


def queue_kl(online: torch.Tensor, reference: torch.Tensor, queue: torch.Tensor, temperature: float,
             reference_temperature: float) -> torch.Tensor:
    """KL(SR(reference, D, t_ref) || SR(online, D, t)), averaged over the batch; the target is detached."""
    target = similarity_log_probs(reference.detach(), queue.detach(), reference_temperature)
    predicted = similarity_log_probs(online, queue.detach(), temperature)
    return F.kl_div(predicted, target, reduction="batchmean", log_target=True)


def cross_view_kl(online: tuple[torch.Tensor, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor],
                  queues: tuple[torch.Tensor, torch.Tensor], temperature: float,
                  reference_temperature: float) -> dict[str, torch.Tensor]:
    """SCT's symmetric loss: view 1 predicts view 2's reference distribution over D2, and vice versa."""
    (z1, z2), (r1, r2), (d1, d2) = online, reference, queues
    first = queue_kl(z1, r2, d2, temperature, reference_temperature)
    second = queue_kl(z2, r1, d1, temperature, reference_temperature)
    return {"loss": 0.5 * (first + second), "kl_view1": first.detach(), "kl_view2": second.detach()}


@dataclass(eq=False)
class CrossViewLoss:
    """``loss(model, batch)`` for SCT: ``model(**batch)`` returns online z1, z2, references r1, r2 and queues."""

    temperature: float = 0.03
    """Online (student) temperature t (> 0)."""
    reference_temperature: float = 0.02
    """Reference temperature t_ref (> 0); sharper than t in the paper."""

    def __post_init__(self) -> None:
        for name in ("temperature", "reference_temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 < value < float("inf")):
                raise ConfigError(f"cross-view {name} must be a finite number > 0, got {value!r}")

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = model(**batch)
        return cross_view_kl((out["z1"], out["z2"]), (out["r1"], out["r2"]), (out["queue1"], out["queue2"]),
                             self.temperature, self.reference_temperature)


def in_batch_contrastive(first: torch.Tensor, second: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """sentence-transformers' MultipleNegativesRankingLoss on (first_i, second_i) pairs, in-batch negatives."""
    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    return MultipleNegativesRankingLoss(None, scale=scale).compute_loss_from_embeddings([first, second], None)


@dataclass(eq=False)
class SimCSELoss:
    """``loss(model, batch)``: ``model(**batch["view"])`` twice (two dropout masks), in-batch contrastive."""

    scale: float = 20.0
    """Cosine similarities are multiplied by this (1 / temperature; 20 is sentence-transformers' default)."""

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return in_batch_contrastive(model(**batch["view"]), model(**batch["view"]), self.scale)


@dataclass(eq=False)
class EmbeddingMSELoss:
    """``loss(model, batch)``: MSE between ``model(**batch["view"])`` and the cached ``batch["teacher"]``."""

    normalize: bool = True
    """L2-normalise the student's embedding first (the cached teacher embeddings are unit length)."""

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        student = model(**batch["view"]).float()
        target = batch["teacher"].detach().float()
        if student.shape != target.shape:
            raise ConfigError(f"student embeddings {tuple(student.shape)} and teacher embeddings "
                              f"{tuple(target.shape)} differ; give the student a projection to the teacher size")
        if self.normalize:
            student = F.normalize(student, dim=-1)
        return F.mse_loss(student, target)
