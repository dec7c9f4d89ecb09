"""Knowledge distillation from a frozen teacher: task loss + beta * soft term (+ gamma * hidden term).

    loss = w_task * L_task(student, labels) + beta * L_soft(student, teacher) + gamma * L_hidden

Soft term (``soft="kl"``, the default):

    L_soft = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))
           = T^2 * mean_batch sum_c p_t,c (log p_t,c - log p_s,c),   p = softmax(z / T)

The T^2 factor is the usual convention (Hinton et al., 2015): the gradient of the KL term scales as
1/T^2, so multiplying by T^2 keeps the soft term's gradient scale independent of T and beta comparable
across temperatures. ``soft="mse"`` matches logits directly, mean_(batch, class) (z_s - z_t)^2, with no
temperature. A regression head (one output) always uses that MSE.

Hidden term (gamma = ``hidden_weight`` > 0, TinyBERT-style), over the embeddings and every layer l,
on real tokens only (attention mask m):

    L_hidden = mean_l  sum m * ||h_l^s - h_l^t||^2  /  sum m * ||h_l^t||^2

which is scale-free across layers. It needs an encoder + head classifier (``encoder_inputs``,
``encoder``, ``head``) as teacher and student: of the same depth (``layer_map="same"``), or with
``layer_map="uniform"`` a student of M layers matched to a teacher of T layers at the points where the
student's layer j sits at the teacher's depth j T / M exactly (j = 1..M; TinyBERT's uniform map):

    L_hidden = mean_{j >= 1: jT/M integer}  sum m * ||h_j^s - h_{jT/M}^t||^2  /  sum m * ||h_{jT/M}^t||^2

With ``layer_map="student"`` the student places its own states on the teacher's layers: it has a method
``distillation_states(batch, teacher_layers) -> (logits, {teacher layer l: student state})`` (one
pass; e.g. an ODE encoder's states at the integer times its steps end on), and the mean runs over
those pairs. ``hidden_norm=True`` layer-normalises both sides (no affine) before comparing, for
students whose stream is not normalised the way the teacher's is. ``hidden_term`` names the logged term.

The teacher is put in eval mode, frozen, and run under ``torch.no_grad``: it never receives a gradient.
The loss returns named terms (``loss``, ``task``, ``soft`` and, when used, ``hidden`` or ``hidden_term``).

Several teachers (``MultiTeacherDistillationLoss``, teachers i = 1..k with weights beta_i):

    loss = w_task * L_task(student, labels) + sum_i beta_i * L_soft(student, teacher_i)

each soft term logged by its teacher's name (``soft_<name>``). The weights are used as given: a caller
that wants k teachers to weigh as much as one divides them by k itself. With one teacher it is
``DistillationLoss`` without the hidden term, to the bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from plmkit.errors import ConfigError
from plmkit.losses.task import loss_from_logits

SOFT_KINDS = ("kl", "mse")
LAYER_MAPS = ("same", "uniform", "student")


@dataclass(eq=False)
class DistillationLoss:
    """``loss(model, batch) -> {"loss", "task", "soft"[, "hidden"]}`` against a frozen teacher."""

    teacher: nn.Module
    """The model to imitate; frozen and put in eval mode on construction."""
    beta: float = 1.0
    """Weight of the soft term; any non-negative number (0 gives the task loss alone)."""
    temperature: float = 2.0
    """Softmax temperature T of the KL soft term (> 0); the term is scaled by T^2."""
    soft: str = "kl"
    """``kl`` (temperature-softened KL divergence) or ``mse`` (squared error between logits)."""
    hidden_weight: float = 0.0
    """Weight gamma of the per-layer hidden-state term; 0 skips it (and its extra teacher outputs)."""
    task_weight: float = 1.0
    """Weight of the task loss on the labels (non-negative)."""
    layer_map: str = "same"
    """Hidden term pairs: ``same`` (layer l to layer l, same depth), ``uniform`` (student j to teacher jT/M) or
    ``student`` (the student's ``distillation_states`` names them)."""
    hidden_norm: bool = False
    """Layer-normalise (no affine) both sides of the hidden term before comparing them."""
    hidden_term: str = "hidden"
    """The name the hidden term is returned (and logged) under."""

    def __post_init__(self) -> None:
        for name in ("beta", "hidden_weight", "task_weight"):
            _check_weight(name, getattr(self, name))
        _check_soft(self.temperature, self.soft)
        if self.layer_map not in LAYER_MAPS:
            raise ConfigError(f"distillation layer_map must be one of {LAYER_MAPS}, got {self.layer_map!r}")
        if self.hidden_term in ("loss", "task", "soft"):
            raise ConfigError(f"hidden_term {self.hidden_term!r} would overwrite a term of the same name; pick another")
        if self.hidden_weight and not hasattr(self.teacher, "encoder_inputs"):
            raise ConfigError("hidden-state distillation needs an encoder + head classifier "
                              "(plmkit.models.build_classifier) as the teacher")
        self.teacher.eval().requires_grad_(False)

    @classmethod
    def mixed(cls, teacher: nn.Module, alpha: float, **settings) -> DistillationLoss:
        """``(1 - alpha) * task + alpha * soft`` (+ the hidden term of ``settings``): alpha in [0, 1]."""
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distillation weight must be in [0, 1], got {alpha}")
        return cls(teacher, beta=alpha, task_weight=1.0 - alpha, **settings)

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.hidden_weight:
            with torch.no_grad():
                target, target_hidden = logits_and_hidden(self.teacher, batch)
            logits, hidden, pairs = self._student_hidden(model, batch, len(target_hidden) - 1)
            if self.hidden_norm:
                width = target_hidden[0].shape[-1]
                hidden = {i: F.layer_norm(hidden[i].float(), (width,)) for i, _ in pairs}
                target_hidden = {j: F.layer_norm(target_hidden[j].float(), (width,)) for _, j in pairs}
            terms[self.hidden_term] = hidden_state_loss(hidden, target_hidden, batch["attention_mask"], pairs)
        else:
            logits = model(**batch)
            with torch.no_grad():
                target = self.teacher(**batch)
        terms["task"] = loss_from_logits(logits, batch["labels"])
        terms["soft"] = soft_target_loss(logits, target, self.temperature, self.soft)
        total = self.task_weight * terms["task"] + self.beta * terms["soft"]
        if self.hidden_term in terms:
            total = total + self.hidden_weight * terms[self.hidden_term]
        return {"loss": total, **terms}

    def _student_hidden(self, model: nn.Module, batch: dict[str, torch.Tensor], teacher_layers: int):
        """(logits, student states indexable by i, [(i, teacher index j)]) in one student pass."""
        if self.layer_map != "student":
            logits, hidden = logits_and_hidden(model, batch)
            if self.layer_map == "uniform":
                return logits, hidden, uniform_layer_pairs(len(hidden) - 1, teacher_layers)
            return logits, hidden, same_depth_pairs(len(hidden) - 1, teacher_layers)
        if not hasattr(model, "distillation_states"):
            raise ConfigError(f"layer_map='student' needs a student with distillation_states(batch, teacher_layers); "
                              f"{type(model).__name__} has none (use layer_map='same' or 'uniform')")
        logits, states = model.distillation_states(batch, teacher_layers)
        bad = sorted(j for j in states if not 0 <= j <= teacher_layers)
        if bad or not states:
            raise ConfigError(f"the student placed its states on teacher layers {sorted(states)}, but the teacher "
                              f"has layers 0..{teacher_layers} (0: embeddings)")
        return logits, states, [(j, j) for j in sorted(states)]


@dataclass(eq=False)
class Teacher:
    """One teacher of a ``MultiTeacherDistillationLoss``: its name in the logs, the model, its weight."""

    name: str
    model: nn.Module
    weight: float = 1.0
    """beta_i, the weight of this teacher's soft term (finite, >= 0)."""


@dataclass(eq=False)
class MultiTeacherDistillationLoss:
    """``loss(model, batch) -> {"loss", "task", "soft_<name>" per teacher}`` against several frozen teachers."""

    teachers: Sequence[Teacher]
    """The models to imitate, each frozen and put in eval mode on construction; names must differ."""
    temperature: float = 2.0
    """Softmax temperature T of the KL soft terms (> 0); each term is scaled by T^2."""
    soft: str = "kl"
    """``kl`` (temperature-softened KL divergence) or ``mse`` (squared error between logits)."""
    task_weight: float = 1.0
    """Weight of the task loss on the labels (non-negative)."""

    def __post_init__(self) -> None:
        self.teachers = list(self.teachers)
        if not self.teachers:
            raise ConfigError("multi-teacher distillation needs at least one Teacher(name, model, weight)")
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ConfigError(f"teacher names must differ (they name the logged soft terms), got {names}")
        for teacher in self.teachers:
            _check_weight(f"weight of teacher {teacher.name!r}", teacher.weight)
        _check_weight("task_weight", self.task_weight)
        _check_soft(self.temperature, self.soft)
        for teacher in self.teachers:
            teacher.model.eval().requires_grad_(False)

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = model(**batch)
        terms = {"task": loss_from_logits(logits, batch["labels"])}
        total = self.task_weight * terms["task"]
        for teacher in self.teachers:
            with torch.no_grad():
                target = teacher.model(**batch)
            terms[f"soft_{teacher.name}"] = soft = soft_target_loss(logits, target, self.temperature, self.soft)
            total = total + teacher.weight * soft
        return {"loss": total, **terms}


def _check_weight(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < float("inf")):
        raise ConfigError(f"distillation {name} must be a finite number >= 0, got {value}")


def _check_soft(temperature: float, soft: str) -> None:
    if not (isinstance(temperature, (int, float)) and 0.0 < temperature < float("inf")):
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    if soft not in SOFT_KINDS:
        raise ConfigError(f"distillation soft term must be one of {SOFT_KINDS}, got {soft!r}")


def soft_target_loss(logits: torch.Tensor, target: torch.Tensor, temperature: float = 2.0,
                     kind: str = "kl") -> torch.Tensor:
    """T^2 * KL(softmax(target/T) || softmax(logits/T)), or the logits' MSE (``kind="mse"`` or one output)."""
    logits, target = logits.float(), target.detach().float()
    if kind == "mse" or logits.shape[-1] == 1:
        return F.mse_loss(logits, target)
    return F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(target / temperature, -1),
                    reduction="batchmean", log_target=True) * temperature**2


