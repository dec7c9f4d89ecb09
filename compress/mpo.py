"""Matrix product operator (MPO) decomposition of a weight matrix, in mixed-canonical form.

A matrix W (I x J, I = prod i_k, J = prod j_k) becomes a chain of n cores T_k of shape
(d_{k-1}, i_k, j_k, d_k) with d_0 = d_n = 1. tensorly's TT-SVD (``tensor_train_matrix``) gives
the exact chain at full bond dimension, but leaves it *left*-canonical: every core is an isometry
except the last, which carries the whole norm. MPO compression (MPOP) and sharing (MPOBERT) need
the orthogonality centre on the central core C = T_{n//2}: cores before it left-orthonormal, cores
after it right-orthonormal. In that gauge the singular values met at a bond are exactly the
Schmidt values of W across that bond, so truncation errors can be read off them:

* truncating one bond of a canonical MPO to rank r: ||W - W_hat||_F = sqrt(sum of the discarded sigma^2)
  exactly;
* truncating several bonds with the sweep in ``truncate``: ||W - W_hat||_F^2 = sum over every SVD
  step of its discarded sigma^2 (each step projects onto a subspace nested in the previous ones, so
  the errors are orthogonal); and with tail_b the Schmidt tail of the untruncated W at bond b,
  max_b tail_b^2 <= ||W - W_hat||_F^2 <= sum_b tail_b^2.
* truncating again is *not* orthogonal in general: the first sweep leaves W_1 = P_1(W), P_1 an
  orthogonal projector onto the kept frames, so W - W_1 is orthogonal to range(P_1); but the
  second sweep cuts bond 1 before bond 2, and the bond-2 frame it then keeps, taken after
  projecting bond 1 anew, need not lie in the bond-2 frame P_1 kept. W_1 - W_2 can leave range(P_1)
  and ||W - W_2||^2 = ||W - W_1||^2 + ||W_1 - W_2||^2 - 2 <W - W_1, W_2> has a cross term. (Cuts of
  the central tensor's two bonds alone do stay nested, so ``mpo_budget`` adds their errors in squares.)
  A re-truncated MPO therefore keeps the exact cores of the original (``origin``) and measures
  ||W - W_2||^2 = ||W||^2 + ||W_2||^2 - 2 <W, W_2> by contracting the two chains (``inner``).

Bonds are numbered 1..n-1: bond b sits between cores b-1 and b, so ``ranks`` has n+1 entries
with ranks[0] = ranks[n] = 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from plmkit.errors import ConfigError, PlmkitError

# Official factor shapes (MPOBERT); the search in ``factorize`` reproduces them, the table pins them.
KNOWN_FACTORS: dict[int, tuple[int, ...]] = {
    768: (4, 4, 4, 4, 3), 3072: (4, 4, 8, 6, 4), 1024: (4, 4, 4, 4, 4), 4096: (4, 4, 8, 8, 4),
}


class MPOShapeError(PlmkitError):
    """Factor shapes that do not describe the matrix, with what would."""


# ------------------------------------------------------------------------------ factor shapes
def _multisets(n: int, parts: int, smallest: int) -> list[tuple[int, ...]]:
    """All non-decreasing tuples of ``parts`` integers >= ``smallest`` whose product is n."""
    if parts == 1:
        return [(n,)] if n >= smallest else []
    found = []
    for f in range(smallest, int(round(n ** (1 / parts))) + 2):
        if n % f == 0:
            found += [(f, *rest) for rest in _multisets(n // f, parts - 1, f)]
    return found


def factorize(n: int, num_factors: int = 5) -> tuple[int, ...]:
    """Split n into ``num_factors`` factors, balanced, the largest ones in the middle.

    Among all factorisations we take the one whose factors sorted largest-first are smallest
    lexicographically (smallest maximum, then smallest runner-up ...), and place them centre first,
    then right, left, outward, so that the central core gets the most parameters. This reproduces
    the official shapes, e.g. 3072 -> (4, 4, 8, 6, 4), 768 -> (4, 4, 4, 4, 3), and gives 384 -> (2, 4, 4, 4, 3),
    1536 -> (4, 4, 6, 4, 4). A prime n gives (1, ..., n, ..., 1): valid, but it cannot compress.
    """
    if n < 1 or num_factors < 1:
        raise MPOShapeError(f"cannot factorise {n} into {num_factors} factors")
    if num_factors == 5 and n in KNOWN_FACTORS:
        return KNOWN_FACTORS[n]
    candidates = _multisets(n, num_factors, 2) or _multisets(n, num_factors, 1)
    best = min(tuple(sorted(c, reverse=True)) for c in candidates)
    centre = num_factors // 2
    order = [centre]
    for step in range(1, num_factors):
        for pos in (centre + step, centre - step):
            if 0 <= pos < num_factors:
                order.append(pos)
    placed = [0] * num_factors
    for pos, value in zip(order, best, strict=True):
        placed[pos] = value
    return tuple(placed)


def check_factors(shape: tuple[int, int], in_factors: Sequence[int], out_factors: Sequence[int]) -> None:
    """Raise a clear error unless the factors multiply out to the matrix shape."""
    rows, cols = shape
    if len(in_factors) != len(out_factors):
        raise MPOShapeError(f"in_factors {tuple(in_factors)} and out_factors {tuple(out_factors)} must have "
                            "the same length (one pair per core)")
    if len(in_factors) < 2:
        raise MPOShapeError("an MPO needs at least 2 cores")
    if any(f < 1 for f in (*in_factors, *out_factors)):
        raise MPOShapeError(f"factors must be positive, got {tuple(in_factors)} x {tuple(out_factors)}")
    for name, factors, size in (("in_factors", in_factors, rows), ("out_factors", out_factors, cols)):
        if math.prod(factors) != size:
            raise MPOShapeError(f"{name} {tuple(factors)} multiply to {math.prod(factors)}, but the matrix has "
                                f"{size} {'rows' if name == 'in_factors' else 'columns'} "
                                f"(e.g. {factorize(size, len(factors))})")


def full_ranks(in_factors: Sequence[int], out_factors: Sequence[int]) -> list[int]:
    """Bond dimensions at which the MPO is exact: d_b = min(prod of pairs left of b, prod right of b)."""
    pairs = [i * j for i, j in zip(in_factors, out_factors, strict=True)]
    return [1] + [min(math.prod(pairs[:b]), math.prod(pairs[b:])) for b in range(1, len(pairs))] + [1]


def mpo_parameters(ranks: Sequence[int], in_factors: Sequence[int], out_factors: Sequence[int]) -> int:
    return sum(ranks[k] * i * j * ranks[k + 1] for k, (i, j) in enumerate(zip(in_factors, out_factors, strict=True)))


# ------------------------------------------------------------------------------ the MPO
@dataclass
class MPO:
    """Cores of one matrix, centre ``centre``; ``discarded[b]`` holds what every truncation of bond b dropped."""

    cores: list[torch.Tensor]
    in_factors: tuple[int, ...]
    out_factors: tuple[int, ...]
    centre: int
    spectra: dict[int, torch.Tensor] = field(default_factory=dict)
    """Schmidt values of every bond of the untruncated matrix (descending)."""
    discarded: dict[int, torch.Tensor] = field(default_factory=dict)
    """Per bond, the singular values every truncation so far dropped there."""
    origin: list[torch.Tensor] | None = None
    """Cores of the untruncated matrix this MPO was cut from (None: this is it, or it is unknown)."""
    nested: bool = True
    """True while the discarded values add in squares to the error (one sweep from the exact MPO, then
    central-bond cuts); a second sweep clears it and ``error`` is measured against ``origin``."""

    @property
    def ranks(self) -> list[int]:
        return [1] + [int(c.shape[-1]) for c in self.cores[:-1]] + [1]

    @property
    def shape(self) -> tuple[int, int]:
        return math.prod(self.in_factors), math.prod(self.out_factors)

    def num_parameters(self) -> int:
        return sum(c.numel() for c in self.cores)

    def error(self) -> float:
        """||W - W_hat||_F against the original W (exact, see module doc).

        From the discarded singular values while truncations were nested, else by contracting this
        chain against ``origin``; without an origin, the discarded values are all there is.
        """
        if not self.nested and self.origin is not None:
            squared = inner(self.origin, self.origin) + inner(self.cores, self.cores) - 2 * inner(self.origin, self.cores)
            return math.sqrt(max(squared, 0.0))
        return math.sqrt(sum(float((s.double() ** 2).sum()) for s in self.discarded.values()))

    def error_bounds(self, ranks: Sequence[int] | None = None) -> tuple[float, float]:
        """(lower, upper) bounds on the error of truncating to ``ranks`` from the Schmidt tails."""
        ranks = ranks or self.ranks
        tails = [float((s[ranks[b]:].double() ** 2).sum()) for b, s in self.spectra.items()]
        return math.sqrt(max(tails, default=0.0)), math.sqrt(sum(tails))

    def to_matrix(self) -> torch.Tensor:
        return contract_cores(self.cores)

    def truncate(self, ranks: Sequence[int]) -> MPO:
        return truncate(self, ranks)


def inner(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """<A, B>_F of two MPOs with the same factors, by transfer matrices (float64)."""
    e = torch.ones(1, 1, dtype=torch.float64)
    for x, y in zip(a, b, strict=True):
        # (d, d') x (d, i, j, f) x (d', i, j, f') -> (f, f')
        e = torch.einsum("ab,aijf,bijg->fg", e, x.double(), y.double())
    return float(e.reshape(()))


def origin_of(mpo: MPO) -> list[torch.Tensor] | None:
    """The exact cores ``mpo`` was cut from: its own when untruncated, else its recorded origin."""
    return mpo.origin if mpo.origin is not None else (list(mpo.cores) if not mpo.discarded else None)


def contract_cores(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Rebuild the (I, J) matrix: one chain of matrix products, one permutation at the end."""
    n = len(cores)
    # (1, i_1, j_1, d_1) -> (i_1 j_1, d_1)
    t = cores[0].reshape(-1, cores[0].shape[-1])
    for core in cores[1:]:
        d, i, j, e = core.shape
        # (pairs so far, d) @ (d, i j e) -> (pairs so far * i * j, e)
        t = (t @ core.reshape(d, i * j * e)).reshape(-1, e)
    in_f, out_f = [c.shape[1] for c in cores], [c.shape[2] for c in cores]
    # (i_1, j_1, ..., i_n, j_n) -> (i_1, ..., i_n, j_1, ..., j_n) -> (I, J)
    t = t.reshape([x for pair in zip(in_f, out_f, strict=True) for x in pair])
    t = t.permute([2 * k for k in range(n)] + [2 * k + 1 for k in range(n)])
    return t.reshape(math.prod(in_f), math.prod(out_f))


