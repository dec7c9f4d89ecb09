"""Shared fixtures: tiny random encoders and decoders built once per session and copied per test."""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ["the", "a", "an", "movie", "film", "was", "is", "are", "it", "this", "that", "great", "good", "bad", "awful", "boring", "fun", "funny", "plot", "actor", "story", "not", "very", "really", "loved", "hated", "and", "but", "of", "to", "in", "on", "with", "for", "sport", "game", "team", "market", "bank", "shares", "election", "vote", "minister", "phone", "software", "internet", "music", "band", "show"]

ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet")
DECODER_TYPES = ("llama", "gpt2")


@pytest.fixture(scope="session")
def _encoder_cache():
    from plmkit.backbones import tiny_encoder

    return {name: tiny_encoder(name, WORDS, dropout=0.1) for name in ENCODER_TYPES}


@pytest.fixture
def make_encoder(_encoder_cache):
    """``make_encoder("bert")`` -> a fresh deep copy of the tiny random Backbone."""

    def build(model_type: str = "bert"):
        return copy.deepcopy(_encoder_cache[model_type])

    return build


@pytest.fixture(scope="session")
def _decoder_cache():
    from plmkit.backbones import tiny_causal_lm

    return {name: tiny_causal_lm(name, WORDS) for name in DECODER_TYPES}


@pytest.fixture
def make_decoder(_decoder_cache):
    """``make_decoder("llama")`` -> a fresh deep copy of the tiny random causal LM Backbone (*ForCausalLM)."""

    def build(model_type: str = "llama"):
        return copy.deepcopy(_decoder_cache[model_type])

    return build


@pytest.fixture
def tiny_backbone_dir(make_encoder, tmp_path):
    """The tiny random BERT saved as a local model folder (what a user passes as --backbone)."""
    backbone = make_encoder("bert")
    path = tmp_path / "tiny-bert"
    backbone.model.save_pretrained(path)
    backbone.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def load_script():
    """``load_script("bench_ode")`` -> scripts/bench_ode.py imported as a module (once per session)."""
    loaded = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts"
                                                          / f"{name}.py")
            loaded[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded[name])
        return loaded[name]

    return load
