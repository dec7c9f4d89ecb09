"""Metrics checked against values worked out by hand, not against sklearn/scipy calls."""

import math
import warnings

import numpy as np
import pytest
from scipy.stats import rankdata

from plmkit.errors import ConfigError
from plmkit.metrics import (
    CLASSIFICATION_METRICS,
    PRIMARY_METRICS,
    REGRESSION_METRICS,
    compute_metrics,
    default_metric,
    greater_is_better,
    paired_bootstrap,
    rank_reliability,
)


def test_accuracy_and_macro_f1_by_hand():
    # class 0: precision 1/1, recall 1/2 -> F1 2/3; class 1: precision 2/3, recall 2/2 -> F1 4/5
    result = compute_metrics([0, 1, 1, 1], [0, 0, 1, 1], is_regression=False)
    assert result["accuracy"] == pytest.approx(3 / 4)
    assert result["f1_macro"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert set(result) == set(CLASSIFICATION_METRICS)


def test_matthews_correlation_of_a_small_confusion_matrix():
    # refs [0,0,1,1,1] vs preds [0,1,1,1,0]: TP=2, TN=1, FP=1, FN=1
    # MCC = (2*1 - 1*1) / sqrt((2+1)(2+1)(1+1)(1+1)) = 1/6
    result = compute_metrics([0, 1, 1, 1, 0], [0, 0, 1, 1, 1], is_regression=False)
    assert result["matthews_corr"] == pytest.approx(1 / 6)


def test_logits_are_reduced_by_argmax():
    logits = np.array([[2.0, -1.0, 0.0], [0.1, 0.3, 0.2], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    result = compute_metrics(logits, [0, 1, 2, 2], is_regression=False)
    assert result["accuracy"] == pytest.approx(3 / 4)


def test_pearson_spearman_and_mse_by_hand():
    # x=[1,2,3], y=[1,2,4]: centred x=[-1,0,1], y=[-4/3,-1/3,5/3]; sum xy=3, sum x^2=2, sum y^2=42/9
    result = compute_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0], is_regression=True)
    pearson = 3 / math.sqrt(2 * 42 / 9)
    assert result["pearson"] == pytest.approx(pearson)
    assert result["spearman"] == pytest.approx(1.0)  # same order
    assert result["pearson_spearman"] == pytest.approx((pearson + 1.0) / 2)
    assert result["mse"] == pytest.approx(1 / 3)
    assert set(result) == set(REGRESSION_METRICS)


def test_spearman_uses_ranks():
    # ranks of preds [1,3,2], refs [1,2,3]: centred [-1,1,0] and [-1,0,1] -> 1/2
    result = compute_metrics([10.0, 30.0, 20.0], [0.1, 0.2, 0.3], is_regression=True)
    assert result["spearman"] == pytest.approx(0.5)


def test_regression_accepts_column_predictions():
    result = compute_metrics(np.array([[1.0], [2.0], [3.0]]), [1.0, 2.0, 4.0], is_regression=True)
    assert result["mse"] == pytest.approx(1 / 3)


def test_constant_predictions_give_zero_correlation_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg = compute_metrics([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], is_regression=True)
        cls = compute_metrics([1, 1, 1, 1], [0, 1, 0, 1], is_regression=False)
    assert reg["pearson"] == 0.0 and reg["spearman"] == 0.0 and reg["pearson_spearman"] == 0.0
    assert cls["matthews_corr"] == 0.0
    assert all(math.isfinite(v) for v in [*reg.values(), *cls.values()])


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        compute_metrics([0, 1, 1], [0, 1], is_regression=False)
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], [], is_regression=False)


def test_default_metric_and_direction():
    assert default_metric(False, 2) == "accuracy" == PRIMARY_METRICS["classification"]
    assert default_metric(True) == "pearson_spearman"
    assert default_metric(False, num_labels=1) == "pearson_spearman"
    assert greater_is_better("accuracy") and greater_is_better("eval_pearson_spearman")
    assert not any(greater_is_better(name) for name in ("mse", "eval_loss", "loss", "test_mse"))


def test_paired_bootstrap_of_a_constant_difference_is_that_difference():
    a = np.array([1, 0, 1, 1, 0, 1], dtype=float)
    out = paired_bootstrap(a, a - 0.25, rounds=200)
    assert out["difference"] == pytest.approx(0.25)
    assert out["low"] == pytest.approx(0.25) and out["high"] == pytest.approx(0.25)
    assert out["p_not_ahead"] == 0.0 and out["examples"] == 6 and out["runs"] == 1
    assert paired_bootstrap(a, a, rounds=50)["p_not_ahead"] == 1.0  # d* = 0 is "not ahead"


