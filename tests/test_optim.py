"""The trainer's optimiser groups and schedule, checked without a training run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plmkit.errors import TrainerConfigError
from plmkit.optim import linear_schedule, no_decay, param_groups


def _named():
    model = nn.ModuleDict({
        "body": nn.Linear(4, 3),                       # weight 12 (decay), bias 3 (no decay)
        "norm": nn.LayerNorm(3),                        # 3 + 3, no decay
        "corrections": nn.Linear(3, 2, bias=False),     # weight 6 (decay)
    })
    model.register_parameter("step_gains", nn.Parameter(torch.ones(2, 3)))  # 2-D, but a gain: no decay
    return list(model.named_parameters())


def _members(groups, named):
    names = {id(p): n for n, p in named}
    return [sorted(names[id(p)] for p in g["params"]) for g in groups]


def test_groups_split_by_factor_and_decay_with_the_plain_rate_first():
    named = _named()
    groups, layout = param_groups(named, 1e-3, 0.01, "corrections.*=10, *gains=0.5, *=3")
    # the first matching rule wins: 'corrections.weight' takes 10, not the catch-all 3; no parameter is at the
    # plain rate, so the groups sort by factor, decay before no decay
    assert [(round(g["lr"] / 1e-3, 9), g["weight_decay"]) for g in groups] == [
        (0.5, 0.0), (3.0, 0.01), (3.0, 0.0), (10.0, 0.01)]
    assert _members(groups, named) == [["step_gains"], ["body.weight"], ["body.bias", "norm.bias", "norm.weight"],
                                       ["corrections.weight"]]
    assert [(g["lr_factor"], g["weight_decay"], g["numel"]) for g in layout] == [
        (0.5, 0.0, 6), (3.0, 0.01, 12), (3.0, 0.0, 9), (10.0, 0.01, 6)]


def test_without_rules_there_are_two_groups_at_the_plain_rate_decay_first():
    named = _named()
    groups, layout = param_groups(named, 2e-4, 0.1)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(2e-4, 0.1), (2e-4, 0.0)]
    assert _members(groups, named) == [["body.weight", "corrections.weight"],
                                       ["body.bias", "norm.bias", "norm.weight", "step_gains"]]
    assert sum(g["numel"] for g in layout) == sum(p.numel() for _, p in named)


def test_plain_rate_groups_come_first_even_when_another_factor_sorts_lower():
    named = _named()
    groups, _ = param_groups(named, 1.0, 0.0, "corrections.*=0.1")
    assert [g["lr"] for g in groups] == pytest.approx([1.0, 1.0, 0.1])
    assert _members(groups, named)[-1] == ["corrections.weight"]


def test_a_pattern_that_matches_nothing_is_refused_with_example_names():
    with pytest.raises(TrainerConfigError, match=r"'bodyy\.\*' match no trainable parameter.*body\.weight"):
        param_groups(_named(), 1e-3, 0.0, "bodyy.*=2")


@pytest.mark.parametrize("entry", ["body", "=2", "body.*=0", "body.*=-1", "body.*=nan", "body.*=x"])
def test_bad_entries_are_refused(entry):
    with pytest.raises(TrainerConfigError, match="PATTERN=FACTOR"):
        param_groups(_named(), 1e-3, 0.0, entry)


def test_no_decay_covers_vectors_biases_norms_and_gains_only():
    assert no_decay("x.bias", nn.Parameter(torch.zeros(3, 3)))
    assert no_decay("layer_norm.weight", nn.Parameter(torch.zeros(3, 3)))
    assert no_decay("step_gains", nn.Parameter(torch.zeros(3, 3)))
    assert no_decay("w", nn.Parameter(torch.zeros(3)))
    assert not no_decay("dense.weight", nn.Parameter(torch.zeros(3, 3)))


def test_linear_schedule_warms_up_then_decays_to_zero():
    f = linear_schedule(total_steps=10, warmup_steps=4)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [f(s) for s in (4, 7, 10, 12)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
