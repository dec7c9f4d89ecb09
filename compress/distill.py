"""Distillation loss for fine-tuning a compressed model with its dense original as the teacher.

loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
The T^2 factor keeps the gradient scale of the soft term independent of T (Hinton et al., 2015).
Regression heads (one output) use the mean squared error to the teacher's output instead of KL.

With ``hidden_weight`` > 0 the student also matches the teacher's hidden states layer by layer
(embeddings and every transformer layer), as TinyBERT-style compression does:
+ hidden_weight * mean_l ||h_l^s - h_l^t||^2 / ||h_l^t||^2 over real tokens. A task example then
carries (tokens x hidden) targets per layer instead of one label, which is what a heavily
truncated model needs to recover from a few thousand examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from plmkit.errors import ConfigError
from plmkit.textclf import loss_from_logits


def distillation_loss(teacher: nn.Module, alpha: float = 0.5, temperature: float = 2.0,
                      hidden_weight: float = 0.0) -> Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """A trainer ``loss_fn(model, batch)`` mixing the task loss with the frozen teacher's outputs."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distillation weight must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    if hidden_weight < 0:
        raise ConfigError(f"hidden-state distillation weight must be >= 0, got {hidden_weight}")
    if hidden_weight and not hasattr(teacher, "encoder_inputs"):
        raise ConfigError("hidden-state distillation needs an encoder + head classifier "
                         "(plmkit.models.build_classifier) as the teacher")
    teacher.eval().requires_grad_(False)

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        extra = 0.0
        if hidden_weight:
            logits, hidden = _logits_and_hidden(model, batch)
            with torch.no_grad():
                target, target_hidden = _logits_and_hidden(teacher, batch)
            extra = hidden_weight * hidden_state_loss(hidden, target_hidden, batch["attention_mask"])
        else:
            logits = model(**batch)
            with torch.no_grad():
                target = teacher(**batch)
        logits, target = logits.float(), target.float()
        hard = loss_from_logits(logits, batch["labels"])
        if logits.shape[-1] == 1:
            soft = F.mse_loss(logits, target)
        else:
            soft = F.kl_div(F.log_softmax(logits / temperature, -1), F.softmax(target / temperature, -1),
                            reduction="batchmean") * temperature**2
        return (1.0 - alpha) * hard + alpha * soft + extra

    return loss_fn


def _logits_and_hidden(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Logits and every hidden state (embeddings first) of an encoder + head classifier, in one pass."""
    out = model.encoder(**model.encoder_inputs(**batch), output_hidden_states=True)
    return model.head(out.last_hidden_state, batch["attention_mask"]), out.hidden_states


def hidden_state_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                      attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers of ||h_s - h_t||^2 / ||h_t||^2 on real tokens (scale-free across layers)."""
    if len(student) != len(teacher):
        raise ConfigError(f"hidden-state distillation needs the same depth: student has {len(student) - 1} "
                         f"layers, teacher {len(teacher) - 1}")
    # (batch, tokens) -> (batch, tokens, 1)
    mask = attention_mask.unsqueeze(-1).float()
    losses = [((s.float() - t.float()).square() * mask).sum() / (t.float().square() * mask).sum().clamp_min(1e-12)
              for s, t in zip(student, teacher, strict=True)]
    return torch.stack(losses).mean()
