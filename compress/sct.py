"""SCT: self-supervised cross-view training of sentence encoders, and its distillation form.

Views. Each training sentence s gets two views x1, x2 made offline and seeded (``make_views``): the
sentence itself (``none``: the views then differ only by dropout noise), word deletion (each word kept
with probability 1 - p, at least one), a local reordering (adjacent word swaps), or both. The online
branch always runs with dropout, so even identical views are two different inputs to it.

Branches. Online: z_i = normalize(h(pool(f(x_i)))) with f the encoder and h the projector (``projector``):

- ``residual`` (default): a linear map to the reference width when it differs from the encoder's, then
  ``projector_depth`` blocks x + W2 ReLU(W1 x + b1) + b2 (width d -> e*d -> d, e = ``projector_expansion``)
  with W2, b2 zero at initialisation, so h starts as the identity (or as that map);
- ``mlp``: the paper's stack of the same blocks without the skip, randomly initialised (the last block
  ends in the reference width);
- ``linear``: only the map to the reference width (none when the widths agree), as the released
  distillation code does.

At a few dozen steps a random ``mlp`` projector drives the encoder through a random map and the student
scores below its untrained self; ``residual`` starts from the encoder's own geometry (docs/sct.md).
The exported model is the encoder alone: the projector only serves training.

Reference: r_i = normalize(pool(f(x_i))) run in eval mode under ``torch.no_grad`` (self-supervised),
or the teacher's cached embedding of x_i (distillation), so no gradient ever reaches the reference
branch or the teacher.

Queues. D1 and D2 are FIFO rings of the last K reference embeddings of views 1 and 2, kept as
persistent buffers of the model: a checkpoint holds them and ``--resume`` restores them exactly. Each
step first pushes the batch's references (gathered from every rank with ``plmkit.distributed.all_gather``,
so all ranks hold the same queues), then scores against the filled part of the queue; the current batch
is thus always among the candidates, as in SEED-style queue distillation, and the loss is defined from
the first step. The loss itself is :func:`plmkit.losses.cross_view.cross_view_kl`.

Defaults follow the paper's released settings for models of MiniLM's size (BERT-Small, 29 M):
self-supervised t_ref 0.02, t 0.03, K 65,536, lr 3e-4; distillation t_ref 0.04, t 0.05, lr 1e-4; except
the projector (``residual``, not the paper's random ``mlp``), and K is capped at the sentences of one
epoch (:func:`plmkit.compress.sct_train.fit_queue`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from plmkit import distributed
from plmkit.errors import ConfigError
from plmkit.models import pool

AUGMENTS = ("none", "delete", "shuffle", "delete+shuffle")
MODES = ("self", "distill")
PROJECTORS = ("residual", "mlp", "linear")
_TEMPERATURES = {"self": (0.03, 0.02), "distill": (0.05, 0.04)}  # (t, t_ref) per mode


@dataclass
class SCTConfig:
    """Cross-view training settings (flags of ``plmkit embed``)."""

    queue_size: int = 65536
    """K: reference embeddings kept in each of the two FIFO queues."""
    temperature: float | None = None
    """Online temperature t (none: 0.03 self-supervised, 0.05 distillation)."""
    reference_temperature: float | None = None
    """Reference temperature t_ref (none: 0.02 self-supervised, 0.04 distillation)."""
    projector: str = "residual"
    """Online projector: residual (identity at initialisation), mlp (the paper's, random) or linear."""
    projector_depth: int = 3
    """MLP blocks in the online projector (d -> e*d -> d each; unused by linear)."""
    projector_expansion: int = 10
    """Hidden width factor e of each projector block."""
    augment: str = "delete"
    """Offline view augmentation, applied to each view independently: none, delete, shuffle, delete+shuffle."""
    augment_prob: float = 0.1
    """Word deletion probability, or adjacent-swap probability for shuffle."""
    pooling: str = "mean"
    """Token pooling of the encoder: mean or cls (the exported model pools the same way)."""
    align_teacher_map: bool = True
    """Distillation: start the linear map to the teacher's width from the ridge regression of the
    teacher's embeddings on the untrained student's (residual and linear projectors; MSE's projection)."""

    def __post_init__(self) -> None:
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ConfigError(f"--queue-size must be a whole number >= 1, got {self.queue_size!r}")
        for name in ("temperature", "reference_temperature"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < float("inf"):
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.projector not in PROJECTORS:
            raise ConfigError(f"--projector must be one of {PROJECTORS}, got {self.projector!r}")
        if self.projector_depth < 1 or self.projector_expansion < 1:
            raise ConfigError("--projector-depth and --projector-expansion must be >= 1")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"--augment must be one of {AUGMENTS}, got {self.augment!r}")
        if not 0.0 <= self.augment_prob < 1.0:
            raise ConfigError(f"--augment-prob must be in [0, 1), got {self.augment_prob}")
        if self.pooling not in ("mean", "cls"):
            raise ConfigError(f"--pooling must be mean or cls, got {self.pooling!r}")

    def temperatures(self, mode: str) -> tuple[float, float]:
        """(t, t_ref) for ``mode`` ('self' or 'distill'), the paper's defaults where not set."""
        if mode not in MODES:
            raise ConfigError(f"SCT mode must be one of {MODES}, got {mode!r}")
        t, t_ref = _TEMPERATURES[mode]
        return (self.temperature or t, self.reference_temperature or t_ref)


# ------------------------------------------------------------------------------ views
def augment_sentence(sentence: str, augment: str, prob: float, rng: random.Random) -> str:
    """One offline view of ``sentence``; never empty (deletion keeps at least one word)."""
    words = sentence.split()
    if augment in ("delete", "delete+shuffle") and len(words) > 1:
        kept = [w for w in words if rng.random() >= prob]
        words = kept or [rng.choice(words)]
    if augment in ("shuffle", "delete+shuffle"):
        for i in range(len(words) - 1):
            if rng.random() < prob:
                words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words) if augment != "none" else sentence


