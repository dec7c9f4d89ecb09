"""ODE-accelerated shared-layer encoders: solvers, the Euler/shared-stack identity, sharing, steps, I/O."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch.nn import functional as F

from plmkit.compress.ode import (
    ACTIVATIONS,
    ODEClassifier,
    ODEConfig,
    ODEEncoder,
    SharedBlock,
    StepSchedule,
    parse_steps,
    trajectory_distillation,
)
from plmkit.compress.ode_build import build_ode_encoder, load_ode_model, save_ode_model
from plmkit.compress.ode_solvers import solve_adaptive, solve_fixed
from plmkit.errors import ConfigError
from plmkit.flops import count_flops
from plmkit.models import build_classifier


def _batch(vocab: int = 40, batch: int = 3, seq: int = 7):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (batch, seq), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def _classifier(make_encoder, **config) -> ODEClassifier:
    backbone = make_encoder("bert")
    encoder = build_ode_encoder(backbone.model, ODEConfig(**config))
    return ODEClassifier(encoder, build_classifier(backbone.model, 2).head)


# ------------------------------------------------------------------------------ solvers
def _linear_problem():
    """dh/dt = A h on [0, 1], h(0) = h0: exact h(1) = expm(A) h0 (float64)."""
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=torch.float64)
    h0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    return (lambda h: h @ a.T), h0, h0 @ torch.linalg.matrix_exp(a).T


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_fixed_step_error_falls_at_the_order_of_the_method(method, order):
    field, h0, exact = _linear_problem()
    errors = [float((solve_fixed(field, h0, 1.0, n, method) - exact).norm()) for n in (16, 32, 64)]
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(rate - order) < 0.15 for rate in rates), rates


def test_adaptive_solver_meets_its_tolerance_and_works_less_when_looser():
    field, h0, exact = _linear_problem()
    tight, tight_evals = solve_adaptive(field, h0, 1.0, rtol=1e-8, atol=1e-10)
    loose, loose_evals = solve_adaptive(field, h0, 1.0, rtol=1e-3, atol=1e-5)
    assert float((tight - exact).norm()) < 1e-7
    assert float((loose - exact).norm()) < 1e-2
    assert loose_evals < tight_evals


# ------------------------------------------------------------------------------ the model
def _pre_ln_layer_by_hand(block: SharedBlock, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x + A(LN_a x), then + M(LN_f .), written with einsum from the block's weights."""
    heads, hidden = block.heads, h.shape[-1]
    d = hidden // heads

    def proj(lin, x):
        return x @ lin.weight.T + lin.bias

    x = F.layer_norm(h, (hidden,), block.attn_norm.weight, block.attn_norm.bias, block.attn_norm.eps)
    # (batch, seq, hidden) -> (batch, seq, heads, d)
    q, k, v = (proj(lin, x).view(*x.shape[:2], heads, d) for lin in (block.query, block.key, block.value))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    context = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(h.shape)
    y = h + proj(block.out, context)
    z = F.layer_norm(y, (hidden,), block.ffn_norm.weight, block.ffn_norm.bias, block.ffn_norm.eps)
    return y + proj(block.ffn_out, F.gelu(proj(block.ffn_in, z)))


def test_euler_at_step_size_one_is_the_plain_shared_stack(make_encoder):
    model = _classifier(make_encoder, depth=3).eval()
    with torch.no_grad():
        for p in model.encoder.blocks.parameters():  # a field large enough to matter
            p.add_(torch.randn_like(p) * 0.3)
    ids, mask = _batch()
    encoder = model.encoder
    with torch.no_grad():
        h = encoder.embeddings(input_ids=ids)
        plain = h
        for _ in range(3):
            plain = plain + encoder.blocks[0](plain, mask.bool()[:, None, None, :])
        by_hand = h
        for _ in range(3):
            by_hand = _pre_ln_layer_by_hand(encoder.blocks[0], by_hand, mask)
        out = encoder(ids, mask)
    assert torch.equal(out, encoder.final_norm(plain))
    real = mask.bool()
    assert torch.allclose(out[real], encoder.final_norm(by_hand)[real], atol=1e-5)
    encoder.set_steps(1)
    with torch.no_grad():
        assert not torch.allclose(encoder(ids, mask), out, atol=1e-3)


