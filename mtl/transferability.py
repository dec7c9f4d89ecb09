"""Prompt transferability: which trained source prompt helps a target, and by how much to distil.

**Task embedding (``metric="activation"``).** For a task τ with trained prompt π_τ, run the frozen backbone on a fixed probe
set X (token rows) with and without the prompt, mean-pool each layer's states over the real tokens
of every probe row, and take the shift the prompt causes:

    δ_l(τ) = mean_{x∈X} [ pool(h_l(x; π_τ)) - pool(h_l(x; π_0)) ]      (hidden,) per layer l = 1..L
    e(τ)   = concat_l  δ_l(τ) / ||δ_l(τ)||                              (L · hidden,)

π_0 is a content-free prompt of the same shape (every vector the mean word embedding; zero
prefixes). Measuring from "no prompt" instead was tried first: the shift is then dominated by the
generic effect of P extra positions (every prompt dilutes attention alike) and random prompts on a
tiny model all scored T ≈ 1.000. Each layer counts equally (the per-layer normalisation keeps deep layers, whose states are larger,
from dominating). The embedding says how the prompt steers the model's activations; the backbone's
own representation of X cancels in the difference, so two prompts are compared on what they *do*,
not on the probe text. It works alike for prompt tuning and deep prefixes (a prompt's vectors live
in a space the model reads, prefixes in per-layer key/value spaces — their weights cannot be
compared across modes, their effects can).

**Neuron stimulation (``metric="neurons"`` / ``"neurons-shift"``).** A second reading
of "the frozen model's activations under each prompt": how often each feed-forward neuron fires. For
every layer l, u_l is the input of the FFN's output projection (the post-activation intermediate,
``intermediate`` wide; for gated MLPs the gated product) and a neuron fires where u_l > 0. Its rate is
taken at the prompt's P positions over all probe rows (prompt tuning: the prompt's own stimulation of
the model), or over the real tokens for deep prefixes, which add no positions:

    r_l(τ) = mean_{x∈X, p≤P} 1[u_l(x; π_τ)_p > 0]                      (intermediate,) in [0, 1]
    e(τ)   = concat_l  r_l(τ) / ||r_l(τ)||                               ("neurons": T ∈ [0, 1])
    e(τ)   = concat_l  Δ_l / ||Δ_l||,  Δ_l = r_l(τ) - r_l(π_0)            ("neurons-shift": T ∈ [-1, 1])

The first is the overlap of firing patterns itself (rates are never negative, so T ≥ 0 and β is never
clipped to 0); the second removes what every prompt of this shape stimulates alike, as ``activation`` does.
The rows of ``METRICS`` name the three; ``--panda-metric`` and ``plmkit transferability --metric`` pick one.
The default is ``neurons`` (``DEFAULT_METRIC``): on 32 measured pairs it was the one whose top-ranked source
was most often the best; ``activation``, the first default, ranked sources against their gains (docs/panda.md).

**Metric.** T(s, t) = cos(e(s), e(t)) ∈ [-1, 1]: symmetric, 1 on the diagonal, for one probe set X.
The matrix command pools ``probe_size`` rows of every listed task into X (so the matrix is
symmetric); ranking candidate sources for one target uses the target's own training rows.
The weight-space alternative (cosine of the mean prompt vectors, prompt mode only) is
``prompt_weight_similarity``; the benchmark reports both.

**β as a function of the metric.** PANDA's distillation weight for the pair (s, t) is

    β(s, t) = β_max · clip(T(s, t), 0, 1)

so a source that steers the model like the target's own prompt distils fully, an unrelated or
opposed one (T ≤ 0) not at all and the student falls back to plain prompt tuning on the labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from plmkit.anatomy import locate
from plmkit.backbones import DEFAULT_ENCODER, load_encoder
from plmkit.errors import ConfigError
from plmkit.models import build_classifier
from plmkit.mtl.prompts import KIND, PromptConfig, attach_prompts, load_prompt_tensors, read_prompts
from plmkit.report import plot_heatmap
from plmkit.tasks import load_task
from plmkit.textclf import PadCollator, encode_split


def beta_from_transferability(similarity: float, beta_max: float = 1.0) -> float:
    """β(s, t) = β_max · clip(T, 0, 1)."""
    return float(beta_max * min(1.0, max(0.0, similarity)))


@torch.no_grad()
def _pooled_layers(model: nn.Module, config: PromptConfig, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(layers, hidden): every layer's states mean-pooled over real tokens, averaged over the probe rows."""
    inputs = build_classifier(model, 2).encoder_inputs(**batch)
    hidden = model(**inputs, output_hidden_states=True).hidden_states[1:]  # L × (batch, seq, hidden)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (batch, seq, 1)
    pooled = [((h.float() * mask).sum(1) / mask.sum(1).clamp_min(1.0)).mean(0) for h in hidden]
    return torch.stack(pooled)


