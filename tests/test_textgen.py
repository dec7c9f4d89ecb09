"""Seeded batched generation on tiny random causal LMs, checked against a hand-written greedy loop."""

from __future__ import annotations

import math

import pytest
import torch

from plmkit.errors import ConfigError
from plmkit.textgen import SamplingConfig, generate, row_uniforms, sample_tokens, self_debiased_scores

PROMPTS = ["the movie was", "a", "this film is really very boring and the plot", "the team", "music and"]
DECODERS = ["llama", "gpt2"]


def _decoder(make_decoder, model_type: str):
    """A tiny random causal LM; GPT-2's head is untied so greedy does not just repeat the prompt's
    last token (the end-of-sequence token of the word tokenizer)."""
    backbone = make_decoder(model_type)
    if model_type == "gpt2":
        torch.manual_seed(1)
        head = backbone.model.lm_head
        head.weight = torch.nn.Parameter(torch.randn_like(head.weight))
    return backbone


def _greedy_alone(backbone, text: str, steps: int, add_special_tokens: bool = True) -> str:
    """Argmax continuation of one unpadded prompt, recomputing the full sequence each step (no cache)."""
    model, tokenizer = backbone.model.eval(), backbone.tokenizer
    ids = tokenizer(text, add_special_tokens=add_special_tokens, return_tensors="pt")["input_ids"]
    eos = model.generation_config.eos_token_id
    new: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.cat([ids, torch.tensor([new], dtype=torch.long)], 1)).logits[0, -1].argmax())
            new.append(token)
            if token == eos:
                break
    return tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("model_type", DECODERS)
def test_greedy_in_a_padded_batch_matches_each_prompt_alone(make_decoder, model_type):
    backbone = _decoder(make_decoder, model_type)
    got = generate(backbone, PROMPTS, max_new_tokens=6, temperature=0.0, batch_size=5)
    assert got == [[_greedy_alone(backbone, p, 6)] for p in PROMPTS]
    assert sum(bool(text) for (text,) in got) >= 3


@pytest.mark.parametrize("model_type", DECODERS)
def test_sampling_is_seeded_and_independent_of_batch_size(make_decoder, model_type):
    backbone = _decoder(make_decoder, model_type)
    kwargs = {"max_new_tokens": 8, "temperature": 1.0, "top_p": 0.95, "num_return_sequences": 2, "seed": 3}
    whole = generate(backbone, PROMPTS, batch_size=10, **kwargs)
    assert [len(row) for row in whole] == [2] * len(PROMPTS)
    assert generate(backbone, PROMPTS, batch_size=10, **kwargs) == whole
    assert generate(backbone, PROMPTS, batch_size=1, **kwargs) == whole
    assert generate(backbone, PROMPTS, batch_size=3, **kwargs) == whole
    other_seed = generate(backbone, PROMPTS, batch_size=10, **{**kwargs, "seed": 4})
    assert other_seed != whole
    assert sum(a != b for a, b in whole) >= 3  # the two samples of a prompt use different streams


def test_padding_side_and_module_modes_are_restored(make_decoder):
    backbone = _decoder(make_decoder, "gpt2")
    backbone.tokenizer.padding_side = "right"
    backbone.model.train()
    backbone.model.transformer.wte.eval()
    got = generate(backbone, PROMPTS[:3], max_new_tokens=4, temperature=0.0)
    assert got == [[_greedy_alone(backbone, p, 4)] for p in PROMPTS[:3]]
    assert backbone.tokenizer.padding_side == "right"
    backbone.model.eval()  # the helper above switched it; check generate restored a mixed state
    backbone.model.train()
    backbone.model.transformer.wte.eval()
    generate(backbone, PROMPTS[:1], max_new_tokens=2)
    assert backbone.model.training and not backbone.model.transformer.wte.training