def test_shared_parameters_are_one_tensor_whose_gradients_accumulate(make_encoder):
    model = _classifier(make_encoder, depth=4)
    block = model.encoder.blocks[0]
    assert len(model.encoder.blocks) == 1
    assert sum(p.numel() for p in model.encoder.blocks.parameters()) == sum(p.numel() for p in block.parameters())
    ids, mask = _batch()
    grads = {}
    for steps in (1, 4):
        model.zero_grad()
        model.eval().set_steps(steps)
        model(ids, mask).sum().backward()
        grads[steps] = block.query.weight.grad.clone()
    # the same tensor is used at each of the 4 steps: its gradient is the sum over steps, hence different
    assert not torch.allclose(grads[1], grads[4])
    step_inputs = []
    handle = block.register_forward_hook(lambda m, args, out: step_inputs.append(args[0]))
    model.set_steps(4)
    model(ids, mask)
    handle.remove()
    assert len(step_inputs) == 4


def test_partially_shared_blocks_come_from_their_layer_groups(make_encoder):
    backbone = make_encoder("bert")
    layers = backbone.model.encoder.layer
    with torch.no_grad():  # distinct norms, so that copying the wrong one shows
        for name, p in backbone.model.named_parameters():
            if "LayerNorm" in name:
                p.copy_(torch.randn_like(p))
    encoder = build_ode_encoder(backbone.model, ODEConfig(num_blocks=2))
    assert encoder.config.depth == 2 and len(encoder.blocks) == 2
    assert torch.equal(encoder.blocks[1].query.weight, layers[1].attention.self.query.weight)
    assert torch.equal(encoder.blocks[1].attn_norm.weight, layers[0].output.LayerNorm.weight)
    assert torch.equal(encoder.blocks[0].attn_norm.weight, backbone.model.embeddings.LayerNorm.weight)
    average = build_ode_encoder(backbone.model, ODEConfig(num_blocks=1))
    mean = (layers[0].intermediate.dense.weight + layers[1].intermediate.dense.weight) / 2
    assert torch.allclose(average.blocks[0].ffn_in.weight, mean)
    per_block = build_ode_encoder(backbone.model, ODEConfig(num_blocks=2, init="layer", init_layer="1,0"))
    for block, layer in zip(per_block.blocks, (1, 0), strict=True):
        assert torch.equal(block.ffn_out.weight, layers[layer].output.dense.weight)
        assert torch.equal(block.ffn_norm.weight, layers[layer].attention.output.LayerNorm.weight)
    assert torch.equal(per_block.blocks[0].attn_norm.weight, layers[0].output.LayerNorm.weight)
    one_for_all = build_ode_encoder(backbone.model, ODEConfig(num_blocks=2, init="layer", init_layer=1))
    assert all(torch.equal(b.query.weight, layers[1].attention.self.query.weight) for b in one_for_all.blocks)
    with pytest.raises(ConfigError, match="one per block"):
        ODEConfig(num_blocks=3, init="layer", init_layer="0,1")
    with pytest.raises(ConfigError, match="out of range"):
        build_ode_encoder(backbone.model, ODEConfig(num_blocks=2, init="layer", init_layer="0,5"))


