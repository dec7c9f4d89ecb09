"""Prompt transfer and PANDA: KD loss by hand, frozen teacher, transfer init, metric, store kinds, end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.nn import functional as F

from plmkit.cli import main
from plmkit.errors import ConfigError
from plmkit.losses import DistillationLoss
from plmkit.models import build_classifier
from plmkit.mtl.panda import PandaConfig, _initialised
from plmkit.mtl.prompts import PromptConfig, attach_prompts
from plmkit.mtl.store import AdapterStore, store_key
from plmkit.mtl.transferability import (
    METRICS,
    _firing_rates,
    beta_from_transferability,
    embed_tasks,
    similarity_matrix,
)
from tests.test_cli import _write_task


def _batch(tokenizer, labels=(0, 2)):
    batch = dict(tokenizer(["the movie was great", "bad plot"], padding=True, return_tensors="pt"))
    return {**batch, "labels": torch.tensor(labels)}


def _prompted(backbone, seed):
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone.model)
    handle = attach_prompts(model, PromptConfig(length=3, init="random"))
    return handle, build_classifier(model, 3)


def test_kd_loss_is_ce_plus_beta_mse_and_the_teacher_gets_no_gradient(make_encoder):
    backbone = make_encoder("bert")
    _, teacher = _prompted(backbone, 0)
    handle, student = _prompted(backbone, 1)
    batch = _batch(backbone.tokenizer)
    loss = DistillationLoss(teacher, beta=0.7, soft="mse")
    student.eval()
    terms = loss(student, batch)
    with torch.no_grad():
        z_s, z_t = student(**batch), teacher(**batch)
    ce = -torch.log_softmax(z_s, -1)[torch.arange(2), batch["labels"]].mean()
    mse = ((z_s - z_t) ** 2).mean()
    assert terms["loss"].item() == pytest.approx((ce + 0.7 * mse).item(), rel=1e-5)
    assert terms["soft"].item() == pytest.approx(F.mse_loss(z_s, z_t).item(), rel=1e-5)
    terms["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert handle.trainable_parameters()[0].grad.abs().sum() > 0


def test_transfer_init_copies_the_prompt_not_the_head(make_encoder):
    backbone = make_encoder("bert")
    source, source_classifier = _prompted(backbone, 0)
    with torch.no_grad():
        source.trainable_parameters()[0].add_(1.0)
    tensors = {k: v.clone() for k, v in source.state_dict().items()}
    torch.manual_seed(5)
    model = copy.deepcopy(backbone.model)
    target = _initialised(PandaConfig(length=3, init="random"), tensors)(model)
    head = build_classifier(model, 3).head
    assert torch.equal(target.vectors(), source.vectors())
    assert not torch.equal(head.dense.weight, source_classifier.head.dense.weight)


def _three_prompts(backbone):
    config = PromptConfig(length=3, init="random")
    prompts = []
    for seed in range(3):
        handle, _ = _prompted(backbone, seed)
        prompts.append((config, {k: v.clone() for k, v in handle.state_dict().items()}))
    return prompts, {k: v for k, v in _batch(backbone.tokenizer).items() if k != "labels"}


@pytest.mark.parametrize("metric", list(METRICS))
def test_metric_is_symmetric_bounded_and_sets_beta(make_encoder, metric):
    backbone = make_encoder("bert")
    prompts, batch = _three_prompts(backbone)
    matrix = similarity_matrix(embed_tasks(backbone.model, prompts, batch, metric))
    assert torch.allclose(matrix, matrix.T)
    assert torch.allclose(matrix.diagonal(), torch.ones(3), atol=1e-5)
    low = 0.0 if metric == "neurons" else -1.0  # firing rates are never negative; shifts can be
    assert matrix.min() >= low - 1e-6 and matrix.max() <= 1.0 and matrix[0, 1] < 0.999
    flipped = similarity_matrix(embed_tasks(backbone.model, prompts[::-1], batch, metric))
    assert flipped[0, 2].item() == pytest.approx(matrix[2, 0].item(), abs=1e-5)  # order-free
    assert not hasattr(backbone.model, "plmkit_prompt")  # probing leaves the backbone bare
    assert [beta_from_transferability(t, 2.0) for t in (-0.3, 0.25, 1.4)] == [0.0, 0.5, 2.0]


def _hand_firing_rates(model, batch, positions):
    """Each layer's BertIntermediate output (act(dense(x)), the FFN projection's input), counted one
    row and position at a time; ``positions(row)`` lists the positions that count."""
    outputs = []
    hooks = [layer.intermediate.register_forward_hook(lambda _m, _a, out: outputs.append(out))
             for layer in model.encoder.layer]
    with torch.no_grad():
        model(**batch)  # the attached prompt's hooks change what the model sees, as in the metric
    for hook in hooks:
        hook.remove()
    rates = []
    for u in outputs:
        fired = torch.zeros(u.shape[-1])
        count = 0
        for row in range(u.shape[0]):
            for position in positions(row):
                fired += (u[row, position] > 0).float()
                count += 1
        rates.append(fired / count)
    return torch.stack(rates)


@pytest.mark.parametrize("mode", ["prompt", "prefix"])
def test_firing_rates_count_neurons_above_zero_at_the_prompt_or_the_real_tokens(make_encoder, mode):
    backbone = make_encoder("bert")
    model = backbone.model.eval()
    config = PromptConfig(mode=mode, length=3, init="random")
    torch.manual_seed(0)
    handle = attach_prompts(model, config)
    batch = {k: v for k, v in _batch(backbone.tokenizer).items() if k != "labels"}
    assert batch["attention_mask"].min() == 0  # a padded row: padding must not count
    rates = _firing_rates(model, config, batch)
    if mode == "prompt":  # the prompt's own P positions, every row
        expected = _hand_firing_rates(model, batch, lambda row: range(3))
    else:  # no prompt positions: the real tokens
        real = batch["attention_mask"]
        expected = _hand_firing_rates(model, batch, lambda row: real[row].nonzero().flatten().tolist())
    handle.detach()
    layers = len(model.encoder.layer)
    assert rates.shape == (layers, model.config.intermediate_size)
    assert torch.allclose(rates, expected) and 0.0 < rates.mean() < 1.0


def test_neuron_metric_is_the_cosine_of_per_layer_normalised_firing_rates(make_encoder):
    backbone = make_encoder("bert")
    prompts, batch = _three_prompts(backbone)
    matrix = similarity_matrix(embed_tasks(backbone.model, prompts, batch, "neurons"))
    rates = [_firing_rates_of(backbone.model, c, t, batch) for c, t in prompts]
    flat = [torch.cat([r / r.norm() for r in layer_rates]) for layer_rates in rates]
    assert matrix[0, 1].item() == pytest.approx(F.cosine_similarity(flat[0], flat[1], dim=0).item(), abs=1e-5)


def _firing_rates_of(model, config, tensors, batch):
    model = copy.deepcopy(model).eval()
    handle = attach_prompts(model, config)
    handle.load_state_dict(tensors)
    return _firing_rates(model, config, batch)


def test_an_unknown_metric_is_refused_naming_the_rows():
    with pytest.raises(ConfigError, match="--panda-metric must be one of activation, neurons, neurons-shift"):
        PandaConfig(metric="overlap")


def test_stage1_kinds_do_not_collide_in_the_store(tmp_path):
    signature = {"name": "b", "model_type": "bert", "hidden_size": 32, "num_layers": 2}
    keys = {kind: store_key(signature, "task", {"x": 1}, kind=kind) for kind in ("adapter", "prompt")}
    assert keys["adapter"] != keys["prompt"] and keys["prompt"].split("/")[1] == "prompt"
    store = AdapterStore(tmp_path)
    for kind, key in keys.items():
        folder = tmp_path / f"src-{kind}"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "weights.safetensors").write_text("")
        store.put(key, folder)
    assert [e.key for e in store.list(kind="prompt")] == [keys["prompt"]]
    assert [e.key for e in store.list(kind="adapter")] == [keys["adapter"]]


def test_each_method_end_to_end_and_the_teacher_is_reused(tmp_path, tiny_backbone_dir, capsys):
    run = tmp_path / "run"
    common = ["--target", str(_write_task(tmp_path / "t")), "--backbone", str(tiny_backbone_dir),
              "--store", str(tmp_path / "store"), "--epochs", "1", "--batch-size", "16", "--max-length", "32",
              "--no-progress", "--prompt-length", "3", "--source-epochs", "1", "--no-baseline"]
    sources = f"{_write_task(tmp_path / 'src_a', n_train=32)},{_write_task(tmp_path / 'src_b', n_train=40)}"
    assert main(["transfer", "--sources", sources, "--method", "panda", "--compare", "prompt,prompt-transfer,panda",
                 "--output-dir", str(run), *common]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    runs = {r["method"]: r for r in metrics["runs"]}
    assert list(runs) == ["prompt", "prompt-transfer", "panda"]
    assert runs["panda"]["teacher_test"] == runs["prompt-transfer"]["test"]  # the same seed's model, reused
    assert runs["panda"]["transfer_sources"] == runs["prompt-transfer"]["transfer_sources"]
    t = runs["panda"]["mean_transferability"]
    assert runs["panda"]["transferability_metric"] == "neurons"  # the default: firing-rate cosines are >= 0
    assert 0.0 <= t <= 1.0 and runs["panda"]["beta"] == pytest.approx(min(1.0, t))
    saved = json.loads((run / "model-panda" / "config.json").read_text())
    assert saved["kind"] == "prompt" and saved["prompt"]["length"] == 3
    # --sources auto: the store's prompt entries for this backbone, ranked for the target
    assert main(["transfer", "--sources", "auto", "--method", "prompt-transfer", "--output-dir", str(tmp_path / "auto"),
                 "--panda-metric", "activation", *common]) == 0
    auto = json.loads((tmp_path / "auto" / "metrics.json").read_text())["runs"][0]
    assert auto["transfer_sources"][0] in ("src_a", "src_b") and auto["transferability_metric"] == "activation"
    # the matrix command reuses the stored prompts
    matrix_run = tmp_path / "matrix"
    assert main(["transferability", "--tasks", sources, "--backbone", str(tiny_backbone_dir), "--store",
                 str(tmp_path / "store"), "--source-epochs", "1", "--prompt-length", "3", "--max-length", "32",
                 "--no-progress", "--output-dir", str(matrix_run), "--source-learning-rate", "0.001",
                 "--metric", "neurons-shift"]) == 0
    assert json.loads((matrix_run / "metrics.json").read_text())["metric"] == "neurons-shift"
    matrix = json.loads((matrix_run / "metrics.json").read_text())["matrix"]
    assert len(matrix) == 2 and matrix[0][1] == pytest.approx(matrix[1][0])
    assert (matrix_run / "transferability.png").is_file()
    assert "transferability" in capsys.readouterr().out


def _late_fusion_args(tmp_path, tiny_backbone_dir, sources, run, *extra):
    return ["transfer", "--sources", sources, "--target", str(_write_task(tmp_path / "t")), "--backbone",
            str(tiny_backbone_dir), "--store", str(tmp_path / "store"), "--epochs", "1", "--batch-size", "16",
            "--max-length", "32", "--no-progress", "--prompt-length", "3", "--source-epochs", "1", "--no-baseline",
            "--method", "panda", "--panda-top-k", "2", "--panda-fusion", "late", "--log-every-steps", "1",
            "--output-dir", str(run), *extra]


def test_late_fusion_distils_from_one_teacher_per_source_weighted_by_beta_over_k(tmp_path, tiny_backbone_dir):
    run = tmp_path / "run"
    sources = f"{_write_task(tmp_path / 'src_a', n_train=32)},{_write_task(tmp_path / 'src_b', n_train=40)}"
    assert main(_late_fusion_args(tmp_path, tiny_backbone_dir, sources, run)) == 0
    panda = json.loads((run / "metrics.json").read_text())["runs"][0]
    assert panda["fusion"] == "late" and sorted(panda["transfer_sources"]) == ["src_a", "src_b"]
    teachers = {t["source"]: t for t in panda["teachers"]}
    assert sorted(teachers) == ["src_a", "src_b"] and not any(t["reused"] for t in teachers.values())
    for name, teacher in teachers.items():
        assert teacher["beta"] == pytest.approx(max(0.0, min(1.0, panda["transferability"][name])) / 2)
        assert (run / "teachers" / name / "prompt-transfer-seed42" / "train_log.jsonl").is_file()
    assert panda["beta"] == pytest.approx(sum(t["beta"] for t in teachers.values()))
    logged = json.loads((run / "panda-seed42" / "train_log.jsonl").read_text().splitlines()[0])
    assert {"task", "soft_src_a", "soft_src_b"} <= set(logged)
    # one source: late fusion's single teacher is the prompt-transfer model --compare trained from it
    single = tmp_path / "single"
    assert main(_late_fusion_args(tmp_path, tiny_backbone_dir, str(tmp_path / "src_a"), single,
                                  "--compare", "prompt-transfer,panda")) == 0
    runs = {r["method"]: r for r in json.loads((single / "metrics.json").read_text())["runs"]}
    [teacher] = runs["panda"]["teachers"]
    assert teacher["reused"] and teacher["test"] == runs["prompt-transfer"]["test"]
    assert not (single / "teachers").exists()


def test_a_bad_fusion_is_refused_naming_the_choices_before_anything_loads(tmp_path, tiny_backbone_dir, capsys,
                                                                           monkeypatch):
    with pytest.raises(ConfigError, match="--panda-fusion must be one of \\('early', 'late'\\), got 'middle'"):
        PandaConfig(fusion="middle")
    args = _late_fusion_args(tmp_path, tiny_backbone_dir, str(_write_task(tmp_path / "src_a")), tmp_path / "run")
    args[args.index("late")] = "middle"
    from plmkit.mtl import pipeline

    loaded = []
    monkeypatch.setattr(pipeline, "load_encoder", lambda *a, **k: loaded.append(a) or pytest.fail("loaded"))
    assert main(args) == 2
    assert "'early', 'late'" in capsys.readouterr().err and not loaded
