"""Metrics checked against values worked out by hand, not against sklearn/scipy calls."""

import math
import warnings

import numpy as np
import pytest

from plmkit.metrics import (
    CLASSIFICATION_METRICS,
    PRIMARY_METRICS,
    REGRESSION_METRICS,
    compute_metrics,
    default_metric,
    greater_is_better,
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
