"""One central tensor for many matrices: the shared-centre MPO fit behind depth scaling.

Group the interleaved index pairs of a matrix W_l as (left P, middle M, right Q) around the central
core. In mixed-canonical form W_l = L_l . C_l . R_l with L_l (P x d) orthonormal columns and R_l
(d' x Q) orthonormal rows. Sharing C across layers l = 1..m means minimising
sum_l ||W_l - L_l C R_l||^2 over one C and per-layer isometries. Alternating exact minimisers:

* C given the frames: C = mean_l L_l^T W_l R_l^T (the gauge makes the normal equations diagonal;
  this is why the centre must sit on C);
* L_l given C and R_l: an orthogonal Procrustes problem, L_l = polar(W_l (C R_l)^T); R_l likewise.

Each step cannot increase the objective. The frames are then split exactly (full inner bonds)
into the auxiliary cores, so every layer is an ordinary canonical MPO whose centre is shared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from plmkit.compress.mpo import check_factors, full_ranks


@dataclass
class SharedFit:
    central: torch.Tensor
    """(d, i_c, j_c, d') shared by every matrix of the group."""
    auxiliary: list[list[torch.Tensor]]
    """Per matrix, the cores before the centre then the cores after it."""
    relative_errors: list[float]
    """||W_l - W_hat_l||_F / ||W_l||_F per matrix."""


def _interleave(weight: torch.Tensor, in_f: tuple[int, ...], out_f: tuple[int, ...], c: int) -> torch.Tensor:
    """(I, J) -> (P, M, Q) with pairs (i_k, j_k) interleaved and grouped around core c."""
    n = len(in_f)
    order = [x for k in range(n) for x in (k, n + k)]
    pairs = [i * j for i, j in zip(in_f, out_f, strict=True)]
    # (I, J) -> (i_1..i_n, j_1..j_n) -> (i_1, j_1, ..., i_n, j_n) -> (P, M, Q)
    t = weight.reshape(in_f + out_f).permute(order)
    return t.reshape(math.prod(pairs[:c]), pairs[c], math.prod(pairs[c + 1:]))


def _polar(matrix: torch.Tensor) -> torch.Tensor:
    """The isometry closest to ``matrix`` (orthonormal columns), U V^T of its thin SVD."""
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u @ vh


def _split_chain(block: torch.Tensor, in_f: Sequence[int], out_f: Sequence[int]) -> list[torch.Tensor]:
    """Exact left-canonical cores of ``block`` (a, pairs..., b) by sequential SVD (no truncation)."""
    a, b = block.shape[0], block.shape[-1]
    cores, rest, left = [], block.reshape(a, -1), a
    for k, (i, j) in enumerate(zip(in_f, out_f, strict=True)):
        if k == len(in_f) - 1:
            # (left * i * j, b) -> (left, i, j, b)
            cores.append(rest.reshape(left, i, j, b))
            break
        # (left * i * j, remaining) -> U (.., r) S V^T
        u, s, vh = torch.linalg.svd(rest.reshape(left * i * j, -1), full_matrices=False)
        cores.append(u.reshape(left, i, j, len(s)))
        rest, left = s[:, None] * vh, len(s)
    return cores


def _frames(t: torch.Tensor, d: int, d2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading left (P x d) and right (d2 x Q) singular frames of one (P, M, Q) tensor."""
    p, m, q = t.shape
    left = torch.linalg.svd(t.reshape(p, m * q), full_matrices=False)[0][:, :d]
    right = torch.linalg.svd(t.reshape(p * m, q), full_matrices=False)[2][:d2]
    return left, right


def fit_shared_mpo(weights: Sequence[torch.Tensor], in_factors: Sequence[int], out_factors: Sequence[int],
                   max_bond: int | None = None, iterations: int = 10) -> SharedFit:
    """Fit one central tensor and per-matrix auxiliary cores to ``weights`` (each I x J)."""
    in_f, out_f = tuple(in_factors), tuple(out_factors)
    check_factors(tuple(weights[0].shape), in_f, out_f)
    c = len(in_f) // 2
    full = full_ranks(in_f, out_f)
    d, d2 = (min(full[c], max_bond or full[c]), min(full[c + 1], max_bond or full[c + 1]))
    ts = [_interleave(w.detach().double().cpu(), in_f, out_f, c) for w in weights]
    left, right = _frames(ts[0], d, d2)
    # (d, P) x (P, M, Q) x (Q, d2) -> (d, M, d2)
    central = torch.einsum("pa,pmq,bq->amb", left, ts[0], right)
    lefts, rights = [left] * len(ts), [right] * len(ts)
    for _ in range(iterations if len(ts) > 1 else 0):
        lefts, rights = zip(*(_refit_frames(t, central, r) for t, r in zip(ts, rights, strict=True)), strict=True)
        # mean over matrices of (d, P) x (P, M, Q) x (Q, d2) -> (d, M, d2)
        central = torch.stack([torch.einsum("pa,pmq,bq->amb", lf, t, rf)
                               for lf, t, rf in zip(lefts, ts, rights, strict=True)]).mean(0)
    return _assemble(ts, lefts, rights, central, in_f, out_f, c)


def _refit_frames(t: torch.Tensor, central: torch.Tensor, right: torch.Tensor):
    """Procrustes updates of one matrix's left frame, then its right frame."""
    p, m, q = t.shape
    # (d, M, d2) x (d2, Q) -> (d, M * Q)
    b = torch.einsum("amb,bq->amq", central, right).reshape(central.shape[0], m * q)
    left = _polar(t.reshape(p, m * q) @ b.T)  # (P, d)
    # (P, d) x (d, M, d2) -> (P * M, d2)
    a = torch.einsum("pa,amb->pmb", left, central).reshape(p * m, central.shape[2])
    right = _polar(t.reshape(p * m, q).T @ a).T  # (d2, Q)
    return left, right


def _assemble(ts, lefts, rights, central, in_f, out_f, c) -> SharedFit:
    auxiliary, errors = [], []
    for t, lf, rf in zip(ts, lefts, rights, strict=True):
        # (P, d) -> (1, pairs..., d): left cores, left-orthonormal
        before = _split_chain(lf.reshape(1, -1, lf.shape[1]), in_f[:c], out_f[:c])
        # right cores from the left split of the mirrored frame: (Q, d2) read right to left
        mirrored = _split_chain(_mirror(rf, in_f[c + 1:], out_f[c + 1:]), in_f[c + 1:][::-1], out_f[c + 1:][::-1])
        after = [core.permute(3, 1, 2, 0) for core in mirrored[::-1]]
        auxiliary.append(before + after)
        # (P, d) x (d, M, d2) x (d2, Q) -> (P, M, Q)
        approx = torch.einsum("pa,amb,bq->pmq", lf, central, rf)
        errors.append(float((t - approx).norm() / t.norm().clamp_min(1e-30)))
    i_c, j_c = in_f[c], out_f[c]
    # (d, i_c * j_c, d2) -> (d, i_c, j_c, d2)
    return SharedFit(central.reshape(central.shape[0], i_c, j_c, central.shape[2]), auxiliary, errors)


def _mirror(right: torch.Tensor, in_f: Sequence[int], out_f: Sequence[int]) -> torch.Tensor:
    """(d2, Q) right frame -> (1, pair_n, ..., pair_{c+1}, d2): the same chain read backwards."""
    pairs = [i * j for i, j in zip(in_f, out_f, strict=True)]
    # (d2, pair_{c+1}, ..., pair_n) -> reversed pair order, bond last
    t = right.reshape(right.shape[0], *pairs)
    t = t.permute(*range(len(pairs), 0, -1), 0)
    return t.reshape(1, *[p for p in pairs[::-1]], right.shape[0])
