"""Uncertainty of the targets: the standard error of a held-out accuracy or mean, a LoRA gain's
paired-bootstrap SE and whether the gain is within its noise, and a rho's CI that carries the
measurement error of both sides."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ntps.analysis.ranks import spearman_rows
from ntps.analysis.resampling import BootstrapCI, check_resampling, percentile_ci
from ntps.errors import ConfigError, DatasetError

#: The usual "beyond noise" multiple of the standard error (about a 95% normal interval).
NOISE_MULTIPLE = 2.0


def _scalar_or_array(values: np.ndarray) -> float | np.ndarray:
    return float(values) if values.ndim == 0 else values


def accuracy_se(accuracy: Any, n_test: Any) -> float | np.ndarray:
    """Binomial standard error of a held-out accuracy, sqrt(a (1 - a) / m).

    Parameters
    ----------
    accuracy : float or array-like of shape (n,)
    n_test : int or array-like broadcastable to ``accuracy``
        Number of test texts m.

    Returns
    -------
    float or ndarray of shape (n,)
        NaN where m < 1. It is 0 at a = 0 or 1: the plain formula, as the texts' correctness is
        then constant.
    """
    a = np.asarray(accuracy, dtype=float)
    m = np.asarray(n_test, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.where(
            m >= 1, np.sqrt(np.clip(a * (1.0 - a), 0.0, None) / np.where(m >= 1, m, 1)), np.nan
        )
    return _scalar_or_array(se)


def mean_se(per_text: Any) -> float:
    """Standard error of a mean over test texts, sd / sqrt(m) (sd with ddof = 1).

    The SE of a held-out MSE from the per-text squared errors (the MSE is their mean).

    Parameters
    ----------
    per_text : array-like of shape (m,)
        Non-finite values are dropped.

    Returns
    -------
    float
        NaN with fewer than 2 finite values.
    """
    v = np.asarray(per_text, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        return math.nan
    return float(np.std(v, ddof=1) / math.sqrt(v.size))


def _per_text_pair(before: Any, after: Any) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(before, dtype=float)
    a = np.asarray(after, dtype=float)
    if b.ndim != 1 or b.shape != a.shape:
        raise DatasetError(
            f"per-text arrays must be 1-D over the same test texts, got shapes {b.shape} and "
            f"{a.shape}"
        )
    if not (np.isfinite(b).all() and np.isfinite(a).all()):
        raise DatasetError("per-text arrays contain NaN or inf")
    return b, a


def paired_bootstrap_gain_se(
    correct_before: Any, correct_after: Any, n_boot: int = 2000, seed: int = 0
) -> float:
    """SE of the gain mean(after) - mean(before) by a paired bootstrap over the same test texts.

    Each resample draws m texts with replacement and recomputes both means on the SAME texts, so
    the agreement of the two classifiers (texts both get right or both get wrong) cancels, as it
    does in the gain itself. The resample's gain is the mean of the per-text differences d_i; the
    counts of d's distinct values in a resample are multinomial, which is how it is drawn (same
    distribution as resampling the texts, O(n_boot) memory).

    Parameters
    ----------
    correct_before, correct_after : array-like of shape (m,)
        Per-text 0/1 correctness (or any per-text metric whose mean is the target) of the two
        classifiers on the same m test texts, in the same order.
    n_boot : int
        Resamples (>= 2).
    seed : int

    Returns
    -------
    float
        The SD (ddof = 1) of the resampled gains; 0 when the two agree on every text. NaN for
        m = 0. Close to sqrt(var(d) / m).
    """
    if n_boot < 2:
        raise ConfigError(f"n_boot must be >= 2 for a standard error, got {n_boot}")
    before, after = _per_text_pair(correct_before, correct_after)
    m = before.size
    if m == 0:
        return math.nan
    values, counts = np.unique(after - before, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(m, counts / m, size=n_boot)
    gains = draws @ values / m
    return float(np.std(gains, ddof=1))


def gain_within_noise(gain: Any, se: Any, multiple: float = NOISE_MULTIPLE) -> bool | np.ndarray:
    """Whether a gain is within its own noise: |gain| < ``multiple`` * SE (default 2 SE).

    A gain of exactly 0 counts as within noise (the two classifiers cannot be told apart). False
    where the SE is not finite: an unknown noise is not declared noise.

    Parameters
    ----------
    gain, se : float or array-like of shape (n,)

    Returns
    -------
    bool or ndarray of bool, shape (n,)
    """
    g = np.asarray(gain, dtype=float)
    s = np.asarray(se, dtype=float)
    with np.errstate(invalid="ignore"):
        within = np.isfinite(s) & np.isfinite(g) & ((np.abs(g) < multiple * s) | (g == 0))
    return bool(within) if within.ndim == 0 else within


def gain_uncertainty(
    correct_before: Any,
    correct_after: Any,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    multiple: float = NOISE_MULTIPLE,
) -> dict[str, Any]:
    """One pair's accuracies, gain and their uncertainty, as a table record.

    Parameters
    ----------
    correct_before, correct_after : array-like of shape (m,)
        Per-text 0/1 correctness before (e.g. the last-layer probe) and after (the LoRA model) on
        the same test texts.

    Returns
    -------
    dict
        n_texts, accuracy_before, accuracy_before_se, accuracy_after, accuracy_after_se (binomial,
        :func:`accuracy_se`), gain (after - before), gain_se (:func:`paired_bootstrap_gain_se`),
        gain_within_noise (:func:`gain_within_noise`).
    """
    before, after = _per_text_pair(correct_before, correct_after)
    m = before.size
    acc_b = float(before.mean()) if m else math.nan
    acc_a = float(after.mean()) if m else math.nan
    gain = acc_a - acc_b
    gain_se = paired_bootstrap_gain_se(before, after, n_boot=n_boot, seed=seed)
    return {
        "n_texts": int(m),
        "accuracy_before": acc_b,
        "accuracy_before_se": accuracy_se(acc_b, m),
        "accuracy_after": acc_a,
        "accuracy_after_se": accuracy_se(acc_a, m),
        "gain": gain,
        "gain_se": gain_se,
        "gain_within_noise": gain_within_noise(gain, gain_se, multiple),
    }


def error_bootstrap_ci(
    x: Any,
    y: Any,
    x_se: Any = None,
    y_se: Any = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapCI:
    """Percentile CI of Spearman rho(x, y) by a measurement-error bootstrap over datasets.

    Each resample draws datasets with replacement (as the plain dataset bootstrap,
    :func:`ntps.analysis.bootstrap_ci`) and perturbs every drawn value by its own noise:
    x_i + x_se_i z, y_i + y_se_i z', z, z' ~ N(0, 1) independent. So the interval carries the
    predictor's SE (e.g. NTPS's jackknife SE) and the target's (e.g. :func:`accuracy_se`,
    :func:`paired_bootstrap_gain_se`) beside the spread over datasets.

    The observed values already carry their error once, so this counts it twice and pulls rho
    toward 0: a sensitivity check ("would the conclusion survive the measurement noise?"), not a
    calibrated interval. With ``y_se=None`` it is exactly ``bootstrap_ci(x, y, x_se=x_se)`` for
    the same seed (draw order: dataset indices, x noise, y noise).

    Parameters
    ----------
    x, y : array-like of shape (n,)
    x_se, y_se : array-like of shape (n,), or None for no noise on that side
        Pairs with a non-finite value or SE are dropped.

    Returns
    -------
    BootstrapCI
        NaN bounds with fewer than 3 pairs; degenerate (constant) resamples are dropped and
        ``n_used`` counts the rest.
    """
    check_resampling(n_boot, level)
    columns = [np.asarray(v, dtype=float).ravel() for v in (x, y)]
    for se in (x_se, y_se):
        columns.append(
            np.zeros_like(columns[0]) if se is None else np.asarray(se, dtype=float).ravel()
        )
    if len({c.size for c in columns}) != 1:
        raise DatasetError(
            f"x, y and their SEs must have the same length, got {[c.size for c in columns]}"
        )
    keep = np.logical_and.reduce([np.isfinite(c) for c in columns])
    xa, ya, xs, ys = (c[keep] for c in columns)
    n = xa.size
    if n < 3:
        return BootstrapCI(math.nan, math.nan, 0, n_boot, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    xb = xa[idx] if x_se is None else xa[idx] + xs[idx] * rng.standard_normal((n_boot, n))
    yb = ya[idx] if y_se is None else ya[idx] + ys[idx] * rng.standard_normal((n_boot, n))
    return percentile_ci(spearman_rows(xb, yb), n_boot, level)
