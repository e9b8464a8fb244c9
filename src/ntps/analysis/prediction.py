"""What NTPS says about LoRA: the gain predicted from NTPS, and how NTPS changes with LoRA."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ntps.analysis._inputs import clean_pairs, require_columns
from ntps.errors import DatasetError


@dataclass(frozen=True)
class GainPrediction:
    """``predictions``: one row per (scope, model, dataset); ``summary``: errors per scope."""

    predictions: pd.DataFrame
    summary: pd.DataFrame


def _lodo_fit_predict(
    datasets: np.ndarray, design: np.ndarray, gain: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-dataset-out least-squares and training-mean predictions for every row."""
    pred = np.full(gain.size, np.nan)
    base = np.full(gain.size, np.nan)
    for dataset in np.unique(datasets):
        test = datasets == dataset
        train = ~test
        if not train.any():
            continue
        # lstsq returns the minimum-norm solution when the design is rank deficient (e.g. constant
        # NTPS): predictions then reduce to the training mean, i.e. the baseline.
        coef, *_ = np.linalg.lstsq(design[train], gain[train], rcond=None)
        pred[test] = design[test] @ coef
        base[test] = gain[train].mean()
    return pred, base


def predict_gain_lodo(
    frame: pd.DataFrame,
    *,
    ntps_col: str = "ntps",
    gain_col: str = "gain",
    size_col: str = "n_params",
) -> GainPrediction:
    """Predict LoRA gain from NTPS, leave-one-dataset-out, per model and pooled over models.

    Model: gain ~ a + b * ntps, plus c * log(n_params) when the scope holds more than one model
    size. Every row of the held-out dataset (all models, in the pooled scope) is predicted from a
    fit on the other datasets. Baseline: the mean gain of the same training rows (ignores NTPS).
    Summary columns: scope, n_rows, n_datasets, uses_size, mae, rmse, mae_baseline, rmse_baseline.
    """
    require_columns(frame, ["model", "dataset", ntps_col, gain_col], "gain")
    data = frame.dropna(subset=[ntps_col, gain_col]).reset_index(drop=True)
    has_size = size_col in data.columns
    scopes: list[tuple[str, pd.DataFrame]] = [
        (str(m), g) for m, g in data.groupby("model", sort=True)
    ]
    scopes.append(("pooled", data))
    pred_parts = []
    summary = []
    for scope, sub in scopes:
        ntps = sub[ntps_col].to_numpy(float)
        gain = sub[gain_col].to_numpy(float)
        columns = [np.ones_like(ntps), ntps]
        uses_size = bool(has_size and sub[size_col].nunique() > 1)
        if uses_size:
            sizes = sub[size_col].to_numpy(float)
            if np.any(sizes <= 0):
                raise DatasetError(f"column {size_col!r} must be positive to take its log")
            columns.append(np.log(sizes))
        pred, base = _lodo_fit_predict(sub["dataset"].to_numpy(), np.column_stack(columns), gain)
        part = pd.DataFrame(
            {
                "scope": scope,
                "model": sub["model"].to_numpy(),
                "dataset": sub["dataset"].to_numpy(),
                "ntps": ntps,
                "gain": gain,
                "pred": pred,
                "pred_baseline": base,
            }
        )
        pred_parts.append(part)
        ok = np.isfinite(pred)
        err = pred[ok] - gain[ok]
        err_b = base[ok] - gain[ok]
        summary.append(
            {
                "scope": scope,
                "n_rows": int(ok.sum()),
                "n_datasets": int(sub["dataset"].nunique()),
                "uses_size": uses_size,
                "mae": float(np.mean(np.abs(err))) if ok.any() else math.nan,
                "rmse": float(np.sqrt(np.mean(err**2))) if ok.any() else math.nan,
                "mae_baseline": float(np.mean(np.abs(err_b))) if ok.any() else math.nan,
                "rmse_baseline": float(np.sqrt(np.mean(err_b**2))) if ok.any() else math.nan,
            }
        )
    return GainPrediction(pd.concat(pred_parts, ignore_index=True), pd.DataFrame(summary))


def paired_change(before: Any, after: Any) -> dict[str, float]:
    """Summary of after - before over pairs (NaN pairs dropped): n, share_rose (after > before),
    mean_change, median_change, wilcoxon_p (two-sided signed-rank; NaN if all changes are 0)."""
    b, a = clean_pairs(before, after)
    diff = a - b
    n = diff.size
    if n == 0:
        return {
            "n": 0,
            "share_rose": math.nan,
            "mean_change": math.nan,
            "median_change": math.nan,
            "wilcoxon_p": math.nan,
        }
    if np.all(diff == 0):
        p = math.nan
    else:
        from scipy.stats import wilcoxon  # here: scipy.stats costs every importer ~0.7 s

        p = float(wilcoxon(diff, alternative="two-sided").pvalue)
    return {
        "n": int(n),
        "share_rose": float(np.mean(diff > 0)),
        "mean_change": float(diff.mean()),
        "median_change": float(np.median(diff)),
        "wilcoxon_p": p,
    }