# ------------------------------------------------------------------------------ gauge moves
def left_orthonormalise(core: torch.Tensor, nxt: torch.Tensor, rank: int | None = None):
    """Make ``core`` left-orthonormal (optionally truncating its right bond), push the rest into ``nxt``."""
    d, i, j, e = core.shape
    # (d, i, j, e) -> (d * i * j, e)
    u, s, vh = torch.linalg.svd(core.reshape(d * i * j, e), full_matrices=False)
    keep = min(rank or len(s), len(s))
    # (d * i * j, keep) -> (d, i, j, keep)
    left = u[:, :keep].reshape(d, i, j, keep)
    # (keep, e) x (e, i', j', f) -> (keep, i', j', f)
    right = torch.einsum("ke,eijf->kijf", s[:keep, None] * vh[:keep], nxt)
    return left, right, s, s[keep:]


def right_orthonormalise(prev: torch.Tensor, core: torch.Tensor, rank: int | None = None):
    """Make ``core`` right-orthonormal (optionally truncating its left bond), push the rest into ``prev``."""
    d, i, j, e = core.shape
    # (d, i, j, e) -> (d, i * j * e)
    u, s, vh = torch.linalg.svd(core.reshape(d, i * j * e), full_matrices=False)
    keep = min(rank or len(s), len(s))
    # (keep, i * j * e) -> (keep, i, j, e)
    right = vh[:keep].reshape(keep, i, j, e)
    # (c, i', j', d) x (d, keep) -> (c, i', j', keep)
    left = torch.einsum("cijd,dk->cijk", prev, u[:, :keep] * s[:keep])
    return left, right, s, s[keep:]


