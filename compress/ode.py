"""A parameter-shared encoder read as a neural ODE, cheaper at inference with fewer, larger steps.

A pre-LN layer h <- h + F(h) is one forward-Euler step of size 1 of dh/dt = F(h). With one shared
block applied ``depth`` = T times, the plain shared stack is Euler with n = T steps on [0, T]; at
inference take n < T steps of size s = T / n, h <- h + s F(h): compute falls by T / n. A partially
shared model has k blocks; block i is the field on [i T/k, (i+1) T/k), and step j of n evaluates the
block whose segment holds the step's midpoint (for k | n: n / k steps per segment). Higher-order and
adaptive solvers are in :mod:`.ode_solvers`.

The field of one block (attention A and feed-forward M with their own pre-norms N_a, N_f):

    u = A(N_a(h)),   F(h) = u + M(N_f(h + u))

so at s = 1 a step is exactly a standard pre-LN layer (h + u, then + M(N_f(h + u))).

From a post-LN BERT layer (y = LN_a(x + A(x)); out = LN_f(y + M(y))) F is built as follows: A and M
take the layer's weights (averaged over the layers a block replaces, or one chosen layer); the
norm that fed the attention in the post-LN net (the previous layer's LN_f, or the embeddings' norm for
layer 0) becomes N_a; the layer's own LN_a becomes N_f; the last layer's LN_f is the final norm before
the head. The residual stream is no longer re-normalised, so the result is an approximation that is
then fine-tuned (with distillation from the original model).

The post-norm difference field (``form='postnorm'``, off by default) reads the post-LN layer itself
as the step of size 1 instead: with Phi(h) = LN_f(y + M(y)), y = LN_a(h + A(h)) (the layer unchanged),

    F(h) = Phi(h) - h,    h <- h + s F(h) = (1 - s) h + s Phi(h)

so at s = 1 a step is exactly the pretrained layer and the unshared stack (k = T) reproduces the source
encoder (to float rounding): the conversion costs nothing, and only sharing and larger steps have to be
learned. A step of size s > 1 extrapolates along the layer's update; the state is re-normalised by every
step of size 1 but not by larger ones, so there is no final norm (the head reads h(T) as it reads the
source's last layer). It is an Euler step of dh/dt = Phi(h) - h, not the pre-LN residual form.

Learned step gains (``step_gains``, off by default): every trained step count n gets a gain vector
per step, h <- h + g_{n,j} ⊙ (step(h) - h) (for Euler h + s g_{n,j} ⊙ F(h)), initialised to ones. The
shared field F stays one field; the gains let each few-step solve rescale its larger steps per hidden
unit, (sum of the trained counts) x hidden parameters in all. Step counts that were not trained, and the
adaptive solver, use g = 1.

Step-conditioned norms (``step_norms``, off by default): the input-side counterpart, as time
conditioning in diffusion models' shared networks. Every step j of every trained count n modulates the
block's two pre-norms, N(x) -> a_{n,j} ⊙ N(x) + c_{n,j} (a = 1, c = 0 at the start: the plain solve), so
each few-step solve can re-scale what the shared field sees at its own step size; 4 x (sum of the trained
counts) x hidden parameters. Other counts and the adaptive solver use a = 1, c = 0.

Time-dependent low-rank corrections (``time_rank`` r > 0, off by default): the field becomes F(h, t).
Each unit of time tau = 0..T-1 gets, for each of a block's six linears W (out x in), a rank-r correction
B_tau A_tau (A: r x in, B: out x r, B = 0 at the start: the plain shared field), used by every evaluation
whose step's midpoint lies in [tau, tau + 1): the n-step solve at step j uses tau = floor((j + 1/2) T / n)
(n = T: every unit once; n = T/2: units 1, 3, 5 for T = 6). The blocks stay shared; the corrections add
T r (in + out) parameters per linear, the per-layer auxiliary part of a shared-centre model, so the full-depth
solve gets back some of the capacity that sharing took. The adaptive solver integrates unit by unit.

Step-robust training: in training mode the encoder draws the step count of each forward from
``train_steps`` with a generator seeded by (seed, counter), where seed and counter are persistent
buffers: every rank draws the same counts (ZeRO-3 needs the same module calls on every rank) and a
resumed run replays them, independent of the global RNG (which the trainer seeds with seed + rank).

Trajectory distillation (:func:`trajectory_distillation`): the dense model's hidden state after layer
t is a point of the trajectory at time t. An n-step solve passes times t_j = j T / n; wherever t_j is
an integer, the student's state there is matched to the teacher's layer t_j, both layer-normalised
without affine (the pre-LN stream is not normalised, the post-LN teacher's is):

    L_traj = mean_{j: t_j integer, t_j > 0}  sum_m ||LN(h(t_j)) - LN(h^teacher_{t_j})||^2 / sum_m ||LN(h^teacher_{t_j})||^2

(sums over real tokens m), and loss = (1 - alpha) CE + alpha T^2 KL(teacher || student) + gamma L_traj.
With steps drawn per batch, the few-step solves are trained to pass through the dense model's states.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from plmkit.compress.ode_solvers import EVALS_PER_STEP, FIXED_SOLVERS, STEPPERS, check_solver, solve_adaptive
from plmkit.errors import ConfigError
from plmkit.losses.distillation import DistillationLoss

INITS = ("average", "layer", "mpo", "random")
FORMS = ("prenorm", "postnorm")
Delta = Callable[[str, torch.Tensor], torch.Tensor]
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


def parse_steps(spec: str | None, depth: int, weighted: bool = False) -> tuple[int, ...]:
    """'auto' -> T, ceil(T/2), ceil(T/4); 'full' -> T; else a comma list of counts (largest first).

    The distinct counts, or with ``weighted`` every listed count with its repeats ('6,3,3,2' ->
    (6, 3, 3, 2): the training draw takes 3 half the time).
    """
    if spec in (None, "", "auto"):
        counts = [math.ceil(depth / f) for f in (1, 2, 4)]
    elif spec == "full":
        counts = [depth]
    else:
        try:
            counts = [int(part) for part in str(spec).split(",") if part.strip()]
        except ValueError as error:
            raise ConfigError(f"step counts must be 'auto', 'full' or comma-separated integers, got {spec!r}") from error
    if not counts or any(n < 1 for n in counts):
        raise ConfigError(f"step counts must be >= 1; got {spec!r}")
    return tuple(sorted(counts if weighted else set(counts), reverse=True))


def block_of_step(step: int, steps: int, num_blocks: int) -> int:
    """The block that step ``step`` of ``steps`` evaluates: the one whose segment holds the step's midpoint."""
    return (2 * step + 1) * num_blocks // (2 * steps)  # floor(k (j + 1/2) / n), in integers


