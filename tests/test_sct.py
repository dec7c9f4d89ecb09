"""SCT: the cross-view loss against hand computations, queues, branches without gradient, data errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from plmkit.compress.sct import (
    CrossViewModel,
    EmbeddingQueue,
    PooledEncoder,
    Projector,
    SCTConfig,
    augment_sentence,
    build_projector,
    make_views,
    ridge_map,
)
from plmkit.compress.sct_job import EmbedSetup
from plmkit.compress.sct_train import (
    SCTDataError,
    ViewCollator,
    _check_sentences,
    align_width_map,
    fit_queue,
    lee_pairs,
)
from plmkit.distributed import all_gather
from plmkit.errors import ConfigError
from plmkit.losses.cross_view import (
    CrossViewLoss,
    EmbeddingMSELoss,
    cross_view_kl,
    in_batch_contrastive,
    queue_kl,
)


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _hand_kl(online, reference, queue, t, t_ref) -> float:
    """KL(SR(ref) || SR(online)) averaged over rows, with explicit loops and math.exp."""
    total = 0.0
    for z, r in zip(online.tolist(), reference.tolist(), strict=True):
        dots_z = [sum(a * b for a, b in zip(z, d, strict=True)) / t for d in queue.tolist()]
        dots_r = [sum(a * b for a, b in zip(r, d, strict=True)) / t_ref for d in queue.tolist()]
        norm_z = sum(math.exp(x) for x in dots_z)
        norm_r = sum(math.exp(x) for x in dots_r)
        q = [math.exp(x) / norm_z for x in dots_z]
        p = [math.exp(x) / norm_r for x in dots_r]
        total += sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q, strict=True))
    return total / len(online)


def test_queue_kl_matches_a_hand_computation_on_a_toy_queue():
    z, r, queue = _unit(3, 4, seed=1), _unit(3, 4, seed=2), _unit(5, 4, seed=3)
    got = queue_kl(z, r, queue, temperature=0.5, reference_temperature=0.25)
    assert got.item() == pytest.approx(_hand_kl(z, r, queue, 0.5, 0.25), rel=1e-5)


def test_cross_view_loss_crosses_views_and_is_symmetric():
    z1, z2, r1, r2 = (_unit(4, 6, seed=s) for s in range(4))
    d1, d2 = _unit(7, 6, seed=10), _unit(7, 6, seed=11)
    out = cross_view_kl((z1, z2), (r1, r2), (d1, d2), 0.3, 0.2)
    assert out["kl_view1"].item() == pytest.approx(_hand_kl(z1, r2, d2, 0.3, 0.2), rel=1e-5)
    assert out["kl_view2"].item() == pytest.approx(_hand_kl(z2, r1, d1, 0.3, 0.2), rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.5 * (out["kl_view1"] + out["kl_view2"]).item(), rel=1e-6)
    swapped = cross_view_kl((z2, z1), (r2, r1), (d2, d1), 0.3, 0.2)
    assert swapped["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)
    assert swapped["kl_view1"].item() == pytest.approx(out["kl_view2"].item(), rel=1e-6)


def test_loss_is_zero_when_online_equals_reference_at_equal_temperatures():
    z, d = _unit(3, 5, seed=4), _unit(6, 5, seed=5)
    assert queue_kl(z, z, d, 0.1, 0.1).item() == pytest.approx(0.0, abs=1e-6)
    assert queue_kl(z, z, d, 0.1, 0.05).item() > 1e-4  # a sharper reference is a different target


def test_no_gradient_reaches_the_reference_or_the_queue():
    z = _unit(3, 4, seed=1).requires_grad_()
    r = _unit(3, 4, seed=2).requires_grad_()
    queue = _unit(5, 4, seed=3).requires_grad_()
    queue_kl(z, r, queue, 0.5, 0.25).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert r.grad is None and queue.grad is None


def test_in_batch_contrastive_matches_cross_entropy_by_hand():
    a, b = _unit(4, 6, seed=7), _unit(4, 6, seed=8)
    logits = [[20.0 * float(a[i] @ b[j]) for j in range(4)] for i in range(4)]
    hand = sum(math.log(sum(math.exp(x) for x in row)) - row[i] for i, row in enumerate(logits)) / 4
    assert in_batch_contrastive(a, b).item() == pytest.approx(hand, rel=1e-5)


def test_embedding_mse_compares_unit_vectors_by_hand():
    student = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # unit length, as cached
    batch = {"view": {"x": student}, "teacher": teacher}

    def model(x):
        return x

    # normalised student rows (0.6, 0.8) and (0, -1): squared errors 0.16 + 0.64 and 0 + 4, over 4 entries
    assert EmbeddingMSELoss()(model, batch).item() == pytest.approx((0.16 + 0.64 + 4.0) / 4)
    # the loss ignores the student's norm; without normalisation the norm dominates
    scaled = {"view": {"x": 10 * student}, "teacher": teacher}
    assert EmbeddingMSELoss()(model, scaled).item() == pytest.approx(EmbeddingMSELoss()(model, batch).item())
    raw = ((student - teacher) ** 2).mean().item()
    assert EmbeddingMSELoss(normalize=False)(model, batch).item() == pytest.approx(raw)


def test_queue_is_fifo_with_fixed_size():
    queue = EmbeddingQueue(size=4, dim=2)
    rows = torch.arange(12, dtype=torch.float32).view(6, 2)  # six embeddings, pushed two at a time
    queue.push(rows[:2])
    assert queue.contents().shape == (2, 2) and torch.equal(queue.ordered(), rows[:2])
    queue.push(rows[2:4])
    queue.push(rows[4:6])
    assert queue.contents().shape == (4, 2) and int(queue.filled) == 4
    assert torch.equal(queue.ordered(), rows[2:6])  # the oldest two were dropped
    queue.push(torch.full((5, 2), -1.0))  # a batch larger than the queue keeps its newest rows only
    assert torch.equal(queue.ordered(), torch.full((4, 2), -1.0))


def test_queues_are_persistent_buffers(make_encoder):
    backbone = make_encoder("bert")
    config = SCTConfig(queue_size=8, projector_depth=1, projector_expansion=2)
    model = CrossViewModel(backbone.model, config)
    model.queue1.push(_unit(3, 32, seed=1))
    state = model.state_dict()
    assert {"queue1.rows", "queue1.pointer", "queue1.filled", "queue2.rows"} <= set(state)
    fresh = CrossViewModel(make_encoder("bert").model, config)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue1.ordered(), model.queue1.ordered()) and int(fresh.queue1.pointer) == 3


def _batch(backbone, sentences):
    return ViewCollator(backbone.tokenizer, 16, "sct")([(s, s, i) for i, s in enumerate(sentences)])


def test_reference_branch_and_teacher_get_no_gradient(make_encoder):
    backbone = make_encoder("bert")
    model = CrossViewModel(backbone.model, SCTConfig(queue_size=16, projector_depth=2, projector_expansion=2))
    model.train()
    batch = _batch(backbone, ["the movie was great", "a boring film", "the team won the game"])
    out = model(**batch)
    assert not out["r1"].requires_grad and not out["r2"].requires_grad and out["z1"].requires_grad
    assert int(model.queue1.filled) == 3  # pushed before scoring: the batch is among the candidates
    CrossViewLoss(0.05, 0.04)(model, batch)["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    teacher = torch.randn(3, 48, requires_grad=True)  # a wider teacher: the projector maps 32 -> 48
    distilled = CrossViewModel(make_encoder("bert").model, SCTConfig(queue_size=16, projector_depth=1), 48)
    out = CrossViewLoss()(distilled, {**batch, "teacher1": teacher, "teacher2": teacher})
    out["loss"].backward()
    assert teacher.grad is None and distilled.queue1.rows.shape == (16, 48)


def _mean_pooled_by_hand(encoder, features) -> torch.Tensor:
    hidden = encoder(input_ids=features["input_ids"], attention_mask=features["attention_mask"]).last_hidden_state
    mask = features["attention_mask"].unsqueeze(-1).float()  # (batch, seq, 1)
    return (hidden * mask).sum(1) / mask.sum(1)


def test_residual_projector_starts_as_the_identity_or_the_width_map(make_encoder):
    backbone = make_encoder("bert")
    batch = _batch(backbone, ["the movie was great", "a boring film"])
    model = CrossViewModel(backbone.model, SCTConfig(queue_size=8, projector_depth=2, projector_expansion=3)).eval()
    with torch.no_grad():
        expected = F.normalize(_mean_pooled_by_hand(backbone.model, batch["view1"]), dim=-1)
        torch.testing.assert_close(model.online(batch["view1"]), expected)
    distilled = CrossViewModel(make_encoder("bert").model, SCTConfig(queue_size=8, projector_depth=2), 48).eval()
    width_map = distilled.projector[0]
    assert isinstance(width_map, torch.nn.Linear) and width_map.weight.shape == (48, 32)
    with torch.no_grad():
        pooled = _mean_pooled_by_hand(distilled.encoder, batch["view1"])
        expected = F.normalize(pooled @ width_map.weight.T + width_map.bias, dim=-1)
        torch.testing.assert_close(distilled.online(batch["view1"]), expected)


def test_residual_blocks_train_from_zero():
    projector = build_projector("residual", 4, 4, depth=1, expansion=2)
    x = torch.randn(3, 4)
    projector(x).pow(2).sum().backward()
    block = projector[0]
    assert block.down.weight.grad.abs().sum() > 0  # the zero layer gets a gradient at once
    assert torch.count_nonzero(block.up.weight.grad) == 0  # and passes none back through its zeros


def test_projector_kinds_have_the_promised_shapes():
    mlp = build_projector("mlp", 8, 12, depth=3, expansion=10)
    assert isinstance(mlp, Projector) and len(mlp) == 3
    assert [(b[0].in_features, b[0].out_features, b[2].out_features) for b in mlp] == [(8, 80, 8)] * 2 + [(8, 80, 12)]
    assert [type(m).__name__ for m in build_projector("linear", 8, 12)] == ["Linear"]
    x = torch.randn(2, 8)
    assert torch.equal(build_projector("linear", 8, 8)(x), x)  # equal widths: no map at all
    with pytest.raises(ConfigError, match="--projector"):
        SCTConfig(projector="deep")


def test_ridge_map_recovers_a_linear_map_and_matches_an_augmented_least_squares():
    gen = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(200, 5, generator=gen) + 1.0
    a, c = torch.randn(3, 5, generator=gen), torch.randn(3, generator=gen)
    weight, bias = ridge_map(x, x @ a.T + c, ridge=1e-9)
    torch.testing.assert_close(weight, a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bias, c, atol=1e-4, rtol=1e-4)
    y = torch.randn(200, 3, generator=gen)  # no exact fit: the penalty matters
    weight, bias = ridge_map(x, y, ridge=0.5)
    xc, yc = (x - x.mean(0)).double(), (y - y.mean(0)).double()
    lam = 0.5 * xc.pow(2).sum(0).mean()
    # min |yc - xc W^T|^2 + lam |W|^2 is plain least squares on rows [xc; sqrt(lam) I] -> [yc; 0]
    stacked = torch.cat([xc, lam.sqrt() * torch.eye(5, dtype=torch.float64)])
    expected = torch.linalg.lstsq(stacked, torch.cat([yc, torch.zeros(5, 3, dtype=torch.float64)])).solution.T
    torch.testing.assert_close(weight, expected.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bias, (y.mean(0).double() - expected @ x.mean(0).double()).float(), atol=1e-5, rtol=1e-4)


def test_align_width_map_fits_the_teacher_and_skips_models_without_one(make_encoder):
    from plmkit.embeddings import encode

    backbone = make_encoder("bert")
    texts = ["the movie was great", "a boring film", "the team won the game", "shares fell", "it rained"]
    teacher = _unit(len(texts), 48, seed=9)
    model = CrossViewModel(backbone.model, SCTConfig(queue_size=8, projector_depth=1), 48)
    assert align_width_map(model, backbone.tokenizer, texts, teacher, max_length=16)
    pooled = encode(backbone.model, backbone.tokenizer, texts, "mean", max_length=16)
    weight, bias = ridge_map(pooled, teacher)
    torch.testing.assert_close(model.width_map.weight.detach(), weight)
    torch.testing.assert_close(model.width_map.bias.detach(), bias)
    mse = PooledEncoder(make_encoder("bert").model, "mean", 48)  # the MSE baseline gets the same start
    assert align_width_map(mse, backbone.tokenizer, texts, teacher, max_length=16)
    torch.testing.assert_close(mse.projection.weight.detach(), weight)
    for config, width in ((SCTConfig(projector="mlp", projector_depth=1), 48), (SCTConfig(projector_depth=1), 32)):
        other = CrossViewModel(make_encoder("bert").model, config, width)
        before = [p.clone() for p in other.projector.parameters()]
        assert other.width_map is None and not align_width_map(other, backbone.tokenizer, texts, teacher)
        assert all(torch.equal(b, p) for b, p in zip(before, other.projector.parameters(), strict=True))


def test_queue_is_capped_at_one_epoch_of_views(caplog):
    config = SCTConfig(queue_size=65536)
    with caplog.at_level("INFO", logger="plmkit"):
        fitted = fit_queue(config, 1500)
    assert fitted.queue_size == 1500 and config.queue_size == 65536 and "65536 -> 1500" in caplog.text
    assert fit_queue(SCTConfig(queue_size=1000), 1500).queue_size == 1000


def test_views_are_seeded_and_never_empty():
    sentences = ["the movie was really very good fun", "great"]
    assert make_views(sentences, "delete", 0.5, seed=3) == make_views(sentences, "delete", 0.5, seed=3)
    import random

    rng = random.Random(0)
    for _ in range(50):
        view = augment_sentence("a b c", "delete+shuffle", 0.9, rng)
        assert view and set(view.split()) <= {"a", "b", "c"}
    assert augment_sentence("  keep  me ", "none", 0.5, rng) == "  keep  me "


def test_all_gather_in_a_world_of_one_is_the_tensor():
    tensor = torch.randn(3, 2)
    assert all_gather(tensor) is tensor


def test_bad_sentences_and_settings_give_clear_errors(tmp_path):
    with pytest.raises(SCTDataError, match="no training sentences"):
        _check_sentences(["", "   ", "\t"])
    from plmkit.tasks import TaskError, load_sentences

    empty = tmp_path / "blank.txt"
    empty.write_text("\n   \n\n")
    with pytest.raises(TaskError, match="no sentences"):
        load_sentences(empty)
    with pytest.raises(ConfigError, match="needs --teacher"):
        EmbedSetup(methods="sct-distill")
    with pytest.raises(ConfigError, match="unknown method"):
        EmbedSetup(methods="sct,bogus")
    with pytest.raises(ConfigError, match="--layers"):
        EmbedSetup(layers="two")
    with pytest.raises(ConfigError, match="queue-size"):
        SCTConfig(queue_size=0)
    with pytest.raises(ConfigError, match="augment"):
        SCTConfig(augment="backtranslate")


def test_embed_reads_every_named_text_column(tmp_path):
    from plmkit.compress.sct_job import _sentences

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"text_a": "a one", "text_b": "b one"}\n{"text_a": "a two", "text_b": "a one"}\n')
    both, info = _sentences(EmbedSetup(data=str(path), text_fields="text_a,text_b"))
    assert both == ["a one", "b one", "a two"]  # row by row, duplicates across columns kept once
    assert info["rows_read"] == 4 and info["unique_used"] == 3
    assert _sentences(EmbedSetup(data=str(path), text_fields="text_b"))[0] == ["b one", "a one"]


def test_lee_pairs_take_the_upper_triangle(tmp_path):
    (tmp_path / "lee.cor").write_text("doc zero\ndoc one\ndoc two\n")
    (tmp_path / "similarities0-1.txt").write_text("1 0.2 0.3\n0 1 0.7\n0 0 1\n")
    assert lee_pairs(tmp_path) == [("doc zero", "doc one", 0.2), ("doc zero", "doc two", 0.3),
                                   ("doc one", "doc two", 0.7)]
    (tmp_path / "similarities0-1.txt").write_text("1 0.2\n0 1\n")
    with pytest.raises(SCTDataError, match="fetch lee-similarity"):
        lee_pairs(tmp_path)
