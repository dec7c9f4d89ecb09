"""MPO decomposition: exactness, canonical form, truncation error = bound from discarded values, shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from plmkit.compress.mpo import (
    MPOShapeError,
    check_factors,
    factorize,
    full_ranks,
    mpo_decompose,
    mpo_parameters,
)
from plmkit.compress.mpo_budget import shrink

IN_F, OUT_F = (2, 3, 4, 2, 2), (2, 2, 3, 2, 3)  # 96 x 72: small, uneven, every bond meaningful


def _weight(rows: int = 96, cols: int = 72, seed: int = 0, decay: float = 0.7) -> torch.Tensor:
    """A matrix whose unfoldings have decaying spectra (as trained weights do), in float64."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(base, full_matrices=False)
    return u @ torch.diag(s * decay ** torch.arange(len(s), dtype=torch.float64)) @ vh + 0.05 * base


def _unfolding_singular_values(weight: torch.Tensor, in_f, out_f, bond: int) -> torch.Tensor:
    """Independent: singular values of W reshaped to (pairs before bond, pairs after bond)."""
    n = len(in_f)
    order = [x for k in range(n) for x in (k, n + k)]
    t = weight.reshape(tuple(in_f) + tuple(out_f)).permute(order)
    rows = math.prod(i * j for i, j in zip(in_f[:bond], out_f[:bond], strict=True))
    return torch.linalg.svdvals(t.reshape(rows, -1))


def _assert_canonical(mpo, atol: float = 1e-10) -> None:
    for k, core in enumerate(mpo.cores):
        d, i, j, e = core.shape
        if k < mpo.centre:
            m = core.reshape(d * i * j, e)
            assert torch.allclose(m.T @ m, torch.eye(e, dtype=m.dtype), atol=atol), f"core {k} not left-orthonormal"
        elif k > mpo.centre:
            m = core.reshape(d, i * j * e)
            assert torch.allclose(m @ m.T, torch.eye(d, dtype=m.dtype), atol=atol), f"core {k} not right-orthonormal"


def test_factorize_reproduces_the_official_shapes_and_is_balanced():
    assert factorize(768) == (4, 4, 4, 4, 3)
    assert factorize(3072) == (4, 4, 8, 6, 4)
    assert factorize(1024) == (4, 4, 4, 4, 4)
    assert factorize(4096) == (4, 4, 8, 8, 4)
    assert factorize(384) == (2, 4, 4, 4, 3) and factorize(1536) == (4, 4, 6, 4, 4)
    for n in (32, 64, 100, 384, 1536, 2048, 50257):
        shape = factorize(n)
        assert math.prod(shape) == n and len(shape) == 5
        assert shape[2] == max(shape), "the central core should get the largest factor"


def test_full_bond_reconstructs_exactly_and_matches_tensorly():
    import tensorly as tl
    from tensorly.tt_matrix import tt_matrix_to_matrix

    weight = _weight()
    mpo = mpo_decompose(weight, IN_F, OUT_F)
    assert mpo.ranks == full_ranks(IN_F, OUT_F)
    assert torch.allclose(mpo.to_matrix(), weight, atol=1e-10)
    with tl.backend_context("numpy"):
        independent = tt_matrix_to_matrix([c.numpy() for c in mpo.cores])
    np.testing.assert_allclose(independent, weight.numpy(), atol=1e-10)
    assert mpo.error() == 0.0
    assert mpo.num_parameters() == mpo_parameters(mpo.ranks, IN_F, OUT_F) > weight.numel()  # full bond costs more


def test_mixed_canonical_form_with_the_centre_on_the_central_core():
    mpo = mpo_decompose(_weight(), IN_F, OUT_F)
    assert mpo.centre == 2
    _assert_canonical(mpo)
    # With the gauge fixed, all of the norm sits in the central core.
    assert torch.isclose(mpo.cores[2].norm(), _weight().norm(), rtol=1e-12)