def parse_layers(spec: str | int) -> tuple[int, ...]:
    """'2' -> (2,); '0,2,4' -> (0, 2, 4)."""
    try:
        return tuple(int(part) for part in str(spec).split(",") if part.strip())
    except ValueError as error:
        raise ConfigError(f"--init-layer takes a layer index or a comma list (one per block), got {spec!r}") from error


@dataclass
class ODEConfig:
    """The shared-layer model and how it is solved at training and inference time."""

    depth: int | None = None
    """Integration length T: how many times the plain shared stack applies its block (default: the source's layers)."""
    num_blocks: int = 1
    """Distinct blocks (1: fully shared; k: partially shared, block i covers the i-th of k equal time segments)."""
    init: str = "average"
    """Block weights: 'average' of the layers it replaces, one 'layer', 'mpo' (shared-centre MPO fit) or 'random'."""
    init_layer: str = "0"
    """With --init layer: the source layer copied into every block ('2'), or one per block ('0,2,4')."""
    mpo_bond: int | None = None
    """With --init mpo: cap on the central tensor's two bonds (default: full, so only sharing loses information)."""
    mpo_cores: int = 5
    """With --init mpo: cores per matrix (the middle one is the shared centre)."""
    steps: int | None = None
    """Inference steps (step size T / steps; default: T)."""
    solver: str = "euler"
    """Inference solver: 'euler', 'heun', 'rk4' (fixed steps) or 'adaptive' (Bogacki-Shampine 3(2))."""
    rtol: float = 1e-3
    """Relative tolerance of the adaptive solver."""
    atol: float = 1e-4
    """Absolute tolerance of the adaptive solver."""
    train_steps: str = "auto"
    """Step counts drawn uniformly per training batch: 'auto' (T, T/2, T/4), 'full' (T only) or e.g. '6,3,2';
    a count listed twice is drawn twice as often ('6,3,3,2')."""
    train_solver: str = "euler"
    """Fixed-step solver used in training ('euler', 'heun' or 'rk4')."""
    step_gains: bool = False
    """Learn a gain vector g_{n,j} per step j of every trained step count n: h <- h + g_{n,j} * (step(h) - h),
    g = 1 at the start (the plain solve); other counts and the adaptive solver keep g = 1."""
    step_norms: bool = False
    """Learn a scale and shift per step j of every trained step count n for the block's two pre-norms:
    N(x) -> a_{n,j} * N(x) + c_{n,j}, a = 1 and c = 0 at the start; other counts and the adaptive solver keep them."""
    time_rank: int = 0
    """Rank r of a correction B_tau A_tau to each of a block's six linears per unit of time tau (0: none); a step
    uses the unit holding its midpoint, so the field is F(h, t) (see the module docstring)."""
    form: str = "prenorm"
    """'prenorm': F(h) = u + M(N_f(h + u)), u = A(N_a(h)) (a pre-LN layer is a step of size 1);
    'postnorm': F(h) = Phi(h) - h with Phi the post-LN layer as it is (the source's layers are exact steps)."""
    extra: dict = field(default_factory=dict)
    """Sizes recorded when the model is built (hidden size, heads, ...); not a flag."""

    def __post_init__(self) -> None:
        if self.depth is not None and self.depth < 1:
            raise ConfigError(f"depth must be >= 1, got {self.depth}")
        if self.num_blocks < 1:
            raise ConfigError(f"num_blocks must be >= 1, got {self.num_blocks}")
        self.init_layer = str(self.init_layer)  # configs saved before lists were allowed hold an int
        chosen = parse_layers(self.init_layer)
        if len(chosen) not in (1, self.num_blocks) or min(chosen, default=-1) < 0:
            raise ConfigError(f"--init-layer {self.init_layer!r} must name one layer index >= 0 or one per block "
                              f"({self.num_blocks} blocks)")
        if self.depth is not None and self.depth % self.num_blocks:
            raise ConfigError(f"depth {self.depth} must be a multiple of num_blocks {self.num_blocks}")
        if self.form not in FORMS:
            raise ConfigError(f"form must be one of {FORMS}, got {self.form!r}")
        if self.form == "postnorm" and self.step_norms:
            raise ConfigError("step_norms modulates the pre-norms of the 'prenorm' field; the 'postnorm' field has "
                              "none (use step_gains, or form='prenorm')")
        if self.time_rank < 0:
            raise ConfigError(f"time_rank must be >= 0 (0: no time-dependent corrections), got {self.time_rank}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got {self.init!r}")
        check_solver(self.solver)
        if self.train_solver not in FIXED_SOLVERS:
            raise ConfigError(f"train_solver must be one of {FIXED_SOLVERS} (fixed steps keep ranks in step), "
                              f"got {self.train_solver!r}")
        if self.mpo_bond is not None and self.mpo_bond < 1:
            raise ConfigError(f"mpo_bond must be >= 1, got {self.mpo_bond}")
        if self.mpo_cores < 3:
            raise ConfigError(f"mpo_cores must be >= 3 (auxiliary cores on both sides of the centre), "
                              f"got {self.mpo_cores}")
        if self.rtol <= 0 or self.atol <= 0:
            raise ConfigError(f"rtol and atol must be > 0, got {self.rtol}, {self.atol}")
        if self.depth is not None:
            self.check_steps(self.steps or self.depth)
            parse_steps(self.train_steps, self.depth)

    def check_steps(self, steps: int) -> int:
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        return steps

    def block_layers(self) -> tuple[int, ...]:
        """The source layer of each block under --init layer."""
        chosen = parse_layers(self.init_layer)
        return chosen * self.num_blocks if len(chosen) == 1 else chosen


