"""MPO depth scaling: shared central tensors, the fit, closeness to the shallow model at init, round trips.

The bound tested for "starts close": with the LayerNorm hand-off, in eval mode,
    ||h_deep - h_shallow||_F / ||h_shallow||_F <= 1e-5                       at s = 0, and
    ||h_deep - h_shallow||_F / ||h_shallow||_F <= s^4 * gap(s = 1) + 1e-5     for s in (0, 1],
where s scales each of the 4 auxiliary tensors of a new layer (so its weights by s^4) and gap(1)
is the gap of plain unscaled copies. The deviation is a smooth function of s^4 that vanishes at 0.
"""

from __future__ import annotations

import math

import pytest
import torch

from plmkit.compress.mpo_depth import DeepMPOConfig, build_deep_mpo, hidden_deviation, layer_groups
from plmkit.compress.mpo_io import export_dense, load_mpo_model, save_mpo_model
from plmkit.compress.mpo_linear import MPOLinear
from plmkit.compress.mpo_share import fit_shared_mpo
from plmkit.models import build_classifier


def _batch(tokenizer):
    enc = tokenizer(["the movie was great fun", "not good at all but the actor was"], padding=True,
                    return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _trained_like(backbone, seed=0):
    """Perturb the tiny model so LayerNorms are not identity maps and weights are not tiny (as after training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in backbone.model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.add_(0.3 * noise if "norm" in name.lower() else 0.1 * noise)
    backbone.model.eval()
    return backbone


def test_shared_fit_is_exact_for_one_matrix_and_improves_with_iterations():
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(32, 48, generator=generator, dtype=torch.float64) for _ in range(3)]
    in_f, out_f = (2, 2, 2, 2, 2), (2, 2, 3, 2, 2)
    single = fit_shared_mpo(weights[:1], in_f, out_f)
    assert single.relative_errors[0] < 1e-12
    rough = fit_shared_mpo(weights, in_f, out_f, iterations=0)
    fitted = fit_shared_mpo(weights, in_f, out_f, iterations=15)
    total = lambda fit: sum(e**2 * float(w.norm()) ** 2 for e, w in zip(fit.relative_errors, weights, strict=True))  # noqa: E731
    assert total(fitted) < total(rough)
    # The pieces assemble into each matrix with the same error, independently rebuilt.
    for k, w in enumerate(weights):
        cores = fitted.auxiliary[k][:2] + [fitted.central] + fitted.auxiliary[k][2:]
        t = torch.einsum("xaAp,pbBq,qcCr,rdDs,seEy->abcdeABCDE", *cores).reshape(32, 48)
        assert float((t - w).norm() / w.norm()) == pytest.approx(fitted.relative_errors[k], rel=1e-9)


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "mpnet"])
def test_without_cross_layer_sharing_the_shallow_construction_is_the_pretrained_model(make_encoder, model_type):
    backbone = _trained_like(make_encoder(model_type))
    shallow = build_deep_mpo(backbone.model, DeepMPOConfig(depth_multiplier=1, num_groups=2, adapter_rank=2))
    assert hidden_deviation(shallow.model, backbone.model, _batch(backbone.tokenizer)) < 1e-5


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "mpnet"])
def test_deep_model_starts_within_the_stated_bound_of_the_shallow_one(make_encoder, model_type):
    backbone = _trained_like(make_encoder(model_type))
    batch = _batch(backbone.tokenizer)

    def gap(scale, handoff=True, groups=1, k=2):
        config = DeepMPOConfig(depth_multiplier=k, num_groups=groups, aux_scale=scale, layernorm_handoff=handoff)
        shallow = build_deep_mpo(backbone.model, DeepMPOConfig(depth_multiplier=1, num_groups=groups))
        return hidden_deviation(build_deep_mpo(backbone.model, config).model, shallow.model, batch)

    plain_copies = gap(1.0)
    assert gap(0.0) <= 1e-5
    for scale in (0.3, 0.6, DeepMPOConfig().scale(2)):
        assert gap(scale) <= scale**4 * plain_copies + 1e-5, scale
    assert gap(0.0, groups=2, k=4) <= 1e-5
    # Without the hand-off, copies re-apply the pretrained LayerNorm affine and the model drifts away.
    assert gap(0.0, handoff=False) > 100 * gap(0.0) + 1e-3


def test_sharing_structure_parameter_count_and_scaling(make_encoder):
    backbone = make_encoder("bert")
    config = DeepMPOConfig(depth_multiplier=2, num_groups=1, adapter_rank=4)
    deep = build_deep_mpo(backbone.model, config)
    layers = deep.model.encoder.layer
    assert len(layers) == 4 and deep.model.config.num_hidden_layers == 4
    queries = [layer.attention.self.query for layer in layers]
    assert all(isinstance(q, MPOLinear) for q in queries)
    assert len({id(q.central) for q in queries}) == 1  # one central tensor for every layer
    assert len({id(q.cores[0]) for q in queries}) == 4  # auxiliary tensors per layer
    s = (2 * 2) ** -0.25
    assert deep.report["aux_scale"] == pytest.approx(s)
    for k in (0, 1, 3, 4):  # layer 1 is the scaled copy of layer 0
        assert torch.allclose(queries[1].cores[k], s * queries[0].cores[k])
    out0, out1 = layers[0].output.dense, layers[1].output.dense
    assert torch.allclose(out1.bias, s**4 * out0.bias) and torch.equal(layers[1].attention.self.query.bias,
                                                                         layers[0].attention.self.query.bias)
    # Independent count: unique tensors once, per-layer tensors per layer.
    unique = {id(p): p.numel() for p in deep.model.parameters()}
    centrals = {id(m.central): m.central.numel() for m in deep.model.modules() if isinstance(m, MPOLinear)}
    others = sum(p.numel() for n, p in deep.model.named_parameters(remove_duplicate=False) if id(p) not in centrals)
    assert sum(unique.values()) == others + sum(centrals.values()) == deep.report["deep_parameters"]["total"]
    assert deep.report["central_parameters"] == sum(centrals.values())
    for q in queries:
        assert torch.count_nonzero(q.adapter_up) == 0 and q.adapter_down.shape == (32, 4)


def test_groups_and_trainable_parts(make_encoder):
    assert layer_groups(6, 3) == [[0, 1], [2, 3], [4, 5]] and layer_groups(5, 2) == [[0, 1], [2, 3, 4]]
    with pytest.raises(ValueError, match="num_groups must be between 1 and the 2 pretrained layers"):
        build_deep_mpo(make_encoder("bert").model, DeepMPOConfig(num_groups=3))
    deep = build_deep_mpo(make_encoder("bert").model, DeepMPOConfig(num_groups=2, trainable="auxiliary"))
    centrals = {id(m.central) for m in deep.model.modules() if isinstance(m, MPOLinear)}
    assert len(centrals) == 2 * 6  # one per group and weight kind
    for name, param in deep.model.named_parameters():
        expected = ".cores." in name and id(param) not in centrals or ".adapter_" in name
        assert param.requires_grad == expected, name
    with pytest.raises(ValueError, match="num_cores must be >= 3"):
        DeepMPOConfig(num_cores=2)


def test_deep_model_saves_loads_and_merges(make_encoder, tmp_path):
    backbone = _trained_like(make_encoder("bert"))
    deep = build_deep_mpo(backbone.model, DeepMPOConfig(depth_multiplier=2, adapter_rank=2))
    model = build_classifier(deep.model, num_labels=2, pooling="cls", dropout=0.0).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MPOLinear):
                module.adapter_up.normal_(std=0.1)
    batch = _batch(backbone.tokenizer)
    with torch.no_grad():
        expected = model(**batch)
    save_mpo_model(tmp_path / "deep", model, backbone.tokenizer, backbone.name)
    loaded = load_mpo_model(tmp_path / "deep")
    queries = [layer.attention.self.query for layer in loaded.encoder.encoder.layer]
    assert len({id(q.central) for q in queries}) == 1  # re-tied, not four copies
    with torch.no_grad():
        assert torch.equal(loaded.model(**batch), expected)
    export_dense(loaded, tmp_path / "merged")
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    assert hf.config.num_hidden_layers == 4
    with torch.no_grad():
        assert torch.allclose(hf(**batch).logits, expected, atol=1e-5)


def test_default_scale_follows_the_formula():
    assert DeepMPOConfig().scale(6) == pytest.approx(12 ** -0.25)
    assert DeepMPOConfig(aux_scale=0.5).scale(6) == 0.5
    assert math.isclose(DeepMPOConfig().scale(6) ** 4, 1 / 12)


def test_deep_cli_reports_parameters_deviation_and_accuracy(tmp_path, tiny_backbone_dir, capsys):
    import json

    from plmkit.cli import main
    from tests.test_cli import _write_task

    task = _write_task(tmp_path / "task")
    run = tmp_path / "deep"
    assert main(["compress", "mpo-deep", "--model", str(tiny_backbone_dir), "--task", str(task),
                 "--depth-multiplier", "2", "--epochs", "1", "--batch-size", "8", "--max-length", "16",
                 "--output-dir", str(run), "--no-progress", "--no-save-checkpoints"]) == 0
    out = capsys.readouterr().out
    assert "MPO depth scaling" in out and "deep MPO, fine-tuned" in out and "shallow dense, fine-tuned" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["report"]["deep_layers"] == 4
    assert metrics["init_deviation"]["vs_shallow_shared"] < 0.25
    assert load_mpo_model(run / "model").meta["model_config"]["num_hidden_layers"] == 4


def test_depth_scaling_refuses_decoders(make_decoder):
    from plmkit.compress.mpo_depth import DeepMPOConfig, build_deep_mpo

    with pytest.raises(ValueError, match="post-LN encoders .* not the 'llama' decoder"):
        build_deep_mpo(make_decoder("llama").model.model, DeepMPOConfig())