def make_views(sentences: Sequence[str], augment: str, prob: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Two seeded views per sentence, made once before training."""
    rng = random.Random(seed)
    first = [augment_sentence(s, augment, prob, rng) for s in sentences]
    second = [augment_sentence(s, augment, prob, rng) for s in sentences]
    return first, second


# ------------------------------------------------------------------------------ modules
def encoder_inputs(encoder: nn.Module, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tokenizer fields this encoder's forward accepts (MPNet and DistilBERT take no token types)."""
    keep = ("input_ids", "attention_mask") + (("token_type_ids",) if encoder.config.model_type == "bert" else ())
    return {k: v for k, v in features.items() if k in keep}


def pooled(encoder: nn.Module, features: dict[str, torch.Tensor], pooling: str) -> torch.Tensor:
    """(batch, hidden) pooled last hidden states of ``encoder`` on tokenized ``features``."""
    hidden = encoder(**encoder_inputs(encoder, features)).last_hidden_state  # (batch, seq, hidden)
    return pool(hidden, features["attention_mask"], pooling)


class Projector(nn.Sequential):
    """``depth`` MLP blocks in_dim -> e*in_dim -> in_dim (ReLU inside); the last block ends in ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 3, expansion: int = 10) -> None:
        blocks = []
        for i in range(depth):
            end = out_dim if i == depth - 1 else in_dim
            blocks.append(nn.Sequential(nn.Linear(in_dim, expansion * in_dim), nn.ReLU(),
                                        nn.Linear(expansion * in_dim, end)))
        super().__init__(*blocks)


class ResidualBlock(nn.Module):
    """x + W2 ReLU(W1 x + b1) + b2 (dim -> expansion*dim -> dim), W2 and b2 zero: the identity until trained."""

    def __init__(self, dim: int, expansion: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, expansion * dim)
        self.down = nn.Linear(expansion * dim, dim)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.relu(self.up(x)))


def build_projector(kind: str, in_dim: int, out_dim: int, depth: int = 3, expansion: int = 10) -> nn.Module:
    """The online projector ``kind`` (see the module docstring) from ``in_dim`` to ``out_dim``."""
    if kind == "mlp":
        return Projector(in_dim, out_dim, depth, expansion)
    if kind not in PROJECTORS:
        raise ConfigError(f"--projector must be one of {PROJECTORS}, got {kind!r}")
    width = [] if in_dim == out_dim else [nn.Linear(in_dim, out_dim)]
    blocks = [ResidualBlock(out_dim, expansion) for _ in range(depth)] if kind == "residual" else []
    return nn.Sequential(*width, *blocks)


def ridge_map(inputs: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (out, in), bias (out,)) minimising |targets - inputs W^T - b|^2 + lambda |W|^2 over the rows.

    lambda = ``ridge`` x the mean diagonal of the centred inputs' Gram matrix, so the penalty does not
    depend on the scale of the inputs. Solved in float64.
    """
    x, y = inputs.double(), targets.double()
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = x - mean_x, y - mean_y  # (n, in), (n, out)
    gram = xc.T @ xc  # (in, in)
    penalty = ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    weight = torch.linalg.solve(gram + penalty, xc.T @ yc).T  # (out, in)
    return weight.float(), (mean_y - weight @ mean_x).float()


class EmbeddingQueue(nn.Module):
    """A FIFO ring of the last ``size`` embeddings, held in persistent buffers (saved in checkpoints)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("rows", torch.zeros(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor) -> None:
        """Write ``embeddings`` (n, dim) over the oldest rows; with n > size only the newest ``size`` stay."""
        embeddings = embeddings.detach().to(self.rows.dtype)[-self.size:]
        n, start = embeddings.shape[0], int(self.pointer)
        positions = (start + torch.arange(n, device=self.rows.device)) % self.size  # (n,)
        self.rows[positions] = embeddings
        self.pointer.fill_((start + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))

    def contents(self) -> torch.Tensor:
        """The filled rows (filled, dim), in storage order (all rows once the ring is full)."""
        return self.rows[: int(self.filled)]

    def ordered(self) -> torch.Tensor:
        """The filled rows from oldest to newest."""
        if int(self.filled) < self.size:
            return self.contents()
        return torch.roll(self.rows, -int(self.pointer), dims=0)


class CrossViewModel(nn.Module):
    """Encoder + projector + two reference queues; ``forward`` gives what ``CrossViewLoss`` needs.

    ``reference_dim`` is the encoder's width (self-supervised) or the teacher's (distillation). In
    training mode each forward pushes the batch's references into the queues first.
    """

    def __init__(self, encoder: nn.Module, config: SCTConfig, reference_dim: int | None = None) -> None:
        super().__init__()
        hidden = int(encoder.config.hidden_size)
        self.encoder = encoder
        self.pooling = config.pooling
        self.reference_dim = reference_dim or hidden
        self.projector = build_projector(config.projector, hidden, self.reference_dim, config.projector_depth,
                                         config.projector_expansion)
        self.queue1 = EmbeddingQueue(config.queue_size, self.reference_dim)
        self.queue2 = EmbeddingQueue(config.queue_size, self.reference_dim)

    @property
    def width_map(self) -> nn.Linear | None:
        """The linear map to the reference width that starts the projector (None for mlp or equal widths)."""
        first = next(iter(self.projector), None)  # an mlp Projector's children are blocks, never a bare Linear
        return first if isinstance(first, nn.Linear) else None

    def online(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.projector(pooled(self.encoder, features, self.pooling)), dim=-1)

    @torch.no_grad()
    def reference(self, features: dict[str, torch.Tensor], teacher: torch.Tensor | None) -> torch.Tensor:
        """The reference embedding: the teacher's cached vector, else the encoder itself in eval mode."""
        if teacher is not None:
            if teacher.shape[-1] != self.reference_dim:
                raise ConfigError(f"teacher embeddings have {teacher.shape[-1]} dimensions, the projector ends in "
                                  f"{self.reference_dim}; build the model with reference_dim={teacher.shape[-1]}")
            return F.normalize(teacher.float(), dim=-1)
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            return F.normalize(pooled(self.encoder, features, self.pooling).float(), dim=-1)
        finally:
            self.encoder.train(was_training)

    def forward(self, view1: dict[str, torch.Tensor], view2: dict[str, torch.Tensor],
                teacher1: torch.Tensor | None = None, teacher2: torch.Tensor | None = None,
                **_: Any) -> dict[str, torch.Tensor]:
        r1, r2 = self.reference(view1, teacher1), self.reference(view2, teacher2)
        if self.training:
            self.queue1.push(distributed.all_gather(r1))
            self.queue2.push(distributed.all_gather(r2))
        return {"z1": self.online(view1), "z2": self.online(view2), "r1": r1, "r2": r2,
                "queue1": self.queue1.contents(), "queue2": self.queue2.contents()}


class PooledEncoder(nn.Module):
    """Encoder + pooling (+ a linear map to ``out_dim`` when given): the baselines' trainable model."""

    def __init__(self, encoder: nn.Module, pooling: str = "mean", out_dim: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        hidden = int(encoder.config.hidden_size)
        self.projection = nn.Linear(hidden, out_dim) if out_dim and out_dim != hidden else None

    @property
    def width_map(self) -> nn.Linear | None:
        """The linear map to the teacher's width (None when the widths agree)."""
        return self.projection

    def forward(self, **features: torch.Tensor) -> torch.Tensor:
        embedding = pooled(self.encoder, features, self.pooling)
        return self.projection(embedding) if self.projection is not None else embedding