class SharedBlock(nn.Module):
    """One pre-LN transformer block read as the field F(h) (see the module docstring)."""

    def __init__(self, hidden: int, heads: int, intermediate: int, activation: str = "gelu",
                 eps: float = 1e-12, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden % heads:
            raise ConfigError(f"hidden size {hidden} is not divisible by {heads} heads")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.heads, self.activation = heads, activation
        self.attn_norm, self.ffn_norm = nn.LayerNorm(hidden, eps=eps), nn.LayerNorm(hidden, eps=eps)
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)
        self.ffn_in, self.ffn_out = nn.Linear(hidden, intermediate), nn.Linear(intermediate, hidden)
        self.dropout = nn.Dropout(dropout)

    def linear(self, name: str, x: torch.Tensor, delta: Delta | None = None) -> torch.Tensor:
        """The block's linear ``name`` on x, plus the time correction ``delta(name, x)`` when given."""
        out = getattr(self, name)(x)
        return out if delta is None else out + delta(name, x)

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None, delta: Delta | None = None) -> torch.Tensor:
        batch, seq, hidden = x.shape
        # (batch, seq, hidden) -> (batch, heads, seq, head_dim)
        q, k, v = (self.linear(name, x, delta).view(batch, seq, self.heads, hidden // self.heads).transpose(1, 2)
                   for name in ("query", "key", "value"))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 dropout_p=self.dropout.p if self.training else 0.0)
        # (batch, heads, seq, head_dim) -> (batch, seq, hidden)
        return self.linear("out", context.transpose(1, 2).reshape(batch, seq, hidden), delta)

    def feed_forward(self, x: torch.Tensor, delta: Delta | None = None) -> torch.Tensor:
        return self.linear("ffn_out", ACTIVATIONS[self.activation](self.linear("ffn_in", x, delta)), delta)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None,
                modulation: torch.Tensor | None = None, delta: Delta | None = None) -> torch.Tensor:
        """F(h), not h + F(h); ``modulation`` (4, hidden): scale and shift after N_a, then after N_f;
        ``delta``: the time correction of each linear (:class:`TimeCorrections`)."""
        attn_in = self.attn_norm(h)
        if modulation is not None:
            attn_in = modulation[0] * attn_in + modulation[1]
        u = self.dropout(self.attention(attn_in, mask, delta))
        ffn_in = self.ffn_norm(h + u)
        if modulation is not None:
            ffn_in = modulation[2] * ffn_in + modulation[3]
        return u + self.dropout(self.feed_forward(ffn_in, delta))


