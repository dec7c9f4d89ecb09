"""MPOLinear: equals nn.Linear at full bond (outputs and gradients), both forward paths, caching, freezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plmkit.compress import mpo_linear
from plmkit.compress.mpo import MPOShapeError
from plmkit.compress.mpo_linear import MPOLinear

IN_F, OUT_F = (2, 3, 2, 2, 2), (2, 2, 4, 2, 2)  # 48 -> 64


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(48, 64).double()
    with torch.no_grad():
        linear.bias.normal_()
    return linear


def _chain(cores) -> torch.Tensor:
    """Independent rebuild of W (in, out) with one einsum over the whole chain."""
    a, b, c, d, e = cores
    # (1,i1,j1,r1) (r1,i2,j2,r2) ... (r4,i5,j5,1) -> (i1..i5, j1..j5) -> (48, 64)
    t = torch.einsum("xaAp,pbBq,qcCr,rdDs,seEy->abcdeABCDE", a, b, c, d, e)
    return t.reshape(48, 64)


@pytest.mark.parametrize("mode", ["dense", "factored"])
def test_full_bond_equals_the_dense_layer_forward_and_gradients(mode):
    linear = _linear()
    layer = MPOLinear.from_linear(linear, IN_F, OUT_F, forward_mode=mode)
    assert layer.cores[0].dtype == torch.float64
    x = torch.randn(3, 5, 48, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = layer(x), linear(x_ref)
    assert out.shape == (3, 5, 64)
    assert torch.allclose(out, ref, atol=1e-10)
    grad_out = torch.randn_like(ref)
    out.backward(grad_out)
    ref.backward(grad_out)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-10)
    assert torch.allclose(layer.bias.grad, linear.bias.grad, atol=1e-10)
    # Core gradients against autograd through an independent one-einsum rebuild of W.
    cores = [c.detach().clone().requires_grad_(True) for c in layer.cores]
    independent = x.detach().reshape(-1, 48) @ _chain(cores) + linear.bias.detach()
    independent.backward(grad_out.reshape(-1, 64))
    for got, want in zip(layer.cores, cores, strict=True):
        assert torch.allclose(got.grad, want.grad, atol=1e-9)


def test_both_paths_agree_on_a_truncated_layer():
    linear = _linear(1)
    dense = MPOLinear.from_linear(linear, IN_F, OUT_F, param_budget=900, forward_mode="dense")
    factored = MPOLinear.from_linear(linear, IN_F, OUT_F, param_budget=900, forward_mode="factored")
    x = torch.randn(7, 48, dtype=torch.float64)
    assert torch.allclose(dense(x), factored(x), atol=1e-10)
    assert torch.allclose(dense(x), x @ _chain(list(dense.cores)) + linear.bias, atol=1e-10)
    assert dense.num_parameters() - 64 <= 900


def test_to_linear_and_merged_weight_fold_the_adapter():
    layer = MPOLinear.from_linear(_linear(), IN_F, OUT_F, param_budget=800, adapter_rank=3)
    with torch.no_grad():
        layer.adapter_up.normal_()
    x = torch.randn(4, 48, dtype=torch.float64)
    merged = layer.to_linear()
    assert isinstance(merged, nn.Linear) and merged.weight.shape == (64, 48)
    assert torch.allclose(merged(x), layer(x), atol=1e-10)
    expected = _chain(list(layer.cores)) + layer.adapter_down @ layer.adapter_up
    assert torch.allclose(merged.weight, expected.T, atol=1e-10)


def test_adapter_starts_at_zero():
    linear = _linear()
    layer = MPOLinear.from_linear(linear, IN_F, OUT_F, adapter_rank=4)
    x = torch.randn(2, 48, dtype=torch.float64)
    assert torch.allclose(layer(x), linear(x), atol=1e-10)


def test_auto_path_follows_the_documented_cost_rule():
    layer = MPOLinear.from_linear(_linear(), IN_F, OUT_F, param_budget=700)
    for tokens in (1, 4, 64, 4096):
        cost = layer.flops(tokens)
        dense = cost["gemm"] + mpo_linear.REBUILD_PENALTY * cost["rebuild"]
        expected = "factored" if mpo_linear.FACTORED_PENALTY * cost["factored"] < dense else "dense"
        assert layer.path_for(tokens) == expected
    # Factored flops grow with the tokens while the rebuild does not: few tokens favour contracting.
    assert layer.path_for(1) == "factored" and layer.path_for(4096) == "dense"
    with torch.no_grad():  # cached weight: no rebuild to amortise, the single GEMM wins
        assert layer.path_for(4096) == "dense"
        assert layer.flops(8, cached=True)["rebuild"] == 0.0


def test_cached_weight_is_rebuilt_after_an_in_place_update():
    layer = MPOLinear.from_linear(_linear(), IN_F, OUT_F, forward_mode="dense")
    x = torch.randn(3, 48, dtype=torch.float64)
    with torch.no_grad():
        first = layer(x)
        assert layer._cache is not None
        layer.cores[0].mul_(2.0)
        second = layer(x)
    assert torch.allclose(second - layer.bias, 2.0 * (first - layer.bias), atol=1e-10)


def test_freezing_the_central_tensor_trains_only_auxiliary_tensors():
    layer = MPOLinear.from_linear(_linear(), IN_F, OUT_F, adapter_rank=2)
    layer.set_trainable("auxiliary")
    assert not layer.central.requires_grad and not layer.bias.requires_grad
    assert all(c.requires_grad for c in layer.auxiliary()) and layer.adapter_up.requires_grad
    before = {k: p.detach().clone() for k, p in layer.named_parameters()}
    optimizer = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.1)
    layer(torch.randn(6, 48, dtype=torch.float64)).pow(2).sum().backward()
    assert layer.central.grad is None
    optimizer.step()
    after = dict(layer.named_parameters())
    assert torch.equal(after["cores.2"], before["cores.2"]) and torch.equal(after["bias"], before["bias"])
    assert not torch.equal(after["cores.1"], before["cores.1"])
    layer.set_trainable("central")
    assert [c.requires_grad for c in layer.cores] == [False, False, True, False, False]
    with pytest.raises(ValueError, match="trainable part"):
        layer.set_trainable("some")


def test_shared_central_tensor_is_one_parameter():
    a = MPOLinear.from_linear(_linear(0), IN_F, OUT_F)
    b = MPOLinear.from_linear(_linear(1), IN_F, OUT_F)
    a.share_central(b.central)
    assert a.central is b.central
    assert len({id(p) for p in nn.ModuleList([a, b]).parameters()}) == 2 * 6 - 1
    with pytest.raises(ValueError, match="shared central tensor has shape"):
        MPOLinear.from_linear(_linear(), IN_F, OUT_F, ranks=2).share_central(b.central)


def test_bad_shapes_and_options_are_refused():
    with pytest.raises(ValueError, match="expects 6 input features, got 5"):
        MPOLinear((2, 3), (4, 4), [1, 2, 1]).forward(torch.randn(1, 5))
    with pytest.raises(MPOShapeError, match="same length"):
        MPOLinear((2, 3), (16,), [1, 2, 1])
    with pytest.raises(MPOShapeError, match="multiply to 50, but the matrix has 48 rows"):
        MPOLinear.from_linear(_linear(), (2, 5, 5, 1, 1), OUT_F)
    with pytest.raises(ValueError, match="ranks must have"):
        MPOLinear(IN_F, OUT_F, [1, 2, 2, 1])
    with pytest.raises(ValueError, match="forward_mode"):
        MPOLinear(IN_F, OUT_F, [1, 2, 2, 2, 2, 1], forward_mode="fast")
