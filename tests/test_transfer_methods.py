"""Stage-2 methods: equations vs independent einsums, fast forms vs loops, counts, identities, save/load."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from plmkit.backbones import tiny_encoder
from plmkit.models import build_classifier
from plmkit.mtl.adapters import AdapterConfig, AdapterLoadError, attach_adapters, load_adapter, save_adapter
from plmkit.mtl.fusion import FusionBlock, FusionConfig, fusion_parameter_count
from plmkit.mtl.registry import transfer_methods
from plmkit.mtl.scalearn import VARIANTS, ScaLearnConfig, ScaleBlock, scalearn_parameter_count
from plmkit.mtl.sources import SourceAdapters
from plmkit.mtl.transfer import Composition, SourceRef, attach_transfer, load_transfer, save_transfer
from tests.conftest import WORDS

# every registered method that builds per-layer blocks over stacked adapter sources
ADAPTER_BLOCK_METHODS = [name for name, method in transfer_methods().items()
                         if method.build_block is not None and "adapter" in method.source_kinds]


def _random_sources(n: int, hidden: int = 16, bottleneck: int = 4, seed: int = 0) -> SourceAdapters:
    g = torch.Generator().manual_seed(seed)
    return SourceAdapters(torch.randn(n, bottleneck, hidden, generator=g), torch.randn(n, bottleneck, generator=g),
                          torch.randn(n, hidden, bottleneck, generator=g), torch.randn(n, hidden, generator=g))


def _loop_outputs(sources: SourceAdapters, a: torch.Tensor) -> list[torch.Tensor]:
    """u_i one adapter at a time, written out by hand."""
    return [F.relu(a @ sources.down_weight[i].T + sources.down_bias[i]) @ sources.up_weight[i].T + sources.up_bias[i]
            for i in range(sources.num_sources)]


def test_stacked_sources_equal_the_loop():
    sources, a = _random_sources(5), torch.randn(2, 7, 16)
    stacked = sources.outputs(a)
    for i, u in enumerate(_loop_outputs(sources, a)):
        torch.testing.assert_close(stacked[:, :, i], u, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [16, 1])
def test_scaled_sum_fast_form_equals_the_loop(width):
    sources, a = _random_sources(4), torch.randn(3, 5, 16)
    scales = torch.randn(4, width)
    expected = sum(scales[i] * u for i, u in enumerate(_loop_outputs(sources, a)))
    torch.testing.assert_close(sources.scaled_sum(a, scales), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_scalearn_block_equation_and_gradients(variant):
    sources, a, r = _random_sources(3), torch.randn(2, 4, 16, requires_grad=True), torch.randn(2, 4, 16)
    block = ScaleBlock(sources, ScaLearnConfig(variant=variant)).eval()
    out = block(a, r)
    omega = block.scales
    expected = torch.einsum("nh,bsnh->bsh", omega.expand(3, 16), torch.stack(_loop_outputs(sources, a), 2)) + r
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    out.sum().backward()
    assert omega.grad is not None and a.grad is not None
    assert [n for n, p in block.named_parameters()] == ["scales"]


def test_scalearn_init_and_dropout_on_scales():
    torch.manual_seed(0)
    block = ScaleBlock(_random_sources(8), ScaLearnConfig(variant="scalearn"))
    assert block.scales.shape == (8, 16)
    assert abs(block.scales.mean().item() - 2 / 8) < 1e-3 and block.scales.std().item() < 0.01
    assert ScaLearnConfig(variant="scalearn-uniform++").dropout == 0.0
    assert ScaLearnConfig(variant="scalearn").dropout == 0.3
    block.train()
    a, r = torch.randn(1, 2, 16), torch.zeros(1, 2, 16)
    assert not torch.allclose(block(a, r), block(a, r))  # dropout on ω changes the output in training


def test_fusion_fast_form_equals_the_direct_form():
    torch.manual_seed(0)
    sources = _random_sources(4)
    block = FusionBlock(sources, FusionConfig()).eval()
    with torch.no_grad():
        block.value_weight.add_(0.1 * torch.randn(16, 16))
        block.key_bias.normal_()
        block.query_bias.normal_()
    a, r = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    q = a @ block.query_weight.T + block.query_bias
    u = torch.stack(_loop_outputs(sources, a), 2)  # (b, s, n, h)
    k = u @ block.key_weight.T + block.key_bias
    v = u @ block.value_weight.T
    p = torch.softmax(torch.einsum("bsh,bsnh->bsn", q, k), -1)
    expected = torch.einsum("bsn,bsnh->bsh", p, v) + r
    torch.testing.assert_close(block(a, r), expected, rtol=1e-4, atol=1e-4)


def test_fusion_init_regulariser_and_temperature():
    block = FusionBlock(_random_sources(3), FusionConfig(temperature=True))
    eye = torch.eye(16)
    assert torch.allclose(block.value_weight.diagonal(), torch.ones(16))
    assert (block.value_weight - eye).abs().max() <= 1e-6 + 1e-9
    with torch.no_grad():
        block.value_weight.add_(0.05)
    block.train()
    block(torch.randn(1, 2, 16), torch.zeros(1, 2, 16))
    expected = 0.01 * ((eye - block.value_weight) ** 2).sum()
    torch.testing.assert_close(block.regularization(), expected)
    assert block.regularization() is None  # consumed once per step
    assert block.temperature.item() == pytest.approx(50.0 - 0.05)
    static = FusionBlock(_random_sources(3), FusionConfig(value=False))
    assert static.value_weight is None and sum(p.numel() for p in static.parameters()) == 2 * 16 * 16 + 2 * 16


@pytest.mark.parametrize(("hidden", "layers"), [(768, 12), (384, 6)])
@pytest.mark.parametrize("n", [2, 8, 16])
def test_parameter_counts_match_the_formulas(hidden, layers, n):
    sources = SourceAdapters(torch.zeros(n, 2, hidden), torch.zeros(n, 2), torch.zeros(n, hidden, 2), torch.zeros(n, hidden))
    fusion = FusionBlock(sources, FusionConfig())
    assert sum(p.numel() for p in fusion.parameters()) * layers == fusion_parameter_count(hidden, layers)
    assert fusion_parameter_count(hidden, layers) == layers * (3 * hidden**2 + 2 * hidden)
    for variant, (per_dim, shared) in VARIANTS.items():
        block = ScaleBlock(sources, ScaLearnConfig(variant=variant))
        per_set = sum(p.numel() for p in block.parameters())
        assert per_set == n * (hidden if per_dim else 1)
        assert scalearn_parameter_count(variant, n, hidden, layers) == per_set * (1 if shared else layers)


def test_paper_counts_for_roberta_base_with_eight_sources():
    assert [scalearn_parameter_count(v, 8, 768, 12) for v in VARIANTS] == [73_728, 96, 6_144, 8]
    assert fusion_parameter_count(768, 12) == 21_252_096  # "21.3 M"


def test_scalearn_keeps_no_per_source_hidden_activations():
    """Backward needs ω's inputs (N x bottleneck per token), never N hidden-size copies."""
    n, hidden = 16, 64
    sources = SourceAdapters(torch.randn(n, 4, hidden), torch.randn(n, 4), torch.randn(n, hidden, 4), torch.randn(n, hidden))
    block = ScaleBlock(sources, ScaLearnConfig(variant="scalearn"))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        block(torch.randn(2, 8, hidden, requires_grad=True), torch.randn(2, 8, hidden))
    per_token = [t.numel() // 16 for t in saved if tuple(t.shape[:2]) == (2, 8)]  # activations only
    assert per_token and sum(per_token) <= 3 * n * 4  # a few (N x bottleneck) tensors per token
    assert sum(per_token) < n * hidden / 4


# ---------------------------------------------------------------------- on a tiny encoder
@pytest.fixture
def source_dirs(make_encoder, tmp_path):
    """Three random source adapters saved for the tiny BERT."""
    paths = []
    for i in range(3):
        backbone = make_encoder("bert")
        handle = attach_adapters(backbone.model, AdapterConfig(reduction_factor=4))
        with torch.no_grad():
            for adapter in handle.adapters:
                adapter.up.weight.normal_(std=0.3, generator=torch.Generator().manual_seed(i))
        paths.append(save_adapter(tmp_path / f"src{i}", handle, backbone_name="tiny-bert"))
    return paths


def _composition(method, paths):
    return Composition(method=method, sources=[SourceRef(f"s{i}", str(p)) for i, p in enumerate(paths)])


def _batch(tokenizer):
    enc = tokenizer(["the movie was great fun", "not good at all"], padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.mark.parametrize("method", ADAPTER_BLOCK_METHODS)
def test_only_transfer_parameters_and_head_train(make_encoder, source_dirs, method):
    backbone = make_encoder("bert")
    handle = attach_transfer(backbone.model, _composition(method, source_dirs))
    model = build_classifier(backbone.model, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("plmkit_block" in n or n.startswith("head.") for n in trainable)
    assert handle.num_parameters() == sum(p.numel() for n, p in model.named_parameters()
                                          if p.requires_grad and not n.startswith("head."))
    loss = F.cross_entropy(model(**_batch(backbone.tokenizer)), torch.tensor([0, 1]))
    reg = handle.regularization()
    (loss + (reg if reg is not None else 0)).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_scalearn_with_one_source_and_unit_scales_equals_the_adapter(make_encoder, source_dirs):
    reference = make_encoder("bert")
    load_adapter(source_dirs[0], reference.model)
    backbone = make_encoder("bert")
    comp = Composition(method="scalearn", sources=[SourceRef("s0", str(source_dirs[0]))])
    handle = attach_transfer(backbone.model, comp)
    with torch.no_grad():
        for block in handle.blocks:
            block.scales.fill_(1.0)
    for model in (reference.model, backbone.model):
        model.eval()
    batch = _batch(backbone.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(backbone.model(**batch).last_hidden_state,
                                   reference.model(**batch).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_fusion_with_one_source_and_identity_value_equals_the_adapter(make_encoder, source_dirs):
    reference = make_encoder("bert")
    load_adapter(source_dirs[1], reference.model)
    backbone = make_encoder("bert")
    handle = attach_transfer(backbone.model, Composition(method="fusion",
                                                         sources=[SourceRef("s1", str(source_dirs[1]))]))
    with torch.no_grad():
        for block in handle.blocks:
            block.value_weight.copy_(torch.eye(block.value_weight.shape[0]))
    for model in (reference.model, backbone.model):
        model.eval()
    batch = _batch(backbone.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(backbone.model(**batch).last_hidden_state,
                                   reference.model(**batch).last_hidden_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ADAPTER_BLOCK_METHODS)
def test_save_load_gives_identical_predictions(make_encoder, source_dirs, tmp_path, method):
    backbone = make_encoder("bert")
    handle = attach_transfer(backbone.model, _composition(method, source_dirs), backbone_name="tiny-bert")
    model = build_classifier(backbone.model, 2)
    with torch.no_grad():
        for p in handle.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    batch = _batch(backbone.tokenizer)
    with torch.no_grad():
        expected = model(**batch)
    save_transfer(tmp_path / "t", handle, head=model.head, backbone_name="tiny-bert")
    fresh = make_encoder("bert")
    loaded, meta, head = load_transfer(tmp_path / "t", fresh.model, backbone_name="tiny-bert")
    assert meta["composition"]["method"] == method
    reloaded = build_classifier(fresh.model, 2)
    reloaded.head.load_state_dict(head)
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch), expected)


def test_missing_or_mismatched_sources_are_clear_errors(make_encoder, source_dirs, tmp_path):
    comp = _composition("scalearn", [*source_dirs[:2], tmp_path / "gone"])
    with pytest.raises(AdapterLoadError, match=r"source adapter 's2' is missing"):
        attach_transfer(make_encoder("bert").model, comp)
    wide = tiny_encoder("bert", WORDS, hidden=48)
    save_adapter(tmp_path / "wide", attach_adapters(wide.model), backbone_name="tiny-bert-48")
    comp = _composition("fusion", [source_dirs[0], tmp_path / "wide"])
    with pytest.raises(AdapterLoadError, match="hidden_size"):
        attach_transfer(make_encoder("bert").model, comp)
    other = make_encoder("bert")
    save_adapter(tmp_path / "r8", attach_adapters(other.model, AdapterConfig(reduction_factor=8)))
    with pytest.raises(AdapterLoadError, match="share one adapter config"):
        attach_transfer(make_encoder("bert").model, _composition("scalearn", [source_dirs[0], tmp_path / "r8"]))
    with pytest.raises(ValueError, match="unknown transfer method"):
        _composition("lora", source_dirs)


# ---------------------------------------------------------------------- fixed bugs
@pytest.mark.parametrize("method", ["scalearn++", "scalearn-uniform++"])
def test_mean_one_regulariser_counts_shared_scales_once(make_encoder, source_dirs, method):
    backbone = make_encoder("bert")
    comp = Composition(method=method, sources=[SourceRef(f"s{i}", str(p)) for i, p in enumerate(source_dirs)],
                       config=ScaLearnConfig(variant=method, mean_one=2.0, dropout=0.0))
    handle = attach_transfer(backbone.model, comp)
    backbone.model.train()
    backbone.model(**_batch(backbone.tokenizer))
    scales = handle.blocks[0].scales.detach()
    expected = 2.0 * (scales.mean() - 1.0) ** 2  # one shared set: counted once, not per layer, not zero
    term = handle.regularization()
    assert term is not None
    torch.testing.assert_close(term, expected)


def test_fusion_temperature_anneals_in_bf16():
    block = FusionBlock(_random_sources(3), FusionConfig(temperature=True)).to(torch.bfloat16)
    assert block.temperature.dtype == torch.float32 and block.query_weight.dtype == torch.bfloat16
    block.train()
    a = torch.randn(1, 2, 16, dtype=torch.bfloat16)
    for _ in range(3):
        block(a, torch.zeros_like(a))
    assert block.temperature.item() == pytest.approx(50.0 - 3 * 0.05, abs=1e-4)