class PostNormBlock(SharedBlock):
    """A post-LN transformer layer Phi read as the field F(h) = Phi(h) - h (``form='postnorm'``).

    The two norms are the layer's own: ``attn_norm`` is LN_a after attention, ``ffn_norm`` LN_f after
    the feed-forward, y = LN_a(h + A(h)), Phi(h) = LN_f(y + M(y)).
    """

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None,
                modulation: torch.Tensor | None = None, delta: Delta | None = None) -> torch.Tensor:
        """F(h) = Phi(h) - h (``modulation`` is refused by the config: this field has no pre-norms)."""
        y = self.attn_norm(h + self.dropout(self.attention(h, mask, delta)))
        return self.ffn_norm(y + self.dropout(self.feed_forward(y, delta))) - h


class TimeCorrections(nn.Module):
    """Rank-r corrections B_tau A_tau of a block's six linears, one per unit of time tau (``time_rank``).

    ``at(tau)`` is the ``delta(name, x) -> x A_tau^T B_tau^T`` that :meth:`SharedBlock.linear` adds. A starts
    as a linear layer's weights do (Kaiming-uniform), B at zero, so the field starts as the shared one.
    """

    def __init__(self, depth: int, rank: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        sizes = {name: (hidden, hidden) for name in ("query", "key", "value", "out")}
        sizes.update(ffn_in=(hidden, intermediate), ffn_out=(intermediate, hidden))  # (in, out)
        self.down = nn.ParameterDict()  # A: (T, r, in)
        self.up = nn.ParameterDict()    # B: (T, out, r)
        for name, (fan_in, fan_out) in sizes.items():
            bound = 1.0 / math.sqrt(fan_in)
            self.down[name] = nn.Parameter(torch.empty(depth, rank, fan_in).uniform_(-bound, bound))
            self.up[name] = nn.Parameter(torch.zeros(depth, fan_out, rank))

    def at(self, tau: int) -> Delta:
        def delta(name: str, x: torch.Tensor) -> torch.Tensor:
            # (..., in) -> (..., r) -> (..., out)
            return (x @ self.down[name][tau].T) @ self.up[name][tau].T
        return delta


BLOCKS = {"prenorm": SharedBlock, "postnorm": PostNormBlock}


class StepSchedule(nn.Module):
    """Draws a step count per training forward from (seed, counter); both are persistent buffers."""

    def __init__(self, choices: tuple[int, ...], seed: int = 0) -> None:
        super().__init__()
        self.choices = tuple(choices)
        self.register_buffer("seed", torch.tensor([int(seed)], dtype=torch.long))  # 1-d: broadcast-safe
        self.register_buffer("counter", torch.zeros(1, dtype=torch.long))

    def reseed(self, seed: int) -> None:
        self.seed.fill_(int(seed))
        self.counter.zero_()

    def peek(self, counter: int) -> int:
        """The count drawn at position ``counter`` (pure function of seed and counter)."""
        generator = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + counter)
        return self.choices[int(torch.randint(len(self.choices), (), generator=generator))]

    def draw(self) -> int:
        steps = self.peek(int(self.counter))
        self.counter.add_(1)
        return steps