def test_chat_template_wraps_each_prompt(make_decoder):
    backbone = make_decoder("llama")
    backbone.tokenizer.chat_template = "{% for m in messages %}[CLS] {{ m['content'] }} film{% endfor %}"
    got = generate(backbone, ["the movie"], max_new_tokens=5, temperature=0.0, chat_template=True)
    assert got == [[_greedy_alone(backbone, "[CLS] the movie film", 5, add_special_tokens=False)]]


def test_inverse_cdf_sampling_by_hand():
    # probabilities 0.2, 0.5, 0.3 on tokens 0, 1, 2 -> descending order 1, 2, 0 with running sums .5, .8, 1
    scores = torch.tensor([0.2, 0.5, 0.3]).log().expand(4, 3)
    u = torch.tensor([0.1, 0.6, 0.85, 0.999], dtype=torch.float64)
    assert sample_tokens(scores, u, SamplingConfig(top_p=1.0)).tolist() == [1, 2, 0, 0]
    # nucleus 0.7 keeps tokens 1 and 2 (mass before token 0 is 0.8): u scales the kept mass 0.8
    assert sample_tokens(scores, u, SamplingConfig(top_p=0.7)).tolist() == [1, 1, 2, 2]
    assert sample_tokens(scores, u, SamplingConfig(top_p=1.0, top_k=1)).tolist() == [1, 1, 1, 1]
    assert sample_tokens(scores, u, SamplingConfig(temperature=0.0)).tolist() == [1, 1, 1, 1]
    # temperature 2 flattens to p ~ sqrt(p): ~ .26 .41 .32 -> u = .6 now falls on token 2 (.41 < .6 < .73)
    assert sample_tokens(scores[:1], u[1:2], SamplingConfig(temperature=2.0, top_p=1.0)).tolist() == [2]


def test_row_uniforms_depend_only_on_their_indices():
    first = row_uniforms(0, 5, 1, 10)
    assert torch.equal(first, row_uniforms(0, 5, 1, 10))
    assert torch.equal(first[:4], row_uniforms(0, 5, 1, 4))
    assert not torch.equal(first, row_uniforms(0, 5, 0, 10))
    assert not torch.equal(first, row_uniforms(1, 5, 1, 10))
    assert ((first >= 0) & (first < 1)).all()


def test_self_debiased_scores_by_hand():
    # row 0: p = .5 .3 .2 and its two counters .2 .6 .2 / .1 .2 .7 -> max .2 .6 .7, delta .3 -.3 -.5
    # alpha = 1, exp(-30), exp(-50) with decay 100; row 1 owns no counter and keeps its logits
    logits = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]).log()
    counters = torch.tensor([[0.2, 0.6, 0.2], [0.1, 0.2, 0.7]]).log()
    scores = self_debiased_scores(logits, counters, torch.tensor([0, 0]), decay=100.0)
    expected = torch.tensor([0.5, 0.3 * math.exp(-30), 0.2 * math.exp(-50)], dtype=torch.float64)
    assert torch.allclose(scores[0].exp(), expected, rtol=1e-4, atol=0)  # float32 inputs, decay 100
    assert torch.equal(scores[1], logits[1].double())
    assert sample_tokens(scores, torch.tensor([0.99, 0.99], dtype=torch.float64),
                         SamplingConfig(top_p=1.0)).tolist() == [0, 0]  # token 1 (p .3) is all but barred


def _debiased_alone(backbone, text: str, counters: list[str], config: SamplingConfig, prompt_index: int,
                    decay: float) -> tuple[str, list[bool]]:
    """One prompt's sample by a plain loop: every step recomputes the prompt and each counter prompt
    unpadded with the tokens so far (no cache), forms alpha(delta) * p by hand and draws with the row's
    uniforms. Also returns, per drawn token, whether its delta was >= 0."""
    model, tokenizer = backbone.model.eval(), backbone.tokenizer
    ids = [tokenizer(t, return_tensors="pt")["input_ids"] for t in [text, *counters]]
    uniforms = row_uniforms(config.seed, prompt_index, 0, config.max_new_tokens)
    eos = model.generation_config.eos_token_id
    new: list[int] = []
    favoured: list[bool] = []
    with torch.no_grad():
        for step in range(config.max_new_tokens):
            probs = [torch.softmax(model(torch.cat([x, torch.tensor([new], dtype=torch.long)], 1)).logits[0, -1]
                                   .double(), -1) for x in ids]
            delta = probs[0] - torch.stack(probs[1:]).max(0).values
            alpha = torch.exp(decay * delta.clamp_max(0))
            token = int(sample_tokens((alpha * probs[0]).log().unsqueeze(0), uniforms[step:step + 1], config))
            favoured.append(bool(delta[token] >= 0))
            if token == eos:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True), favoured