def logits_and_hidden(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Logits and every hidden state (embeddings first) of an encoder + head classifier, in one pass."""
    out = model.encoder(**model.encoder_inputs(**batch), output_hidden_states=True)
    return model.head(out.last_hidden_state, batch["attention_mask"]), out.hidden_states


def uniform_layer_pairs(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student, teacher) hidden-state indices (0 = embeddings) where student layer j is teacher layer jT/M."""
    if student_layers < 1 or teacher_layers < 1:
        raise ConfigError(f"a layer map needs layers on both sides, got {student_layers} and {teacher_layers}")
    return [(j, j * teacher_layers // student_layers) for j in range(1, student_layers + 1)
            if j * teacher_layers % student_layers == 0]


def same_depth_pairs(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(i, i) for the embeddings and every layer; the depths must be equal."""
    if student_layers != teacher_layers:
        raise ConfigError(f"hidden-state distillation needs the same depth: student has {student_layers} "
                          f"layers, teacher {teacher_layers} (or map them, layer_map='uniform')")
    return [(i, i) for i in range(student_layers + 1)]


def hidden_state_loss(student: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
                      teacher: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
                      attention_mask: torch.Tensor, pairs: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
    """Mean over layer pairs of ||h_s - h_t||^2 / ||h_t||^2 on real tokens (scale-free across layers).

    ``pairs`` of (student, teacher) indices (into sequences or dicts of states); by default every index,
    which needs the same depth.
    """
    if pairs is None:
        pairs = same_depth_pairs(len(student) - 1, len(teacher) - 1)
    # (batch, tokens) -> (batch, tokens, 1)
    mask = attention_mask.unsqueeze(-1).float()
    losses = [((student[i].float() - teacher[j].float()).square() * mask).sum()
              / (teacher[j].float().square() * mask).sum().clamp_min(1e-12) for i, j in pairs]
    return torch.stack(losses).mean()
