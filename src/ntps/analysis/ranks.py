"""Rank correlations across datasets: Spearman rho and Kendall tau-b, scalar and row-wise.

The row-wise versions (``spearman_rows``, ``kendall_rows``) evaluate many (x, y) pairs at once,
one per row, and agree exactly with the scalar ones: resampling and the (layer, k) grid use them.
No scipy.stats here: its import costs the table and plot jobs ~0.7 s each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ntps.analysis._inputs import clean_pairs
from ntps.errors import ConfigError

Statistic = Callable[[np.ndarray, np.ndarray], float]

_ROW_CHUNK = 512  # rows per vectorised block: bounds memory of the pairwise Kendall tensors


def pearson_rows(a: np.ndarray, b: np.ndarray, *, rtol: float = 0.0) -> np.ndarray:
    """Pearson r of each row pair along the last axis; NaN where a row is constant.

    ``a``, ``b``: shape (..., n), broadcastable; returns shape (...). ``rtol`` > 0 also counts a
    row as constant when its centred values are zero up to rounding relative to the pair's scale
    (residuals of a regression that fits exactly, e.g. in a partial correlation); 0 means exactly
    constant.
    """
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    num = (a * b).sum(axis=-1)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    if rtol > 0:
        scale = np.sqrt((a * a).sum(axis=-1) + (b * b).sum(axis=-1))
        ok = den > rtol * np.maximum(scale, 1e-300) ** 2
    else:
        ok = den > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(ok, num / np.where(ok, den, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def average_ranks(values: Any) -> np.ndarray:
    """Ranks 1..n along the last axis, tied values sharing their mean rank.

    Parameters
    ----------
    values : array-like of shape (..., n)

    Returns
    -------
    ranks : ndarray of shape (..., n), float64
        What ``scipy.stats.rankdata(values, axis=-1)`` returns (``method="average"``; a row with a
        NaN is all NaN). Here so that the table and plot jobs need not import scipy.stats (~0.7 s
        per job).
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[-1]
    order = np.argsort(x, axis=-1, kind="stable")
    ordered = np.take_along_axis(x, order, axis=-1)
    positions = np.broadcast_to(np.arange(1, n + 1, dtype=np.float64), x.shape)
    starts = np.ones(x.shape, dtype=bool)  # where a run of equal values begins
    starts[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    ends = np.ones(x.shape, dtype=bool)
    ends[..., :-1] = starts[..., 1:]
    first = np.maximum.accumulate(np.where(starts, positions, 0.0), axis=-1)
    last = np.flip(
        np.minimum.accumulate(np.flip(np.where(ends, positions, n + 1.0), -1), axis=-1), -1
    )
    ranks = np.empty_like(x)
    np.put_along_axis(ranks, order, (first + last) / 2, axis=-1)
    return np.where(np.isnan(x).any(axis=-1, keepdims=True), np.nan, ranks)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair (average ranks for ties, as scipy); NaN if a row is constant.

    ``a``, ``b``: shape (m, n) or (n,), broadcastable, n finite values per row; returns shape (m,),
    NaN for every row when n < 3.
    """
    a = np.atleast_2d(a)
    b = np.atleast_2d(b)
    if a.shape[-1] < 3:
        return np.full(np.broadcast_shapes(a.shape, b.shape)[:-1], np.nan)
    return pearson_rows(average_ranks(a), average_ranks(b))


def kendall_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall tau-b of each row pair; NaN if a row is constant.

    tau_b = sum sgn(dx) sgn(dy) / sqrt(sum sgn(dx)^2 * sum sgn(dy)^2) over ordered pairs, which is
    (concordant - discordant) / sqrt((n0 - ties_x)(n0 - ties_y)): the tau-b scipy reports.
    Shapes as :func:`spearman_rows`.
    """
    a, b = np.broadcast_arrays(np.atleast_2d(a), np.atleast_2d(b))
    if a.shape[-1] < 3:
        return np.full(a.shape[:-1], np.nan)
    out = np.empty(a.shape[0])
    for start in range(0, a.shape[0], _ROW_CHUNK):
        sa = a[start : start + _ROW_CHUNK]
        sb = b[start : start + _ROW_CHUNK]
        dx = np.sign(sa[:, :, None] - sa[:, None, :])
        dy = np.sign(sb[:, :, None] - sb[:, None, :])
        num = (dx * dy).sum(axis=(1, 2))
        den = np.sqrt((dx * dx).sum(axis=(1, 2)) * (dy * dy).sum(axis=(1, 2)))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + _ROW_CHUNK] = np.where(
                den > 0, num / np.where(den > 0, den, 1.0), np.nan
            )
    return np.clip(out, -1.0, 1.0)


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation (ties get average ranks); NaN with < 3 finite pairs or constant input."""
    xa, ya = clean_pairs(x, y)
    return float(spearman_rows(xa[None, :], ya[None, :])[0])


def kendall(x: Any, y: Any) -> float:
    """Kendall tau-b (matches ``scipy.stats.kendalltau`` with ties); NaN with < 3 pairs or constant input."""
    xa, ya = clean_pairs(x, y)
    return float(kendall_rows(xa[None, :], ya[None, :])[0])


# Vectorised twins of the two built-in statistics; other callables are evaluated in a loop.
_ROW_STATISTICS: dict[Any, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    spearman: spearman_rows,
    kendall: kendall_rows,
}


def row_statistic(
    statistic: Statistic | str,
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Row-wise evaluator for ``statistic`` (a callable or "spearman"/"kendall")."""
    if isinstance(statistic, str):
        named = {"spearman": spearman, "kendall": kendall}
        if statistic not in named:
            raise ConfigError(f"unknown statistic {statistic!r}; expected 'spearman' or 'kendall'")
        statistic = named[statistic]
    if statistic in _ROW_STATISTICS:
        return _ROW_STATISTICS[statistic]
    func = statistic

    def rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = np.broadcast_arrays(np.atleast_2d(a), np.atleast_2d(b))
        out = np.full(a.shape[0], np.nan)
        for i in range(a.shape[0]):
            # Constant resamples carry no rank information: treat them as degenerate (NaN).
            if np.ptp(a[i]) > 0 and np.ptp(b[i]) > 0:
                out[i] = float(func(a[i], b[i]))
        return out

    return rows