def _hf_states(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states


def test_postnorm_form_makes_the_source_layers_exact_steps(make_encoder):
    """F(h) = Phi(h) - h: k = T blocks reproduce the source encoder; a step of size s is (1 - s) h + s Phi(h)."""
    backbone = make_encoder("bert")
    source = backbone.model.eval()
    with torch.no_grad():  # distinct norms and a field large enough to matter
        for name, p in source.named_parameters():
            p.copy_(torch.randn_like(p) * (1.0 if "LayerNorm" in name else 0.3))
    ids, mask = _batch()
    exact = build_ode_encoder(source, ODEConfig(num_blocks=2, form="postnorm")).eval()
    assert isinstance(exact.final_norm, torch.nn.Identity)
    with torch.no_grad():
        assert torch.allclose(exact(ids, mask), _hf_states(source, ids, mask)[-1], atol=1e-5)
    # one block from layer 1, depth 2: the source with layer 1 in both places is the 2-step solve
    doubled = copy.deepcopy(source)
    doubled.encoder.layer[0].load_state_dict(source.encoder.layer[1].state_dict())
    h0, phi, phi_phi = _hf_states(doubled, ids, mask)
    shared = build_ode_encoder(source, ODEConfig(form="postnorm", init="layer", init_layer=1)).eval()
    with torch.no_grad():
        assert torch.allclose(shared(ids, mask), phi_phi, atol=1e-5)
        shared.set_steps(1)  # one step of size 2: 2 Phi(h0) - h0
        assert torch.allclose(shared(ids, mask), 2 * phi - h0, atol=1e-5)
        # the prenorm reading of the same layers is not exact: the post-LN -> pre-LN conversion is approximate
        prenorm = build_ode_encoder(source, ODEConfig(num_blocks=2)).eval()
        assert not torch.allclose(prenorm(ids, mask), exact(ids, mask), atol=1e-2)
    with pytest.raises(ConfigError, match="pre-norms"):
        ODEConfig(form="postnorm", step_norms=True)
    with pytest.raises(ConfigError, match="form must be one of"):
        ODEConfig(form="post")


def _block_trace(encoder: ODEEncoder, ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """Which block each field evaluation of one forward used, in order."""
    trace: list[int] = []
    handles = [block.register_forward_hook(lambda *_, i=i: trace.append(i)) for i, block in enumerate(encoder.blocks)]
    with torch.no_grad():
        encoder(ids, mask)
    for handle in handles:
        handle.remove()
    return trace


def test_partially_shared_steps_follow_the_blocks_time_segments(make_encoder):
    """k | n: n/k steps per segment, as solving each segment on its own; other n: the midpoint's block."""
    model = _classifier(make_encoder, depth=6, num_blocks=3, init="random").eval()
    with torch.no_grad():
        for p in model.encoder.blocks.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    encoder, (ids, mask) = model.encoder, _batch()
    expected = {6: [0, 0, 1, 1, 2, 2], 3: [0, 1, 2], 2: [0, 2], 4: [0, 1, 1, 2], 1: [1]}
    for steps, blocks in expected.items():
        encoder.set_steps(steps)
        assert _block_trace(encoder, ids, mask) == blocks, steps
    encoder.set_steps(2, "heun")  # every stage of a step evaluates the step's block
    assert _block_trace(encoder, ids, mask) == [0, 0, 2, 2]
    with torch.no_grad():
        h = encoder.embeddings(input_ids=ids)
        m = mask.bool()[:, None, None, :]
        segmentwise = h
        for block in encoder.blocks:  # each segment [2i, 2i+2) solved with 2 Euler steps of size 1
            segmentwise = solve_fixed(lambda x, b=block: b(x, m), segmentwise, 2.0, 2, "euler")
        skipping = h + 3 * encoder.blocks[0](h, m)  # 2 steps of size 3: midpoints 1.5 and 4.5
        skipping = skipping + 3 * encoder.blocks[2](skipping, m)
        encoder.set_steps(6, "euler")
        assert torch.equal(encoder(ids, mask), encoder.final_norm(segmentwise))
        encoder.set_steps(2)
        assert torch.allclose(encoder(ids, mask), encoder.final_norm(skipping), atol=1e-6)


@pytest.mark.parametrize("bond", [None, 2])
def test_mpo_init_block_is_the_mean_of_the_shared_centre_reconstructions(make_encoder, bond):
    from plmkit.compress.mpo import contract_cores, factorize
    from plmkit.compress.mpo_share import fit_shared_mpo

    backbone = make_encoder("bert")
    layers = backbone.model.encoder.layer
    encoder = build_ode_encoder(backbone.model, ODEConfig(init="mpo", mpo_bond=bond))
    block = encoder.blocks[0]
    for name, path in (("query", "attention.self.query"), ("ffn_in", "intermediate.dense")):
        weights = [layer.get_submodule(path).weight.detach().T for layer in layers]  # (in, out)
        in_f, out_f = factorize(weights[0].shape[0], 5), factorize(weights[0].shape[1], 5)
        fit = fit_shared_mpo(weights, in_f, out_f, bond)
        c = len(in_f) // 2
        # the fit's own reconstruction of each layer, contracted independently of MPOLinear
        rebuilt = [contract_cores(aux[:c] + [fit.central] + aux[c:]) for aux in fit.auxiliary]
        expected = torch.stack(rebuilt).mean(0).T.float()
        assert torch.allclose(getattr(block, name).weight, expected, atol=1e-5)
        # it departs from the plain mean by at most the mean fit error (triangle inequality) ...
        average = torch.stack(weights).mean(0).T
        departure = float((getattr(block, name).weight - average).norm())
        assert departure <= sum(float((r - w).norm()) for r, w in zip(rebuilt, weights, strict=True)) / len(weights) + 1e-5
        if bond is not None:  # ... and a capped centre does depart from it
            assert departure > 1e-3 * float(average.norm())
        bias = torch.stack([layer.get_submodule(path).bias for layer in layers]).mean(0)
        assert torch.allclose(getattr(block, name).bias, bias)
    with pytest.raises(ConfigError, match="mpo_bond"):
        ODEConfig(init="mpo", mpo_bond=0)


def test_step_count_changes_compute(make_encoder):
    model = _classifier(make_encoder, depth=4).eval()
    ids, mask = _batch()
    flops = {}
    for steps, solver in ((4, "euler"), (2, "euler"), (1, "euler"), (1, "rk4")):
        model.set_steps(steps, solver)
        flops[(steps, solver)] = count_flops(model, ids, mask)
    block = flops[(4, "euler")] - flops[(2, "euler")]  # two block evaluations
    assert block > 0
    assert flops[(2, "euler")] - flops[(1, "euler")] == block // 2
    assert flops[(1, "rk4")] == flops[(4, "euler")]  # four evaluations either way


def test_flop_helper_takes_a_view_of_a_parameter_and_restores_requires_grad():
    class Scale(torch.nn.Module):
        def forward(self, x, scale):
            return x * scale

    class RowScaled(torch.nn.Module):  # hands one row of a parameter table to a submodule, as the step norms do
        def __init__(self):
            super().__init__()
            self.linear, self.table = torch.nn.Linear(8, 5), torch.nn.Parameter(torch.ones(3, 5))
            self.scale = Scale()
            self.linear.bias.requires_grad_(False)  # frozen stays frozen

        def forward(self, x):
            return self.scale(self.linear(x), self.table[1])

    module = RowScaled()
    assert count_flops(module, torch.randn(3, 8)) == 2 * 3 * 8 * 5
    assert module.table.requires_grad and module.linear.weight.requires_grad
    assert not module.linear.bias.requires_grad


def test_flop_helper_counts_a_linear_layer_and_attention_by_hand():
    linear = torch.nn.Linear(8, 5)
    assert count_flops(linear, torch.randn(3, 8)) == 2 * 3 * 8 * 5
    block = SharedBlock(hidden=8, heads=2, intermediate=16)
    h = torch.randn(2, 6, 8)
    linears = 2 * 12 * (4 * 8 * 8 + 2 * 8 * 16)
    attention = 2 * (2 * 2 * 6 * 6 * 4) * 2  # QK^T and AV, per batch row and head
    assert count_flops(block, h) == linears + attention


# ------------------------------------------------------------------------------ step-robust training
def test_step_schedule_ignores_the_global_rng_and_replays_from_its_buffers():
    ranks = []
    for rank in range(2):
        torch.manual_seed(42 + rank)  # the trainer seeds each rank differently
        schedule = StepSchedule((8, 4, 2), seed=42)
        ranks.append([schedule.draw() for _ in range(30)])
    assert ranks[0] == ranks[1] and len(set(ranks[0])) == 3
    resumed = StepSchedule((8, 4, 2), seed=0)
    first = StepSchedule((8, 4, 2), seed=42)
    [first.draw() for _ in range(10)]
    resumed.load_state_dict(first.state_dict())
    assert [resumed.draw() for _ in range(20)] == ranks[0][10:]
    assert set(first.state_dict()) == {"seed", "counter"}


def test_training_forward_draws_steps_and_eval_uses_the_setting(make_encoder):
    model = _classifier(make_encoder, depth=4, train_steps="4,2,1")
    model.encoder.schedule.reseed(3)
    ids, mask = _batch()
    expected = [model.encoder.schedule.peek(i) for i in range(6)]
    used = []
    for _ in range(6):
        model.train()(ids, mask)
        used.append(model.encoder.last_evals)
    assert used == expected and int(model.encoder.schedule.counter) == 6
    model.eval().set_steps(2)
    model(ids, mask)
    assert model.encoder.last_evals == 2 and int(model.encoder.schedule.counter) == 6


def test_a_count_listed_twice_is_drawn_twice_as_often(make_encoder):
    model = _classifier(make_encoder, depth=4, train_steps="4,2,2,1")
    model.encoder.schedule.reseed(5)
    draws = [model.encoder.schedule.peek(i) for i in range(4000)]
    shares = {n: draws.count(n) / len(draws) for n in (4, 2, 1)}
    assert shares[2] == pytest.approx(0.5, abs=0.03) and shares[4] == pytest.approx(0.25, abs=0.03)
    assert shares[1] == pytest.approx(0.25, abs=0.03)  # binomial sd of a share over 4,000 draws: 0.007


def _relative_error_by_hand(student, teacher, mask):
    """sum over real tokens of ||a - b||^2 / sum of ||b||^2, after a plain per-token standardisation."""
    def standardise(x):
        x = x.double()
        return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)

    a, b, real = standardise(student), standardise(teacher), mask.bool()
    return float(((a - b)[real] ** 2).sum() / (b[real] ** 2).sum())


def test_trajectory_distillation_matches_a_hand_computation(make_encoder):
    """States at the integer times the steps end on, matched to the teacher's layers; logits as in KD."""
    backbone = make_encoder("bert")
    teacher = build_classifier(backbone.model, 2)
    depth = len(teacher.encoder.encoder.layer)
    assert depth == 2  # the tiny encoder; times 1, 2 below
    student = ODEClassifier(build_ode_encoder(teacher.encoder, ODEConfig(init="random")), copy.deepcopy(teacher.head))
    ids, mask = _batch()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}
    loss = trajectory_distillation(teacher, alpha=0.3, temperature=2.0, weight=0.7)
    student.eval()
    encoder, m = student.encoder, mask.bool()[:, None, None, :]
    with torch.no_grad():
        hidden = teacher.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        target = teacher(**batch)
        h0 = encoder.embeddings(input_ids=ids)
        h1 = h0 + encoder.blocks[0](h0, m)
        h2 = h1 + encoder.blocks[0](h1, m)
        two_step = [_relative_error_by_hand(h1, hidden[1], mask), _relative_error_by_hand(h2, hidden[2], mask)]
        one_step = _relative_error_by_hand(h0 + 2 * encoder.blocks[0](h0, m), hidden[2], mask)
        h = h0
        for _ in range(3):  # times 2/3, 4/3, 2: only t = 2 is a teacher layer
            h = h + 2 / 3 * encoder.blocks[0](h, m)
        three_step = _relative_error_by_hand(h, hidden[2], mask)
    for steps, expected in ((2, sum(two_step) / 2), (1, one_step), (3, three_step)):
        student.set_steps(steps)
        terms = loss(student, batch)
        logits = student(**batch).detach()
        p_t, log_p_s = torch.softmax(target / 2, -1), torch.log_softmax(logits / 2, -1)
        soft = float((p_t * (torch.log(p_t) - log_p_s)).sum(-1).mean() * 4)
        task = float(F.cross_entropy(logits, batch["labels"]))
        assert float(terms["trajectory"]) == pytest.approx(expected, rel=1e-4), steps
        assert float(terms["soft"]) == pytest.approx(soft, rel=1e-4)
        assert float(terms["task"]) == pytest.approx(task, rel=1e-5)
        assert float(terms["loss"]) == pytest.approx(0.7 * task + 0.3 * soft + 0.7 * expected, rel=1e-4)
    terms["loss"].backward()  # the teacher is frozen; every shared block weight learns
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.blocks.parameters())
    deeper = ODEClassifier(build_ode_encoder(teacher.encoder, ODEConfig(depth=4, init="random")), teacher.head)
    with pytest.raises(ConfigError, match="depth 4 must equal the teacher's 2 layers"):
        loss(deeper, batch)
    with pytest.raises(ConfigError, match="encoder \\+ head"):
        trajectory_distillation(student.encoder)


