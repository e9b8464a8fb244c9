"""Power, in plain words: the smallest correlation n points can show
(:func:`min_detectable_correlation`) and a one-line reading of a correlation's CI against the
rho a pre-screen needs (:func:`read_correlation`, :func:`evidence_line`)."""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import pandas as pd

from ntps.analysis.resampling import threshold_from_null
from ntps.errors import ConfigError, DatasetError

#: The correlation a pre-screen must reach to be useful, for :func:`read_correlation`.
USEFUL_RHO = 0.5
#: Level of the "smallest detectable correlation" (two-sided): p < 0.05.
DETECTABLE_ALPHA = 0.05
_EXACT_MAX_N = 9  # 9! = 362880 orderings: exact enumeration is cheap up to here


def _null_values(n: int, statistic: str, perms: np.ndarray) -> np.ndarray:
    """Correlation of the identity ordering with each row of ``perms`` (no ties)."""
    if statistic == "spearman":
        d2 = ((perms - np.arange(n)) ** 2).sum(axis=1)
        return 1.0 - 6.0 * d2 / (n * (n * n - 1))
    inversions = np.zeros(len(perms), dtype=np.int64)
    for i in range(n - 1):
        inversions += (perms[:, i : i + 1] > perms[:, i + 1 :]).sum(axis=1)
    return 1.0 - 4.0 * inversions / (n * (n - 1))


@lru_cache(maxsize=64)
def _min_detectable(n: int, statistic: str, alpha: float, n_perm: int, seed: int) -> float:
    exact = n <= _EXACT_MAX_N
    if exact:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
        values = _null_values(n, statistic, perms)
    else:
        rng = np.random.default_rng(seed)
        chunks = []
        for start in range(0, n_perm, 20000):
            size = min(20000, n_perm - start)
            chunks.append(
                _null_values(n, statistic, rng.permuted(np.tile(np.arange(n), (size, 1)), axis=1))
            )
        values = np.concatenate(chunks)
    return threshold_from_null(values, alpha, exact)


