"""Stage 2 with soft prompts: no transfer, vanilla prompt transfer, and PANDA (transfer + distillation).

* ``prompt``: a fresh soft prompt and head on the frozen backbone, trained on the target.
* ``prompt-transfer``: the target prompt starts as a trained source prompt (the head starts fresh);
  with several sources, the top-k by transferability, averaged with weights ∝ T (early fusion).
* ``panda``: teacher = the ``prompt-transfer`` model after training on the target (frozen; with
  ``--compare`` the same seed's prompt-transfer model, not trained twice); student = a fresh prompt
  (``student_init="fresh"``, default) or the source prompt, trained with the core distillation loss

      L = CE(z_s, y) + β(s, t) · mean_(batch, class) (z_s - z_t)^2

  where β(s, t) = β_max · clip(T(s, t), 0, 1) and T is the transferability metric
  (``mtl.transferability``). A regression target uses MSE for the task term too.

Sources are prompt entries of the store (``SourceRef`` of kind ``prompt``); the target's own trained
prompt (the last ref when ``include_target_adapter``) is never a candidate: it supplies the target's
task embedding. ``--sources auto`` ranks every prompt entry the store holds for this backbone and
prompt config by T and keeps the top k.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.losses import DistillationLoss
from plmkit.mtl.prompts import KIND, PromptConfig, attach_prompts, load_prompt_tensors, read_prompts
from plmkit.mtl.registry import TransferMethod, register_transfer_method
from plmkit.mtl.transferability import beta_from_transferability, embed_tasks, probe_batch, similarity_matrix

logger = logging.getLogger("plmkit")
STUDENT_INITS = ("fresh", "source")


@dataclass
class PromptMethodConfig:
    """The soft prompt a prompt method trains on the target (and its sources were trained with)."""

    default_learning_rate: ClassVar[float] = 3e-2
    cli_flags: ClassVar[dict[str, str]] = {"mode": "prompt_mode", "length": "prompt_length", "init": "prompt_init",
                                           "init_text": "prompt_init_text",
                                           "reparameterize": "prompt_reparameterize"}

    mode: str = "prompt"
    """Soft prompt kind: 'prompt' (input embeddings) or 'prefix' (per-layer key/value prefixes)."""
    length: int = 20
    """Prompt vectors (or prefix positions per layer)."""
    init: str = "vocab"
    """Fresh prompt init: 'random', 'vocab' or 'text'."""
    init_text: str = ""
    """Words whose embeddings initialise a fresh prompt when --prompt-init is 'text'."""
    reparameterize: bool = False
    """Deep prefixes through an MLP (P-tuning v2 reparameterisation)."""

    def __post_init__(self) -> None:
        self.source_config()  # validates the prompt fields

    def source_config(self) -> PromptConfig:
        """The stage-1 prompt config of the sources (also the shape of the target prompt)."""
        return PromptConfig(mode=self.mode, length=self.length, init=self.init, init_text=self.init_text,
                            reparameterize=self.reparameterize)


@dataclass
class PandaConfig(PromptMethodConfig):
    """Prompt transfer and PANDA: which sources, how much distillation."""

    cli_flags: ClassVar[dict[str, str]] = {**PromptMethodConfig.cli_flags, "top_k": "panda_top_k",
                                           "beta_max": "panda_beta_max", "student_init": "panda_student_init",
                                           "probe_size": "panda_probe_size"}

    top_k: int = 1
    """Sources kept after ranking by transferability (k > 1: their prompts averaged, weights ∝ T)."""
    beta_max: float = 1.0
    """β(s, t) = beta_max · clip(T(s, t), 0, 1): the distillation weight at full transferability."""
    student_init: str = "fresh"
    """PANDA student prompt: 'fresh' (as --method prompt) or 'source' (as the teacher's start)."""
    probe_size: int = 64
    """Target training rows on which the transferability metric compares prompts."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_k < 1:
            raise ConfigError(f"--panda-top-k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.beta_max < float("inf"):
            raise ConfigError(f"--panda-beta-max must be a finite number >= 0, got {self.beta_max}")
        if self.student_init not in STUDENT_INITS:
            raise ConfigError(f"--panda-student-init must be one of {STUDENT_INITS}, got {self.student_init!r}")
        if self.probe_size < 1:
            raise ConfigError(f"--panda-probe-size must be >= 1, got {self.probe_size}")


def attach_fresh_prompt(model: nn.Module, config: PromptMethodConfig, tokenizer: Any = None):
    return attach_prompts(model, config.source_config(), tokenizer=tokenizer)


# ------------------------------------------------------------------------------ sources
@dataclass
class Ranked:
    """A candidate source prompt with its transferability to the target."""

    name: str
    path: str
    tensors: dict[str, torch.Tensor]
    transferability: float


def _auto_refs(setup: Any, backbone: Any, config: PromptConfig, target_name: str) -> list[Any]:
    """Every prompt entry the store holds for this backbone and prompt config, one per task."""
    from plmkit.mtl.store import AdapterStore
    from plmkit.mtl.transfer import SourceRef
    from plmkit.saving import ModuleFolderError

    refs, seen = [], {target_name}
    for entry in AdapterStore(setup.store).list(backbone=backbone.name, kind=KIND):
        if entry.task in seen:
            continue
        try:
            found, _ = read_prompts(entry.path, backbone.model, f"store entry {entry.key}", backbone.name)
        except ModuleFolderError:
            continue
        if found == config:
            seen.add(entry.task)
            refs.append(SourceRef(entry.task, str(entry.path), entry.key, KIND))
    return refs


def rank_sources(refs: list[Any], backbone: Any, data: Any, setup: Any, config: PandaConfig) -> list[Ranked]:
    """Candidate sources (target's own prompt excluded) sorted by transferability to the target."""
    from plmkit.mtl.pipeline import _display_name

    target_name = _display_name(setup.target)
    own = [r for r in refs if r.name == target_name]
    candidates = [r for r in refs if r.name != target_name]
    if setup.sources.strip() == "auto":
        candidates = _auto_refs(setup, backbone, config.source_config(), target_name)
    if not candidates:
        raise ConfigError(f"no source prompt to transfer to {target_name}: pass --sources A,B (or 'auto' "
                          "with prompts of this backbone and prompt config in the store)")
    prompts = [read_prompts(r.path, backbone.model, f"source prompt {r.name}", backbone.name) for r in candidates]
    if not own:  # no target prompt: no metric, keep the given order
        logger.info("transferability: no target prompt (--no-include-target-adapter); sources unranked")
        return [Ranked(r.name, r.path, t, 1.0) for r, (_, t) in zip(candidates, prompts, strict=True)]
    target_prompt = read_prompts(own[0].path, backbone.model, "target prompt", backbone.name)
    batch = probe_batch(data.train, data.collator, config.probe_size, next(backbone.model.parameters()).device)
    embeddings = embed_tasks(backbone.model, [target_prompt, *prompts], batch)
    similarity = similarity_matrix(embeddings)[0, 1:].tolist()
    ranked = [Ranked(r.name, r.path, t, s) for r, (_, t), s in zip(candidates, prompts, similarity, strict=True)]
    ranked.sort(key=lambda r: -r.transferability)
    logger.info("transferability to %s: %s", target_name,
                ", ".join(f"{r.name} {r.transferability:.3f}" for r in ranked))
    return ranked


def fused_prompt(chosen: list[Ranked]) -> dict[str, torch.Tensor]:
    """Early fusion: Σ_i w_i π_i with w ∝ max(T_i, 0) (uniform when none is positive)."""
    weights = torch.tensor([max(r.transferability, 0.0) for r in chosen])
    weights = weights / weights.sum() if weights.sum() > 0 else torch.full((len(chosen),), 1.0 / len(chosen))
    return {k: sum(w * r.tensors[k].float() for w, r in zip(weights, chosen, strict=True)) for k in chosen[0].tensors}


def _chosen(refs, backbone, data, setup, config: PandaConfig) -> tuple[list[Ranked], dict[str, torch.Tensor], float]:
    chosen = rank_sources(refs, backbone, data, setup, config)[:config.top_k]
    return chosen, fused_prompt(chosen), sum(r.transferability for r in chosen) / len(chosen)


def _describe(outcome: dict[str, Any], chosen: list[Ranked], transferability: float) -> dict[str, Any]:
    outcome["transfer_sources"] = [r.name for r in chosen]
    outcome["transferability"] = {r.name: r.transferability for r in chosen}
    outcome["mean_transferability"] = transferability
    return outcome


# ------------------------------------------------------------------------------ stage-2 runs
def _initialised(config: PromptMethodConfig, tensors: dict[str, torch.Tensor]):
    def attach(model: nn.Module):
        handle = attach_prompts(model, config.source_config())
        load_prompt_tensors(handle, tensors, "source prompt (transfer init)")
        return handle

    return attach


def run_prompt_transfer(method, seed, refs, backbone, data, setup, base, run, outcomes) -> dict[str, Any]:
    """Vanilla prompt transfer: the target prompt starts from the (fused) source prompt; fresh head."""
    from plmkit.mtl.pipeline import run_method

    config = setup.method_config(method)
    chosen, tensors, transferability = _chosen(refs, backbone, data, setup, config)
    outcome = run_method(method, seed, refs, backbone, data, setup, base, run, attach=_initialised(config, tensors))
    return _describe(outcome, chosen, transferability)


def run_panda(method, seed, refs, backbone, data, setup, base, run, outcomes) -> dict[str, Any]:
    """Teacher = prompt transfer trained on the target (reused from ``outcomes`` when there); student
    trained with CE + β · MSE(student logits, teacher logits), β from the transferability."""
    from plmkit.mtl.pipeline import run_method

    config = setup.method_config(method)
    chosen, tensors, transferability = _chosen(refs, backbone, data, setup, config)
    names = [r.name for r in chosen]
    teacher = next((o for o in outcomes if o["method"] == "prompt-transfer" and o["seed"] == seed
                    and o.get("transfer_sources") == names), None)
    if teacher is None:
        logger.info("panda: training the teacher (prompt transfer from %s), seed %d", ", ".join(names), seed)
        teacher = run_method("prompt-transfer", seed, refs, backbone, data, setup, base, run,
                             attach=_initialised(config, tensors))
    beta = beta_from_transferability(transferability, config.beta_max)
    loss = DistillationLoss(teacher["_classifier"], beta=beta, soft="mse")
    student = _initialised(config, tensors) if config.student_init == "source" else (
        lambda model: attach_fresh_prompt(model, config, backbone.tokenizer))
    outcome = run_method(method, seed, refs, backbone, data, setup, base, run, attach=student, loss=loss)
    outcome.update(beta=beta, teacher_test=teacher["test"])
    return _describe(outcome, chosen, transferability)


register_transfer_method(TransferMethod("prompt", PromptMethodConfig, attach=attach_fresh_prompt, source_kinds=()))
register_transfer_method(TransferMethod("prompt-transfer", PandaConfig, run=run_prompt_transfer, source_kinds=(KIND,)))
register_transfer_method(TransferMethod("panda", PandaConfig, run=run_panda, source_kinds=(KIND,)))