def test_parse_steps():
    assert parse_steps("auto", 8) == (8, 4, 2)
    assert parse_steps("auto", 6) == (6, 3, 2)
    assert parse_steps("full", 6) == (6,)
    assert parse_steps("1,3,3", 6) == (3, 1)
    assert parse_steps("1,3,3", 6, weighted=True) == (3, 3, 1)  # the training draw's weights
    assert parse_steps("auto", 6, weighted=True) == (6, 3, 2)
    for bad in ("two", "3,0"):
        with pytest.raises(ConfigError):
            parse_steps(bad, 6)


# ------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("form", ["prenorm", "postnorm"])
def test_save_and_reload_with_any_step_count(make_encoder, tmp_path, form):
    model = _classifier(make_encoder, num_blocks=2, depth=4, form=form).eval()
    tokenizer = make_encoder("bert").tokenizer
    save_ode_model(tmp_path / "m", model, tokenizer, extra={"label_names": ["neg", "pos"]})
    ids, mask = _batch()
    for steps, solver in ((4, "euler"), (2, "heun"), (2, "adaptive")):
        loaded = load_ode_model(tmp_path / "m", steps=steps, solver=solver)
        model.set_steps(steps, solver)
        with torch.no_grad():
            assert torch.allclose(loaded.model(ids, mask), model(ids, mask), atol=1e-6)
    assert loaded.tokenizer is not None and loaded.meta["label_names"] == ["neg", "pos"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["ode"]["num_blocks"] == 2 and config["ode"]["form"] == form


def test_step_gains_scale_each_step_of_their_count_and_train_only_when_drawn(make_encoder, tmp_path):
    model = _classifier(make_encoder, depth=4, train_steps="4,2", step_gains=True).eval()
    encoder = model.encoder
    assert {k: tuple(v.shape) for k, v in encoder.step_gains.items()} == {"4": (4, 32), "2": (2, 32)}
    ids, mask = _batch()
    plain = _classifier(make_encoder, depth=4, train_steps="4,2").eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "step_gains" not in k})
    with torch.no_grad():  # g = 1 at the start: the plain solve
        assert torch.equal(model.set_steps(2)(ids, mask), plain.set_steps(2)(ids, mask))
        for gains in encoder.step_gains.values():
            gains.copy_(torch.rand_like(gains) * 2)
        h = encoder.embeddings(input_ids=ids)
        for j in range(2):  # h <- h + s g_{2,j} * F(h), s = 2, block 0 (one block)
            h = h + 2.0 * encoder.step_gains["2"][j] * encoder.blocks[0](h, mask.bool()[:, None, None, :])
        assert torch.allclose(model.set_steps(2)(ids, mask), model.head(encoder.final_norm(h), mask), atol=1e-5)
        # a count that was not trained (1) keeps g = 1
        assert torch.equal(model.set_steps(1)(ids, mask), plain.set_steps(1)(ids, mask))
    model.set_steps(4).zero_grad()
    model(ids, mask).sum().backward()
    assert encoder.step_gains["4"].grad.abs().sum() > 0 and encoder.step_gains["2"].grad is None
    from plmkit.optim import no_decay

    assert all(no_decay(n, p) for n, p in model.named_parameters() if "step_gains" in n)  # centred on 1, not 0
    save_ode_model(tmp_path / "m", model, make_encoder("bert").tokenizer)
    loaded = load_ode_model(tmp_path / "m", steps=2)
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids, mask), model.set_steps(2)(ids, mask), atol=1e-6)


