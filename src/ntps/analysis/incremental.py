"""Incremental validity: does a predictor carry information about the target beyond a baseline
predictor? The partial Spearman given the baseline, pooled over models
(:func:`incremental_validity`), and leave-one-dataset-out prediction from the baseline alone vs
the baseline and the predictor (:func:`lodo_incremental_prediction`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ntps.analysis._frames import grouped, matrices, require_pairs
from ntps.analysis.power import DETECTABLE_ALPHA
from ntps.analysis.ranks import average_ranks, pearson_rows, spearman_rows
from ntps.analysis.resampling import (
    check_alternative,
    check_resampling,
    inference_fields,
    percentile_ci,
    within_model_permutations,
)
from ntps.errors import DatasetError

# Residuals of a regression on a baseline's ranks can be zero up to rounding (the predictor or
# target is a function of the baseline's ranks): count those as constant, not as noise.
_RESIDUAL_RTOL = 1e-12


def _residual_correlation_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of residuals; NaN where a residual row is zero up to rounding."""
    return pearson_rows(a, b, rtol=_RESIDUAL_RTOL)


def _residualise_rows(values: np.ndarray, on: np.ndarray) -> np.ndarray:
    """Residuals of each row of ``values`` after least squares on [1, ``on``] (same row).

    ``values``, ``on`` : (..., n). A constant ``on`` row leaves the centred values.
    """
    v = values - values.mean(axis=-1, keepdims=True)
    o = on - on.mean(axis=-1, keepdims=True)
    oo = (o * o).sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(oo > 0, (o * v).sum(axis=-1, keepdims=True) / np.where(oo > 0, oo, 1), 0)
    return v - slope * o


