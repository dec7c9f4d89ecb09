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

  With k > 1 sources ``fusion`` says where they meet. ``early`` (default): one teacher, trained from
  the T-weighted average of the k prompts, β from the mean T. ``late`` (the TKDE paper's multi-source
  form): one teacher per source s_i (prompt transfer from s_i alone, trained on the target) and

      L = CE(z_s, y) + Σ_i (β(s_i, t) / k) · mean_(batch, class) (z_s - z_(t_i))^2

  The β_i are divided by k so that the distillation weight is the teachers' mean β, in [0, β_max]
  whatever k is: the student's balance between labels and teachers does not shift with the number of
  sources (an unnormalised sum could put k · β_max on matching logits and drown the labels), while
  the teachers still weigh against each other ∝ clip(T_i, 0, 1). k identical teachers then give the
  single-teacher loss, and k = 1 is early fusion.

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
from plmkit.losses import DistillationLoss, MultiTeacherDistillationLoss, Teacher
from plmkit.mtl.prompts import KIND, PromptConfig, attach_prompts, load_prompt_tensors, read_prompts
from plmkit.mtl.registry import TransferMethod, register_transfer_method
from plmkit.mtl.transferability import (
    DEFAULT_METRIC,
    beta_from_transferability,
    check_metric,
    embed_tasks,
    probe_batch,
    similarity_matrix,
)

logger = logging.getLogger("plmkit")
STUDENT_INITS = ("fresh", "source")
FUSIONS = ("early", "late")


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
                                           "probe_size": "panda_probe_size", "fusion": "panda_fusion",
                                           "metric": "panda_metric"}

    top_k: int = 1
    """Sources kept after ranking by transferability (k > 1: combined as --panda-fusion says)."""
    beta_max: float = 1.0
    """β(s, t) = beta_max · clip(T(s, t), 0, 1): the distillation weight at full transferability."""
    student_init: str = "fresh"
    """PANDA student prompt: 'fresh' (as --method prompt) or 'source' (as the teacher's start)."""
    probe_size: int = 64
    """Target training rows on which the transferability metric compares prompts."""
    metric: str = DEFAULT_METRIC
    """Transferability metric: 'neurons' (FFN firing rates at the prompt), 'activation' (layer-state shift
    from a content-free prompt) or 'neurons-shift' (the firing rates' shift from it)."""
    fusion: str = "early"
    """Several sources: 'early' (their prompts averaged, weights ∝ T; PANDA's one teacher starts there) or
    'late' (PANDA only: one teacher per source, distillation terms weighted by β(s_i, t) / k). Prompt
    transfer and a 'source' student start from the average either way."""

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
        if self.fusion not in FUSIONS:
            raise ConfigError(f"--panda-fusion must be one of {FUSIONS}, got {self.fusion!r}")
        check_metric(self.metric, "--panda-metric")


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
    from plmkit.io import read_whole
    from plmkit.mtl.store import AdapterStore
    from plmkit.mtl.transfer import SourceRef
    from plmkit.saving import ModuleFolderError

    refs, seen = [], {target_name}
    for entry in AdapterStore(setup.store).list(backbone=backbone.name, kind=KIND):
        if entry.task in seen:
            continue
        try:
            found, _ = read_whole(entry.path, lambda path, entry=entry: read_prompts(
                path, backbone.model, f"store entry {entry.key}", backbone.name))
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
    embeddings = embed_tasks(backbone.model, [target_prompt, *prompts], batch, config.metric)
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


def _describe(outcome: dict[str, Any], chosen: list[Ranked], transferability: float,
              config: PandaConfig) -> dict[str, Any]:
    outcome["transfer_sources"] = [r.name for r in chosen]
    outcome["transferability_metric"] = config.metric
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
    return _describe(outcome, chosen, transferability, config)


def run_panda(method, seed, refs, backbone, data, setup, base, run, outcomes) -> dict[str, Any]:
    """Teacher(s) = prompt transfer trained on the target (reused from ``outcomes`` when there); student
    trained with CE + β · MSE(student logits, teacher logits), β from the transferability (late fusion:
    one such term per source, see the module docstring)."""
    from plmkit.mtl.pipeline import run_method

    config = setup.method_config(method)
    chosen, tensors, transferability = _chosen(refs, backbone, data, setup, config)
    if config.fusion == "late":
        loss, recorded = _late_fusion_loss(seed, chosen, config, refs, backbone, data, setup, base, run, outcomes)
    else:
        teacher = _teacher(seed, chosen, tensors, config, refs, backbone, data, setup, base, run, outcomes)
        beta = beta_from_transferability(transferability, config.beta_max)
        loss = DistillationLoss(teacher["_classifier"], beta=beta, soft="mse")
        recorded = {"beta": beta, "teacher_test": teacher["test"]}
    student = _initialised(config, tensors) if config.student_init == "source" else (
        lambda model: attach_fresh_prompt(model, config, backbone.tokenizer))
    outcome = run_method(method, seed, refs, backbone, data, setup, base, run, attach=student, loss=loss)
    outcome.update(fusion=config.fusion, **recorded)
    return _describe(outcome, chosen, transferability, config)


def _teacher(seed, chosen, tensors, config, refs, backbone, data, setup, base, run, outcomes,
             subfolder: str = "") -> dict[str, Any]:
    """The prompt-transfer outcome from ``chosen`` (its prompt started at ``tensors``): this seed's
    from ``outcomes`` when ``--compare`` trained it, else trained now in ``run`` (or its ``subfolder``)."""
    from plmkit.mtl.pipeline import run_method
    from plmkit.runs import RunFolder

    names = [r.name for r in chosen]
    found = next((o for o in outcomes if o["method"] == "prompt-transfer" and o["seed"] == seed
                  and o.get("transfer_sources") == names), None)
    if found is not None:
        return found
    logger.info("panda: training the teacher (prompt transfer from %s), seed %d", ", ".join(names), seed)
    folder = RunFolder(run.path / subfolder, resume=run.resume) if subfolder else run
    return run_method("prompt-transfer", seed, refs, backbone, data, setup, base, folder,
                      attach=_initialised(config, tensors))


def _late_fusion_loss(seed, chosen, config, refs, backbone, data, setup, base, run,
                      outcomes) -> tuple[MultiTeacherDistillationLoss, dict[str, Any]]:
    """One teacher per chosen source (prompt transfer from it alone; a teacher trained here trains in
    ``teachers/<source>/``) and L = CE + Σ_i β(s_i, t)/k · MSE; with what the outcome records."""
    teachers, recorded = [], []
    for source in chosen:
        outcome = _teacher(seed, [source], fused_prompt([source]), config, refs, backbone, data, setup, base,
                           run, outcomes, subfolder=f"teachers/{source.name}")
        beta = beta_from_transferability(source.transferability, config.beta_max) / len(chosen)
        teachers.append(Teacher(source.name, outcome["_classifier"], beta))
        recorded.append({"source": source.name, "transferability": source.transferability, "beta": beta,
                         "test": outcome["test"], "reused": any(o is outcome for o in outcomes)})
    loss = MultiTeacherDistillationLoss(teachers, soft="mse")
    return loss, {"beta": sum(t.weight for t in teachers), "teachers": recorded}


register_transfer_method(TransferMethod("prompt", PromptMethodConfig, attach=attach_fresh_prompt, source_kinds=()))
register_transfer_method(TransferMethod("prompt-transfer", PandaConfig, run=run_prompt_transfer, source_kinds=(KIND,)))
register_transfer_method(TransferMethod("panda", PandaConfig, run=run_panda, source_kinds=(KIND,)))
