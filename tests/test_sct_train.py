"""SCT through the trainer: queues restored on resume, exported models reload in SentenceTransformer, the CLI."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from plmkit.compress.sct import CrossViewModel, SCTConfig
from plmkit.compress.sct_train import ViewCollator, teacher_embeddings, train_method
from plmkit.embeddings import encode, export_sentence_transformer
from plmkit.losses.cross_view import CrossViewLoss
from plmkit.trainer import Trainer, TrainerConfig

SENTENCES = ["the movie was great", "a boring film", "the team won the game", "shares fell on the market",
             "the band played music", "the minister lost the vote", "it was really fun", "the plot was awful"]


def _trainer(path, **extra) -> TrainerConfig:
    settings = {"output_dir": str(path), "batch_size": 4, "max_steps": 2, "learning_rate": 1e-3,
                "progress": False, "eval_every_steps": 1, **extra}
    return TrainerConfig(**settings)


def test_resume_restores_the_queues_exactly(make_encoder, tmp_path):
    backbone = make_encoder("bert")
    config = SCTConfig(queue_size=6, projector_depth=1, projector_expansion=2)
    rows = [(s, s, i) for i, s in enumerate(SENTENCES)]
    collate = ViewCollator(backbone.tokenizer, 16, "sct")
    model = CrossViewModel(backbone.model, config)
    Trainer(model, CrossViewLoss(), rows, _trainer(tmp_path), collate_fn=collate).train()
    assert int(model.queue1.filled) == 6 and int(model.queue1.pointer) == 2  # 8 pushed into 6: wrapped
    resumed = CrossViewModel(make_encoder("bert").model, config)
    Trainer(resumed, CrossViewLoss(), rows, _trainer(tmp_path, resume=True), collate_fn=collate).train()
    for name in ("queue1", "queue2"):
        mine, theirs = getattr(model, name), getattr(resumed, name)
        assert torch.equal(mine.rows, theirs.rows) and int(mine.pointer) == int(theirs.pointer)


@pytest.mark.parametrize("method", ["sct", "simcse"])
def test_trained_student_exports_and_reloads_in_sentence_transformers(make_encoder, tmp_path, method):
    from sentence_transformers import SentenceTransformer

    backbone = make_encoder("bert")
    before = {n: p.clone() for n, p in backbone.model.named_parameters()}
    config = SCTConfig(queue_size=16, projector_depth=1, projector_expansion=2)
    encoder, result = train_method(method, backbone.model, backbone.tokenizer, SENTENCES, config,
                                   _trainer(tmp_path / "run", eval_every_steps=None, save_checkpoints=False))
    assert result.global_step == 2
    assert any(not torch.equal(before[n], p) for n, p in encoder.named_parameters())  # it trained a copy
    assert all(torch.equal(before[n], p) for n, p in backbone.model.named_parameters())
    path = export_sentence_transformer(encoder, backbone.tokenizer, tmp_path / "st", pooling="mean")
    loaded = SentenceTransformer(str(path), device="cpu")
    ours = encode(encoder, backbone.tokenizer, SENTENCES[:3])
    theirs = torch.as_tensor(loaded.encode(SENTENCES[:3], convert_to_numpy=True))
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)


def test_teacher_embeddings_are_cached(tiny_backbone_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    teacher = SentenceTransformer(str(tiny_backbone_dir), device="cpu")
    first = teacher_embeddings(teacher, "tiny", SENTENCES, tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert torch.allclose(first.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)

    class Refuses:
        def encode(self, *args, **kwargs):
            raise AssertionError("the cache should have answered")

    assert torch.equal(teacher_embeddings(Refuses(), "tiny", SENTENCES, tmp_path), first)


def test_embed_command_end_to_end(tiny_backbone_dir, tmp_path, capsys):
    from plmkit.cli import main

    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(SENTENCES * 2) + "\n\n")
    pairs = tmp_path / "pairs.jsonl"
    combos = list(itertools.combinations(SENTENCES, 2))  # 28 pairs: enough ranks to tell poolings apart
    rows = [{"text_a": a, "text_b": b, "label": float(i * 7 % 5)} for i, (a, b) in enumerate(combos)]
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    from transformers import AutoModel, AutoTokenizer

    from plmkit.compress.sct_train import load_eval_pairs
    from plmkit.embeddings import STSEvaluator

    teacher_model = AutoModel.from_pretrained(tiny_backbone_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone_dir)
    teacher = export_sentence_transformer(teacher_model, tokenizer, tmp_path / "teacher", pooling="cls")
    out = tmp_path / "run"
    code = main(["embed", "--model", str(tiny_backbone_dir), "--layers", "1", "--teacher", str(teacher),
                 "--data", str(data), "--eval", str(pairs), "--methods", "sct-distill,mse", "--max-steps", "2",
                 "--batch-size", "4", "--queue-size", "16", "--projector-depth", "1", "--no-progress",
                 "--teacher-cache", str(tmp_path / "cache"), "--output-dir", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"raw student", "teacher", "sct-distill", "mse"}
    # the teacher is scored with its own (CLS) pooling, as its cached embeddings are
    evaluator = {mode: STSEvaluator(load_eval_pairs(str(pairs)), tokenizer, mode) for mode in ("cls", "mean")}
    by_pooling = {mode: 100 * score(teacher_model)["spearman"] for mode, score in evaluator.items()}
    assert by_pooling["cls"] != by_pooling["mean"]
    assert metrics["models"]["teacher"]["spearman"][str(pairs)] == pytest.approx(by_pooling["cls"], abs=1e-6)
    assert metrics["layers"] == [0] and metrics["data"]["unique_used"] == len(SENTENCES)
    assert (out / "sct-distill" / "model" / "modules.json").is_file()
    assert "sct-distill" in capsys.readouterr().out