class ODEEncoder(nn.Module):
    """Embeddings, k shared blocks integrated over [0, T], a final norm: ``forward -> (batch, seq, hidden)``."""

    def __init__(self, embeddings: nn.Module, config: ODEConfig, hidden: int, heads: int, intermediate: int,
                 activation: str = "gelu", eps: float = 1e-12, dropout: float = 0.0,
                 token_type_ids: bool = True) -> None:
        super().__init__()
        if config.depth is None:
            raise ConfigError("ODEConfig.depth must be set to build an encoder")
        self.config = config
        self.embeddings, self.takes_token_types = embeddings, token_type_ids
        block = BLOCKS[config.form]
        self.blocks = nn.ModuleList(block(hidden, heads, intermediate, activation, eps, dropout)
                                    for _ in range(config.num_blocks))
        # the post-norm field's states are the source's layer outputs at integer times: no norm of its own
        self.final_norm = nn.LayerNorm(hidden, eps=eps) if config.form == "prenorm" else nn.Identity()
        self.schedule = StepSchedule(parse_steps(config.train_steps, config.depth, weighted=True))
        self.steps, self.solver, self.last_evals = config.steps or config.depth, config.solver, 0
        # g_{n,j}: (n, hidden) per trained count n, ones = the plain solve
        self.step_gains = self._per_count(torch.ones(hidden)) if config.step_gains else None
        # (a_attn, c_attn, a_ffn, c_ffn) per step: (n, 4, hidden) per trained count n, identity at the start
        self.step_norms = self._per_count(torch.tensor([1.0, 0.0, 1.0, 0.0])[:, None].expand(4, hidden)) \
            if config.step_norms else None
        self.time_corrections = TimeCorrections(config.depth, config.time_rank, hidden, intermediate) \
            if config.time_rank else None

    def _per_count(self, start: torch.Tensor) -> nn.ParameterDict:
        """One parameter (n, *start.shape) per trained step count n, every step at ``start``; keys are the counts as text."""
        return nn.ParameterDict({str(n): nn.Parameter(start.repeat(n, *(1,) * start.dim()))
                                 for n in sorted(set(self.schedule.choices), reverse=True)})

    @staticmethod
    def _for_count(table: nn.ParameterDict | None, steps: int) -> torch.Tensor | None:
        """This step count's per-step parameters, or None (off, or a count that was not trained)."""
        return table[str(steps)] if table is not None and str(steps) in table else None

    def set_steps(self, steps: int | None = None, solver: str | None = None) -> None:
        """Inference setting: ``steps`` (any count >= 1) with ``solver``."""
        self.steps = self.config.check_steps(steps or self.config.depth)
        self.solver = check_solver(solver or self.solver)

    def integrate(self, h: torch.Tensor, mask: torch.Tensor | None, steps: int, solver: str,
                  states: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """h(T) from h(0) = ``h``: ``steps`` fixed steps of size T / steps, or adaptively segment by segment.

        ``states``, when given, receives h(t) at every integer time t > 0 that a fixed step ends on.
        """
        corrections = self.time_corrections

        def field(block: nn.Module, modulation: torch.Tensor | None = None, tau: int | None = None):
            delta = None if corrections is None or tau is None else corrections.at(tau)
            return lambda x: block(x, mask, modulation, delta)

        if solver == "adaptive":
            depth, blocks, self.last_evals = self.config.depth, len(self.blocks), 0
            # segment by segment; with time corrections unit by unit, as the field changes at every unit
            pieces = [(block_of_step(tau, depth, blocks), tau, 1.0) for tau in range(depth)] if corrections \
                else [(i, None, depth / blocks) for i in range(blocks)]
            for i, tau, length in pieces:
                h, evals = solve_adaptive(field(self.blocks[i], None, tau), h, length, self.config.rtol,
                                          self.config.atol)
                self.last_evals += evals
            return h
        size, step = self.config.depth / steps, STEPPERS[solver]
        gains, norms = self._for_count(self.step_gains, steps), self._for_count(self.step_norms, steps)
        # gains: (steps, hidden); norms: (steps, 4, hidden)
        for j in range(steps):
            block = self.blocks[block_of_step(j, steps, len(self.blocks))]
            modulation = None if norms is None else norms[j]
            tau = block_of_step(j, steps, self.config.depth)  # the unit of time holding the step's midpoint
            stepped = step(field(block, modulation, tau), h, size)
            h = stepped if gains is None else h + gains[j] * (stepped - h)
            if states is not None and (j + 1) * self.config.depth % steps == 0:
                states[(j + 1) * self.config.depth // steps] = h
        self.last_evals = steps * EVALS_PER_STEP[solver]
        return h

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, return_states: bool = False):
        """(batch, seq, hidden); with ``return_states`` also {t: h(t)} at the integer times steps end on."""
        kwargs = {"input_ids": input_ids}
        if self.takes_token_types and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        h = self.embeddings(**kwargs)
        # (batch, seq) -> (batch, 1, 1, seq): True where a key may be attended to
        mask = attention_mask.bool()[:, None, None, :] if attention_mask is not None else None
        if self.training:
            steps, solver = self.schedule.draw(), self.config.train_solver
        else:
            steps, solver = self.steps, self.solver
        states: dict[int, torch.Tensor] | None = {} if return_states else None
        out = self.final_norm(self.integrate(h, mask, steps, solver, states))
        return (out, states) if return_states else out


class ODEClassifier(nn.Module):
    """An :class:`ODEEncoder` plus a task head: ``forward(**batch) -> logits``."""

    def __init__(self, encoder: ODEEncoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def set_steps(self, steps: int | None = None, solver: str | None = None) -> ODEClassifier:
        self.encoder.set_steps(steps, solver)
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask, token_type_ids), attention_mask)

    def distillation_states(self, batch: dict[str, torch.Tensor], teacher_layers: int):
        """Logits and {t: h(t)} at the integer times the current solve's steps end on (one pass).

        The state at time t is matched to the dense teacher's layer t, so the depth T must equal
        ``teacher_layers`` (the core ``DistillationLoss(layer_map="student")`` calls this).
        """
        depth = self.encoder.config.depth
        if depth != teacher_layers:
            raise ConfigError(f"trajectory distillation matches time t to teacher layer t: the ODE model's depth "
                              f"{depth} must equal the teacher's {teacher_layers} layers")
        out, states = self.encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                   return_states=True)
        return self.head(out, batch["attention_mask"]), states


def trajectory_distillation(teacher: nn.Module, alpha: float = 0.5, temperature: float = 2.0,
                            weight: float = 1.0) -> DistillationLoss:
    """``loss(model, batch) -> {"loss", "task", "soft", "trajectory"}``: logits and trajectory from a dense teacher.

    See the module docstring for the equation: the core :class:`~plmkit.losses.DistillationLoss` with the
    ODE model placing its states on the teacher's layers (:meth:`ODEClassifier.distillation_states`),
    both sides layer-normalised, task weight 1 - alpha, soft weight alpha, hidden weight gamma = ``weight``.
    The teacher is an encoder + head classifier (:func:`plmkit.models.build_classifier`) with as many
    layers as the ODE model's depth T; it is frozen, put in eval mode and run under ``torch.no_grad``.
    """
    return DistillationLoss.mixed(teacher, alpha, temperature=temperature, hidden_weight=weight,
                                  layer_map="student", hidden_norm=True, hidden_term="trajectory")
