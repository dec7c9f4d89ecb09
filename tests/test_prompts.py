"""Soft prompts: inputs and masks the backbone sees, positions, frozen backbone, save/load, refusals."""

from __future__ import annotations

import pytest
import torch

from plmkit.anatomy import UnsupportedModelError
from plmkit.errors import ConfigError
from plmkit.models import build_classifier
from plmkit.mtl.prompts import PromptConfig, attach_prompts, load_prompts


def _batch(tokenizer):
    return dict(tokenizer(["the movie was great", "bad"], padding=True, return_tensors="pt"))


def _base(backbone):
    return backbone.model.model if backbone.kind == "causal-lm" else backbone.model


def _capture(base):
    """Record the kwargs the base model's forward receives after the prompt hook ran."""
    seen = {}
    base.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    return seen


def test_prompt_tuning_prepends_vectors_extends_the_mask_and_returns_real_tokens(make_encoder):
    backbone = make_encoder("bert")
    model, batch = backbone.model, _batch(backbone.tokenizer)
    batch["token_type_ids"] = torch.ones_like(batch["input_ids"])
    handle = attach_prompts(model, PromptConfig(length=3, init="random"))
    seen = _capture(model)
    out = model(**batch)
    B, S = batch["input_ids"].shape
    assert seen["inputs_embeds"].shape == (B, 3 + S, 32)
    assert torch.equal(seen["inputs_embeds"][0, :3], handle.vectors())
    assert torch.equal(seen["inputs_embeds"][:, 3:], model.embeddings.word_embeddings(batch["input_ids"]))
    assert torch.equal(seen["attention_mask"], torch.cat([torch.ones(B, 3, dtype=torch.long), batch["attention_mask"]], 1))
    assert torch.equal(seen["token_type_ids"], torch.cat([torch.zeros(B, 3, dtype=torch.long), batch["token_type_ids"]], 1))
    assert out.last_hidden_state.shape == (B, S, 32)


def test_decoder_prompt_positions_follow_the_prompt(make_decoder):
    backbone = make_decoder("llama")
    base = _base(backbone)
    attach_prompts(base, PromptConfig(length=2, init="random"))
    seen = _capture(base)
    classifier = build_classifier(base, 2)
    batch = _batch(backbone.tokenizer)  # left padded
    classifier(**batch)
    real = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    assert torch.equal(seen["position_ids"][:, :2], torch.tensor([[0, 1], [0, 1]]))
    assert torch.equal(seen["position_ids"][:, 2:], real + 2)


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_prefixes_leave_text_positions_unshifted(model_type, make_encoder, make_decoder):
    backbone = make_encoder("bert") if model_type == "bert" else make_decoder("llama")
    base = _base(backbone)
    batch = _batch(backbone.tokenizer)
    plain = base.get_input_embeddings()(batch["input_ids"])
    S = batch["input_ids"].shape[1]
    attach_prompts(base, PromptConfig(mode="prefix", length=4, init="random"))
    seen = _capture(base)
    classifier = build_classifier(base, 2)
    classifier(**batch)
    assert seen["cache"].get_seq_length() == 4 + S  # the fresh cache: 4 prefixes, then this forward's text
    assert seen["attention_mask"].shape == (2, 4 + S)
    if model_type == "bert":  # no position ids given: the text keeps 0..S-1 (the cache alone would shift by 4)
        assert torch.equal(seen["position_ids"], torch.arange(S).expand(2, S))
    assert torch.equal(seen["inputs_embeds"], plain)


def test_a_prefix_changes_the_output_and_only_it_trains(make_encoder):
    backbone = make_encoder("bert")
    model = backbone.model.eval()
    batch = _batch(backbone.tokenizer)
    before = model(**batch).last_hidden_state
    handle = attach_prompts(model, PromptConfig(mode="prefix", length=4, init="random"))
    after = model(**batch).last_hidden_state
    assert not torch.allclose(before, after)
    after.square().sum().backward()
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in handle.trainable_parameters()}
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert handle.trainable_parameters()[0].grad.abs().sum() > 0
    handle.detach()
    assert torch.allclose(model(**batch).last_hidden_state, before)
    assert not hasattr(model, "plmkit_prompt")


def test_text_init_uses_the_tokens_embeddings(make_encoder):
    backbone = make_encoder("bert")
    handle = attach_prompts(backbone.model, PromptConfig(length=3, init="text", init_text="great movie"),
                            tokenizer=backbone.tokenizer)
    ids = backbone.tokenizer("great movie great", add_special_tokens=False)["input_ids"]
    assert torch.equal(handle.vectors(), backbone.model.embeddings.word_embeddings.weight[ids])


@pytest.mark.parametrize("mode,model_type", [("prompt", "bert"), ("prompt", "llama"), ("prefix", "llama")])
def test_save_load_gives_identical_predictions(mode, model_type, make_encoder, make_decoder, tmp_path):
    backbone = make_encoder("bert") if model_type == "bert" else make_decoder("llama")
    base = _base(backbone)
    fresh = __import__("copy").deepcopy(base)
    config = PromptConfig(mode=mode, length=3, init="random", reparameterize=mode == "prefix", reparam_hidden=8)
    handle = attach_prompts(base, config)
    classifier = build_classifier(base, 3).eval()
    with torch.no_grad():
        handle.trainable_parameters()[0].add_(0.5)
    handle.save(tmp_path / "p", head=classifier.head)
    loaded, meta, head = load_prompts(tmp_path / "p", fresh)
    other = build_classifier(fresh, 3).eval()
    other.head.load_state_dict(head)
    batch = _batch(backbone.tokenizer)
    assert loaded.config == config and meta["kind"] == "prompt"
    assert torch.allclose(classifier(**batch), other(**batch), atol=1e-6)


def test_refusals_name_the_fix(make_encoder):
    with pytest.raises(UnsupportedModelError, match="prompt-mode prompt"):
        attach_prompts(make_encoder("distilbert").model, PromptConfig(mode="prefix", init="random"))
    backbone = make_encoder("bert")
    attach_prompts(backbone.model, PromptConfig(length=120, init="random"))
    ids = torch.ones(1, 20, dtype=torch.long)
    with pytest.raises(ConfigError, match="--max-length or --prompt-length"):
        backbone.model(input_ids=ids, attention_mask=ids)
    with pytest.raises(ConfigError, match="already carries"):
        attach_prompts(backbone.model, PromptConfig())
    with pytest.raises(ConfigError):
        PromptConfig(init="text")