def test_paired_bootstrap_interval_matches_the_normal_approximation():
    # 0/1 correctness of two systems on 4,000 examples: a is right on 82 %, b on 80 %, disagreeing often
    rng = np.random.default_rng(1)
    a = (rng.random(4000) < 0.82).astype(float)
    b = np.where(rng.random(4000) < 0.5, a, (rng.random(4000) < 0.80).astype(float))
    d = a - b
    half = 1.959964 * d.std(ddof=1) / np.sqrt(len(d))  # the textbook interval of a mean
    out = paired_bootstrap(a, b, rounds=20_000, seed=3)
    assert out["difference"] == pytest.approx(d.mean())
    assert out["low"] == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert out["high"] == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert out["low"] < out["difference"] < out["high"]


def test_paired_bootstrap_averages_runs_per_example_first():
    a = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]], dtype=float)  # 3 seeds x 4 examples
    b = np.array([[0, 0, 1, 0], [1, 0, 0, 1], [0, 1, 0, 0]], dtype=float)
    pooled = paired_bootstrap(a, b, rounds=500, seed=7)
    by_hand = paired_bootstrap(a.mean(axis=0), b.mean(axis=0), rounds=500, seed=7)
    assert pooled["runs"] == 3 and pooled["examples"] == 4
    assert pooled["difference"] == pytest.approx((a - b).mean())
    assert (pooled["low"], pooled["high"]) == pytest.approx((by_hand["low"], by_hand["high"]))


def test_paired_bootstrap_refuses_unpaired_or_empty_scores():
    with pytest.raises(ConfigError, match="same shape"):
        paired_bootstrap(np.ones(3), np.ones(4))
    with pytest.raises(ConfigError, match="per-example"):
        paired_bootstrap(np.ones(0), np.ones(0))
    with pytest.raises(ConfigError, match="rounds"):
        paired_bootstrap(np.ones(3), np.ones(3), rounds=0)


def test_rank_reliability_by_hand():
    # two repeats of three items: ranks (1, 2, 3) and (1, 3, 2) → Spearman 1 − 6·2 / (3·8) = 0.5
    out = rank_reliability([[0.1, 0.2, 0.3], [5.0, 9.0, 7.0]])
    assert out["agreement"] == pytest.approx(0.5)
    assert out["reliability"] == pytest.approx(2 * 0.5 / 1.5)  # Spearman–Brown for k = 2
    assert out["ceiling"] == pytest.approx(math.sqrt(2 / 3))
    assert (out["repeats"], out["items"]) == (2, 3)
    # the same order at another scale and offset in every repeat: fully reproducible
    same = rank_reliability([[1, 2, 3, 4], [10, 20, 30, 40], [-3, -2, -1, 0]])
    assert same["agreement"] == pytest.approx(1.0) and same["reliability"] == pytest.approx(1.0)
    # opposite orders: no reproducible ranking, so no ceiling above 0
    opposite = rank_reliability([[1, 2, 3, 4], [4, 3, 2, 1]])
    assert opposite["agreement"] == pytest.approx(-1.0)
    assert opposite["reliability"] == 0.0 and opposite["ceiling"] == 0.0


def test_rank_reliability_ceiling_matches_a_perfect_predictor_in_simulation():
    # items with true values; every repeat adds noise. A predictor that knows the true values correlates
    # with the 3-repeat mean at about the ceiling, on average over many draws (an independent check).
    rng = np.random.default_rng(0)
    ceilings, reached = [], []
    for _ in range(400):
        true = rng.normal(size=30)
        repeats = true + rng.normal(scale=1.0, size=(3, 30))
        ceilings.append(rank_reliability(repeats)["ceiling"])
        mean = repeats.mean(axis=0)
        reached.append(np.corrcoef(rankdata(true), rankdata(mean))[0, 1])
    assert np.mean(reached) == pytest.approx(np.mean(ceilings), abs=0.05)
    assert 0.7 < np.mean(ceilings) < 0.95  # noise of the size of the spread: far from 1, far from 0


def test_rank_reliability_rejects_what_it_cannot_rank():
    with pytest.raises(ConfigError, match="repeats >= 2, items >= 3"):
        rank_reliability([[1, 2, 3]])
    with pytest.raises(ConfigError, match="repeats >= 2, items >= 3"):
        rank_reliability([[1, 2], [2, 1]])
    with pytest.raises(ConfigError, match="NaN"):
        rank_reliability([[1, 2, float("nan")], [1, 2, 3]])
