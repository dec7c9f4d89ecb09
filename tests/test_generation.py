"""ZeroGen pieces without a model: filters on crafted strings, spec validation, noise-robust losses by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from plmkit.errors import ConfigError
from plmkit.generation import FilterConfig, SpecError, cut, filter_samples, load_spec
from plmkit.generation.dataset import split_rows
from plmkit.generation.losses import NoiseRobustLoss, generalized_cross_entropy, reverse_cross_entropy

SPEC = {"name": "s", "labels": ["negative", "positive"], "condition": {"prompt": 'Movie: "'},
        "prompts": {"negative": 'bad "{condition}": "', "positive": 'good "{condition}": "'},
        "zero_shot": 'a {label} review: "{text}"'}


# ------------------------------------------------------------------------------ filters
@pytest.mark.parametrize(("raw", "expected", "finished"), [
    (' Loved every minute. Really" and then more', "Loved every minute. Really", True),  # closing quote first
    ("A fine film\nMovie: next", "A fine film", True),  # newline when there is no quote
    ('A fine film\nMovie: "next"', "A fine film", True),  # a line break before the quote comes first
    ("\n Fine\n", "Fine", True),  # leading whitespace is skipped, a trailing line break still ends it
    ("It was dull. The end came late! and then the", "It was dull. The end came late!", True),  # last sentence end
    ("no stop at all", "no stop at all", False),
    ('"', "", True),
])
def test_cut_stops_at_quote_or_newline_then_last_sentence_end(raw, expected, finished):
    assert cut(raw) == (expected, finished)


def test_cut_can_ignore_quotes():
    assert cut('He said "wow" twice.', cut_at_quote=False) == ('He said "wow" twice.', True)


def test_filter_counts_every_reason_and_keeps_first_occurrences():
    samples = [
        {"raw": 'A truly great movie." extra', "condition": "Up", "label": "positive"},  # kept
        {"raw": 'A truly great movie."', "condition": "Up", "label": "negative"},  # exact duplicate (other label)
        {"raw": 'a TRULY great   movie!"', "condition": "Up", "label": "positive"},  # near duplicate
        {"raw": 'Too short"', "condition": "Up", "label": "positive"},  # 2 words < 3
        {"raw": '"', "condition": "Up", "label": "positive"},  # empty after cutting
        {"raw": 'The Big Lebowski Returns"', "condition": "the big lebowski returns", "label": "positive"},  # X == C
        {"raw": "one two three four five six seven", "condition": "Up", "label": "negative"},  # too long (> 6)
        {"raw": "unfinished words here", "condition": "Up", "label": "negative"},  # kept (keep_unfinished)
    ]
    kept, counts = filter_samples(samples, FilterConfig(min_words=3, max_words=6))
    assert [row["text"] for row in kept] == ["A truly great movie.", "unfinished words here"]
    assert kept[0]["label"] == "positive" and kept[0]["condition"] == "Up"
    assert counts == {"unfinished": 0, "empty": 1, "too_short": 1, "too_long": 1, "same_as_condition": 1,
                      "duplicate": 1, "near_duplicate": 1, "generated": 8, "kept": 2}
    kept, counts = filter_samples(samples, FilterConfig(min_words=3, max_words=6, keep_unfinished=False,
                                                        near_dedupe=False))
    assert counts["unfinished"] == 2 and counts["near_duplicate"] == 0 and counts["kept"] == 2


def test_filter_config_is_checked():
    with pytest.raises(ConfigError, match="min_words"):
        FilterConfig(min_words=5, max_words=2)


def test_split_rows_is_seeded_and_keeps_label_balance():
    rows = [{"label": label, "chunk": 0, "unit": i, "sample": 0} for i in range(40) for label in ("a", "b")]
    splits = split_rows(rows, ["a", "b"], 0.1, seed=3)
    assert {s: len(r) for s, r in splits.items()} == {"train": 64, "validation": 8, "test": 8}
    assert sum(r["label"] == "a" for r in splits["validation"]) == 4
    assert split_rows(rows, ["a", "b"], 0.1, seed=3) == splits
    assert split_rows(rows, ["a", "b"], 0.1, seed=4) != splits
    ids = [(r["label"], r["unit"]) for s in splits.values() for r in s]
    assert len(set(ids)) == len(rows)


# ------------------------------------------------------------------------------ specs
@pytest.mark.parametrize("name", ["sentiment", "topic", "nli"])
def test_builtin_specs_load_and_fill_their_prompts(name):
    spec = load_spec(name)
    prompt = spec.prompt(spec.labels[0], "Casablanca")
    assert ("Casablanca" in prompt) == (spec.condition is not None)
    assert "{" not in prompt


def test_builtin_specs_use_the_real_tasks_label_order():
    assert load_spec("sentiment").labels == ["negative", "positive"]
    assert load_spec("topic").labels == ["business", "entertainment", "politics", "sport", "tech"]
    assert load_spec("nli").labels == ["entailment", "neutral", "contradiction"]


@pytest.mark.parametrize(("change", "message"), [
    ({"prompts": {**SPEC["prompts"], "neutral": "x {condition}"}}, r"unknown label\(s\) \['neutral'\]"),
    ({"prompts": {"negative": SPEC["prompts"]["negative"]}}, r"no prompt for label\(s\) \['positive'\]"),
    ({"prompts": {**SPEC["prompts"], "positive": 'good: "'}}, "no {condition} placeholder"),
    ({"prompts": {**SPEC["prompts"], "positive": 'good {condition} {movie}: "'}}, r"unknown placeholder\(s\) \['movie'\]"),
    ({"zero_shot": 'a review: "{text}"'}, r"lacks placeholder\(s\) \['label'\]"),
    ({"labels": ["negative"]}, ">= 2 distinct"),
    ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
    ({"filters": {"min_word": 3}}, r"unknown filter\(s\)"),
    ({"pair": True, "condition": None}, "pair task needs a 'condition'"),
    ({"counter_labels": {"negative": ["negative"]}}, r"counter_labels\['negative'\]"),
    ({"counter_labels": {"negative": ["neutral"]}}, "list of other labels"),
    ({"counter_labels": {"neutral": []}}, r"counter_labels\['neutral'\]"),
    ({"counter_labels": {"negative": [["positive"]]}}, "list of other labels"),
])
def test_bad_specs_name_the_problem(change, message):
    with pytest.raises(SpecError, match=message):
        load_spec({**SPEC, **change})


def test_counter_labels_default_to_every_other_label():
    nli = load_spec("nli")
    assert nli.counters("neutral") == ["entailment", "contradiction"]
    custom = load_spec({**SPEC, "counter_labels": {"negative": []}})
    assert custom.counters("negative") == [] and custom.counters("positive") == ["negative"]


def test_specs_load_from_yaml_and_json_files(tmp_path):
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SPEC))
    (tmp_path / "s.json").write_text(json.dumps(SPEC))
    from_yaml, from_json = load_spec(str(tmp_path / "s.yaml")), load_spec(str(tmp_path / "s.json"))
    assert from_yaml == from_json
    assert from_yaml.prompt("positive", "Up") == 'good "Up": "'
    with pytest.raises(SpecError, match="neither a built-in spec"):
        load_spec(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("labels: [a, b\n")
    with pytest.raises(SpecError, match="could not parse"):
        load_spec(str(tmp_path / "bad.yaml"))


# ------------------------------------------------------------------------------ losses
LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
LABELS = torch.tensor([0, 1, 1])


def _p_label() -> list[float]:
    """Softmax probability of the label, by hand: for two classes, sigmoid of the margin."""
    margins = [2.0 - 0.0, 1.0 - 0.0, -1.0 - 3.0]
    return [1 / (1 + math.exp(-m)) for m in margins]


def test_reverse_cross_entropy_matches_its_definition_with_clamped_log_zero():
    probs = torch.softmax(LOGITS, -1)
    by_definition = []
    for row, label in zip(probs.tolist(), LABELS.tolist(), strict=True):
        log_q = [0.0 if k == label else -4.0 for k in range(2)]  # log of the one-hot, log 0 clamped to -4
        by_definition.append(-sum(p * lq for p, lq in zip(row, log_q, strict=True)))
    expected = sum(by_definition) / 3
    assert reverse_cross_entropy(LOGITS, LABELS).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(sum(4 * (1 - p) for p in _p_label()) / 3, rel=1e-6)


def test_generalized_cross_entropy_by_hand_and_its_limits():
    q = 0.7
    expected = sum((1 - p ** q) / q for p in _p_label()) / 3
    assert generalized_cross_entropy(LOGITS, LABELS, q).item() == pytest.approx(expected, rel=1e-6)
    mae = sum(1 - p for p in _p_label()) / 3
    assert generalized_cross_entropy(LOGITS, LABELS, 1.0).item() == pytest.approx(mae, rel=1e-6)
    ce = sum(-math.log(p) for p in _p_label()) / 3
    assert generalized_cross_entropy(LOGITS, LABELS, 1e-4).item() == pytest.approx(ce, rel=1e-3)


def test_symmetric_loss_is_the_weighted_sum_and_logs_its_terms():
    ce = sum(-math.log(p) for p in _p_label()) / 3
    rce = sum(4 * (1 - p) for p in _p_label()) / 3
    terms = NoiseRobustLoss("sce", alpha=0.5, beta=2.0).from_logits(LOGITS, LABELS)
    assert terms["loss"].item() == pytest.approx(0.5 * ce + 2.0 * rce, rel=1e-6)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6) and terms["rce"].item() == pytest.approx(rce, rel=1e-6)
    assert NoiseRobustLoss("ce").from_logits(LOGITS, LABELS)["loss"].item() == pytest.approx(ce, rel=1e-6)


def test_reverse_cross_entropy_bounds_the_pull_of_a_confidently_wrong_label():
    """On a sample the model is sure is class 0 but labelled 1, CE's gradient stays large; RCE's vanishes."""
    logits = torch.tensor([[8.0, -8.0]], requires_grad=True)
    label = torch.tensor([1])
    torch.nn.functional.cross_entropy(logits, label).backward()
    ce_grad = logits.grad.norm().item()
    logits.grad = None
    reverse_cross_entropy(logits, label).backward()
    assert ce_grad > 1.0 and logits.grad.norm().item() < 1e-5


def test_noise_robust_loss_follows_the_loss_contract_and_checks_settings():
    class Fixed(torch.nn.Module):
        def forward(self, **batch):
            return LOGITS

    out = NoiseRobustLoss("rce")(Fixed(), {"labels": LABELS})
    assert set(out) == {"loss"} and out["loss"].ndim == 0
    for bad in ({"kind": "mae"}, {"q": 0.0}, {"log_zero": 1.0}, {"alpha": 0.0, "beta": 0.0}):
        with pytest.raises(ConfigError):
            NoiseRobustLoss(**bad)
    with pytest.raises(ConfigError, match="classification"):
        NoiseRobustLoss().from_logits(torch.zeros(2, 1), torch.zeros(2))