def move_centre(cores: list[torch.Tensor], start: int, stop: int) -> dict[int, torch.Tensor]:
    """Move the orthogonality centre from core ``start`` to ``stop`` in place; returns bond spectra seen."""
    seen = {}
    for k in range(start, stop):
        cores[k], cores[k + 1], s, _ = left_orthonormalise(cores[k], cores[k + 1])
        seen[k + 1] = s
    for k in range(start, stop, -1):
        cores[k - 1], cores[k], s, _ = right_orthonormalise(cores[k - 1], cores[k])
        seen[k] = s
    return seen


def truncate(mpo: MPO, ranks: Sequence[int]) -> MPO:
    """Truncate bonds to ``ranks`` (length n+1) and return a new MPO, centre unchanged.

    Right bonds are cut in a right-to-left sweep that ends on the centre, then left bonds in a
    left-to-right sweep that ends on it; every SVD is taken with the rest of the chain orthonormal,
    so its discarded values are exact Schmidt values of the current matrix (see the module doc).
    """
    n, c = len(mpo.cores), mpo.centre
    if len(ranks) != n + 1 or ranks[0] != 1 or ranks[-1] != 1 or min(ranks) < 1:
        raise MPOShapeError(f"ranks must have {n + 1} entries, start and end with 1, all >= 1; got {list(ranks)}")
    cores = [core.clone() for core in mpo.cores]
    discarded: dict[int, torch.Tensor] = {}
    move_centre(cores, c, n - 1)
    for k in range(n - 1, c, -1):
        cores[k - 1], cores[k], _, discarded[k] = right_orthonormalise(cores[k - 1], cores[k], ranks[k])
    move_centre(cores, c, 0)
    for k in range(c):
        cores[k], cores[k + 1], _, discarded[k + 1] = left_orthonormalise(cores[k], cores[k + 1], ranks[k + 1])
    # Earlier truncations stay on the record; a second sweep is not nested (module doc).
    for bond, dropped in mpo.discarded.items():
        discarded[bond] = torch.cat([dropped, discarded.get(bond, dropped[:0])])
    return MPO(cores, mpo.in_factors, mpo.out_factors, c, dict(mpo.spectra), discarded, origin_of(mpo),
               nested=not mpo.discarded)


