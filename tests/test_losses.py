"""The loss contract and the shared losses, checked against computations written out here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.losses import (
    DistillationLoss,
    LossContractError,
    MultiTeacherDistillationLoss,
    Teacher,
    classification_loss,
    loss_from_logits,
    total_and_terms,
)


class _Toy(nn.Module):
    """A classifier over a feature vector that takes the batch as keyword arguments, as the real ones do."""

    def __init__(self, outputs: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(5, outputs)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, **_) -> torch.Tensor:
        return self.linear(x) * 3.0


def _batch(classes: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, classes, (6,), generator=generator) if classes > 1 else torch.randn(6, generator=generator)
    return {"x": torch.randn(6, 5, generator=generator), "labels": labels}


def _by_hand_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    log_probs = logits - logits.exp().sum(-1, keepdim=True).log()
    return -log_probs[torch.arange(len(labels)), labels].mean()


def test_task_loss_is_cross_entropy_or_mse():
    model, batch = _Toy(), _batch()
    logits = model(**batch)
    assert float(classification_loss(model, batch)) == pytest.approx(float(_by_hand_ce(logits, batch["labels"])),
                                                                      rel=1e-6)
    regression, scores = _Toy(outputs=1), _batch(classes=1)
    out = regression(**scores)[:, 0]
    assert float(classification_loss(regression, scores)) == pytest.approx(
        float(((out - scores["labels"]) ** 2).mean()), rel=1e-6)
    assert loss_from_logits(logits.bfloat16(), batch["labels"]).dtype == torch.float32


def test_textclf_keeps_the_task_loss_names():
    from plmkit import textclf

    assert textclf.classification_loss is classification_loss
    assert textclf.loss_from_logits is loss_from_logits


def test_kl_soft_term_with_temperature_two_matches_a_hand_computation():
    student, teacher, batch = _Toy(seed=0), _Toy(seed=1), _batch()
    beta, t = 0.7, 2.0
    terms = DistillationLoss(teacher, beta=beta, temperature=t)(student, batch)
    with torch.no_grad():
        s, z = student(**batch), teacher(**batch)
    log_p_s, log_p_t = torch.log_softmax(s / t, -1), torch.log_softmax(z / t, -1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * t**2
    ce = _by_hand_ce(s, batch["labels"])
    assert float(terms["soft"]) == pytest.approx(float(kl), rel=1e-5)
    assert float(terms["task"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(float(ce + beta * kl), rel=1e-5)
    assert float(kl) > 0.01  # the two models really differ


def test_mse_soft_term_and_betas_above_one():
    student, teacher, batch = _Toy(seed=0), _Toy(seed=1), _batch()
    terms = DistillationLoss(teacher, beta=3.0, soft="mse")(student, batch)
    with torch.no_grad():
        mse = ((student(**batch) - teacher(**batch)) ** 2).mean()
    assert float(terms["soft"]) == pytest.approx(float(mse), rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(float(terms["task"] + 3.0 * mse), rel=1e-5)


def test_beta_zero_equals_the_task_loss_and_the_teacher_gets_no_gradient():
    student, teacher, batch = _Toy(seed=0), _Toy(seed=1), _batch()
    total = DistillationLoss(teacher, beta=0.0)(student, batch)["loss"]
    assert float(total) == pytest.approx(float(classification_loss(student, batch)), rel=1e-6)
    total = DistillationLoss(teacher, beta=2.0)(student, batch)["loss"]
    total.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert not teacher.training


def test_identical_teacher_gives_zero_soft_term():
    model = _Toy()
    assert float(DistillationLoss(_Toy(), beta=1.0)(model, _batch())["soft"]) == pytest.approx(0.0, abs=1e-6)


def test_two_teachers_add_their_weighted_soft_terms_by_hand():
    student, batch = _Toy(seed=0), _batch()
    teachers = [Teacher("a", _Toy(seed=1), 0.25), Teacher("b", _Toy(seed=2), 1.5)]
    t = 2.0
    terms = MultiTeacherDistillationLoss(teachers, temperature=t, task_weight=0.5)(student, batch)
    with torch.no_grad():
        s = student(**batch)
        kls = []
        for teacher in teachers:
            log_p_s, log_p_t = torch.log_softmax(s / t, -1), torch.log_softmax(teacher.model(**batch) / t, -1)
            kls.append((log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * t**2)
    ce = _by_hand_ce(s, batch["labels"])
    assert set(terms) == {"loss", "task", "soft_a", "soft_b"}
    assert float(terms["soft_a"]) == pytest.approx(float(kls[0]), rel=1e-5)
    assert float(terms["soft_b"]) == pytest.approx(float(kls[1]), rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(float(0.5 * ce + 0.25 * kls[0] + 1.5 * kls[1]), rel=1e-5)
    assert abs(float(kls[0] - kls[1])) > 1e-3  # the teachers really differ


def test_two_teachers_mse_on_a_regression_head_and_no_teacher_gradient():
    student, batch = _Toy(outputs=1, seed=0), _batch(classes=1)
    teachers = [Teacher("a", _Toy(outputs=1, seed=1), 0.3), Teacher("b", _Toy(outputs=1, seed=2), 0.7)]
    terms = MultiTeacherDistillationLoss(teachers)(student, batch)  # one output: MSE whatever ``soft`` says
    with torch.no_grad():
        s = student(**batch)
        mse = [((s - teacher.model(**batch)) ** 2).mean() for teacher in teachers]
        task = ((s[:, 0] - batch["labels"]) ** 2).mean()
    assert float(terms["loss"]) == pytest.approx(float(task + 0.3 * mse[0] + 0.7 * mse[1]), rel=1e-5)
    terms["loss"].backward()
    for teacher in teachers:
        assert not teacher.model.training
        assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


@pytest.mark.parametrize("soft", ["kl", "mse"])
def test_one_teacher_is_the_single_teacher_loss_exactly(soft):
    student, teacher, batch = _Toy(seed=0), _Toy(seed=1), _batch()
    single = DistillationLoss(teacher, beta=0.7, temperature=3.0, soft=soft, task_weight=0.9)(student, batch)
    multi = MultiTeacherDistillationLoss([Teacher("t", teacher, 0.7)], temperature=3.0, soft=soft,
                                         task_weight=0.9)(student, batch)
    assert torch.equal(multi["loss"], single["loss"])
    assert torch.equal(multi["soft_t"], single["soft"]) and torch.equal(multi["task"], single["task"])


@pytest.mark.parametrize("teachers, match", [
    ([], "at least one"), ([("a", 1.0), ("a", 2.0)], "names must differ"), ([("a", -1.0)], "teacher 'a'"),
    ([("a", float("inf"))], "teacher 'a'"),
])
def test_bad_teacher_lists_are_refused(teachers, match):
    with pytest.raises(ConfigError, match=match):
        MultiTeacherDistillationLoss([Teacher(name, _Toy(), weight) for name, weight in teachers])


@pytest.mark.parametrize("settings, match", [
    ({"beta": -0.1}, "beta"), ({"beta": float("nan")}, "beta"), ({"temperature": 0.0}, "temperature"),
    ({"soft": "cosine"}, "soft term"), ({"hidden_weight": 1.0}, "encoder \\+ head"),
    ({"layer_map": "skip"}, "layer_map"),
])
def test_bad_distillation_settings_are_refused(settings, match):
    with pytest.raises(ConfigError, match=match):
        DistillationLoss(_Toy(), **settings)


@pytest.mark.parametrize("student, teacher, pairs", [
    (3, 6, [(1, 2), (2, 4), (3, 6)]), (2, 6, [(1, 3), (2, 6)]), (4, 6, [(2, 3), (4, 6)]),
    (6, 6, [(j, j) for j in range(1, 7)]), (1, 4, [(1, 4)]),
])
def test_uniform_layer_pairs_keep_the_student_layers_that_sit_on_a_teacher_layer(student, teacher, pairs):
    from plmkit.losses import uniform_layer_pairs

    assert uniform_layer_pairs(student, teacher) == pairs


def test_the_old_compress_signature_still_mixes_with_alpha():
    from plmkit.compress.distill import distillation_loss

    student, teacher, batch = _Toy(seed=0), _Toy(seed=1), _batch()
    terms = DistillationLoss(teacher, beta=1.0)(student, batch)
    mixed = distillation_loss(teacher, alpha=0.25)(student, batch)
    assert isinstance(mixed, torch.Tensor)
    assert float(mixed) == pytest.approx(float(0.75 * terms["task"] + 0.25 * terms["soft"]), rel=1e-5)


def test_total_and_terms_reads_both_forms_and_refuses_others():
    value = torch.tensor(2.0)
    assert total_and_terms(value) == (value, {"loss": value})
    total, terms = total_and_terms({"loss": value, "task": torch.tensor(1.0)})
    assert total is value and set(terms) == {"loss", "task"}
    with pytest.raises(LossContractError, match="'loss' entry"):
        total_and_terms({"task": value})
    with pytest.raises(LossContractError):
        total_and_terms(2.0)


class _PlacedStudent(nn.Module):
    """A student that places its own states on teacher layers: state l = embedding * scale_l + shift_l."""

    def __init__(self, vocab: int, width: int, places: tuple[int, ...]) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Embedding(vocab, width)
        self.scale = nn.Parameter(torch.rand(len(places), width) + 0.5)
        self.shift = nn.Parameter(torch.randn(len(places), width))
        self.out = nn.Linear(width, 2)
        self.places = places

    def distillation_states(self, batch, teacher_layers):
        x = self.embed(batch["input_ids"])
        states = {p: x * self.scale[i] + self.shift[i] for i, p in enumerate(self.places)}
        return self.out(states[self.places[-1]].mean(1)), states

    def forward(self, input_ids, attention_mask=None, **_):
        return self.distillation_states({"input_ids": input_ids}, 0)[0]


def _standardised(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)


def test_student_placed_states_are_matched_to_those_teacher_layers_after_layer_norm(make_encoder):
    from plmkit.models import build_classifier

    backbone = make_encoder("bert")
    teacher = build_classifier(backbone.model, 2)
    width = backbone.model.config.hidden_size
    student = _PlacedStudent(backbone.model.config.vocab_size, width, places=(0, 2))
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1])}
    loss = DistillationLoss(teacher, beta=0.5, task_weight=0.5, hidden_weight=2.0, layer_map="student",
                            hidden_norm=True, hidden_term="trajectory")
    terms = loss(student, batch)
    with torch.no_grad():
        hidden = teacher.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        _, states = student.distillation_states(batch, 2)
        real = mask.bool()
        errors = [float(((_standardised(states[p]) - _standardised(hidden[p]))[real] ** 2).sum()
                        / (_standardised(hidden[p])[real] ** 2).sum()) for p in (0, 2)]
    assert set(terms) == {"loss", "task", "soft", "trajectory"}
    assert float(terms["trajectory"]) == pytest.approx(sum(errors) / 2, rel=1e-4)
    expected = 0.5 * terms["task"] + 0.5 * terms["soft"] + 2.0 * sum(errors) / 2
    assert float(terms["loss"]) == pytest.approx(float(expected), rel=1e-4)
    terms["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.scale.grad.abs().sum() > 0 and student.shift.grad.abs().sum() > 0
    # without the norm the raw states are compared
    raw = DistillationLoss(teacher, hidden_weight=1.0, layer_map="student")(student, batch)["hidden"]
    with torch.no_grad():
        by_hand = sum(float(((states[p] - hidden[p])[real] ** 2).sum() / (hidden[p][real] ** 2).sum()) for p in (0, 2))
    assert float(raw) == pytest.approx(by_hand / 2, rel=1e-4)


def test_student_placed_states_are_checked(make_encoder):
    from plmkit.models import build_classifier

    backbone = make_encoder("bert")
    teacher = build_classifier(backbone.model, 2)
    batch = {"input_ids": torch.tensor([[5, 6]]), "attention_mask": torch.tensor([[1, 1]]), "labels": torch.tensor([0])}
    width, vocab = backbone.model.config.hidden_size, backbone.model.config.vocab_size
    with pytest.raises(ConfigError, match="teacher layers \\[1, 3\\].*layers 0..2"):
        DistillationLoss(teacher, hidden_weight=1.0, layer_map="student")(_PlacedStudent(vocab, width, (1, 3)), batch)
    with pytest.raises(ConfigError, match="distillation_states"):
        DistillationLoss(teacher, hidden_weight=1.0, layer_map="student")(build_classifier(backbone.model, 2), batch)
    with pytest.raises(ConfigError, match="overwrite"):
        DistillationLoss(teacher, hidden_weight=1.0, hidden_term="soft")


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_an_alpha_mix_outside_zero_to_one_is_refused_by_every_front_door(alpha):
    from plmkit.compress.distill import distillation_loss
    from plmkit.compress.ode import trajectory_distillation

    for build in (DistillationLoss.mixed, distillation_loss, trajectory_distillation):
        with pytest.raises(ConfigError, match="distillation weight must be in \\[0, 1\\]"):
            build(_Toy(), alpha)
    mixed = DistillationLoss.mixed(_Toy(), 0.25, temperature=3.0)
    assert (mixed.beta, mixed.task_weight, mixed.temperature) == (0.25, 0.75, 3.0)