def test_bond_spectra_are_the_schmidt_values_of_the_matrix():
    weight = _weight()
    mpo = mpo_decompose(weight, IN_F, OUT_F)
    for bond in range(1, len(IN_F)):
        expected = _unfolding_singular_values(weight, IN_F, OUT_F, bond)
        assert torch.allclose(mpo.spectra[bond], expected, atol=1e-10), bond


@pytest.mark.parametrize("bond", [1, 2, 3, 4])
def test_truncating_one_bond_errs_by_exactly_the_discarded_singular_values(bond):
    weight = _weight()
    mpo = mpo_decompose(weight, IN_F, OUT_F)
    ranks = list(mpo.ranks)
    ranks[bond] = max(1, ranks[bond] // 3)
    cut = mpo.truncate(ranks)
    sigma = _unfolding_singular_values(weight, IN_F, OUT_F, bond)
    bound = float(sigma[ranks[bond]:].pow(2).sum().sqrt())
    actual = float((cut.to_matrix() - weight).norm())
    assert actual == pytest.approx(bound, rel=1e-9)
    assert cut.error() == pytest.approx(actual, rel=1e-9)
    _assert_canonical(cut)


def test_truncating_several_bonds_obeys_the_proven_equality_and_bounds():
    """||W - W_hat||^2 = sum of every sweep step's discarded sigma^2, and
    max_b tail_b^2 <= ||W - W_hat||^2 <= sum_b tail_b^2 with tails of the untruncated W's unfoldings."""
    weight = _weight(seed=1)
    mpo = mpo_decompose(weight, IN_F, OUT_F)
    ranks = [1, 3, 8, 10, 3, 1]
    cut = mpo.truncate(ranks)
    assert cut.ranks == ranks
    actual = float((cut.to_matrix() - weight).norm())
    assert cut.error() == pytest.approx(actual, rel=1e-9)
    tails = [float(_unfolding_singular_values(weight, IN_F, OUT_F, b)[ranks[b]:].pow(2).sum()) for b in range(1, 5)]
    assert math.sqrt(max(tails)) <= actual + 1e-12
    assert actual <= math.sqrt(sum(tails)) + 1e-12
    assert cut.error_bounds() == pytest.approx((math.sqrt(max(tails)), math.sqrt(sum(tails))), rel=1e-9)
    _assert_canonical(cut)


def test_truncating_a_truncated_mpo_reports_the_total_error_against_the_original():
    """Re-truncation: error() is ||W - W_2|| against the original W, not the last step's ||W_1 - W_2||."""
    weight = _weight(seed=2)
    first = mpo_decompose(weight, IN_F, OUT_F).truncate([1, 4, 12, 12, 4, 1])
    second = first.truncate([1, 3, 8, 10, 3, 1])
    step = float((second.to_matrix() - first.to_matrix()).norm())
    total = float((second.to_matrix() - weight).norm())
    assert total > step * 1.01  # the first cut matters, so reporting only the last step would be wrong
    assert second.error() == pytest.approx(total, rel=1e-9)
    third = second.truncate(second.ranks)  # cutting nothing changes nothing
    assert third.error() == pytest.approx(total, rel=1e-9)
    budget = shrink([second], budget=second.num_parameters() * 3 // 4)[0]  # central cuts after a re-sweep
    assert budget.error() == pytest.approx(float((budget.to_matrix() - weight).norm()), rel=1e-9)


def test_central_cuts_after_one_sweep_add_in_squares():
    """A sweep, then central-bond cuts: nested projections, so the discarded values give the exact error."""
    weight = _weight(seed=3)
    first = mpo_decompose(weight, IN_F, OUT_F).truncate([1, 4, 12, 12, 4, 1])
    cut = shrink([first], budget=first.num_parameters() // 2)[0]
    assert cut.nested and cut.origin is not None
    step = float((cut.to_matrix() - first.to_matrix()).norm())
    total = float((cut.to_matrix() - weight).norm())
    assert cut.error() == pytest.approx(total, rel=1e-9)
    assert total**2 == pytest.approx(first.error() ** 2 + step**2, rel=1e-9)


def test_max_error_is_never_exceeded_and_param_budget_is_met():
    weight = _weight(seed=2)
    norm = float(weight.norm())
    for fraction in (0.05, 0.2, 0.5):
        mpo = mpo_decompose(weight, IN_F, OUT_F, max_error=fraction * norm)
        assert float((mpo.to_matrix() - weight).norm()) <= fraction * norm + 1e-9
    budget = weight.numel() // 3
    small = mpo_decompose(weight, IN_F, OUT_F, param_budget=budget)
    assert small.num_parameters() <= budget
    assert small.num_parameters() > 0.8 * budget  # the greedy spends the budget
    # A bigger budget can only help.
    bigger = mpo_decompose(weight, IN_F, OUT_F, param_budget=2 * budget)
    assert bigger.error() < small.error()


def test_budget_greedy_knows_its_exact_error_and_beats_equal_central_caps():
    weight = _weight(seed=3)
    mpo = mpo_decompose(weight, IN_F, OUT_F, param_budget=weight.numel() // 4)
    actual = float((mpo.to_matrix() - weight).norm())
    assert mpo.error() == pytest.approx(actual, rel=1e-9)  # successive cuts' discarded values add up exactly
    _assert_canonical(mpo)
    full = full_ranks(IN_F, OUT_F)
    for cap in range(1, 40):
        ranks = list(full)
        ranks[2], ranks[3] = min(cap, full[2]), min(cap, full[3])
        candidate = mpo_decompose(weight, IN_F, OUT_F, ranks=ranks)
        if candidate.num_parameters() <= mpo.num_parameters():
            assert mpo.error() <= candidate.error() + 1e-9, cap


def test_explicit_ranks_and_int_cap():
    weight = _weight()
    capped = mpo_decompose(weight, IN_F, OUT_F, ranks=4)
    assert capped.ranks == [min(4, f) for f in full_ranks(IN_F, OUT_F)]
    with pytest.raises(ValueError, match="at most one"):
        mpo_decompose(weight, IN_F, OUT_F, ranks=4, max_error=1.0)
    with pytest.raises(MPOShapeError, match="between 1 and the full bonds"):
        mpo_decompose(weight, IN_F, OUT_F, ranks=[1, 999, 2, 2, 2, 1])
    with pytest.raises(ValueError, match="below the smallest MPO"):
        mpo_decompose(weight, IN_F, OUT_F, param_budget=3)


@pytest.mark.parametrize(
    ("in_f", "out_f", "message"),
    [
        ((2, 3, 4, 2, 3), OUT_F, r"in_factors \(2, 3, 4, 2, 3\) multiply to 144, but the matrix has 96 rows"),
        (IN_F, (2, 2, 3, 2), "same length"),
        (IN_F, (2, 2, 3, 2, 4), "96 columns|72 columns"),
        ((96,), (72,), "at least 2 cores"),
        ((2, 3, 4, 2, 2), (2, 2, 3, 2, 0), "positive"),
    ],
)
def test_bad_factor_shapes_give_a_clear_error(in_f, out_f, message):
    with pytest.raises(MPOShapeError, match=message):
        mpo_decompose(_weight(), in_f, out_f)


def test_check_factors_suggests_a_factorisation():
    with pytest.raises(MPOShapeError, match=r"e\.g\. \(4, 4, 4, 4, 3\)"):
        check_factors((768, 3072), (4, 4, 4, 4, 4), factorize(3072))


def test_default_factors_and_float32_input():
    weight = _weight(64, 32).float()
    mpo = mpo_decompose(weight)
    assert mpo.in_factors == factorize(64) and mpo.out_factors == factorize(32)
    assert torch.allclose(mpo.to_matrix().float(), weight, atol=1e-5)
