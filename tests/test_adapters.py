"""Stage-1 bottleneck adapters: equation, identity start, freezing, save/load, bad loads."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from plmkit.backbones import tiny_encoder
from plmkit.models import build_classifier
from plmkit.mtl.adapters import (
    AdapterConfig,
    AdapterLoadError,
    attach_adapters,
    load_adapter,
    save_adapter,
)
from tests.conftest import ENCODER_TYPES, WORDS


def _batch(tokenizer):
    enc = tokenizer(["the movie was great fun", "not good"], ["a bad plot", "it is"], padding=True,
                    return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _hidden(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).last_hidden_state


@pytest.mark.parametrize("model_type", ENCODER_TYPES)
def test_identity_init_leaves_outputs_unchanged(make_encoder, model_type):
    backbone = make_encoder(model_type)
    batch = _batch(backbone.tokenizer)
    before = _hidden(backbone.model, batch)
    attach_adapters(backbone.model, AdapterConfig(init="identity"))
    assert torch.equal(_hidden(backbone.model, batch), before)


@pytest.mark.parametrize("model_type", ENCODER_TYPES)
def test_adapter_changes_outputs_and_detach_restores(make_encoder, model_type):
    backbone = make_encoder(model_type)
    batch = _batch(backbone.tokenizer)
    before = _hidden(backbone.model, batch)
    handle = attach_adapters(backbone.model, AdapterConfig(init="bert"))
    assert not torch.allclose(_hidden(backbone.model, batch), before)
    handle.detach()
    assert torch.equal(_hidden(backbone.model, batch), before)
    assert all(p.requires_grad for p in backbone.model.parameters())


def _expected_layer_output(h, x, ln, adapter):
    """LN(W_up relu(W_down LN(h + x) + b_d) + b_up + h + x), written out by hand."""
    a = F.layer_norm(h + x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    z = torch.einsum("bsh,kh->bsk", a, adapter.down.weight) + adapter.down.bias
    u = torch.einsum("bsk,hk->bsh", torch.relu(z), adapter.up.weight) + adapter.up.bias
    return F.layer_norm(u + h + x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def test_equation_bert_layer(make_encoder):
    backbone = make_encoder("bert")
    handle = attach_adapters(backbone.model, AdapterConfig(reduction_factor=4))
    layer = backbone.model.encoder.layer[1]
    seen = {}
    layer.intermediate.register_forward_hook(lambda m, i, o: seen.update(inter=o))
    layer.attention.register_forward_hook(lambda m, i, o: seen.update(x=o[0]))
    layer.register_forward_hook(lambda m, i, o: seen.update(out=o[0] if isinstance(o, tuple) else o))
    _hidden(backbone.model, _batch(backbone.tokenizer))
    out_module = layer.output
    h = seen["inter"] @ out_module.dense.weight.T + out_module.dense.bias
    expected = _expected_layer_output(h, seen["x"], out_module.LayerNorm, handle.adapters[1])
    torch.testing.assert_close(seen["out"], expected, rtol=1e-5, atol=1e-5)


def test_equation_distilbert_layer(make_encoder):
    backbone = make_encoder("distilbert")
    handle = attach_adapters(backbone.model, AdapterConfig(reduction_factor=4))
    layer = backbone.model.transformer.layer[0]
    seen = {}
    layer.sa_layer_norm.register_forward_hook(lambda m, i, o: seen.update(x=o))
    layer.register_forward_hook(lambda m, i, o: seen.update(out=o[0] if isinstance(o, tuple) else o))
    _hidden(backbone.model, _batch(backbone.tokenizer))
    ffn, x = layer.ffn, seen["x"]
    h = F.linear(ffn.activation(F.linear(x, ffn.lin1.weight, ffn.lin1.bias)), ffn.lin2.weight, ffn.lin2.bias)
    expected = _expected_layer_output(h, x, layer.output_layer_norm, handle.adapters[0])
    torch.testing.assert_close(seen["out"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_only_adapters_and_head_train(make_encoder, model_type):
    backbone = make_encoder(model_type)
    handle = attach_adapters(backbone.model, AdapterConfig())
    model = build_classifier(backbone.model, num_labels=3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("plmkit_block" in n or n.startswith("head.") for n in trainable)
    hidden = backbone.config.hidden_size if model_type != "distilbert" else backbone.config.dim
    bottleneck = hidden // 16
    per_layer = 2 * hidden * bottleneck + bottleneck + hidden
    assert handle.num_parameters() == per_layer * len(handle.sites)
    batch = _batch(backbone.tokenizer)
    loss = F.cross_entropy(model(**batch), torch.tensor([0, 2]))
    loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == (name in trainable), name


def test_steps_lower_the_loss(make_encoder):
    backbone = make_encoder("bert")
    attach_adapters(backbone.model, AdapterConfig(reduction_factor=2))
    model = build_classifier(backbone.model, num_labels=2, dropout=0.0)
    model.eval()
    batch, labels = _batch(backbone.tokenizer), torch.tensor([1, 0])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(**batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "mpnet"])
def test_save_load_gives_identical_predictions(make_encoder, tmp_path, model_type):
    backbone = make_encoder(model_type)
    pristine = make_encoder(model_type)
    handle = attach_adapters(backbone.model, AdapterConfig(reduction_factor=4))
    model = build_classifier(backbone.model, num_labels=2)
    with torch.no_grad():
        for adapter in handle.adapters:
            adapter.up.weight.normal_(std=0.5)
    model.eval()
    batch = _batch(backbone.tokenizer)
    with torch.no_grad():
        expected = model(**batch)
    save_adapter(tmp_path / "ad", handle, head=model.head, backbone_name=backbone.name)
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["config.json", "weights.safetensors"]
    loaded, meta, head_tensors = load_adapter(tmp_path / "ad", pristine.model, backbone_name=pristine.name)
    reloaded = build_classifier(pristine.model, num_labels=meta["head"]["num_labels"])
    reloaded.head.load_state_dict(head_tensors)
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch), expected)
    assert not any(p.requires_grad for n, p in pristine.model.named_parameters() if "plmkit_block" not in n)


@pytest.mark.parametrize(
    ("other", "field"),
    [
        (dict(model_type="bert", hidden=48), "hidden_size"),
        (dict(model_type="bert", layers=3), "num_layers"),
        (dict(model_type="roberta"), "model_type"),
    ],
)
def test_loading_onto_a_different_backbone_is_refused(make_encoder, tmp_path, other, field):
    backbone = make_encoder("bert")
    handle = attach_adapters(backbone.model)
    save_adapter(tmp_path / "ad", handle, backbone_name="tiny-bert")
    mismatched = tiny_encoder(words=WORDS, **other)
    with pytest.raises(AdapterLoadError, match=field):
        load_adapter(tmp_path / "ad", mismatched.model)


def test_loading_a_folder_that_is_not_an_adapter(tmp_path, make_encoder):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AdapterLoadError, match="not a saved adapter"):
        load_adapter(tmp_path, make_encoder("bert").model)


def test_attaching_twice_is_refused(make_encoder):
    backbone = make_encoder("bert")
    attach_adapters(backbone.model)
    with pytest.raises(ValueError, match="already has a plmkit block"):
        attach_adapters(backbone.model)