@pytest.mark.parametrize("model_type", DECODERS)
def test_self_debiasing_matches_a_plain_loop_and_leaves_prompts_without_counters_alone(make_decoder, model_type):
    backbone = _decoder(make_decoder, model_type)
    config = SamplingConfig(max_new_tokens=8, top_p=0.95, seed=5)
    counters = [["the film was", "music and the"], [], ["this film is really"], ["a"], []]
    kwargs = {"max_new_tokens": 8, "top_p": 0.95, "seed": 5}
    plain = generate(backbone, PROMPTS, batch_size=5, **kwargs)
    for batch_size in (5, 2):
        got = generate(backbone, PROMPTS, batch_size=batch_size, counter_prompts=counters, **kwargs)
        for i, (prompt, extra) in enumerate(zip(PROMPTS, counters, strict=True)):
            if extra:
                assert got[i] == [_debiased_alone(backbone, prompt, extra, config, i, 100.0)[0]]
            else:
                assert got[i] == plain[i]
    assert sum(got[i] != plain[i] for i, extra in enumerate(counters) if extra) >= 2
    assert generate(backbone, PROMPTS, batch_size=5, counter_prompts=[[] for _ in PROMPTS], **kwargs) == plain


def test_a_steep_decay_draws_only_tokens_the_counter_prompts_make_no_likelier(make_decoder):
    backbone = _decoder(make_decoder, "llama")
    config = SamplingConfig(max_new_tokens=10, top_p=1.0, seed=2)
    counters = ["a", "the team"]
    got = generate(backbone, ["the movie was"], max_new_tokens=10, top_p=1.0, seed=2,
                   counter_prompts=[counters], debias_decay=1e9)
    text, favoured = _debiased_alone(backbone, "the movie was", counters, config, 0, 1e9)
    assert got == [[text]] and len(favoured) >= 5 and all(favoured)
    _, unbiased = _debiased_alone(backbone, "the movie was", counters, config, 0, 1e-12)
    assert not all(unbiased)  # without the decay some drawn tokens are likelier under a counter prompt


@pytest.mark.parametrize(("prompts", "kwargs", "match"), [
    (["a"], {"top_p": 0.0}, "top_p"),
    (["a"], {"top_p": 1.5}, "top_p"),
    ([], {}, "empty"),
    (["a", "  "], {}, "prompt 1"),
    ("a", {}, "list of strings"),
    (["a"], {"temperature": -1.0}, "temperature"),
    (["a"], {"top_k": -1}, "top_k"),
    (["a"], {"max_new_tokens": 0}, "max_new_tokens"),
    (["a"], {"num_return_sequences": 0}, "num_return_sequences"),
    (["a"], {"batch_size": 0}, "batch_size"),
    (["a"], {"seed": -1}, "seed"),
    (["a"], {"chat_template": True}, "chat template"),
    (["a", "b"], {"counter_prompts": [["c"]]}, "one list of prompts per prompt"),
    (["a"], {"counter_prompts": ["c"]}, "wrap a single prompt"),
    (["a"], {"counter_prompts": [["c", " "]]}, "non-blank"),
    (["a"], {"counter_prompts": [["c"]], "debias_decay": 0.0}, "debias_decay"),
])
def test_bad_arguments_raise_config_errors(make_decoder, prompts, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate(make_decoder("llama"), prompts, **kwargs)