def _partial_rows(p: np.ndarray, t: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Partial Spearman of p and t given b along the last axis; NaN with n < 4."""
    p, t, b = np.broadcast_arrays(np.atleast_2d(p), np.atleast_2d(t), np.atleast_2d(b))
    if p.shape[-1] < 4:
        return np.full(p.shape[:-1], np.nan)
    rb = average_ranks(b)
    return _residual_correlation_rows(
        _residualise_rows(average_ranks(p), rb), _residualise_rows(average_ranks(t), rb)
    )


def partial_spearman(predictor: Any, target: Any, baseline: Any) -> float:
    """Partial Spearman correlation of a predictor P with a target T given a baseline B.

    Rank-transform all three (average ranks for ties), regress the ranks of P and of T each on
    [1, rank B] by least squares, and take the Pearson correlation of the two residuals: what P
    says about T that B's ordering does not.

    Parameters
    ----------
    predictor, target, baseline : array-like of shape (n,)
        Triples with a NaN are dropped.

    Returns
    -------
    float
        NaN with fewer than 4 triples or a residual that is zero (P or T a function of B's rank,
        or constant).
    """
    cols = [np.asarray(v, dtype=float).ravel() for v in (predictor, target, baseline)]
    if len({c.size for c in cols}) != 1:
        raise DatasetError(f"P, T and B must have the same length, got {[c.size for c in cols]}")
    keep = np.logical_and.reduce([np.isfinite(c) for c in cols])
    p, t, b = (c[keep] for c in cols)
    return float(_partial_rows(p, t, b)[0])


def incremental_validity(
    frame: pd.DataFrame,
    predictor_col: str = "score",
    target_col: str = "target",
    baseline_col: str = "baseline",
    *,
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    alternative: str = "two-sided",
) -> dict[str, Any]:
    """Does the predictor carry information about the target beyond a baseline predictor?

    Within model: each model's partial Spearman (:func:`partial_spearman`, ranks taken within
    the model, across its datasets), and their plain mean over models, as in
    :func:`ntps.analysis.pooled_within_model`. Models differ in scale, so ranks are never pooled
    across them.

    CI: bootstrap resampling datasets jointly for every model (ranks recomputed in each
    resample); resamples where some model's partial is undefined are dropped. p: permutation
    of the predictor's residuals given the baseline, within each model (Freedman-Lane: permute
    the residuals of rank P on [1, rank B], residualise the permuted vector on rank B again, and
    correlate with T's residuals), exact when (n!)^n_models <= ``n_perm``, else Monte Carlo
    with +1.

    Also reported, for context, the same pooled mean of plain Spearman rhos for P-T, B-T and P-B.
    Same dataset completeness rule as :func:`ntps.analysis.pooled_within_model`.

    Parameters
    ----------
    frame : DataFrame, one row per (model, dataset)
        Columns model, dataset, ``predictor_col``, ``target_col``, ``baseline_col`` (all at the
        same setting, e.g. the fixed mode, where a probe target is the same for both predictors).

    Returns
    -------
    dict
        n_models, n_datasets, partial_rho, partial_per_model (JSON), ci_low, ci_high,
        n_boot_used, p_value, p_exact, min_detectable (from the Freedman-Lane null, as in
        :func:`ntps.analysis.pooled_within_model`), rho_predictor_target, rho_baseline_target,
        rho_predictor_baseline, models_dropped (JSON).
    """
    check_resampling(n_boot, level)
    check_alternative(alternative)
    cols = [predictor_col, target_col, baseline_col]
    mats = matrices(frame, cols, "incremental validity")
    p, t, b = (mats.values[c] for c in cols)
    partial = _partial_rows(p, t, b) if mats.datasets else np.full(len(mats.models), np.nan)
    ok = np.isfinite(partial)
    models = [m for m, good in zip(mats.models, ok, strict=True) if good]
    p, t, b, partial = p[ok], t[ok], b[ok], partial[ok]
    n_models, n = p.shape

    def pooled_rho(u: np.ndarray, v: np.ndarray) -> float:
        return float(spearman_rows(u, v).mean()) if n_models else math.nan

    record: dict[str, Any] = {
        "n_models": n_models,
        "n_datasets": n,
        "partial_rho": math.nan,
        "partial_per_model": json.dumps(
            {m: round(float(r), 12) for m, r in zip(models, partial, strict=True)}, sort_keys=True
        ),
        "ci_low": math.nan,
        "ci_high": math.nan,
        "n_boot_used": 0,
        "p_value": math.nan,
        "p_exact": False,
        "min_detectable": math.nan,
        "rho_predictor_target": pooled_rho(p, t),
        "rho_baseline_target": pooled_rho(b, t),
        "rho_predictor_baseline": pooled_rho(p, b),
        "models_dropped": json.dumps([m for m in mats.models if m not in models]),
    }
    if n_models == 0:
        return record
    observed = float(partial.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = np.stack([_partial_rows(p[m][idx], t[m][idx], b[m][idx]) for m in range(n_models)])
    ci = percentile_ci(boot.mean(axis=0), n_boot, level)
    perms, exact = within_model_permutations(n_models, n, n_perm, seed)
    null_parts = []
    for m in range(n_models):
        rb = average_ranks(b[m])
        res_p = _residualise_rows(average_ranks(p[m]), rb)
        res_t = _residualise_rows(average_ranks(t[m]), rb)
        null_parts.append(_residual_correlation_rows(_residualise_rows(res_p[perms[m]], rb), res_t))
    null = np.stack(null_parts).mean(axis=0)
    record.update(
        partial_rho=observed,
        **inference_fields(ci, null, observed, alternative, exact, DETECTABLE_ALPHA),
    )
    return record


def incremental_validity_table(
    frame: pd.DataFrame, by: Sequence[str] = ("target", "baseline_name"), **kwargs: Any
) -> pd.DataFrame:
    """:func:`incremental_validity` for every group of ``by`` (e.g. one row per target and
    baseline predictor, the baseline's values in one column and its name in ``baseline_name``)."""
    return grouped(frame, by, lambda sub: incremental_validity(sub, **kwargs))


def _lodo_predictions(datasets: np.ndarray, design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Leave-one-dataset-out least-squares predictions of ``target`` from ``design``.

    ``design`` : (n_rows, n_features); every row of a held-out dataset is predicted from a fit
    on the other datasets' rows (minimum-norm solution if the design is rank deficient).
    """
    pred = np.full(target.size, np.nan)
    for dataset in np.unique(datasets):
        test = datasets == dataset
        train = ~test
        if not train.any():
            continue
        coef, *_ = np.linalg.lstsq(design[train], target[train], rcond=None)
        pred[test] = design[test] @ coef
    return pred


INCREMENTAL_PREDICTION_COLUMNS = (
    "scope", "n_rows", "n_datasets", "mae_mean", "mae_baseline", "mae_baseline_predictor",
    "predictor_lowers_mae",
)  # fmt: skip


def lodo_incremental_prediction(
    frame: pd.DataFrame,
    predictor_col: str = "score",
    target_col: str = "target",
    baseline_col: str = "baseline",
) -> pd.DataFrame:
    """Out-of-sample test of incremental validity: predict the target from B alone vs B + P.

    Linear least squares on the raw values, leave one dataset out: every row of the held-out
    dataset is predicted from a fit on the other datasets. Scopes: each model on its own
    (T ~ 1 + B vs T ~ 1 + B + P), and, with more than one model, ``pooled``: all models' rows
    with one intercept per model and common slopes (T ~ model + B vs T ~ model + B + P), so
    model-level offsets do not count as prediction. ``mae_mean`` is the intercepts-only fit
    (training mean, per model), for scale. With ~8 datasets the fit of B + P has 3 parameters
    on 7 points: an MAE lower by a few percent is not evidence.

    Parameters
    ----------
    frame : DataFrame, one row per (model, dataset)
        Columns model, dataset, ``predictor_col``, ``target_col``, ``baseline_col``; rows with
        a non-finite value in any are dropped.

    Returns
    -------
    DataFrame with columns ``INCREMENTAL_PREDICTION_COLUMNS``, one row per scope (models, then
    ``pooled``); ``predictor_lowers_mae`` is mae_baseline_predictor < mae_baseline.
    """
    cols = [predictor_col, target_col, baseline_col]
    require_pairs(frame, cols, "incremental prediction")
    keep = np.logical_and.reduce([np.isfinite(frame[c].to_numpy(float)) for c in cols])
    data = frame[keep].reset_index(drop=True)
    scopes: list[tuple[str, pd.DataFrame]] = [
        (str(m), g) for m, g in data.groupby("model", sort=True)
    ]
    if data["model"].nunique() > 1:
        scopes.append(("pooled", data))
    records = []
    for scope, sub in scopes:
        models = sub["model"].astype(str).to_numpy()
        dummies = (models[:, None] == np.unique(models)[None, :]).astype(float)
        b = sub[baseline_col].to_numpy(float)[:, None]
        p = sub[predictor_col].to_numpy(float)[:, None]
        t = sub[target_col].to_numpy(float)
        datasets = sub["dataset"].astype(str).to_numpy()
        errors = {}
        for name, design in (
            ("mae_mean", dummies),
            ("mae_baseline", np.hstack([dummies, b])),
            ("mae_baseline_predictor", np.hstack([dummies, b, p])),
        ):
            pred = _lodo_predictions(datasets, design, t)
            ok = np.isfinite(pred)
            errors[name] = float(np.mean(np.abs(pred[ok] - t[ok]))) if ok.any() else math.nan
        records.append(
            {
                "scope": scope,
                "n_rows": len(sub),
                "n_datasets": int(sub["dataset"].nunique()),
                **errors,
                "predictor_lowers_mae": bool(
                    errors["mae_baseline_predictor"] < errors["mae_baseline"]
                ),
            }
        )
    return pd.DataFrame(records, columns=list(INCREMENTAL_PREDICTION_COLUMNS))
