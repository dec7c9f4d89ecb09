"""Backbone resolution: local folders, bundled assets, hub ids offline, tiny random models."""

from __future__ import annotations

import pytest
import torch

from plmkit import assets
from plmkit.backbones import (
    BackboneError,
    backbone_signature,
    load_backbone,
    load_causal_lm,
    load_encoder,
    tiny_causal_lm,
    tiny_encoder,
)
from tests.conftest import WORDS


def test_local_folder_round_trip(make_encoder, tmp_path):
    original = make_encoder("roberta")
    original.model.save_pretrained(tmp_path / "enc")
    original.tokenizer.save_pretrained(tmp_path / "enc")
    loaded = load_encoder(str(tmp_path / "enc"))
    assert loaded.kind == "encoder" and loaded.name == str(tmp_path / "enc")
    batch = loaded.tokenizer(["the movie was great"], return_tensors="pt")
    original.model.eval()
    loaded.model.eval()
    with torch.no_grad():
        expected = original.model(input_ids=batch["input_ids"]).last_hidden_state
        got = loaded.model(input_ids=batch["input_ids"]).last_hidden_state
    torch.testing.assert_close(got, expected)
    assert loaded.signature() == {**backbone_signature(original.model), "name": str(tmp_path / "enc")}


def test_bundled_asset_name_resolves_through_the_cache(make_encoder, tmp_path, monkeypatch):
    folder = tmp_path / "minilm"
    backbone = make_encoder("bert")
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    calls = []
    monkeypatch.setattr(assets, "fetch", lambda name, **_: calls.append(name) or folder)
    loaded = load_encoder("minilm-l6")
    assert calls == ["minilm-l6"] and loaded.name == "minilm-l6"


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match=r"not a local folder.*minilm-l6.*local folder"):
        load_encoder("some-org/some-model-that-is-not-cached")


def test_missing_local_path_and_bad_folder(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        load_encoder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="not a loadable model folder"):
        load_encoder(str(tmp_path / "empty"))


def test_decoder_loads_as_classifier_backbone(tmp_path):
    lm = tiny_causal_lm("llama", WORDS)
    lm.model.save_pretrained(tmp_path / "lm")
    lm.tokenizer.save_pretrained(tmp_path / "lm")
    backbone = load_encoder(str(tmp_path / "lm"))
    assert type(backbone.model).__name__ == "LlamaModel" and backbone.tokenizer.pad_token is not None
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        expected = lm.model.eval().model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(backbone.model.eval()(input_ids=ids).last_hidden_state, expected)
    assert backbone.signature()["num_layers"] == 2 and backbone.signature()["hidden_size"] == 32
    loaded = load_backbone(str(tmp_path / "lm"), kind="causal-lm")
    assert loaded.kind == "causal-lm" and loaded.tokenizer.padding_side == "left"
    with pytest.raises(BackboneError, match="unknown backbone kind"):
        load_backbone(str(tmp_path / "lm"), kind="seq2seq")


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_tiny_causal_lm_generates(model_type):
    lm = tiny_causal_lm(model_type, WORDS)
    batch = lm.tokenizer(["the movie", "a very good film was"], padding=True, return_tensors="pt")
    out = lm.model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                           pad_token_id=0)
    assert out.shape == (2, batch["input_ids"].shape[1] + 3)


def test_unsupported_model_type_is_refused(tmp_path):
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model("electra", vocab_size=20, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, embedding_size=16)
    AutoModel.from_config(config).save_pretrained(tmp_path / "electra")
    tiny_encoder("bert", WORDS).tokenizer.save_pretrained(tmp_path / "electra")
    with pytest.raises(BackboneError, match="'electra' model; classifier backbones support bert"):
        load_encoder(str(tmp_path / "electra"))


@pytest.mark.parametrize("loader", [load_encoder, load_causal_lm])
def test_truncated_weights_name_the_file_and_the_fix(tmp_path, loader):
    lm = tiny_causal_lm("gpt2", WORDS)
    lm.model.save_pretrained(tmp_path / "g")
    lm.tokenizer.save_pretrained(tmp_path / "g")
    weights = tmp_path / "g" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(BackboneError, match=r"model\.safetensors is truncated or damaged.*save_pretrained"):
        loader(str(tmp_path / "g"))


def test_signature_reads_sizes_through_the_anatomy():
    lm = tiny_causal_lm("gpt2", WORDS, hidden=48, layers=3)
    expected = {"name": "", "model_type": "gpt2", "hidden_size": 48, "num_layers": 3}
    assert backbone_signature(lm.model) == expected  # the *ForCausalLM wrapper
    assert backbone_signature(lm.model.transformer) == expected  # its base model


def test_tiny_encoder_shapes_and_signature():
    enc = tiny_encoder("distilbert", WORDS, hidden=48, layers=3)
    assert backbone_signature(enc.model) == {"name": "", "model_type": "distilbert", "hidden_size": 48,
                                             "num_layers": 3}
    with pytest.raises(BackboneError):
        tiny_encoder("t5")


def test_causal_lm_loader_pads_left(tmp_path):
    lm = tiny_causal_lm("gpt2", WORDS)
    lm.tokenizer.pad_token = None
    lm.model.save_pretrained(tmp_path / "g")
    lm.tokenizer.save_pretrained(tmp_path / "g")
    with pytest.raises(BackboneError, match="neither a pad nor an end-of-sequence token"):
        load_causal_lm(str(tmp_path / "g"))
    lm.tokenizer.eos_token = "[SEP]"
    lm.tokenizer.save_pretrained(tmp_path / "g")
    loaded = load_causal_lm(str(tmp_path / "g"))
    assert loaded.tokenizer.pad_token == "[SEP]" and loaded.tokenizer.padding_side == "left"
