"""Uncertainty of a correlation across datasets: percentile bootstrap CIs, permutation p-values.

Also the pieces the study-level analyses share: checks of their resampling settings, a
percentile CI of resampled values, the p-value and the smallest significant value of a
permutation null, and permutations within each model or shared by all.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ntps.analysis._inputs import clean_pairs
from ntps.analysis.ranks import Statistic, row_statistic, spearman
from ntps.errors import ConfigError

ALTERNATIVES = ("two-sided", "greater", "less")


@dataclass(frozen=True)
class BootstrapCI:
    """Percentile bootstrap interval; ``n_used`` resamples were non-degenerate out of ``n_boot``."""

    low: float
    high: float
    n_used: int
    n_boot: int
    level: float


def bootstrap_ci(
    x: Any,
    y: Any,
    statistic: Statistic | str = spearman,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    x_se: Any = None,
) -> BootstrapCI:
    """Percentile CI of ``statistic(x, y)`` resampling (x_i, y_i) pairs (i.e. datasets) with replacement.

    Resamples whose statistic is undefined (a constant x or y resample) are dropped; how many were
    kept is reported. Reproducible for a fixed ``seed``.

    ``x_se`` (standard errors of the x_i, e.g. the jackknife SE of each dataset's NTPS) adds
    within-dataset measurement error: each resampled x_i also gets ``x_se_i * z``, z ~ N(0, 1).
    The observed x_i already carries its error once, so this counts it twice, and noise in x pulls
    the statistic toward 0 (attenuation): a sensitivity check, not a calibrated interval.
    Pairs whose SE is not finite are dropped with them.
    """
    if not 0 < level < 1:
        raise ConfigError(f"bootstrap level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")
    if x_se is None:
        xa, ya = clean_pairs(x, y)
        sa = None
    else:
        xs, ys, ss = (np.asarray(v, dtype=float).ravel() for v in (x, y, x_se))
        keep = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(ss)
        xa, ya, sa = xs[keep], ys[keep], ss[keep]
    n = xa.size
    if n < 3:
        return BootstrapCI(math.nan, math.nan, 0, n_boot, level)
    rows = row_statistic(statistic)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    xb = xa[idx] if sa is None else xa[idx] + sa[idx] * rng.standard_normal((n_boot, n))
    values = rows(xb, ya[idx])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return BootstrapCI(math.nan, math.nan, 0, n_boot, level)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return BootstrapCI(float(low), float(high), int(values.size), n_boot, level)


def permutation_pvalue(
    x: Any,
    y: Any,
    statistic: Statistic | str = spearman,
    n_perm: int = 10000,
    seed: int = 0,
    alternative: str = "two-sided",
) -> float:
    """Permutation p-value of ``statistic(x, y)`` under exchangeability of y.

    Exact (all n! orderings, identity included, so no correction) when n! <= n_perm; otherwise
    Monte Carlo with the +1 correction, p = (1 + #{extreme}) / (1 + n_perm), never 0.
    "two-sided" compares |T|. NaN when the observed statistic is undefined.
    """
    if alternative not in ALTERNATIVES:
        raise ConfigError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    xa, ya = clean_pairs(x, y)
    n = xa.size
    rows = row_statistic(statistic)
    observed = float(rows(xa[None, :], ya[None, :])[0]) if n >= 3 else math.nan
    if not math.isfinite(observed):
        return math.nan
    exact = math.factorial(n) <= n_perm
    if exact:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.intp)
    else:
        rng = np.random.default_rng(seed)
        perms = rng.permuted(np.tile(np.arange(n), (n_perm, 1)), axis=1)
    values = rows(np.broadcast_to(xa, perms.shape), ya[perms])
    values = values[np.isfinite(values)]
    # Rank statistics take few distinct values; the tolerance keeps floating-point noise from
    # splitting ties with the observed value.
    eps = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        count = int(np.sum(values >= observed - eps))
    elif alternative == "less":
        count = int(np.sum(values <= observed + eps))
    else:
        count = int(np.sum(np.abs(values) >= abs(observed) - eps))
    if exact:
        return count / values.size
    return (1 + count) / (1 + values.size)


# --------------------------------------------------------------------------------------------
# Pieces of the study-level analyses (uncertainty, pooled, across, incremental, power)
# --------------------------------------------------------------------------------------------


def check_resampling(n_boot: int, level: float) -> None:
    if not 0 < level < 1:
        raise ConfigError(f"bootstrap level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")


def check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ConfigError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


def percentile_ci(values: np.ndarray, n_boot: int, level: float) -> BootstrapCI:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return BootstrapCI(math.nan, math.nan, 0, n_boot, level)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return BootstrapCI(float(low), float(high), int(values.size), n_boot, level)


def _tail_count(values: np.ndarray, observed: float, alternative: str) -> int:
    # Rank statistics take few distinct values; the tolerance keeps floating-point noise from
    # splitting ties with the observed value.
    eps = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        return int(np.sum(values >= observed - eps))
    if alternative == "less":
        return int(np.sum(values <= observed + eps))
    return int(np.sum(np.abs(values) >= abs(observed) - eps))


def pvalue_from_null(values: np.ndarray, observed: float, alternative: str, exact: bool) -> float:
    """p from a permutation distribution: exact (identity included) or Monte Carlo with +1."""
    if not math.isfinite(observed):
        return math.nan
    values = values[np.isfinite(values)]
    count = _tail_count(values, observed, alternative)
    if exact:
        return count / values.size
    return (1 + count) / (1 + values.size)


def threshold_from_null(values: np.ndarray, alpha: float, exact: bool) -> float:
    """Smallest |statistic| a permutation test with null ``values`` calls significant.

    Two-sided, p = P(|null| >= |t|) (exact) or (1 + #) / (1 + draws) (Monte Carlo), as
    :func:`pvalue_from_null` computes it; the threshold is one of the null's own magnitudes. NaN
    when none reaches p < ``alpha``.
    """
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    magnitudes, counts = np.unique(np.round(np.abs(values), 12), return_counts=True)
    at_least = np.cumsum(counts[::-1])[::-1]  # #{|null| >= magnitudes[i]}
    p = at_least / values.size if exact else (1 + at_least) / (1 + values.size)
    reach = np.flatnonzero(p < alpha)
    return float(magnitudes[reach[0]]) if reach.size else math.nan


def within_model_permutations(
    n_models: int, n: int, n_perm: int, seed: int
) -> tuple[list[np.ndarray], bool]:
    """Index arrays that permute each model's datasets independently.

    Returns one (n_draws, n) array per model and whether the set is exact: all (n!)^n_models
    combinations (identity included) when that count is <= ``n_perm``, else ``n_perm`` Monte
    Carlo draws, each model's permutation drawn independently.
    """
    total = math.factorial(n) ** n_models
    if total <= n_perm:
        base = np.array(list(itertools.permutations(range(n))), dtype=np.intp)
        which = np.unravel_index(np.arange(total), (len(base),) * n_models)
        return [base[w] for w in which], True
    rng = np.random.default_rng(seed)
    tiled = np.tile(np.arange(n), (n_perm, 1))
    return [rng.permuted(tiled, axis=1) for _ in range(n_models)], False


def shared_permutations(n: int, n_perm: int, seed: int) -> tuple[np.ndarray, bool]:
    """(n_draws, n) permutations of n items: all n! when n! <= n_perm, else Monte Carlo."""
    if math.factorial(n) <= n_perm:
        return np.array(list(itertools.permutations(range(n))), dtype=np.intp), True
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n), (n_perm, 1)), axis=1), False


def inference_fields(
    ci: BootstrapCI, null: np.ndarray, observed: float, alternative: str, exact: bool, alpha: float
) -> dict[str, Any]:
    """The CI, permutation p and smallest detectable |statistic| of one statistic, as record fields.

    ``null`` holds the statistic's permutation distribution, shape (n_permutations,); ``exact``
    says it enumerates every permutation. Shared by the pooled and incremental views so their
    tables carry the same columns in the same order.
    """
    return {
        "ci_low": ci.low,
        "ci_high": ci.high,
        "n_boot_used": ci.n_used,
        "p_value": pvalue_from_null(null, observed, alternative, exact),
        "p_exact": exact,
        "min_detectable": threshold_from_null(null, alpha, exact),
    }
