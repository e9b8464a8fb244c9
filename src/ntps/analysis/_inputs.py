"""Input hygiene shared by the analysis modules: finite pairs of arrays, required table columns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ntps.errors import DatasetError


def clean_pairs(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays of equal length with pairs containing NaN/inf dropped."""
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep]


def require_columns(frame: pd.DataFrame, columns: list[str], table: str) -> None:
    """DatasetError naming the ``table`` and its columns if ``frame`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{table} table lacks column(s) {missing}; it has {sorted(map(str, frame.columns))}"
        )
