"""Across models, per dataset (the model-selection view of the transferability literature): which
model should I fine-tune? Kendall's tau and top-weighted tau between a predictor and a target
across the models of each dataset, averaged over datasets (:func:`across_models`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ntps.analysis._frames import grouped, require_pairs
from ntps.analysis.ranks import kendall
from ntps.analysis.resampling import check_resampling, percentile_ci
from ntps.errors import ConfigError, DatasetError

#: Fewest models per dataset for the across-model view (with 2, tau is +-1 by construction).
MIN_MODELS_ACROSS = 3


def weighted_tau(x: Any, y: Any, top: str = "high") -> float:
    """Top-weighted Kendall tau, as the transferability literature reports it.

    ``scipy.stats.weightedtau`` with its defaults: additive hyperbolic weights (an exchange of
    the elements ranked r and s, from 0, weighs 1/(r + 1) + 1/(s + 1)), and ``rank=True``, the
    average of the values obtained with importance ranked by decreasing (x, y) and by
    decreasing (y, x). So the "top" is the LARGEST values: with the study's signed targets, the
    best models by the target (highest accuracy, lowest MSE) and by the predictor.
    ``top="low"`` weights the smallest values instead (both negated; concordance is unchanged).

    Parameters
    ----------
    x, y : array-like of shape (n,)
        Pairs with NaN are dropped.

    Returns
    -------
    float
        NaN with fewer than 2 pairs or a constant x or y.
    """
    if top not in ("high", "low"):
        raise ConfigError(f"top must be 'high' or 'low', got {top!r}")
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise DatasetError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    if xa.size < 2 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return math.nan
    from scipy.stats import weightedtau  # here: scipy.stats costs every importer ~0.7 s

    if top == "low":
        xa, ya = -xa, -ya
    return float(weightedtau(xa, ya).statistic)


@dataclass(frozen=True)
class AcrossModels:
    """``per_dataset``: one row per dataset; ``summary``: their mean over datasets, one record."""

    per_dataset: pd.DataFrame
    summary: dict[str, Any]


PER_DATASET_COLUMNS = ("dataset", "n_models", "tau", "tau_w", "reason")


def across_models(
    frame: pd.DataFrame,
    x_col: str = "score",
    y_col: str = "target",
    *,
    min_models: int = MIN_MODELS_ACROSS,
    top: str = "high",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> AcrossModels:
    """Which model should I fine-tune? Rank agreement across models, one dataset at a time.

    For each dataset: Kendall tau-b (:func:`ntps.analysis.kendall`) and weighted tau
    (:func:`weighted_tau`) between predictor and target across the models with a finite pair; a
    dataset with fewer than ``min_models`` models, or a constant predictor or target across
    them, gets NaN and a ``reason``. Summary: the mean of each over the datasets where it is
    defined, with a percentile bootstrap CI resampling those datasets (tau and tau_w with the
    same indices; needs >= 2 datasets).

    Fewer than ``min_models`` models in the whole frame is not an error: every value is NaN and
    ``reason`` says why, for the summary to print.

    Parameters
    ----------
    frame : DataFrame, one row per (model, dataset)
        Columns model, dataset, ``x_col``, ``y_col``.

    Returns
    -------
    AcrossModels
        per_dataset columns ``PER_DATASET_COLUMNS``; summary keys n_models, n_datasets (with a
        defined tau), mean_tau, tau_ci_low, tau_ci_high, mean_tau_w, tau_w_ci_low, tau_w_ci_high,
        n_boot_used, top, reason.
    """
    check_resampling(n_boot, level)
    if min_models < 3:
        raise ConfigError(f"min_models must be >= 3 (tau over 2 models is +-1), got {min_models}")
    require_pairs(frame, [x_col, y_col], "across-model")
    n_models_all = int(frame["model"].nunique())
    rows = []
    for dataset, sub in frame.groupby("dataset", sort=True):
        x = sub[x_col].to_numpy(float)
        y = sub[y_col].to_numpy(float)
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        reason = ""
        tau = tau_w = math.nan
        if x.size < min_models:
            reason = f"fewer than {min_models} models ({x.size})"
        elif np.ptp(x) == 0:
            reason = "predictor constant across models"
        elif np.ptp(y) == 0:
            reason = "target constant across models"
        else:
            tau, tau_w = kendall(x, y), weighted_tau(x, y, top)
        rows.append((str(dataset), int(x.size), tau, tau_w, reason))
    per_dataset = pd.DataFrame(rows, columns=list(PER_DATASET_COLUMNS))
    summary: dict[str, Any] = {
        "n_models": n_models_all,
        "n_datasets": 0,
        "mean_tau": math.nan,
        "tau_ci_low": math.nan,
        "tau_ci_high": math.nan,
        "mean_tau_w": math.nan,
        "tau_w_ci_low": math.nan,
        "tau_w_ci_high": math.nan,
        "n_boot_used": 0,
        "top": top,
        "reason": "",
    }
    if n_models_all < min_models:
        summary["reason"] = (
            f"fewer than {min_models} models ({n_models_all}): ranking models within a dataset "
            f"needs at least {min_models}"
        )
        return AcrossModels(per_dataset, summary)
    defined = per_dataset.dropna(subset=["tau", "tau_w"])
    values = defined[["tau", "tau_w"]].to_numpy(float)
    summary["n_datasets"] = len(defined)
    if len(defined) == 0:
        summary["reason"] = "no dataset has a defined tau (too few models per dataset or constants)"
        return AcrossModels(per_dataset, summary)
    summary["mean_tau"], summary["mean_tau_w"] = (float(v) for v in values.mean(axis=0))
    if len(defined) >= 2:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(defined), size=(n_boot, len(defined)))
        boot = values[idx].mean(axis=1)  # (n_boot, 2)
        ci_tau = percentile_ci(boot[:, 0], n_boot, level)
        ci_w = percentile_ci(boot[:, 1], n_boot, level)
        summary.update(
            tau_ci_low=ci_tau.low,
            tau_ci_high=ci_tau.high,
            tau_w_ci_low=ci_w.low,
            tau_w_ci_high=ci_w.high,
            n_boot_used=ci_tau.n_used,
        )
    else:
        summary["reason"] = "one dataset with a defined tau: no CI"
    return AcrossModels(per_dataset, summary)


def across_models_table(
    frame: pd.DataFrame, by: Sequence[str] = ("target", "mode"), **kwargs: Any
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`across_models` for every group of ``by``: (per-dataset rows, summary rows), both
    keyed by the ``by`` columns."""
    per_dataset: list[pd.DataFrame] = []

    def one(sub: pd.DataFrame) -> dict[str, Any]:
        result = across_models(sub, **kwargs)
        keys = {c: sub[c].iloc[0] for c in by}
        per_dataset.append(result.per_dataset.assign(**keys))
        return result.summary

    summary = grouped(frame, by, one)
    columns = [*by, *PER_DATASET_COLUMNS]
    details = (
        pd.concat(per_dataset, ignore_index=True)[columns]
        if per_dataset
        else pd.DataFrame(columns=columns)
    )
    return details, summary
