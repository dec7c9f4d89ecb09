"""The anatomy table, the injection sites on encoders and decoders, linear targets and last-token pooling."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from plmkit.anatomy import ANATOMIES, UnsupportedModelError, anatomy_of, locate
from plmkit.inject import find_linear_targets, input_output_weight, replace_modules
from plmkit.models import build_classifier, pool
from plmkit.mtl.adapters import AdapterConfig, attach_adapters
from plmkit.sites import find_feed_forward_sites, install_block, remove_block
from tests.conftest import DECODER_TYPES, ENCODER_TYPES

ALL_TYPES = ENCODER_TYPES + DECODER_TYPES


def _model(make_encoder, make_decoder, model_type):
    maker = make_decoder if model_type in DECODER_TYPES else make_encoder
    return maker(model_type).model.eval()


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_every_row_names_paths_and_sizes_that_exist(make_encoder, make_decoder, model_type):
    model = _model(make_encoder, make_decoder, model_type)
    found = locate(model)
    row, config = found.anatomy, found.base.config
    assert row.model_type == model_type and len(found.layers) == row.depth(config) == 2
    assert row.hidden_size(config) == 32 and row.max_positions(config) >= 128
    embedding = found.base.get_input_embeddings().weight
    assert embedding.shape[1] == row.hidden_size(config)
    for layer in found.layers:
        for path in (row.feed_forward, row.attention, *row.norms, *row.residual_linears):
            layer.get_submodule(path)
        for path in row.norms:
            assert layer.get_submodule(path).weight.shape == (32,)
        for path in row.residual_linears:  # output joins the residual stream: hidden-size wide
            assert input_output_weight(layer.get_submodule(path)).shape[1] == 32
    assert row.pooling == ("last" if model_type in DECODER_TYPES else "mean")
    if row.final_norm:
        assert found.base.get_submodule(row.final_norm).weight.shape == (32,)


@pytest.mark.parametrize("model_type", DECODER_TYPES)
def test_base_model_and_causal_lm_wrapper_give_the_same_row(make_decoder, model_type):
    lm = make_decoder(model_type).model
    assert anatomy_of(lm) is anatomy_of(lm.base_model) is ANATOMIES[model_type]
    assert locate(lm).prefix == f"{lm.base_model_prefix}." and locate(lm.base_model).prefix == ""


def test_unknown_models_are_refused_naming_the_supported_types():
    from transformers import AutoConfig, AutoModel

    with pytest.raises(UnsupportedModelError, match="bert, roberta, xlm-roberta, distilbert, mpnet, llama, gpt2"):
        anatomy_of(nn.Linear(3, 3))
    electra = AutoModel.from_config(AutoConfig.for_model(
        "electra", vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, embedding_size=16))
    with pytest.raises(UnsupportedModelError, match="'electra' model"):
        anatomy_of(electra)


# ------------------------------------------------------------------------------ sites on decoders
class _Shift(nn.Module):
    """A block that returns residual + c and records what it was given."""

    def __init__(self, shift: torch.Tensor) -> None:
        super().__init__()
        self.shift, self.seen = shift, []

    def forward(self, adapter_input, residual):
        self.seen.append((adapter_input, residual))
        return residual + self.shift


@pytest.mark.parametrize("model_type", DECODER_TYPES)
def test_pre_ln_site_adds_the_block_delta_to_the_layer_output(make_decoder, model_type):
    base = make_decoder(model_type).model.eval().base_model
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        before = base(ids, output_hidden_states=True).hidden_states
        site = find_feed_forward_sites(base)[0]
        assert site.style == "pre-ln" and site.layer_norm is None
        shift = torch.linspace(-1, 1, 32)
        block = _Shift(shift)
        install_block(site, block)
        after = base(ids, output_hidden_states=True).hidden_states
        (adapter_input, residual), = block.seen
        assert adapter_input is residual  # the MLP output is both what the block reads and its residual
        # layer 0 output = x + attn + (MLP out + c): exactly c more than before
        torch.testing.assert_close(after[1] - before[1], shift.expand_as(after[1]), atol=1e-5, rtol=0)
        remove_block(site)
        torch.testing.assert_close(base(ids, output_hidden_states=True).hidden_states[1], before[1])


@pytest.mark.parametrize("model_type", DECODER_TYPES)
def test_bottleneck_adapters_train_on_decoders(make_decoder, model_type):
    lm = make_decoder(model_type).model.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = lm(ids).logits
    handle = attach_adapters(lm, AdapterConfig(reduction_factor=4, init="identity"))
    assert len(handle.sites) == 2
    with torch.no_grad():
        torch.testing.assert_close(lm(ids).logits, expected)  # up-projection at zero: identity
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all(".plmkit_block." in n for n in trainable)
    lm(ids).logits.square().mean().backward()
    assert all(p.grad is not None for p in handle.trainable_parameters())


# ------------------------------------------------------------------------------ linear targets
def test_default_targets_on_bert_are_the_old_pattern(make_encoder):
    model = make_encoder("bert").model
    old = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.search(r"layer\.\d+\.", n)]
    assert [n for n, _ in find_linear_targets(model)] == old and len(old) == 12


@pytest.mark.parametrize(("model_type", "per_layer", "prefix"), [("llama", 7, "model.layers."),
                                                                  ("gpt2", 4, "transformer.h.")])
def test_decoder_targets_are_found_and_conv1d_is_read_as_in_out(make_decoder, model_type, per_layer, prefix):
    lm = make_decoder(model_type).model
    targets = find_linear_targets(lm)
    assert len(targets) == 2 * per_layer and all(n.startswith(prefix) for n, _ in targets)
    assert "lm_head" not in dict(targets)
    narrowed = find_linear_targets(lm, exclude=r"\.1\.")
    assert len(narrowed) == per_layer
    for _, module in targets:
        x = torch.randn(3, input_output_weight(module).shape[0])
        bias = module.bias if module.bias is not None else 0.0
        torch.testing.assert_close(module(x), x @ input_output_weight(module) + bias)
    with pytest.raises(ValueError, match="no linear layer name matches"):
        find_linear_targets(lm, include="nothing-here")


def test_replace_modules_swaps_by_dotted_name(make_decoder):
    lm = make_decoder("gpt2").model
    names = [n for n, _ in find_linear_targets(lm, include=r"mlp\.c_fc")]
    new = replace_modules(lm, names, lambda name, old: nn.Identity())
    assert sorted(new) == names == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    assert all(isinstance(lm.get_submodule(n), nn.Identity) for n in names)


# ------------------------------------------------------------------------------ pooling
def test_last_pooling_picks_the_last_real_token_either_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]


@pytest.mark.parametrize("model_type", DECODER_TYPES)
def test_decoder_classifier_is_padding_side_invariant(make_decoder, model_type):
    base = make_decoder(model_type).model.base_model
    model = build_classifier(base, num_labels=3, dropout=0.0).eval()
    assert model.head.config.pooling == "last" and not model._accepts_token_types
    ids, pad = [5, 6, 7], 0
    right = {"input_ids": torch.tensor([ids + [pad, pad]]), "attention_mask": torch.tensor([[1, 1, 1, 0, 0]])}
    left = {"input_ids": torch.tensor([[pad, pad] + ids]), "attention_mask": torch.tensor([[0, 0, 1, 1, 1]])}
    alone = {"input_ids": torch.tensor([ids]), "attention_mask": torch.tensor([[1, 1, 1]])}
    with torch.no_grad():
        expected = model(**alone)
        torch.testing.assert_close(model(**right), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model(**left), expected, atol=1e-5, rtol=1e-4)


def test_token_types_and_default_pooling_come_from_the_anatomy(make_encoder):
    assert build_classifier(make_encoder("bert").model, 2)._accepts_token_types
    for model_type in ("distilbert", "mpnet"):
        classifier = build_classifier(make_encoder(model_type).model, 2)
        assert not classifier._accepts_token_types and classifier.head.config.pooling == "mean"
