"""Seeded batched generation on tiny random causal LMs, checked against a hand-written greedy loop."""

from __future__ import annotations

import pytest
import torch

from plmkit.errors import ConfigError
from plmkit.textgen import SamplingConfig, generate, row_uniforms, sample_tokens

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
])
def test_bad_arguments_raise_config_errors(make_decoder, prompts, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate(make_decoder("llama"), prompts, **kwargs)
