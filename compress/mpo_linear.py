"""``MPOLinear``: an ``nn.Linear`` whose weight is held as MPO cores.

y = x W + b with W (in x out) = contract(T_1 ... T_n), plus an optional low-rank adapter x A B
(B starts at zero). Two ways to compute it, same result up to float rounding:

* **dense**: rebuild W from the cores, then one matrix multiply. Rebuilding costs about
  2 I J (d_{n-2} + d_{n-1}) flops and runs once per forward (once in all, while nothing can change
  the cores: under ``torch.no_grad`` the rebuilt W is cached until a core is modified in place).
* **factored**: contract the input with one core after another, never forming W.
  Per token it costs sum_k 2 J_<k I_>k d_{k-1} i_k j_k d_k flops, in many small, strided matrix
  multiplies that run several times less efficiently than one large one.

``forward_mode="auto"`` picks, for each number of tokens N, the path with the smaller estimated
time, counting a flop of the large matrix multiply as 1 and a flop of the chains of small ones
(rebuild, factored) as a measured penalty (``scripts/bench_mpo.py``, docs/mpo.md):

    factored  iff  FACTORED_PENALTY * F(N) < 2 N I J + REBUILD_PENALTY * R

with R = 0 when the cached weight is valid. In practice: dense for training-size batches at the
ranks that keep accuracy and always under no_grad with a cached weight; factored for a few tokens
in training, or with very small bonds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from plmkit.compress.mpo import MPO, check_factors, contract_cores, mpo_decompose
from plmkit.errors import ConfigError

FORWARD_MODES = ("auto", "dense", "factored")
TRAINABLE_PARTS = ("all", "auxiliary", "central", "none")
FACTORED_PENALTY = 3.0
"""How many times slower a flop of the factored path runs than one of a large GEMM (measured on CPU)."""
REBUILD_PENALTY = 3.0
"""The same for the flops that rebuild W from the cores."""


class MPOLinear(nn.Module):
    """Drop-in for ``nn.Linear(in_features, out_features)``; ``cores[centre]`` is the central tensor."""

    dense_layout = "linear"
    """What merging gives back: 'linear' (``nn.Linear``) or 'conv1d' (GPT-2's ``Conv1D``, weight (in, out))."""

    def __init__(self, in_factors: Sequence[int], out_factors: Sequence[int], ranks: Sequence[int],
                 bias: bool = True, adapter_rank: int = 0, forward_mode: str = "auto",
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        in_f, out_f = tuple(int(f) for f in in_factors), tuple(int(f) for f in out_factors)
        check_factors((math.prod(in_f), math.prod(out_f)), in_f, out_f)
        if len(ranks) != len(in_f) + 1 or ranks[0] != 1 or ranks[-1] != 1:
            raise ConfigError(f"ranks must have {len(in_f) + 1} entries starting and ending with 1, got {list(ranks)}")
        if forward_mode not in FORWARD_MODES:
            raise ConfigError(f"forward_mode must be one of {FORWARD_MODES}, got {forward_mode!r}")
        if adapter_rank < 0:
            raise ConfigError(f"adapter_rank must be >= 0, got {adapter_rank}")
        self.in_factors, self.out_factors = in_f, out_f
        self.in_features, self.out_features = math.prod(in_f), math.prod(out_f)
        self.centre = len(in_f) // 2
        self.forward_mode = forward_mode
        kw = {"device": device, "dtype": dtype}
        self.cores = nn.ParameterList(
            nn.Parameter(torch.zeros(ranks[k], i, j, ranks[k + 1], **kw)) for k, (i, j) in enumerate(zip(in_f, out_f, strict=True))
        )
        self.bias = nn.Parameter(torch.zeros(self.out_features, **kw)) if bias else None
        self.adapter_rank = adapter_rank
        if adapter_rank:
            self.adapter_down = nn.Parameter(torch.empty(self.in_features, adapter_rank, **kw))
            nn.init.normal_(self.adapter_down, std=1.0 / math.sqrt(self.in_features))
            self.adapter_up = nn.Parameter(torch.zeros(adapter_rank, self.out_features, **kw))
        self._cache: tuple[tuple, torch.Tensor] | None = None
        self._paths: dict[tuple[int, bool], str] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mpo(cls, mpo: MPO, bias: torch.Tensor | None = None, **kwargs) -> MPOLinear:
        reference = bias if bias is not None else mpo.cores[0]
        dtype = kwargs.pop("dtype", None) or (bias.dtype if bias is not None else torch.get_default_dtype())
        layer = cls(mpo.in_factors, mpo.out_factors, mpo.ranks, bias=bias is not None, dtype=dtype,
                    device=reference.device, **kwargs)
        with torch.no_grad():
            for param, core in zip(layer.cores, mpo.cores, strict=True):
                param.copy_(core)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, in_factors: Sequence[int] | None = None,
                    out_factors: Sequence[int] | None = None, *, ranks=None, max_error: float | None = None,
                    param_budget: int | None = None, num_cores: int = 5, **kwargs) -> MPOLinear:
        """Decompose ``linear.weight`` (stored out x in, so W = weight^T) into a canonical MPO."""
        mpo = mpo_decompose(linear.weight.detach().T, in_factors, out_factors, ranks=ranks, max_error=max_error,
                            param_budget=param_budget, num_cores=num_cores)
        return cls.from_mpo(mpo, linear.bias.detach() if linear.bias is not None else None,
                            dtype=linear.weight.dtype, **kwargs)

    # ------------------------------------------------------------------ parts
    @property
    def ranks(self) -> list[int]:
        return [1] + [int(c.shape[-1]) for c in self.cores[:-1]] + [1]

    @property
    def central(self) -> nn.Parameter:
        return self.cores[self.centre]

    def auxiliary(self) -> list[nn.Parameter]:
        return [c for k, c in enumerate(self.cores) if k != self.centre]

    def share_central(self, parameter: nn.Parameter) -> None:
        """Use ``parameter`` (the same object in several layers) as this layer's central tensor."""
        if parameter.shape != self.central.shape:
            raise ConfigError(f"shared central tensor has shape {tuple(parameter.shape)}, this layer needs "
                             f"{tuple(self.central.shape)}")
        self.cores[self.centre] = parameter
        self._cache = None

    def set_trainable(self, part: str = "all") -> None:
        """'all'; 'auxiliary' (auxiliary cores + adapter, MPOP light fine-tuning); 'central'; 'none'."""
        if part not in TRAINABLE_PARTS:
            raise ConfigError(f"trainable part must be one of {TRAINABLE_PARTS}, got {part!r}")
        for k, core in enumerate(self.cores):
            wanted = {"all": True, "none": False, "auxiliary": k != self.centre, "central": k == self.centre}
            core.requires_grad_(wanted[part])
        if self.bias is not None:
            self.bias.requires_grad_(part == "all")
        for name in ("adapter_down", "adapter_up"):
            if hasattr(self, name):
                getattr(self, name).requires_grad_(part in ("all", "auxiliary"))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ weights
    def weight_matrix(self) -> torch.Tensor:
        """W as (in, out), adapter excluded; cached under no_grad until a core changes."""
        if torch.is_grad_enabled() and any(c.requires_grad for c in self.cores):
            return contract_cores(list(self.cores))
        key = tuple((c.data_ptr(), c._version, c.dtype, c.device) for c in self.cores)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, contract_cores(list(self.cores)))
        return self._cache[1]

    def merged_weight(self) -> torch.Tensor:
        """The ``nn.Linear`` weight (out, in) of this layer, adapter folded in."""
        with torch.no_grad():
            weight = contract_cores(list(self.cores))
            if self.adapter_rank:
                # (in, r) @ (r, out) -> (in, out)
                weight = weight + self.adapter_down @ self.adapter_up
            return weight.T.contiguous()

    def to_linear(self) -> nn.Linear:
        reference = self.cores[0]
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.merged_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    # ------------------------------------------------------------------ cost model
    def flops(self, tokens: int, cached: bool = False) -> dict[str, float]:
        """Estimated forward flops of each path for ``tokens`` rows of input."""
        ranks, i_f, o_f = self.ranks, self.in_factors, self.out_factors
        rebuild, factored = 0.0, 0.0
        for k in range(len(i_f)):
            rows, cols = math.prod(i_f[:k]), math.prod(o_f[:k])
            if k:
                rebuild += 2.0 * rows * cols * ranks[k] * i_f[k] * o_f[k] * ranks[k + 1]
            factored += 2.0 * tokens * cols * math.prod(i_f[k + 1:]) * ranks[k] * i_f[k] * o_f[k] * ranks[k + 1]
        gemm = 2.0 * tokens * self.in_features * self.out_features
        return {"gemm": gemm, "rebuild": 0.0 if cached else rebuild, "factored": factored}

    def path_for(self, tokens: int) -> str:
        """Which forward path runs for ``tokens`` input rows (see the module docstring)."""
        if self.forward_mode != "auto":
            return self.forward_mode
        cached = not (torch.is_grad_enabled() and any(c.requires_grad for c in self.cores))
        key = (tokens, cached)
        if key not in self._paths:
            cost = self.flops(tokens, cached)
            dense = cost["gemm"] + REBUILD_PENALTY * cost["rebuild"]
            self._paths[key] = "factored" if FACTORED_PENALTY * cost["factored"] < dense else "dense"
        return self._paths[key]

    # ------------------------------------------------------------------ forward
    def _factored(self, x: torch.Tensor) -> torch.Tensor:
        """Contract (N, I) with the cores left to right; returns (N, J)."""
        n = x.shape[0]
        # (N, I) -> (N * J_done, d_prev, I_rest) with J_done = d_prev = 1
        t = x.reshape(n, 1, self.in_features)
        for core in self.cores:
            d, i, j, e = core.shape
            batch, rest = t.shape[0], t.shape[2] // i
            # (B, d, i * R) -> (B, R, d * i): bring the contracted indices last
            t = t.reshape(batch, d * i, rest).transpose(1, 2).reshape(batch * rest, d * i)
            # (B * R, d * i) @ (d * i, j * e) -> (B * R, j * e)
            t = t @ core.reshape(d * i, j * e)
            # (B * R, j * e) -> (B, j, e, R) -> (B * j, e, R): j joins the finished output indices
            t = t.reshape(batch, rest, j, e).permute(0, 2, 3, 1).reshape(batch * j, e, rest)
        # (N * J, 1, 1) -> (N, J)
        out = t.reshape(n, self.out_features)
        return out if self.bias is None else out + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ConfigError(f"MPOLinear expects {self.in_features} input features, got {x.shape[-1]}")
        lead = x.shape[:-1]
        # (..., I) -> (N, I)
        flat = x.reshape(-1, self.in_features)
        if self.path_for(flat.shape[0]) == "factored":
            out = self._factored(flat)
        else:
            out = F.linear(flat, self.weight_matrix().T, self.bias)
        if self.adapter_rank:
            # (N, I) @ (I, r) @ (r, J) -> (N, J)
            out = out + (flat @ self.adapter_down) @ self.adapter_up
        # (N, J) -> (..., J)
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in={self.in_features} {self.in_factors}, out={self.out_features} {self.out_factors}, "
                f"ranks={self.ranks}, bias={self.bias is not None}, adapter_rank={self.adapter_rank}, "
                f"forward={self.forward_mode}")