@torch.no_grad()
def _firing_rates(model: nn.Module, config: PromptConfig, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(layers, intermediate): how often each feed-forward neuron fires (u > 0) at the prompt's positions
    (prompt tuning) or at the real tokens (deep prefixes), over the probe rows."""
    located = locate(model)
    projection = located.anatomy.residual_linears[1]  # the FFN output linear; its input is u
    captured: list[torch.Tensor] = []
    hooks = [layer.get_submodule(projection).register_forward_pre_hook(
        lambda _module, args: captured.append(args[0].detach())) for layer in located.layers]
    try:
        model(**build_classifier(model, 2).encoder_inputs(**batch))
    finally:
        for hook in hooks:
            hook.remove()
    rates = []
    for u in captured:  # (batch, P + seq, intermediate) with a prompt, (batch, seq, intermediate) with prefixes
        fired = (u > 0).float()
        if config.mode == "prompt":
            rates.append(fired[:, :config.length].mean((0, 1)))
        else:
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (batch, seq, 1)
            rates.append((fired * mask).sum((0, 1)) / mask.sum().clamp_min(1.0))
    return torch.stack(rates)


@dataclass(frozen=True)
class TaskMetric:
    """One way to turn a trained prompt into a task embedding (a row of ``METRICS``)."""

    states: Callable[[nn.Module, PromptConfig, dict[str, torch.Tensor]], torch.Tensor]
    """(model with the prompt attached, its config, probe batch) -> (layers, width)."""
    from_neutral: bool
    """Measure the prompt's states as a shift from the content-free prompt's."""
    summary: str


METRICS: dict[str, TaskMetric] = {
    "activation": TaskMetric(_pooled_layers, True, "layer states mean-pooled over the real tokens, as a shift "
                                                   "from a content-free prompt"),
    "neurons": TaskMetric(_firing_rates, False, "feed-forward neuron firing rates at the prompt's positions "
                                                "(the default)"),
    "neurons-shift": TaskMetric(_firing_rates, True, "feed-forward firing rates as a shift from a content-free "
                                                     "prompt"),
}


DEFAULT_METRIC = "neurons"
"""Measured on 32 source-target pairs (docs/panda.md): 'activation' ranked sources against their gains
(Spearman -0.30) and its top-ranked source lost 0.58 points on average; 'neurons' was near zero (+0.07)
but its top-ranked source was the best one on 3 of 4 targets (+1.28 points on average)."""


def check_metric(name: str, flag: str = "--metric") -> TaskMetric:
    """The row of ``METRICS`` called ``name``, or a ConfigError that lists the rows."""
    if name not in METRICS:
        raise ConfigError(f"{flag} must be one of {', '.join(METRICS)} (" +
                          "; ".join(f"{k}: {m.summary}" for k, m in METRICS.items()) + f"), got {name!r}")
    return METRICS[name]


def neutral_prompt(model: nn.Module, tensors: dict[str, torch.Tensor], config: PromptConfig) -> dict[str, torch.Tensor]:
    """A content-free prompt of the same shape: every vector the mean word embedding (prompt mode), or
    all zeros (prefixes). Shifts are measured from it, so the generic effect of P extra positions
    (attention diluted alike by any prompt) cancels and only the prompt's content remains."""
    if config.mode != "prompt":
        return {k: torch.zeros_like(v) for k, v in tensors.items()}
    mean = locate(model).base.get_input_embeddings().weight.detach().float().mean(0)  # (hidden,)
    return {k: mean.expand_as(v).clone() for k, v in tensors.items()}


@torch.no_grad()
def _prompted_states(model: nn.Module, config: PromptConfig, tensors: dict[str, torch.Tensor],
                     batch: dict[str, torch.Tensor], metric: str = DEFAULT_METRIC) -> torch.Tensor:
    was_training = model.training
    model.eval()
    handle = attach_prompts(model, replace_init(config), freeze=False)
    try:
        load_prompt_tensors(handle, tensors, "transferability probe")
        return check_metric(metric).states(model, config, batch)
    finally:
        handle.detach()
        model.train(was_training)


@torch.no_grad()
def task_embedding(model: nn.Module, config: PromptConfig, tensors: dict[str, torch.Tensor],
                   batch: dict[str, torch.Tensor], plain: torch.Tensor | None = None,
                   metric: str = DEFAULT_METRIC) -> torch.Tensor:
    """e(τ) of the prompt ``tensors`` on the probe ``batch`` under ``metric`` (a row of ``METRICS``);
    ``plain``: the neutral prompt's states under the same metric, for the metrics measured from it."""
    states = _prompted_states(model, config, tensors, batch, metric)  # (layers, width)
    if check_metric(metric).from_neutral:
        if plain is None:
            plain = _prompted_states(model, config, neutral_prompt(model, tensors, config), batch, metric)
        states = states - plain
    return (states / states.norm(dim=-1, keepdim=True).clamp_min(1e-12)).flatten()


def replace_init(config: PromptConfig) -> PromptConfig:
    from dataclasses import replace

    return replace(config, init="random") if config.mode == "prompt" else config


def similarity_matrix(embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
    """(n, n) cosine similarities of task embeddings; symmetric, ones on the diagonal."""
    stacked = F.normalize(torch.stack([e.float() for e in embeddings]), dim=-1)  # (n, dim)
    matrix = stacked @ stacked.T
    return ((matrix + matrix.T) / 2).clamp(-1.0, 1.0)


def prompt_weight_similarity(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine of the flattened prompt tensors (weight space; same mode and shape only)."""
    flat_a = torch.cat([a[k].float().flatten() for k in sorted(a)])
    flat_b = torch.cat([b[k].float().flatten() for k in sorted(b)])
    return float(F.cosine_similarity(flat_a, flat_b, dim=0))


def probe_batch(features: Sequence[dict[str, Any]], collator: Any, size: int, device: Any = None
                ) -> dict[str, torch.Tensor]:
    """The first ``size`` rows of ``features`` (already a seeded subsample) as one padded batch."""
    batch = collator(list(features[:size]))
    batch.pop("labels", None)
    return {k: v.to(device) if device is not None else v for k, v in batch.items()}


def embed_tasks(model: nn.Module, prompts: Sequence[tuple[PromptConfig, dict[str, torch.Tensor]]],
                batch: dict[str, torch.Tensor], metric: str = DEFAULT_METRIC) -> list[torch.Tensor]:
    """Task embeddings of several trained prompts on one probe batch (the plain pass computed once)."""
    if not prompts:
        return []
    config, tensors = prompts[0]
    reparam = config.reparameterize  # an MLP prefix: each task's own MLP on a zero embedding
    plain = None
    if check_metric(metric).from_neutral and not reparam:
        plain = _prompted_states(model, config, neutral_prompt(model, tensors, config), batch, metric)
    return [task_embedding(model, c, t, batch, plain, metric) for c, t in prompts]


# ------------------------------------------------------------------------------ the matrix job
@dataclass
class TransferabilitySetup:
    """``plmkit transferability``: the source × target matrix of the metric over trained task prompts."""

    tasks: str = "rotten-tomatoes,tweet-sentiment,bbc-topic,rt-subjectivity"
    """Comma-separated tasks (built-in names, data files/folders); each gets a stored prompt."""
    backbone: str = DEFAULT_ENCODER
    """A bundled asset name, a local model folder, or a hub id."""
    store: str | None = None
    """Store folder (default: $PLMKIT_ADAPTER_STORE or <plmkit cache>/adapter-store)."""
    max_length: int = 128
    data_seed: int = 0
    source_max_train_samples: int | None = 2000
    """Training examples per task prompt (0 uses all)."""
    source_max_eval_samples: int | None = 1000
    source_epochs: int = 5
    source_learning_rate: float = 3e-2
    prompt_mode: str = "prompt"
    """'prompt' (input embeddings) or 'prefix' (per-layer key/value prefixes)."""
    prompt_length: int = 20
    probe_size: int = 16
    """Training rows of each task pooled into the one probe set (the matrix is symmetric for it)."""
    metric: str = DEFAULT_METRIC
    """Task embedding: 'neurons' (FFN firing rates at the prompt), 'activation' (layer-state shift) or
    'neurons-shift'."""

    def __post_init__(self) -> None:
        check_metric(self.metric)

    def task_list(self) -> list[str]:
        names = [t.strip() for t in self.tasks.split(",") if t.strip()]
        if len(names) < 2:
            raise ConfigError("--tasks needs at least two comma-separated tasks")
        return names

    def prompt_config(self) -> PromptConfig:
        return PromptConfig(mode=self.prompt_mode, length=self.prompt_length,
                            init="vocab" if self.prompt_mode == "prompt" else "random")


def _probe_features(task: Any, tokenizer: Any, max_length: int, size: int) -> list[dict[str, Any]]:
    rows = task.train.select(range(min(size, len(task.train))))
    features = encode_split(rows, task.text_fields, task.label_field, tokenizer, max_length, task.is_regression)
    return [{**f, "labels": torch.tensor(0)} for f in features]  # labels unused; one dtype across tasks


def run_transferability(setup: TransferabilitySetup, base: Any, run: Any) -> dict[str, Any]:
    """Train or reuse a prompt per task, embed each on one pooled probe set, write the matrix."""
    from plmkit.mtl.pipeline import TransferSetup, _display_name, _limit, prepare_source
    from plmkit.mtl.store import AdapterStore

    names = setup.task_list()
    backbone = load_encoder(setup.backbone)
    store = AdapterStore(setup.store)
    transfer = TransferSetup(sources=",".join(names), target=names[0], backbone=setup.backbone, store=setup.store,
                             max_length=setup.max_length, data_seed=setup.data_seed,
                             source_max_train_samples=setup.source_max_train_samples,
                             source_max_eval_samples=setup.source_max_eval_samples,
                             source_epochs=setup.source_epochs, source_learning_rate=setup.source_learning_rate)
    config = setup.prompt_config()
    refs = [prepare_source(backbone, name, transfer, base, store, run, KIND, config=config)[0] for name in names]
    collator = PadCollator(backbone.tokenizer.pad_token_id or 0)
    probe = [f for name in names for f in _probe_features(
        load_task(name, seed=setup.data_seed, max_train_samples=_limit(setup.source_max_train_samples)),
        backbone.tokenizer, setup.max_length, setup.probe_size)]
    batch = probe_batch(probe, collator, len(probe), next(backbone.model.parameters()).device)
    prompts = [read_prompts(r.path, backbone.model, f"prompt {r.name}", backbone.name) for r in refs]
    matrix = similarity_matrix(embed_tasks(backbone.model, prompts, batch, setup.metric)).tolist()
    labels = [_display_name(n) for n in names]
    plot_heatmap(matrix, labels, labels, run.path / "transferability.png",
                 title=f"transferability T(source, target), {setup.metric}", colorbar_label="cosine of task embeddings")
    metrics = {"tasks": labels, "matrix": matrix, "sources": [asdict(r) for r in refs],
               "prompt": asdict(config), "probe_rows": len(probe), "metric": setup.metric, "backbone": backbone.name,
               "plots": {"heatmap": "transferability.png"}}
    run.write_json("config.json", {"job": "transferability", "setup": asdict(setup), "trainer": asdict(base)})
    run.write_json("metrics.json", metrics)
    return metrics