def min_detectable_correlation(
    n: int,
    *,
    statistic: str = "spearman",
    alpha: float = 0.05,
    n_perm: int = 100_000,
    seed: int = 0,
) -> float:
    """Smallest |correlation| that can reach two-sided p < ``alpha`` with n points.

    From the permutation null distribution of Spearman's rho (or Kendall's tau) for n untied
    points, the test :func:`ntps.analysis.permutation_pvalue` runs: p = P(|R| >= |r|). Exact
    enumeration of all n! orderings for n <= 9; beyond, ``n_perm`` Monte Carlo orderings
    (seeded) with the +1 correction, the threshold being one of the sampled values. Ties in the
    data only coarsen the distribution; this is the untied reference.

    Parameters
    ----------
    n : int
        Number of points (datasets for a within-model correlation, models for an across-model
        one).

    Returns
    -------
    float
        The attainable |rho| (or |tau|) at the threshold, e.g. 0.738 for Spearman at n = 8
        (p = 0.0458 there, 0.0576 at the next value down). NaN when no value reaches it (n <= 4
        for either): such an n cannot show anything at that level.
    """
    if statistic not in ("spearman", "kendall"):
        raise ConfigError(f"statistic must be 'spearman' or 'kendall', got {statistic!r}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    if n < 3:
        return math.nan
    return _min_detectable(int(n), statistic, float(alpha), int(n_perm), int(seed))


def read_correlation(
    ci_low: float, ci_high: float, useful: float = USEFUL_RHO, symbol: str = "rho"
) -> str:
    """One-line reading of a correlation from its CI (the claim's direction is positive).

    ``useful`` is the rho a pre-screen would need to be worth computing (default 0.5); ``symbol``
    names the statistic in the text (e.g. "tau", with :func:`useful_tau` as ``useful``). Rules,
    first match wins; the category is the text before the colon:

    1. a bound is NaN -> "no reading: the correlation or its CI is undefined"
    2. ci_low >= useful -> "positive evidence: CI excludes rho < {useful}"
    3. ci_low > 0 and ci_high < useful ->
       "weak positive evidence: CI excludes 0 and rho >= {useful}"
    4. ci_low > 0 -> "positive evidence: CI excludes 0"
    5. ci_high < 0 -> "negative evidence: CI excludes rho >= 0 (reversed)"
    6. ci_high < useful -> "negative evidence: CI excludes rho >= {useful} (spans both signs)"
    7. otherwise (ci_low <= 0 and ci_high >= useful) -> "inconclusive: CI spans both signs"

    So "negative evidence" is evidence against a useful pre-screen, not for "no relation": the
    sign is open in rule 6.
    """
    low, high = float(ci_low), float(ci_high)
    u = f"{useful:.2g}"
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no reading: the correlation or its CI is undefined"
    if low >= useful:
        return f"positive evidence: CI excludes {symbol} < {u}"
    if low > 0:
        if high < useful:
            return f"weak positive evidence: CI excludes 0 and {symbol} >= {u}"
        return "positive evidence: CI excludes 0"
    if high < 0:
        return f"negative evidence: CI excludes {symbol} >= 0 (reversed)"
    if high < useful:
        return f"negative evidence: CI excludes {symbol} >= {u} (spans both signs)"
    return "inconclusive: CI spans both signs"


def useful_tau(useful_rho: float = USEFUL_RHO) -> float:
    """The Kendall tau that goes with a Spearman rho, for reading a tau against the same bar.

    Under a bivariate normal with Pearson r, rho_S = (6 / pi) asin(r / 2) and
    tau = (2 / pi) asin(r); so rho_S = 0.5 corresponds to tau = 0.346. Tau is smaller than rho
    for the same association, and reading a tau against the rho bar would be stricter.
    """
    if not -1 <= useful_rho <= 1:
        raise ConfigError(f"useful rho must be in [-1, 1], got {useful_rho}")
    r = 2.0 * math.sin(math.pi * useful_rho / 6.0)
    return 2.0 / math.pi * math.asin(r)


def evidence_line(
    n: int,
    rho: float,
    ci_low: float,
    ci_high: float,
    *,
    unit: str = "datasets",
    statistic: str = "spearman",
    symbol: str = "rho",
    useful: float = USEFUL_RHO,
    threshold: float | None = None,
) -> str:
    """A correlation with its CI, what n could detect, and its reading, in one line.

    e.g. "rho = -0.47 [-0.97, 0.41] over 8 datasets (p < 0.05 needs |rho| >= 0.74):
    inconclusive: CI spans both signs". ``threshold``: the smallest detectable value when the
    test is not a single untied correlation over n points (a pooled test's own, e.g. the
    ``min_detectable`` of :func:`ntps.analysis.pooled_within_model`); default
    :func:`min_detectable_correlation` of n.
    """
    if threshold is None:
        threshold = min_detectable_correlation(n, statistic=statistic)
    can = (
        f"p < 0.05 needs |{symbol}| >= {threshold:.2f}"
        if math.isfinite(threshold)
        else "no value can reach p < 0.05"
    )
    return (
        f"{symbol} = {rho:.2f} [{ci_low:.2f}, {ci_high:.2f}] over {n} {unit} ({can}): "
        f"{read_correlation(ci_low, ci_high, useful, symbol)}"
    )


def with_power_columns(
    table: pd.DataFrame,
    *,
    n_col: str = "n_datasets",
    ci_low_col: str = "ci_low",
    ci_high_col: str = "ci_high",
    statistic: str = "spearman",
    useful: float = USEFUL_RHO,
    symbol: str = "rho",
) -> pd.DataFrame:
    """A correlation table with ``min_detectable`` (:func:`min_detectable_correlation` of its n)
    and ``reading`` (:func:`read_correlation` of its CI) added as columns."""
    missing = [c for c in (n_col, ci_low_col, ci_high_col) if c not in table.columns]
    if missing:
        raise DatasetError(f"correlation table lacks column(s) {missing}")
    out = table.copy()
    out["min_detectable"] = [
        min_detectable_correlation(int(n), statistic=statistic) if pd.notna(n) else math.nan
        for n in out[n_col]
    ]
    out["reading"] = [
        read_correlation(lo, hi, useful, symbol)
        for lo, hi in zip(out[ci_low_col], out[ci_high_col], strict=True)
    ]
    return out