def _merged_block(block: SharedBlock, corrections, tau: int) -> SharedBlock:
    """A copy of ``block`` whose six linears carry W + B_tau A_tau: what the corrected field must equal."""
    merged = copy.deepcopy(block)
    with torch.no_grad():
        for name in ("query", "key", "value", "out", "ffn_in", "ffn_out"):
            getattr(merged, name).weight.add_(corrections.up[name][tau] @ corrections.down[name][tau])
    return merged


@pytest.mark.parametrize("form", ["prenorm", "postnorm"])
def test_time_corrections_make_the_field_depend_on_the_unit_of_time(make_encoder, tmp_path, form):
    model = _classifier(make_encoder, depth=4, num_blocks=2, init="random", time_rank=3, form=form).eval()
    encoder, (ids, mask) = model.encoder, _batch()
    corrections = encoder.time_corrections
    assert tuple(corrections.down["ffn_in"].shape) == (4, 3, 32) and tuple(corrections.up["ffn_in"].shape) == (4, 64, 3)
    plain = _classifier(make_encoder, depth=4, num_blocks=2, init="random", form=form).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "time_corrections" not in k})
    with torch.no_grad():
        assert torch.equal(model.set_steps(2)(ids, mask), plain.set_steps(2)(ids, mask))  # B = 0: the shared field
        for p in list(encoder.blocks.parameters()) + list(corrections.parameters()):
            p.add_(torch.randn_like(p) * 0.2)
        attn_mask = mask.bool()[:, None, None, :]
        # n steps of size 4 / n: step j uses block floor(2 (j + 1/2) / n) and unit floor(4 (j + 1/2) / n)
        for steps, units in ((4, [0, 1, 2, 3]), (2, [1, 3]), (1, [2])):
            h = encoder.embeddings(input_ids=ids)
            for j, tau in enumerate(units):
                block = encoder.blocks[(2 * j + 1) * 2 // (2 * steps)]
                h = h + (4 / steps) * _merged_block(block, corrections, tau)(h, attn_mask)
            assert torch.allclose(model.set_steps(steps)(ids, mask), model.head(encoder.final_norm(h), mask),
                                  atol=1e-5), steps
        # the adaptive solver integrates unit by unit: it agrees with many small RK4 steps (each within a unit)
        encoder.config.rtol, encoder.config.atol = 1e-7, 1e-8
        fine = model.set_steps(64, "rk4")(ids, mask)
        assert torch.allclose(model.set_steps(solver="adaptive")(ids, mask), fine, atol=1e-4)
    model.set_steps(2, "euler").zero_grad()
    model(ids, mask).sum().backward()
    used = corrections.up["query"].grad.flatten(1).abs().sum(1) > 0
    assert used.tolist() == [False, True, False, True]  # only the units the 2-step solve evaluates
    save_ode_model(tmp_path / "m", model, make_encoder("bert").tokenizer)
    loaded = load_ode_model(tmp_path / "m", steps=2)
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids, mask), model.set_steps(2)(ids, mask), atol=1e-6)
    with pytest.raises(ConfigError, match="time_rank"):
        ODEConfig(time_rank=-1)


