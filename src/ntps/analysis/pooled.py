"""Correlations pooled over models: within model, across datasets (the paper's view), the models'
Spearman rhos combined (:func:`pooled_within_model`); and one rho over all (model, dataset) pairs
(:func:`pooled_all_pairs`).

Frames and resampling as in :mod:`ntps.analysis` ("Study-level frames"): the models share their
datasets, so a bootstrap draws one set of dataset indices and applies it to every model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ntps.analysis._frames import grouped, matrices
from ntps.analysis.power import DETECTABLE_ALPHA
from ntps.analysis.ranks import average_ranks, pearson_rows, spearman, spearman_rows
from ntps.analysis.resampling import (
    check_alternative,
    check_resampling,
    inference_fields,
    percentile_ci,
    shared_permutations,
    within_model_permutations,
)


def pooled_within_model(
    frame: pd.DataFrame,
    x_col: str = "score",
    y_col: str = "target",
    *,
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    alternative: str = "two-sided",
) -> dict[str, Any]:
    """Per-model Spearman rhos across datasets, combined over models.

    Pooled rho: the plain mean of the per-model rhos, NOT Fisher z. With ~8 datasets a model's
    rho of +-1 is attainable (z infinite), and the inference below calibrates the mean itself
    (bootstrap and permutation distributions of the same statistic), so no variance-stabilising
    transform is needed.

    CI: percentile bootstrap that resamples datasets jointly, the same dataset indices for every
    model, which keeps the models' dependence through shared datasets. Resamples where some
    model's rho is undefined (a constant resample) are dropped (``n_boot_used``).

    p: permutation test that permutes the target within each model, independently across models
    (null: no model's target is related to its predictor). Exact over all (n!)^n_models
    combinations when that is <= ``n_perm``, else Monte Carlo with the +1 correction.

    Only datasets where every model has a finite (x, y) pair are used (``n_datasets``,
    ``datasets_dropped``); models whose rho is undefined there (constant x or y) are left out
    (``models_dropped``).

    Parameters
    ----------
    frame : DataFrame, one row per (model, dataset)
        Columns model, dataset, ``x_col``, ``y_col``.

    Returns
    -------
    dict
        n_models, n_datasets, rho_pooled, rho_min, rho_max, rho_per_model (JSON {model: rho}),
        ci_low, ci_high, n_boot_used, p_value, p_exact, min_detectable (the smallest |pooled
        rho| this permutation test calls significant at two-sided p < 0.05, from its own null
        distribution), pooling ("mean"), models_dropped, datasets_dropped (JSON lists).
    """
    check_resampling(n_boot, level)
    check_alternative(alternative)
    mats = matrices(frame, [x_col, y_col], "pooled within-model")
    x, y = mats.values[x_col], mats.values[y_col]
    rho = spearman_rows(x, y) if mats.datasets else np.full(len(mats.models), np.nan)
    ok = np.isfinite(rho)
    models = [m for m, good in zip(mats.models, ok, strict=True) if good]
    x, y, rho = x[ok], y[ok], rho[ok]
    n_models, n = x.shape
    record: dict[str, Any] = {
        "n_models": n_models,
        "n_datasets": n,
        "rho_pooled": math.nan,
        "rho_min": math.nan,
        "rho_max": math.nan,
        "rho_per_model": json.dumps(
            {m: round(float(r), 12) for m, r in zip(models, rho, strict=True)}, sort_keys=True
        ),
        "ci_low": math.nan,
        "ci_high": math.nan,
        "n_boot_used": 0,
        "p_value": math.nan,
        "p_exact": False,
        "min_detectable": math.nan,
        "pooling": "mean",
        "models_dropped": json.dumps([m for m in mats.models if m not in models]),
        "datasets_dropped": json.dumps(mats.dropped_datasets),
    }
    if n_models == 0:
        return record
    observed = float(rho.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    # The plain mean over models: NaN (dropped) where any model's rho is undefined.
    boot = np.stack([spearman_rows(x[m][idx], y[m][idx]) for m in range(n_models)]).mean(axis=0)
    ci = percentile_ci(boot, n_boot, level)
    perms, exact = within_model_permutations(n_models, n, n_perm, seed)
    rx, ry = average_ranks(x), average_ranks(y)  # ranks permute with the values
    null = np.stack([pearson_rows(rx[m], ry[m][perms[m]]) for m in range(n_models)]).mean(0)
    record.update(
        rho_pooled=observed,
        rho_min=float(rho.min()),
        rho_max=float(rho.max()),
        **inference_fields(ci, null, observed, alternative, exact, DETECTABLE_ALPHA),
    )
    return record


def pooled_within_model_table(
    frame: pd.DataFrame, by: Sequence[str] = ("target", "mode"), **kwargs: Any
) -> pd.DataFrame:
    """:func:`pooled_within_model` for every group of ``by`` (e.g. one row per target and mode,
    from :func:`ntps.analysis.selected_pairs` frames concatenated with a ``target`` column)."""
    return grouped(frame, by, lambda sub: pooled_within_model(sub, **kwargs))


def pooled_all_pairs(
    frame: pd.DataFrame,
    x_col: str = "score",
    y_col: str = "target",
    *,
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    alternative: str = "two-sided",
    min_models: int = 2,
) -> dict[str, Any]:
    """Spearman rho over all (model, dataset) pairs at once (between- and within-model spread).

    CI: bootstrap over datasets as clusters (resample datasets; each drawn dataset brings all its
    models' pairs), since pairs sharing a dataset are not independent. p: one permutation of the
    datasets' targets shared by all models (each model keeps its own targets, so model-level
    offsets stay; null: which dataset a target belongs to is unrelated to the predictor). Exact
    when n_datasets! <= ``n_perm``. Same dataset completeness rule as :func:`pooled_within_model`.

    Returns
    -------
    dict
        n_models, n_datasets, n_pairs, rho, ci_low, ci_high, n_boot_used, p_value, p_exact,
        min_detectable (from this test's null distribution, as in :func:`pooled_within_model`),
        reason ("" or why the row is empty: fewer than ``min_models`` models).
    """
    check_resampling(n_boot, level)
    check_alternative(alternative)
    mats = matrices(frame, [x_col, y_col], "pooled all-pairs")
    x, y = mats.values[x_col], mats.values[y_col]
    n_models, n = x.shape
    record: dict[str, Any] = {
        "n_models": n_models,
        "n_datasets": n,
        "n_pairs": n_models * n,
        "rho": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "n_boot_used": 0,
        "p_value": math.nan,
        "p_exact": False,
        "min_detectable": math.nan,
        "reason": "",
    }
    if n_models < min_models:
        record["reason"] = (
            f"fewer than {min_models} models ({n_models}): the pooled view needs several models"
        )
        return record
    if n < 2:
        record["reason"] = f"{n} dataset(s) with every model's pair: too few"
        return record
    observed = spearman(x.ravel(), y.ravel())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    xb = x[:, idx].transpose(1, 0, 2).reshape(n_boot, -1)
    yb = y[:, idx].transpose(1, 0, 2).reshape(n_boot, -1)
    ci = percentile_ci(spearman_rows(xb, yb), n_boot, level)
    perms, exact = shared_permutations(n, n_perm, seed)
    yp = y[:, perms].transpose(1, 0, 2).reshape(len(perms), -1)
    null = spearman_rows(x.ravel(), yp)
    record.update(
        rho=observed,
        **inference_fields(ci, null, observed, alternative, exact, DETECTABLE_ALPHA),
    )
    return record


def pooled_all_pairs_table(
    frame: pd.DataFrame, by: Sequence[str] = ("target", "mode"), **kwargs: Any
) -> pd.DataFrame:
    """:func:`pooled_all_pairs` for every group of ``by``."""
    return grouped(frame, by, lambda sub: pooled_all_pairs(sub, **kwargs))
