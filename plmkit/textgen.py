"""Batched, seeded text generation from a causal LM (left padding, KV cache), returning only new text.

Sampling. At each step the next-token logits ``z`` become ``p = softmax(z / T)``; tokens outside
the ``top_k`` most likely (``top_k = 0``: no limit) and outside the nucleus are dropped, where the
nucleus is the smallest set of most likely tokens whose mass reaches ``top_p``. The token is then
drawn by inverse CDF: with the kept probabilities in descending order (ties in token-id order) and
``c_j`` their running sum, pick the first ``j`` with ``c_j > u * c_V`` for a uniform ``u``.
``temperature = 0`` means greedy decoding (argmax).

Seeds. Each returned sequence ``(prompt i, sample r)`` gets its own stream of uniforms, drawn on
the CPU from a generator seeded by ``(seed, i, r)`` (mixed with ``numpy.random.SeedSequence``), one
``u`` per new token. Nothing random is shared between rows, so what holds is:

- same prompts, seed and settings -> identical outputs, whatever ``batch_size`` and on any device
  the logits agree on;
- a prompt's outputs depend on its index in ``prompts`` and on ``seed``, not on its neighbours,
  except through float rounding: a padded batch computes logits that can differ from the unpadded
  ones in the last bits, which flips a draw only when ``u`` lands within that rounding of a CDF
  boundary (rare; greedy is affected only by near-exact ties).

Batching. Prompts are sorted by token count so a batch pads little, left-padded (the continuation
starts at the same column for every row), generated with the model's KV cache by a plain
decoding loop, and put back in input order. A row stops at the end-of-sequence token. A row that
has stopped leaves its batch (its KV-cache entries are dropped), so each step costs only what is
still running; the batch ends when its last row stops.

Stop strings. With ``stop`` a row also stops as soon as its new text, leading whitespace aside,
contains one of the strings (checked on the decoded text after every step, so a string split over
several tokens counts); its returned text ends right after the first such string. Stopping
changes nothing before the stop: with the stop strings a row's text is exactly the no-stop text
cut after its first stop string (each row keeps its own uniforms and its own step count).

Self-debiasing. With ``counter_prompts`` each prompt ``x_y`` (e.g. "sentence 2, which contradicts
sentence 1") comes with prompts ``x_y'`` of other labels ("... which means the same"), and the
token drawn for ``x_y`` is discouraged wherever a counter prompt makes it more likely:

    p(w)  = softmax(z(w | x_y, prefix))            (temperature 1, the model's own probabilities)
    δ(w)  = p(w) - max_y' p(w | x_y', prefix)      (every counter prompt reads the same prefix)
    p~(w) ∝ α(δ(w)) · p(w),   α(δ) = 1 if δ >= 0 else exp(λ·δ)

with decay ``λ = debias_decay``. The temperature, top-k and nucleus cut then apply to ``log p~``
exactly as to logits. Counter rows share their prompt's drawn tokens, run in the same batch with
their own KV-cache entries and leave it with their prompt, so a prompt with ``k`` counter prompts
costs ``1 + k`` rows of compute (``batch_size`` still counts only generated sequences). A prompt
with no counter prompts is sampled exactly as without self-debiasing.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from plmkit.errors import ConfigError


@dataclass
class SamplingConfig:
    """How each next token is chosen; checked on creation."""

    max_new_tokens: int = 40
    """Tokens to generate per sequence at most (fewer when end-of-sequence comes first)."""
    temperature: float = 1.0
    """Logits are divided by this; 0 means greedy decoding."""
    top_p: float = 0.9
    """Nucleus mass in (0, 1]; 1 keeps every token."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 means no limit."""
    num_return_sequences: int = 1
    """Independent samples per prompt (each with its own random stream)."""
    seed: int = 0
    """Non-negative; with the prompt's index it fixes every random draw."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] (1 = no nucleus cut), got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = no limit), got {self.top_k}")
        if self.num_return_sequences < 1:
            raise ConfigError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def row_uniforms(seed: int, prompt_index: int, sample_index: int, steps: int) -> torch.Tensor:
    """(steps,) uniforms in [0, 1) for one returned sequence; depends only on the three indices."""
    state = np.random.SeedSequence([seed, prompt_index, sample_index]).generate_state(1, dtype=np.uint64)[0]
    return torch.rand(steps, generator=torch.Generator().manual_seed(int(state)), dtype=torch.float64)


def sample_tokens(scores: torch.Tensor, uniforms: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """(rows, vocab) logits and (rows,) uniforms -> (rows,) token ids, as in the module docstring."""
    if config.greedy:
        return scores.argmax(-1)
    probs = torch.softmax(scores.double() / config.temperature, dim=-1)  # (rows, vocab)
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)  # (rows, vocab) each
    keep = torch.ones_like(sorted_p, dtype=torch.bool)
    if config.top_k:
        keep[:, config.top_k:] = False
    if config.top_p < 1:
        keep &= (sorted_p.cumsum(-1) - sorted_p) < config.top_p  # mass before a token is below top_p
    cdf = (sorted_p * keep).cumsum(-1)  # (rows, vocab)
    target = uniforms.to(cdf.device).unsqueeze(-1) * cdf[:, -1:]  # (rows, 1)
    pick = torch.searchsorted(cdf, target, right=True).clamp_max(cdf.shape[-1] - 1)  # (rows, 1)
    return order.gather(-1, pick).squeeze(-1)


def self_debiased_scores(logits: torch.Tensor, counter_logits: torch.Tensor, owner: torch.Tensor,
                         decay: float) -> torch.Tensor:
    """Scores ``log(α(δ)·p)`` of the module docstring, for the rows that own a counter row.

    ``logits`` (rows, vocab) of the prompts being sampled, ``counter_logits`` (counters, vocab) of
    the counter prompts, ``owner`` (counters,) the row each counter belongs to. Rows that own no
    counter keep their logits as they are (float64), so they sample exactly as without debiasing.
    """
    scores = logits.double()  # (rows, vocab)
    probs = torch.softmax(scores, dim=-1)
    counter_probs = torch.softmax(counter_logits.double(), dim=-1)  # (counters, vocab)
    worst = torch.full_like(probs, float("-inf")).scatter_reduce_(
        0, owner.unsqueeze(-1).expand_as(counter_probs), counter_probs, "amax")  # (rows, vocab) max over counters
    delta = probs - worst  # +inf where a row has no counter
    debiased = probs.log() + torch.where(delta < 0, decay * delta, torch.zeros_like(delta))
    has = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    has[owner] = True
    return torch.where(has.unsqueeze(-1), debiased, scores)


def stop_index(text: str, stop: Sequence[str]) -> int | None:
    """Where ``text`` ends if cut after its first stop string (leading whitespace skipped); None: no stop."""
    lead = len(text) - len(text.lstrip())
    found = [(text.find(s, lead), s) for s in stop]
    ends = [at + len(s) for at, s in found if at >= 0]
    return min(ends) if ends else None


def _check_stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) and s for s in stop):
        raise ConfigError(f"stop must be a string or a list of non-empty strings (e.g. ['\"', '\\n']), got {stop!r}")
    return list(stop)


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ConfigError(f"prompts must be a list of strings, got {type(prompts).__name__} "
                          "(wrap a single prompt in a list)")
    if not prompts:
        raise ConfigError("prompts is empty: pass at least one prompt")
    bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()), None)
    if bad is not None:
        raise ConfigError(f"prompt {bad} is {prompts[bad]!r}: every prompt must be a non-blank string")
    return list(prompts)


def _check_counters(counter_prompts: Any, count: int, decay: float) -> list[list[str]]:
    """One list of counter prompts per prompt (empty lists without self-debiasing)."""
    if counter_prompts is None:
        return [[] for _ in range(count)]
    if isinstance(counter_prompts, str) or not isinstance(counter_prompts, Sequence) \
            or len(counter_prompts) != count:
        raise ConfigError(f"counter_prompts must hold one list of prompts per prompt ({count}), "
                          f"got {counter_prompts!r:.80}")
    if not decay > 0:
        raise ConfigError(f"debias_decay must be > 0 (the paper's value is 100), got {decay}")
    checked = []
    for i, extra in enumerate(counter_prompts):
        if isinstance(extra, str) or not isinstance(extra, Sequence) \
                or not all(isinstance(c, str) and c.strip() for c in extra):
            raise ConfigError(f"counter_prompts[{i}] must be a list of non-blank strings "
                              f"(wrap a single prompt in a list), got {extra!r:.80}")
        checked.append(list(extra))
    return checked


def _prompt_texts(tokenizer: Any, prompts: list[str], chat_template: bool) -> list[str]:
    """Each prompt as the model reads it; with ``chat_template`` a user turn plus the assistant cue."""
    if not chat_template:
        return prompts
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat_template=True but this tokenizer has no chat template; "
                          "pass chat_template=False or use an instruction-tuned model that ships one")
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set() if eos is None else {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}


def _generate_batch(backbone: Any, rows: list[tuple[str, int, int]], config: SamplingConfig,
                    add_special_tokens: bool, stop: list[str], counters: list[list[str]] | None = None,
                    decay: float = 0.0) -> list[str]:
    """Generate one batch of (text, prompt index, sample index) rows; the new text of each.

    A KV-cache decoding loop: step 0 reads the left-padded prompts (positions count real tokens
    only, ``cumsum(mask) - 1``), every later step one new token per live row. A row that draws an
    end-of-sequence token or completes a stop string leaves the batch: its entries of the cache,
    mask and positions are dropped, so the next steps compute only the rows still running.

    ``counters[j]``: row ``j``'s counter prompts (self-debiasing). The forward batch holds the live
    rows first, in order, then every live row's counter rows, which are fed their row's tokens.
    """
    from transformers import DynamicCache

    model, tokenizer = backbone.model, backbone.tokenizer
    counters = counters or [[] for _ in rows]
    texts = [text for text, _, _ in rows] + [c for extra in counters for c in extra]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    device = next(model.parameters()).device
    step_ids = batch["input_ids"].to(device)  # (forward rows, width), then (forward rows, 1)
    mask = batch["attention_mask"].to(device)  # (forward rows, width + step)
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)  # (forward rows, width), then (forward rows, 1)
    uniforms = torch.stack([row_uniforms(config.seed, i, r, config.max_new_tokens) for _, i, r in rows])
    live = torch.arange(len(rows))  # (live,) each live row's index in ``rows``
    owner = torch.tensor([j for j, extra in enumerate(counters) for _ in extra], dtype=torch.long)
    # owner: (counter rows,) position in ``live`` of each counter row's row
    eos, new = _eos_ids(tokenizer, model), [[] for _ in rows]
    cache = DynamicCache(config=model.config)
    accepts = inspect.signature(model.forward).parameters
    extra_args = {"cache" if "cache" in accepts else "past_key_values": cache, "use_cache": True}
    if "logits_to_keep" in accepts:
        extra_args["logits_to_keep"] = 1
    for step in range(config.max_new_tokens):
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                       **extra_args).logits[:, -1].float()  # (forward rows, vocab)
        scores = logits[:len(live)]  # (live, vocab)
        if len(owner):
            scores = self_debiased_scores(scores, logits[len(live):], owner.to(device), decay)
        tokens = sample_tokens(scores, uniforms[live, step], config)  # (live,)
        running = []
        for row, token in zip(live.tolist(), tokens.tolist(), strict=True):
            if token in eos:
                running.append(False)
                continue
            new[row].append(token)
            running.append(not stop or stop_index(tokenizer.decode(new[row], skip_special_tokens=True), stop) is None)
        keep = torch.tensor(running)  # (live,)
        if step == config.max_new_tokens - 1 or not keep.any():
            break
        if not keep.all():
            index = torch.cat([keep, keep[owner]]).nonzero().flatten()  # (still live forward rows,)
            on_device = index.to(device)
            cache.batch_select_indices(on_device)
            mask, positions = mask[on_device], positions[on_device]
            owner = (keep.long().cumsum(0) - 1)[owner[keep[owner]]]  # positions among the rows kept
            live, tokens = live[keep], tokens[keep.to(tokens.device)]
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
        positions = positions[:, -1:] + 1
        step_ids = torch.cat([tokens, tokens[owner.to(tokens.device)]]).unsqueeze(-1)
    decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [text[:stop_index(text, stop)] for text in decoded]  # [:None] keeps a row with no stop whole


def generate(backbone: Any, prompts: Sequence[str], max_new_tokens: int = 40, temperature: float = 1.0,
             top_p: float = 0.9, top_k: int = 0, num_return_sequences: int = 1, batch_size: int = 32,
             seed: int = 0, chat_template: bool = False, stop: str | Sequence[str] | None = None,
             counter_prompts: Sequence[Sequence[str]] | None = None, debias_decay: float = 100.0) -> list[list[str]]:
    """For each prompt, ``num_return_sequences`` continuations (new text only), in input order.

    ``backbone`` is a causal-LM :class:`plmkit.backbones.Backbone` (``load_causal_lm``,
    ``tiny_causal_lm``). ``batch_size`` counts generated sequences per batch (stopped ones leave
    it). ``stop``: a string or strings that end a row early (kept at the end of its text).
    ``counter_prompts[i]``: prompts (maybe none) whose likely tokens prompt ``i``'s samples avoid,
    with decay ``debias_decay`` (self-debiasing). See the module docstring for what the seed, the
    stop strings and self-debiasing do.
    """
    config = SamplingConfig(max_new_tokens, temperature, top_p, top_k, num_return_sequences, seed)
    prompts = _check_prompts(prompts)
    stops = _check_stop(stop)
    counters = _check_counters(counter_prompts, len(prompts), debias_decay)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer, model = backbone.tokenizer, backbone.model
    if tokenizer.pad_token_id is None:
        raise ConfigError("the tokenizer has no pad token; load the model with plmkit.backbones.load_causal_lm")
    texts = _prompt_texts(tokenizer, prompts, chat_template)
    counter_texts = [_prompt_texts(tokenizer, extra, chat_template) for extra in counters]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=not chat_template)["input_ids"]]
    rows = sorted(((texts[i], i, r) for i in range(len(texts)) for r in range(num_return_sequences)),
                  key=lambda row: (-lengths[row[1]], row[1], row[2]))
    results: list[list[str]] = [[""] * num_return_sequences for _ in prompts]
    side, modes = tokenizer.padding_side, [(m, m.training) for m in model.modules()]
    tokenizer.padding_side = "left"
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                extra = [counter_texts[i] for _, i, _ in chunk]
                for (_, i, r), text in zip(chunk, _generate_batch(backbone, chunk, config, not chat_template, stops,
                                                                  extra, debias_decay), strict=True):
                    results[i][r] = text
    finally:
        tokenizer.padding_side = side
        for module, was_training in modes:
            module.train(was_training)
    return results