def test_step_norms_modulate_each_steps_pre_norms_and_train_only_when_drawn(make_encoder, tmp_path):
    model = _classifier(make_encoder, depth=4, train_steps="4,2", step_norms=True).eval()
    encoder = model.encoder
    assert {k: tuple(v.shape) for k, v in encoder.step_norms.items()} == {"4": (4, 4, 32), "2": (2, 4, 32)}
    ids, mask = _batch()
    plain = _classifier(make_encoder, depth=4, train_steps="4,2").eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "step_norms" not in k})
    with torch.no_grad():  # a = 1, c = 0 at the start: the plain solve
        assert torch.equal(model.set_steps(2)(ids, mask), plain.set_steps(2)(ids, mask))
        for norms in encoder.step_norms.values():
            norms.copy_(torch.randn_like(norms))
        block, attn_mask = encoder.blocks[0], mask.bool()[:, None, None, :]
        h = encoder.embeddings(input_ids=ids)
        for j in range(2):  # h <- h + s F_j(h), s = 2, with F's two pre-norms re-scaled and shifted by step j's (a, c)
            a_attn, c_attn, a_ffn, c_ffn = encoder.step_norms["2"][j]
            q, k, v = (proj(a_attn * block.attn_norm(h) + c_attn).view(3, -1, block.heads, 32 // block.heads).transpose(1, 2)
                       for proj in (block.query, block.key, block.value))
            u = block.out(F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).reshape(h.shape))
            m = block.ffn_out(ACTIVATIONS[block.activation](block.ffn_in(a_ffn * block.ffn_norm(h + u) + c_ffn)))
            h = h + 2.0 * (u + m)
        assert torch.allclose(model.set_steps(2)(ids, mask), model.head(encoder.final_norm(h), mask), atol=1e-5)
        # a count that was not trained (1) keeps the plain norms
        assert torch.equal(model.set_steps(1)(ids, mask), plain.set_steps(1)(ids, mask))
    model.set_steps(4).zero_grad()
    model(ids, mask).sum().backward()
    assert encoder.step_norms["4"].grad.abs().sum() > 0 and encoder.step_norms["2"].grad is None
    from plmkit.optim import no_decay

    assert all(no_decay(n, p) for n, p in model.named_parameters() if "step_norms" in n)  # scales centred on 1
    # the job counts FLOPs of every row (module hooks see the modulation)
    from plmkit.flops import count_flops

    assert count_flops(model.set_steps(2), ids, mask) == count_flops(plain.set_steps(2), ids, mask)
    save_ode_model(tmp_path / "m", model, make_encoder("bert").tokenizer)
    loaded = load_ode_model(tmp_path / "m", steps=2)
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids, mask), model.set_steps(2)(ids, mask), atol=1e-6)


def test_ode_encoder_from_scratch_trains(make_encoder):
    model = _classifier(make_encoder, depth=4, init="random", train_steps="4,2")
    ids, mask = _batch()
    labels = torch.tensor([0, 1, 1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model.train()(ids, mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert isinstance(model.encoder, ODEEncoder)


# ------------------------------------------------------------------------------ the baseline's layer subset
def test_layer_dropping_baseline_keeps_depth_and_the_kept_layers_outputs(make_encoder):
    from plmkit.layers import keep_layers

    backbone = make_encoder("bert")
    model = backbone.model.eval()
    ids, mask = _batch()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        kept = keep_layers(model, [0])
        first = kept(input_ids=ids, attention_mask=mask).last_hidden_state
    assert kept.config.num_hidden_layers == 1 and len(kept.encoder.layer) == 1
    assert torch.allclose(first, full[1], atol=1e-6)
    assert not torch.allclose(first, full[2], atol=1e-3)
