"""NTPS against theory, per row of the scores table: its place between the random-subspace
baseline and 1, and whether the exact excess loss lies within its bounds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ntps.analysis._inputs import require_columns


def baseline_position(ntps: Any, baseline: Any) -> np.ndarray:
    """Where NTPS sits between the random-subspace baseline (0) and 1 (1): (ntps - b) / (1 - b).

    Negative means below the random baseline; NaN where the baseline is 1 (k = d).
    """
    s = np.asarray(ntps, dtype=float)
    b = np.asarray(baseline, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b < 1.0, (s - b) / np.where(b < 1.0, 1.0 - b, 1.0), np.nan)


def bound_check(scores: pd.DataFrame, rtol: float = 1e-8, atol: float = 1e-12) -> pd.DataFrame:
    """Check ``bound_lower <= excess_loss <= bound_upper`` row by row.

    Adds ``slack_lower`` (excess - lower), ``slack_upper`` (upper - excess) and ``bound_holds``
    (both slacks >= -tol, tol = atol + rtol * |upper|: the bounds are equalities when Cxx is
    isotropic, so floating-point noise must not count as a violation).
    """
    require_columns(scores, ["excess_loss", "bound_lower", "bound_upper"], "scores")
    out = scores.copy()
    excess = out["excess_loss"].to_numpy(float)
    lower = out["bound_lower"].to_numpy(float)
    upper = out["bound_upper"].to_numpy(float)
    tol = atol + rtol * np.abs(upper)
    out["slack_lower"] = excess - lower
    out["slack_upper"] = upper - excess
    out["bound_holds"] = (out["slack_lower"] >= -tol) & (out["slack_upper"] >= -tol)
    return out
