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


def test_decoder_is_refused_as_encoder(tmp_path):
    lm = tiny_causal_lm("llama", WORDS)
    lm.model.save_pretrained(tmp_path / "lm")
    lm.tokenizer.save_pretrained(tmp_path / "lm")
    with pytest.raises(BackboneError, match="llama"):
        load_encoder(str(tmp_path / "lm"))
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
