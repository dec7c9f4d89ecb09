"""Evaluation metrics for sequence classification and regression tasks.

Every evaluator in the toolkit reports through :func:`compute_metrics`, so runs are comparable and the
primary metric of a task is always a key of the same dictionary.

Primary metrics (see :func:`default_metric`):

- classification: ``accuracy`` (the GLUE headline number for SST-2, MNLI, QNLI, ...);
- regression: ``pearson_spearman``, the mean of Pearson and Spearman correlation, which is how GLUE
  folds STS-B's two correlations into one score. Both correlations are reported too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from plmkit.errors import ConfigError

CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "f1_macro", "matthews_corr")
REGRESSION_METRICS: tuple[str, ...] = ("pearson", "spearman", "pearson_spearman", "mse")
PRIMARY_METRICS: dict[str, str] = {"classification": "accuracy", "regression": "pearson_spearman"}

# Metric names (after an optional split prefix such as ``eval_``) where lower is better.
_LOWER_IS_BETTER = ("loss", "mse", "rmse", "mae", "perplexity", "error")


def compute_metrics(predictions: Any, references: Any, *, is_regression: bool) -> dict[str, float]:
    """Score predictions against references.

    Classification predictions may be class ids of shape (n,) or logits of shape (n, num_labels), which
    are reduced by argmax. Regression predictions may be (n,) or (n, 1). Constant inputs give a
    correlation of 0.0 instead of NaN, so a collapsed model scores badly rather than crashing selection.
    """
    preds = np.asarray(predictions)
    refs = np.asarray(references)
    if is_regression:
        preds = preds.reshape(len(preds), -1)[:, 0] if preds.ndim == 2 else preds
        _check_shapes(preds, refs)
        return _regression_metrics(preds.astype(np.float64), refs.astype(np.float64))
    if preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    _check_shapes(preds, refs)
    return _classification_metrics(preds.astype(np.int64), refs.astype(np.int64))


def _check_shapes(preds: np.ndarray, refs: np.ndarray) -> None:
    """Fail early with a readable message; sklearn's own errors do not say which side is wrong."""
    if preds.ndim != 1 or refs.ndim != 1:
        raise ConfigError(f"expected 1-D predictions and references, got shapes {preds.shape} and {refs.shape}")
    if len(preds) != len(refs):
        raise ConfigError(f"{len(preds)} predictions but {len(refs)} references")
    if len(refs) == 0:
        raise ConfigError("cannot compute metrics on an empty evaluation set")


def _classification_metrics(preds: np.ndarray, refs: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(refs, preds)),
        "f1_macro": float(f1_score(refs, preds, average="macro", zero_division=0)),
        "matthews_corr": float(matthews_corrcoef(refs, preds)),
    }


def _regression_metrics(preds: np.ndarray, refs: np.ndarray) -> dict[str, float]:
    pearson = _pearson(preds, refs)
    spearman = _pearson(rankdata(preds), rankdata(refs))
    return {
        "pearson": pearson,
        "spearman": spearman,
        "pearson_spearman": (pearson + spearman) / 2,
        "mse": float(np.mean((preds - refs) ** 2)),
    }


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation that is 0.0 (not NaN with a warning) when either side is constant."""
    dx, dy = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((dx**2).sum() * (dy**2).sum()))
    if denom == 0.0 or not np.isfinite(denom):
        return 0.0
    return float((dx * dy).sum() / denom)


def paired_bootstrap(a: Any, b: Any, *, rounds: int = 10_000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over paired examples, with a percentile bootstrap interval over the examples.

    ``a`` and ``b`` are per-example scores of two systems on the same examples (e.g. 1/0 for correct),
    shape (n,), or (runs, n) for several runs (seeds) on the same examples, which are averaged per
    example first, so the examples are what is resampled. Each round draws n example indices with
    replacement (``numpy.random.default_rng(seed)``) and takes the mean difference d*; the interval is
    the (1 - level)/2 and (1 + level)/2 quantiles of the d*, and ``p_not_ahead`` is the fraction of
    rounds with d* <= 0 (a one-sided bootstrap p-value for "a is ahead of b").
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ConfigError(f"paired scores must have the same shape, got {x.shape} and {y.shape}")
    if x.ndim not in (1, 2) or x.shape[-1] == 0:
        raise ConfigError(f"expected per-example scores of shape (n,) or (runs, n) with n >= 1, got {x.shape}")
    if rounds < 1 or not 0.0 < level < 1.0:
        raise ConfigError(f"need rounds >= 1 and 0 < level < 1, got rounds={rounds}, level={level}")
    diff = (x - y).reshape(-1, x.shape[-1]).mean(axis=0)  # (n,)
    n = len(diff)
    means = diff[np.random.default_rng(seed).integers(0, n, size=(rounds, n))].mean(axis=1)  # (rounds,)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high),
            "p_not_ahead": float((means <= 0).mean()), "examples": n, "runs": 1 if x.ndim == 1 else x.shape[0]}


def rank_reliability(scores: Any) -> dict[str, float]:
    """How reproducible the ranking of some items is over repeated measurements (e.g. seeds).

    ``scores`` has shape (repeats k, items m): say the transfer gain of every source (item) under every seed
    (repeat). ``agreement`` r₁ is the mean over the k(k−1)/2 pairs of repeats of the Spearman correlation
    of their score vectors: how well one measurement's ranking predicts another's. The mean of the k
    repeats is more reliable; the Spearman–Brown formula gives its reliability

        r_k = k r₁ / (1 + (k − 1) r₁)     (taken as 0 when r₁ ≤ 0)

    and ``ceiling`` = √r_k is the correlation that even a perfect predictor of the items' true order can
    be expected to reach with the k-repeat mean (correction for attenuation): a predictor judged against
    that mean by a threshold above the ceiling is being asked for more than the measurement holds.
    A constant repeat (no order) counts as correlation 0 with every other.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 3:
        raise ConfigError(f"expected scores of shape (repeats >= 2, items >= 3), got {x.shape}: "
                          "rank agreement needs two measurements of at least three items")
    if not np.isfinite(x).all():
        raise ConfigError("scores contain NaN or infinity; drop the items or repeats that were not measured")
    ranks = [rankdata(row) for row in x]  # ties share their mean rank
    k = len(ranks)
    agreement = float(np.mean([_pearson(ranks[a], ranks[b]) for a in range(k) for b in range(a + 1, k)]))
    reliability = k * agreement / (1 + (k - 1) * agreement) if agreement > 0 else 0.0
    return {"agreement": agreement, "reliability": float(reliability), "ceiling": float(np.sqrt(reliability)),
            "repeats": k, "items": int(x.shape[1])}


def default_metric(is_regression: bool, num_labels: int | None = None) -> str:
    """Primary metric for a task; ``num_labels == 1`` also means regression (the Hugging Face convention)."""
    regression = is_regression or num_labels == 1
    return PRIMARY_METRICS["regression" if regression else "classification"]


def greater_is_better(metric_name: str) -> bool:
    """Whether a larger value of ``metric_name`` is better; accepts prefixed names like ``eval_loss``."""
    name = metric_name.lower()
    for prefix in ("eval_", "test_", "validation_", "train_"):
        name = name.removeprefix(prefix)
    return not any(name == bad or name.endswith("_" + bad) for bad in _LOWER_IS_BETTER)
