"""Sentence embeddings: encode against per-sentence forwards, the STS evaluator, the SentenceTransformer export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from plmkit.embeddings import (
    EmbeddingError,
    STSEvaluator,
    encode,
    export_sentence_transformer,
    sentence_transformer_pooling,
)
from plmkit.errors import ConfigError
from plmkit.evaluation import Evaluator

SENTENCES = [
    "the movie was great", "bad", "it is a very very boring film and the plot is awful",
    "a funny show", "the team loved the game", "shares", "music and band on the internet", "not good",
]


def _alone(backbone, sentence: str, pooling: str) -> torch.Tensor:
    """One sentence, no padding: mean over all tokens or the first token, computed here by hand."""
    model = backbone.model.eval()
    batch = backbone.tokenizer([sentence], return_tensors="pt")
    if model.config.model_type in ("distilbert", "mpnet"):
        batch.pop("token_type_ids", None)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state[0]  # (seq, hidden)
    return {"mean": hidden.mean(0), "cls": hidden[0], "last": hidden[-1]}[pooling]


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "mpnet"])
@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_encode_matches_each_sentence_alone_in_input_order(make_encoder, model_type, pooling):
    backbone = make_encoder(model_type)
    got = encode(backbone.model, backbone.tokenizer, SENTENCES, pooling=pooling, batch_size=3)
    expected = torch.stack([_alone(backbone, s, pooling) for s in SENTENCES])
    assert got.shape == (len(SENTENCES), 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_encode_last_token_of_a_left_padded_causal_lm(model_type):
    from plmkit.backbones import tiny_causal_lm
    from tests.conftest import WORDS

    backbone = tiny_causal_lm(model_type, WORDS)
    assert backbone.tokenizer.padding_side == "left"
    got = encode(backbone.model, backbone.tokenizer, SENTENCES, pooling="last", batch_size=4)
    body = backbone.model.base_model.eval()
    for sentence, row in zip(SENTENCES, got, strict=True):
        batch = backbone.tokenizer([sentence], return_tensors="pt")
        with torch.no_grad():
            alone = body(input_ids=batch["input_ids"]).last_hidden_state[0, -1]
        torch.testing.assert_close(row, alone, atol=1e-5, rtol=1e-5)


def test_encode_normalizes_truncates_and_needs_no_grad(make_encoder):
    backbone = make_encoder("bert")
    plain = encode(backbone.model, backbone.tokenizer, SENTENCES, batch_size=64)
    unit = encode(backbone.model, backbone.tokenizer, SENTENCES, normalize=True)
    assert not unit.requires_grad
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(len(SENTENCES)))
    torch.testing.assert_close(unit, plain / plain.norm(dim=-1, keepdim=True))
    short = encode(backbone.model, backbone.tokenizer, [SENTENCES[2]], max_length=4)
    batch = backbone.tokenizer([SENTENCES[2]], truncation=True, max_length=4, return_tensors="pt")
    assert batch["input_ids"].shape[1] == 4
    with torch.no_grad():
        manual = backbone.model.eval()(**batch).last_hidden_state[0].mean(0)
    torch.testing.assert_close(short[0], manual, atol=1e-5, rtol=1e-5)


def test_encode_restores_each_module_mode(make_encoder):
    backbone = make_encoder("bert")
    backbone.model.train()
    backbone.model.embeddings.eval()  # a deliberately frozen part stays in eval
    first = encode(backbone.model, backbone.tokenizer, SENTENCES[:2])
    assert backbone.model.training and backbone.model.encoder.layer[0].training
    assert not backbone.model.embeddings.training
    torch.testing.assert_close(first, encode(backbone.model, backbone.tokenizer, SENTENCES[:2]))  # no dropout


def test_encode_rejects_bad_input(make_encoder):
    backbone = make_encoder("bert")
    with pytest.raises(ConfigError, match="list of strings"):
        encode(backbone.model, backbone.tokenizer, "one sentence")
    with pytest.raises(ConfigError, match="pooling"):
        encode(backbone.model, backbone.tokenizer, ["a"], pooling="max")
    with pytest.raises(ConfigError, match="sentence 1"):
        encode(backbone.model, backbone.tokenizer, ["a", 3])
    assert encode(backbone.model, backbone.tokenizer, []).shape == (0, 32)


def _pairs(scores):
    texts = SENTENCES
    return [(texts[i], texts[(i + 3) % len(texts)], s) for i, s in enumerate(scores)]


def test_sts_evaluator_against_scipy_on_hand_cosines(make_encoder):
    backbone = make_encoder("bert")
    gold = [4.8, 0.2, 3.1, 2.5, 1.0, 0.7, 3.9, 2.2]
    pairs = _pairs(gold)
    evaluator = STSEvaluator(pairs, backbone.tokenizer, pooling="mean", batch_size=2)
    result = evaluator(backbone.model)
    cosines = [torch.cosine_similarity(_alone(backbone, a, "mean"), _alone(backbone, b, "mean"), dim=0).item()
               for a, b, _ in pairs]
    assert set(result) == {"spearman", "pearson"}
    assert result["spearman"] == pytest.approx(spearmanr(cosines, gold).statistic, abs=1e-6)
    assert result["pearson"] == pytest.approx(pearsonr(cosines, gold).statistic, abs=1e-5)
    assert isinstance(evaluator, Evaluator)
    assert evaluator.primary_metric == "spearman" and evaluator.greater_is_better is True


def test_sts_evaluator_is_one_when_gold_follows_the_model(make_encoder):
    backbone = make_encoder("bert")
    probe = STSEvaluator(_pairs([0.0] * 8), backbone.tokenizer)
    own = probe.similarities(backbone.model).tolist()
    assert STSEvaluator(_pairs(own), backbone.tokenizer)(backbone.model)["spearman"] == pytest.approx(1.0)
    reversed_gold = [-s for s in own]
    assert STSEvaluator(_pairs(reversed_gold), backbone.tokenizer)(backbone.model)["spearman"] == pytest.approx(-1.0)


@pytest.mark.parametrize("pairs", [[], [("a", "b", 1.0)], [("a", "b")] * 2, [("a", "b", "high")] * 2,
                                   [("a", None, 1.0)] * 2])
def test_sts_evaluator_rejects_bad_pairs(make_encoder, pairs):
    with pytest.raises(ConfigError, match="STS"):
        STSEvaluator(pairs, make_encoder("bert").tokenizer)


@pytest.mark.parametrize(("pooling", "normalize"), [("mean", False), ("cls", True), ("last", False)])
def test_export_loads_in_sentence_transformers_and_reproduces_encode(make_encoder, tmp_path, pooling, normalize):
    from sentence_transformers import SentenceTransformer

    backbone = make_encoder("bert")
    folder = export_sentence_transformer(backbone.model, backbone.tokenizer, tmp_path / "st", pooling=pooling,
                                         normalize=normalize, max_length=6)
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"] + ["Normalize"] * normalize
    loaded = SentenceTransformer(str(folder), device="cpu")
    assert loaded.max_seq_length == 6
    theirs = loaded.encode(SENTENCES, convert_to_tensor=True, batch_size=3)
    ours = encode(backbone.model, backbone.tokenizer, SENTENCES, pooling=pooling, normalize=normalize,
                  max_length=6)
    torch.testing.assert_close(theirs.cpu(), ours, atol=1e-5, rtol=1e-5)
    assert np.isclose(float(ours.norm(dim=-1).mean()), 1.0) == normalize
    assert sentence_transformer_pooling(loaded) == pooling


def test_sentence_transformer_pooling_refuses_modes_encode_lacks(make_encoder, tmp_path):
    from sentence_transformers import SentenceTransformer

    backbone = make_encoder("bert")
    folder = export_sentence_transformer(backbone.model, backbone.tokenizer, tmp_path / "st", pooling="cls")
    config = json.loads((folder / "1_Pooling" / "config.json").read_text())
    config.update(pooling_mode_cls_token=False, pooling_mode_max_tokens=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    with pytest.raises(EmbeddingError, match="not one of"):
        sentence_transformer_pooling(SentenceTransformer(str(folder), device="cpu"), "st")


def test_export_refuses_a_model_with_attached_parameters(make_encoder, tmp_path):
    from plmkit.mtl.adapters import AdapterConfig, attach_adapters

    backbone = make_encoder("bert")
    attach_adapters(backbone.model, AdapterConfig())
    with pytest.raises(EmbeddingError, match="merge or detach"):
        export_sentence_transformer(backbone.model, backbone.tokenizer, tmp_path / "st")
    assert not (tmp_path / "st").exists()
