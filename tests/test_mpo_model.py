"""MPO compression of whole encoders: budget, freezing through the trainer, save/load/merge, CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from plmkit.compress.mpo_io import MPOLoadError, export_dense, load_mpo_model, save_mpo_model
from plmkit.compress.mpo_linear import MPOLinear
from plmkit.compress.mpo_model import MPOConfig, attach_mpo, count_parameters, relative_errors
from plmkit.losses import DistillationLoss
from plmkit.models import build_classifier

TEXTS = ["the movie was great fun", "not good at all", "a boring plot and awful actors"]


def _batch(tokenizer):
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _classifier(backbone, pooling="cls"):
    model = build_classifier(backbone.model, num_labels=3, pooling=pooling, dropout=0.0)
    with torch.no_grad():  # a head that is not near zero, so outputs differ between models
        model.head.out_proj.weight.normal_(std=1.0)
    return model.eval()


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_budget_is_met_and_errors_are_reported_truthfully(make_encoder, model_type):
    backbone = make_encoder(model_type)
    reference = make_encoder(model_type).model
    before = count_parameters(backbone.model)
    handle = attach_mpo(backbone.model, MPOConfig(budget=0.5))
    after = count_parameters(backbone.model)
    assert 0.45 * before["encoder"] <= after["encoder"] <= 0.5 * before["encoder"]
    assert after["total"] - after["encoder"] == before["total"] - before["encoder"]  # embeddings untouched
    linears = [n for n, m in reference.named_modules() if isinstance(m, nn.Linear) and ".layer." in f".{n}"]
    assert sorted(handle.layers) == sorted(linears)
    measured = relative_errors(backbone.model, reference)
    for row in handle.report:
        assert row["relative_error"] == pytest.approx(measured[row["name"]], rel=1e-3, abs=1e-5)


def test_full_bond_attach_leaves_the_model_unchanged(make_encoder):
    backbone = make_encoder("bert")
    model = _classifier(backbone)
    batch = _batch(backbone.tokenizer)
    with torch.no_grad():
        expected = model(**batch)
        attach_mpo(model, MPOConfig(budget=None))
        assert torch.allclose(model(**batch), expected, atol=1e-5)


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="set only one of budget, max_error and max_bond"):
        MPOConfig(budget=0.5, max_bond=4)
    with pytest.raises(ValueError, match=r"budget must be in \(0, 1\]"):
        MPOConfig(budget=1.5)
    with pytest.raises(ValueError, match="need 5 factors whose product is 32"):
        MPOConfig(factors="32=2x2x2x2x4")
    with pytest.raises(ValueError, match="bad factors entry"):
        MPOConfig(factors="32:2x2")
    with pytest.raises(ValueError, match="allocation"):
        MPOConfig(allocation="best")


def test_targets_budget_and_factor_overrides(make_encoder):
    backbone = make_encoder("bert")
    with pytest.raises(ValueError, match="no linear layer name matches"):
        attach_mpo(backbone.model, MPOConfig(targets="nothing-here"))
    with pytest.raises(ValueError, match="cannot be met"):
        attach_mpo(backbone.model, MPOConfig(budget=0.01))
    handle = attach_mpo(backbone.model, MPOConfig(budget=None, max_bond=3, targets=r"intermediate",
                                                  factors="32=4x2x2x2x1,64=4x4x2x2x1"))
    assert len(handle.layers) == 2
    layer = next(iter(handle.layers.values()))
    assert layer.in_factors == (4, 2, 2, 2, 1) and layer.out_factors == (4, 4, 2, 2, 1)
    assert max(layer.ranks) <= 3


def test_max_error_bounds_every_matrix(make_encoder):
    backbone = make_encoder("bert")
    reference = make_encoder("bert").model
    attach_mpo(backbone.model, MPOConfig(budget=None, max_error=0.3))
    assert max(relative_errors(backbone.model, reference).values()) <= 0.3 + 1e-6


def test_auxiliary_fine_tuning_through_the_trainer_leaves_central_tensors(make_encoder, tmp_path):
    from plmkit.textclf import PadCollator, classification_loss, encode_split
    from plmkit.trainer import Trainer, TrainerConfig

    backbone = make_encoder("bert")
    model = build_classifier(backbone.model, num_labels=2)
    handle = attach_mpo(model, MPOConfig(budget=0.6, trainable="auxiliary"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".cores." in n and not n.endswith(".cores.2") for n in trainable)
    model.head.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = {"text": TEXTS * 6, "label": [1, 0, 0] * 6}
    features = encode_split(rows, ("text",), "label", backbone.tokenizer, max_length=16)
    config = TrainerConfig(output_dir=str(tmp_path), epochs=1, batch_size=6, learning_rate=1e-2,
                           progress=False, save_checkpoints=False)
    Trainer(model, classification_loss, features, config, collate_fn=PadCollator(0)).train()
    for name, param in model.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        assert changed == (param.requires_grad and name in trainable | {n for n in before if n.startswith("head.")}), name
    assert all(not layer.central.requires_grad for layer in handle.layers.values())


@pytest.mark.parametrize(("model_type", "pooling", "pipeline_task"),
                         [("bert", "cls", "text-classification"), ("roberta", "cls", "text-classification"),
                          ("bert", "mean", "feature-extraction"), ("distilbert", "cls", "feature-extraction")])
def test_save_load_and_merge_round_trip(make_encoder, tmp_path, model_type, pooling, pipeline_task):
    from transformers import pipeline

    backbone = make_encoder(model_type)
    model = _classifier(backbone, pooling)
    attach_mpo(model, MPOConfig(budget=0.6, trainable="all"))
    for layer in model.modules():
        if isinstance(layer, MPOLinear):  # moved off the decomposition, as after fine-tuning
            with torch.no_grad():
                layer.cores[1].add_(0.05 * torch.randn_like(layer.cores[1]))
    batch = _batch(backbone.tokenizer)
    with torch.no_grad():
        expected = model(**batch)
        hidden = model.encoder(**batch).last_hidden_state
    save_mpo_model(tmp_path / "m", model, backbone.tokenizer, backbone.name, extra={"label_names": ["a", "b", "c"]})
    loaded = load_mpo_model(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded.model(**batch), expected)
    info = export_dense(tmp_path / "m", tmp_path / "merged")
    assert info["pipeline"] == pipeline_task
    runner = pipeline(pipeline_task, model=str(tmp_path / "merged"))
    if pipeline_task == "text-classification":
        scores = runner(TEXTS, top_k=None)
        probabilities = torch.softmax(expected, -1)
        for row, probs in zip(scores, probabilities, strict=True):
            for item in row:
                assert item["score"] == pytest.approx(float(probs[["a", "b", "c"].index(item["label"])]), abs=1e-5)
    else:
        for k, text in enumerate(TEXTS):
            features = torch.tensor(runner(text)[0])
            length = int(batch["attention_mask"][k].sum())
            assert torch.allclose(features, hidden[k, :length], atol=1e-5)
        if model_type == "bert" or pooling == "mean":
            assert (tmp_path / "merged" / "plmkit_head.safetensors").is_file()


def test_loading_something_else_fails_clearly(tmp_path, make_encoder):
    with pytest.raises(MPOLoadError, match="not a saved MPO model"):
        load_mpo_model(tmp_path)
    backbone = make_encoder("bert")
    backbone.model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "weights.safetensors").write_bytes(b"")
    with pytest.raises(MPOLoadError, match="Hugging Face model folder"):
        load_mpo_model(tmp_path / "hf")


def test_compress_cli_writes_a_complete_run_folder(tmp_path, tiny_backbone_dir, capsys):
    from plmkit.cli import main
    from tests.test_cli import _write_task

    task = _write_task(tmp_path / "task")
    run = tmp_path / "run"
    code = main(["compress", "mpo", "--model", str(tiny_backbone_dir), "--task", str(task), "--budget", "0.6",
                 "--distill", "0.5",
                 "--epochs", "1", "--batch-size", "8", "--max-length", "16", "--output-dir", str(run),
                 "--no-progress", "--no-save-checkpoints", "--latency-batch", "2", "--latency-tokens", "8"])
    assert code == 0
    out = capsys.readouterr().out
    assert "encoder at" in out and "mpo after fine-tuning" in out and "mpo factored ms" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["parameters"]["encoder_fraction"] <= 0.6
    assert {"dense", "before", "after", "latency_ms", "layers"} <= set(metrics)
    for name in ("config.json", "run.log", "layer_errors.png", "model/config.json", "model/weights.safetensors",
                 "merged/config.json", "merged/model.safetensors"):
        assert (run / name).is_file(), name
    assert main(["compress", "merge", str(run / "model"), "--out", str(tmp_path / "again")]) == 0
    assert main(["compress", "mpo", "--model", str(tiny_backbone_dir), "--budget", "0.6", "--max-bond", "2",
                 "--output-dir", str(tmp_path / "x")]) == 0  # --max-bond replaces the default budget
    assert main(["compress", "mpo", "--model", str(tiny_backbone_dir), "--factors", "32=3x3",
                 "--output-dir", str(tmp_path / "y")]) == 2
    assert "need 5 factors" in capsys.readouterr().err


def test_distillation_loss_matches_its_definition(make_encoder):
    from torch.nn import functional as F

    from plmkit.compress.distill import distillation_loss

    backbone = make_encoder("bert")
    teacher = _classifier(backbone)
    student = _classifier(make_encoder("bert"))
    with torch.no_grad():
        student.head.out_proj.weight.normal_(std=1.0)
    batch = {**_batch(backbone.tokenizer), "labels": torch.tensor([0, 2, 1])}
    with torch.no_grad():
        s, t = student(**batch), teacher(**batch)
    ce = F.cross_entropy(s, batch["labels"])
    kl = (F.softmax(t / 3, -1) * (F.log_softmax(t / 3, -1) - F.log_softmax(s / 3, -1))).sum(-1).mean() * 9
    assert float(distillation_loss(teacher, 0.0, 3.0)(student, batch).detach()) == pytest.approx(float(ce), rel=1e-5)
    assert float(distillation_loss(teacher, 1.0, 3.0)(student, batch).detach()) == pytest.approx(float(kl), rel=1e-5)
    assert float(distillation_loss(teacher, 1.0)(teacher, batch).detach()) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="distillation weight"):
        distillation_loss(teacher, 1.5)


def test_hidden_state_distillation_adds_the_per_layer_relative_error(make_encoder):
    from plmkit.compress.distill import distillation_loss

    backbone = make_encoder("bert")
    teacher = _classifier(backbone)
    student = _classifier(make_encoder("bert"))
    student.eval()
    batch = {**_batch(backbone.tokenizer), "labels": torch.tensor([0, 2, 1])}
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        hs = student.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             output_hidden_states=True).hidden_states
        ht = teacher.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             output_hidden_states=True).hidden_states
    # independent form: per layer, squared error over real tokens only, relative to the teacher's energy
    expected = sum(float((s[mask] - t[mask]).square().sum() / t[mask].square().sum()) for s, t in zip(hs, ht, strict=True))
    expected /= len(hs)
    plain = float(distillation_loss(teacher, 0.5)(student, batch).detach())
    with_hidden = float(distillation_loss(teacher, 0.5, hidden_weight=2.0)(student, batch).detach())
    assert with_hidden - plain == pytest.approx(2.0 * expected, rel=1e-4)
    assert float(distillation_loss(teacher, 1.0, hidden_weight=1.0)(teacher, batch).detach()) == pytest.approx(
        0.0, abs=1e-6)
    shallower = copy.deepcopy(student)
    shallower.encoder.encoder.layer = shallower.encoder.encoder.layer[:1]
    shallower.encoder.config.num_hidden_layers = 1
    with pytest.raises(ValueError, match="same depth"):
        distillation_loss(teacher, 0.5, hidden_weight=1.0)(shallower, batch)
    # uniform map: the 1-layer student's layer 1 sits at the 2-layer teacher's layer 2
    with torch.no_grad():
        hs1 = shallower.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                output_hidden_states=True).hidden_states
    mapped = float((hs1[1][mask] - ht[2][mask]).square().sum() / ht[2][mask].square().sum())
    terms = DistillationLoss(teacher, hidden_weight=2.0, layer_map="uniform")(shallower, batch)
    assert mapped > 0 and float(terms["hidden"]) == pytest.approx(mapped, rel=1e-4)
    with pytest.raises(ValueError, match=">= 0"):
        distillation_loss(teacher, 0.5, hidden_weight=-1.0)


def test_public_api_is_importable_lazily():
    import plmkit.compress as compress
    from plmkit.compress.mpo import mpo_decompose

    assert compress.mpo_decompose is mpo_decompose and "MPOLinear" in compress.__all__
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        compress.nothing  # noqa: B018


@pytest.mark.slow
def test_minilm_compresses_to_half_its_encoder_and_merges(tmp_path):
    """Real bundled MiniLM: budget met, exact errors reported, merged folder runs in a pipeline."""
    from transformers import pipeline

    from plmkit.backbones import load_encoder

    backbone = load_encoder("minilm-l6")
    before = count_parameters(backbone.model)["encoder"]
    handle = attach_mpo(backbone.model, MPOConfig(budget=0.5))
    assert 0.49 * before <= count_parameters(backbone.model)["encoder"] <= 0.5 * before
    assert all(0.0 < row["relative_error"] < 1.0 for row in handle.report)
    save_mpo_model(tmp_path / "m", backbone.model, backbone.tokenizer, backbone.name)
    export_dense(tmp_path / "m", tmp_path / "merged")
    text = "a gripping, funny and humane film"
    enc = backbone.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        expected = backbone.model(**enc).last_hidden_state[0]
    features = torch.tensor(pipeline("feature-extraction", model=str(tmp_path / "merged"))(text)[0])
    assert torch.allclose(features, expected, atol=1e-4)


def test_layer_error_grid_puts_each_matrix_in_its_layer_and_kind():
    from plmkit.compress.jobs import layer_error_grid

    report = [{"name": f"encoder.encoder.layer.{layer}.{kind}", "relative_error": 10 * layer + k}
              for layer in (1, 0) for k, kind in enumerate(("attention.self.query", "output.dense"))]
    grid, rows, columns = layer_error_grid(report)
    assert rows == ["layer 0", "layer 1"]
    assert columns == ["attention.self.query", "output.dense"]
    assert grid == [[0, 1], [10, 11]]


# ------------------------------------------------------------------------------ decoders
DECODER_IDS = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_decoders_compress_to_a_budget_and_full_rank_reproduces_them(make_decoder, model_type):
    lm = make_decoder(model_type).model.eval()
    reference = copy.deepcopy(lm)
    with torch.no_grad():
        expected = lm(DECODER_IDS).logits
    full = attach_mpo(copy.deepcopy(lm), MPOConfig(budget=None))
    per_layer = 7 if model_type == "llama" else 4
    assert len(full.layers) == 2 * per_layer and all(".0." in n or ".1." in n for n in full.layers)
    with torch.no_grad():
        torch.testing.assert_close(full.model(DECODER_IDS).logits, expected, atol=1e-5, rtol=1e-4)
    before = count_parameters(lm)
    handle = attach_mpo(lm, MPOConfig(budget=0.5))
    after = count_parameters(lm)
    assert 0.4 * before["encoder"] <= after["encoder"] <= 0.5 * before["encoder"]
    assert after["total"] - after["encoder"] == before["total"] - before["encoder"]  # embeddings, head untouched
    with torch.no_grad():
        logits = lm(DECODER_IDS).logits
    assert logits.shape == expected.shape and torch.isfinite(logits).all()
    measured = relative_errors(lm, reference)
    for row in handle.report:
        assert row["relative_error"] == pytest.approx(measured[row["name"]], rel=1e-3, abs=1e-5)


def test_gpt2_merge_gives_conv1d_back_and_a_loadable_folder(make_decoder, tmp_path):
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    lm = make_decoder("gpt2").model.eval()
    attach_mpo(lm, MPOConfig(budget=None, max_bond=3))
    with torch.no_grad():
        expected = lm(DECODER_IDS).logits
    save_mpo_model(tmp_path / "mpo", lm)
    loaded = load_mpo_model(tmp_path / "mpo", load_tokenizer=False)
    assert loaded.meta["kind"] == "causal-lm"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(DECODER_IDS).logits, expected, atol=1e-5, rtol=1e-4)
    result = export_dense(loaded, tmp_path / "dense")
    assert result["pipeline"] == "text-generation"
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()
    assert isinstance(dense.transformer.h[0].attn.c_attn, Conv1D)
    with torch.no_grad():
        torch.testing.assert_close(dense(DECODER_IDS).logits, expected, atol=1e-4, rtol=1e-4)


def test_the_mpo_handle_is_a_handle_like_the_adapters(make_encoder, tmp_path):
    """One Handle protocol: trainable parameters, state dict, save in the shared folder format, detach."""
    from safetensors.torch import load_file

    from plmkit.handles import Handle

    model = make_encoder("bert").model.eval()
    handle = attach_mpo(model, MPOConfig(budget=0.6, trainable="auxiliary"))
    assert isinstance(handle, Handle)
    layers = list(handle.layers.values())
    trainable = {id(p) for p in handle.trainable_parameters()}
    for layer in layers:  # auxiliary tensors train, central tensors stay frozen
        assert all(id(p) in trainable for p in layer.parameters() if p.requires_grad)
        assert any(not p.requires_grad for p in layer.parameters())
    state = handle.state_dict()
    assert len([k for k in state if k.startswith("layers.0.")]) == len(layers[0].state_dict())
    folder = handle.save(tmp_path / "mpo")
    saved = load_file(str(folder / "weights.safetensors"))
    assert set(saved) == {f"mpo.{k}" for k in state}
    assert json.loads((folder / "config.json").read_text())["layers"] == list(handle.layers)
    batch = {"input_ids": torch.tensor([[2, 7, 9, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    before = model(**batch).last_hidden_state
    handle.detach()  # dense layers with the same function
    assert not any(isinstance(m, MPOLinear) for m in model.modules())
    torch.testing.assert_close(model(**batch).last_hidden_state, before, rtol=1e-4, atol=1e-4)