# ------------------------------------------------------------------------------ decomposition
def _tensorly_cores(weight: torch.Tensor, in_factors: tuple[int, ...], out_factors: tuple[int, ...]):
    """Exact (full-bond) TT-matrix of ``weight`` from tensorly, left-canonical, as float64 tensors."""
    import tensorly as tl
    from tensorly.decomposition import tensor_train_matrix

    ranks = full_ranks(in_factors, out_factors)
    with tl.backend_context("numpy"):
        # (I, J) -> (i_1, ..., i_n, j_1, ..., j_n)
        tensor = weight.detach().cpu().double().numpy().reshape(in_factors + out_factors)
        tt = tensor_train_matrix(tensor, rank=ranks)
    return [torch.from_numpy(core.copy()) for core in tt.factors]


def mpo_decompose(
    weight: torch.Tensor, in_factors: Sequence[int] | None = None, out_factors: Sequence[int] | None = None,
    *, ranks: int | Sequence[int] | None = None, max_error: float | None = None,
    param_budget: int | None = None, num_cores: int = 5,
) -> MPO:
    """Decompose ``weight`` (I x J) into a mixed-canonical MPO with the centre on the middle core.

    Give at most one of: ``ranks`` (an int caps every bond, a list of n+1 sets them; cut by the sweep
    in ``truncate``), ``max_error`` (an absolute Frobenius error the result will not exceed) or
    ``param_budget`` (core parameters); the last two cut the central tensor's bonds greedily with
    exact errors (``plmkit.compress.mpo_budget``). With none the MPO is exact. Factors default to
    ``factorize`` of each side.
    """
    if sum(x is not None for x in (ranks, max_error, param_budget)) > 1:
        raise ConfigError("give at most one of ranks, max_error and param_budget")
    if weight.ndim != 2:
        raise MPOShapeError(f"expected a matrix, got a tensor of shape {tuple(weight.shape)}")
    in_f = tuple(in_factors) if in_factors else factorize(weight.shape[0], num_cores)
    out_f = tuple(out_factors) if out_factors else factorize(weight.shape[1], len(in_f))
    check_factors(tuple(weight.shape), in_f, out_f)
    cores = _tensorly_cores(weight, in_f, out_f)
    n = len(cores)
    spectra = move_centre(cores, n - 1, 0)  # right-to-left: every bond's Schmidt values
    move_centre(cores, 0, n // 2)
    mpo = MPO(cores, in_f, out_f, n // 2, spectra)
    if ranks is not None:
        return truncate(mpo, _explicit_ranks(mpo, ranks))
    if max_error is not None or param_budget is not None:
        from plmkit.compress.mpo_budget import shrink

        if max_error is not None and max_error < 0:
            raise ConfigError(f"max_error must be >= 0, got {max_error}")
        limits = None if max_error is None else [max_error**2]
        return shrink([mpo], budget=param_budget, max_error_sq=limits)[0]
    return mpo


def _explicit_ranks(mpo: MPO, ranks: int | Sequence[int]) -> list[int]:
    full = full_ranks(mpo.in_factors, mpo.out_factors)
    if isinstance(ranks, int):
        if ranks < 1:
            raise ConfigError(f"ranks must be >= 1, got {ranks}")
        return [min(ranks, f) for f in full]
    ranks = list(ranks)
    if len(ranks) != len(full) or any(r < 1 or r > f for r, f in zip(ranks, full, strict=True)):
        raise MPOShapeError(f"ranks {ranks} must have {len(full)} entries between 1 and the full bonds {full}")
    return ranks
