"""Evidence for a verdict: noisy targets, pooled/across-model views, incremental validity, power.

Everything here is a pure function of numpy arrays or tidy pandas frames (no file I/O).

Frames
------
The study-level functions take the frames the study already builds: one row per (model, dataset)
with a predictor column and a target column, by default ``score`` and ``target`` as
:func:`ntps.analysis.pair_with_target` and :func:`ntps.analysis.lodo_scores` name them. Targets are
already signed ("higher is better for the claim": ``accuracy``, ``-mse``, ``-gain``), so a positive
correlation is always the claim. :func:`selected_pairs` gives those rows for the three selection
modes (fixed, in-sample, leave-one-dataset-out) exactly as :func:`ntps.analysis.select_layer_k`
correlates them. The ``*_table`` functions group a frame by key columns (target, mode, predictor,
...) and return one row per group, ready to be written as a table.

Views (who is ranked against whom)
----------------------------------
* within model, across datasets (the paper's view): :func:`pooled_within_model` combines the
  models' per-model Spearman rhos;
* across models, per dataset (the model-selection view of the transferability literature):
  :func:`across_models`, Kendall's tau and weighted tau, averaged over datasets;
* all (model, dataset) pairs in one correlation: :func:`pooled_all_pairs`.

Resampling units are datasets throughout: the models of a study share their datasets, so a
bootstrap draws one set of dataset indices and applies it to every model.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from ntps.analysis import (
    ALTERNATIVES,
    BootstrapCI,
    average_ranks,
    correlation_grid,
    k_label,
    kendall,
    lodo_scores,
    pair_with_target,
    pearson_rows,
    resolve_layer,
    spearman,
    spearman_rows,
)
from ntps.errors import ConfigError, DatasetError

#: The usual "beyond noise" multiple of the standard error (about a 95% normal interval).
NOISE_MULTIPLE = 2.0
#: Fewest models per dataset for the across-model view (with 2, tau is +-1 by construction).
MIN_MODELS_ACROSS = 3
#: The correlation a pre-screen must reach to be useful, for :func:`read_correlation`.
USEFUL_RHO = 0.5
#: Level of the "smallest detectable correlation" (two-sided): p < 0.05.
DETECTABLE_ALPHA = 0.05


# --------------------------------------------------------------------------------------------
# Small shared pieces
# --------------------------------------------------------------------------------------------


def _check_resampling(n_boot: int, level: float) -> None:
    if not 0 < level < 1:
        raise ConfigError(f"bootstrap level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ConfigError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")


# Residuals of a regression on a baseline's ranks can be zero up to rounding (the predictor or
# target is a function of the baseline's ranks): count those as constant, not as noise.
_RESIDUAL_RTOL = 1e-12


def _residual_correlation_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of residuals; NaN where a residual row is zero up to rounding."""
    return pearson_rows(a, b, rtol=_RESIDUAL_RTOL)


def _percentile_ci(values: np.ndarray, n_boot: int, level: float) -> BootstrapCI:
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


def _permutation_p(values: np.ndarray, observed: float, alternative: str, exact: bool) -> float:
    """p from a permutation distribution: exact (identity included) or Monte Carlo with +1."""
    if not math.isfinite(observed):
        return math.nan
    values = values[np.isfinite(values)]
    count = _tail_count(values, observed, alternative)
    if exact:
        return count / values.size
    return (1 + count) / (1 + values.size)


def _threshold_from_null(values: np.ndarray, alpha: float, exact: bool) -> float:
    """Smallest |statistic| a permutation test with null ``values`` calls significant.

    Two-sided, p = P(|null| >= |t|) (exact) or (1 + #) / (1 + draws) (Monte Carlo), as
    :func:`_permutation_p` computes it; the threshold is one of the null's own magnitudes. NaN
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


def _within_model_permutations(
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


def _shared_permutations(n: int, n_perm: int, seed: int) -> tuple[np.ndarray, bool]:
    """(n_draws, n) permutations of n items: all n! when n! <= n_perm, else Monte Carlo."""
    if math.factorial(n) <= n_perm:
        return np.array(list(itertools.permutations(range(n))), dtype=np.intp), True
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n), (n_perm, 1)), axis=1), False


@dataclass(frozen=True)
class _Matrices:
    """Value columns of a (model, dataset) frame as (n_models, n_datasets) matrices.

    Only datasets where every model has a finite value in every column are kept.
    """

    models: list[str]
    datasets: list[str]
    values: dict[str, np.ndarray]
    dropped_datasets: list[str]


def _require_pairs(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """The frame has model, dataset and ``columns``, and one row per (model, dataset)."""
    missing = [c for c in ["model", "dataset", *columns] if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{what} frame lacks column(s) {missing}; it has {sorted(map(str, frame.columns))}"
        )
    dup = frame.duplicated(["model", "dataset"], keep=False)
    if dup.any():
        first = frame.loc[dup, ["model", "dataset"]].iloc[0].to_dict()
        raise DatasetError(
            f"{what} frame has several rows for {first}: one row per (model, dataset) is expected "
            f"(filter by target, mode, layer or predictor first)"
        )


def _matrices(frame: pd.DataFrame, columns: Sequence[str], what: str) -> _Matrices:
    _require_pairs(frame, columns, what)
    frame = frame.assign(model=frame["model"].astype(str), dataset=frame["dataset"].astype(str))
    models = sorted(frame["model"].unique())
    datasets = sorted(frame["dataset"].unique())
    mats = {}
    for col in columns:
        wide = frame.pivot(index="model", columns="dataset", values=col)
        mats[col] = wide.reindex(index=models, columns=datasets).to_numpy(dtype=float)
    complete = np.ones(len(datasets), dtype=bool)
    for mat in mats.values():
        complete &= np.isfinite(mat).all(axis=0)
    return _Matrices(
        models,
        [d for d, ok in zip(datasets, complete, strict=True) if ok],
        {col: mat[:, complete] for col, mat in mats.items()},
        [d for d, ok in zip(datasets, complete, strict=True) if not ok],
    )


def _grouped(
    frame: pd.DataFrame, by: Sequence[str], func: Callable[[pd.DataFrame], dict[str, Any]]
) -> pd.DataFrame:
    """One record per group of ``by`` (all rows when ``by`` is empty), keys first."""
    by = list(by)
    missing = [c for c in by if c not in frame.columns]
    if missing:
        raise DatasetError(f"cannot group by {missing}: the frame has {sorted(frame.columns)}")
    if not by:
        return pd.DataFrame([func(frame)])
    records = []
    for keys, sub in frame.groupby(by, sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        records.append({**dict(zip(by, keys, strict=True)), **func(sub)})
    return pd.DataFrame(records)


# --------------------------------------------------------------------------------------------
# Pairs of the three selection modes
# --------------------------------------------------------------------------------------------

SELECTED_COLUMNS = (
    "mode", "model", "dataset", "layer", "k_label", "score", "score_se", "target",
)  # fmt: skip


def selected_pairs(
    scores: pd.DataFrame,
    targets: pd.DataFrame,
    *,
    score_col: str = "ntps_reg",
    target_col: str = "accuracy",
    sign: int = 1,
    fixed: Mapping[str, tuple[int | float, int | float | str]] | None = None,
    n_layers: Mapping[str, int] | None = None,
    stage: str | None = "pre_lora",
) -> pd.DataFrame:
    """The (score, target) pair of every (model, dataset) under each selection mode.

    The rows :func:`ntps.analysis.select_layer_k` correlates, so the pooled and across-model views
    see the same points as the per-model rows: ``fixed`` (the model's configured (layer spec, k);
    only when ``fixed`` is given), ``in_sample`` (the first grid setting, in layer then k order,
    with the highest Spearman rho across the model's datasets) and ``lodo`` (for each held-out
    dataset the setting that is best on the others; ``layer``/``k_label`` vary by row).

    Returns
    -------
    DataFrame with columns ``SELECTED_COLUMNS``: mode, model, dataset, layer, k_label, score,
    score_se, target (signed as ``sign * target_col``). A LODO row whose pick failed has NaN
    layer, score and target.
    """
    paired = pair_with_target(scores, targets, score_col, target_col, sign, stage)
    grid = correlation_grid(scores, targets, score_col, target_col, sign, stage)
    parts = []
    for model, sub in paired.groupby("model", sort=True):
        rhos = grid[grid["model"] == model]
        if rhos.empty:  # no setting complete over datasets: select_layer_k skips the model
            continue
        complete = set(zip(rhos["layer"], rhos["k_label"], strict=True))
        if fixed is not None:
            if model not in fixed:
                raise ConfigError(
                    f"no fixed (layer, k) configured for model {model!r}; "
                    f"configured: {sorted(fixed)}"
                )
            layer_spec, k = fixed[model]
            depth = (n_layers or {}).get(model, int(sub["layer"].max()) + 1)
            layer = resolve_layer(layer_spec, depth)
            at_layer = sub[sub["layer"] == layer]
            if isinstance(k, str):
                hit = at_layer["k_label"] == k
            else:
                order = at_layer["k_order"].to_numpy(float)
                hit = (at_layer["k_label"] == k_label(k)) | np.isclose(
                    order, float(k), rtol=1e-9, atol=1e-12
                )
            chosen = at_layer[hit]
            labels = set(chosen["k_label"])
            if len(labels) != 1 or (layer, next(iter(labels))) not in complete:
                raise ConfigError(
                    f"fixed setting (layer={layer}, k={k!r}) for model {model!r} is not in the "
                    f"scored grid (complete over datasets); k labels at that layer: "
                    f"{sorted(set(at_layer['k_label']))}"
                )
            parts.append(chosen.assign(mode="fixed"))
        finite = rhos[np.isfinite(rhos["rho"].to_numpy(float))]
        if not finite.empty:
            # correlation_grid lists settings in grid order; the first maximum wins, as in
            # select_layer_k.
            best = finite[finite["rho"] >= finite["rho"].max() - 1e-12].iloc[0]
            at_best = (sub["layer"] == best["layer"]) & (sub["k_label"] == best["k_label"])
            parts.append(sub[at_best].assign(mode="in_sample"))
    lodo = lodo_scores(scores, targets, score_col, target_col, sign, stage)
    parts.append(lodo[lodo["model"].isin(set(grid["model"]))].assign(mode="lodo"))
    out = pd.concat(parts, ignore_index=True)
    modes = {"fixed": 0, "in_sample": 1, "lodo": 2}
    out = out.assign(_m=out["mode"].map(modes)).sort_values(["_m", "model", "dataset"])
    return out[list(SELECTED_COLUMNS)].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# 1. Uncertainty of the targets
# --------------------------------------------------------------------------------------------


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
    _check_resampling(n_boot, level)
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
    return _percentile_ci(spearman_rows(xb, yb), n_boot, level)


# --------------------------------------------------------------------------------------------
# 2. Pooled within-model correlation
# --------------------------------------------------------------------------------------------


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
    _check_resampling(n_boot, level)
    _check_alternative(alternative)
    mats = _matrices(frame, [x_col, y_col], "pooled within-model")
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
    ci = _percentile_ci(boot, n_boot, level)
    perms, exact = _within_model_permutations(n_models, n, n_perm, seed)
    rx, ry = average_ranks(x), average_ranks(y)  # ranks permute with the values
    null = np.stack([pearson_rows(rx[m], ry[m][perms[m]]) for m in range(n_models)]).mean(0)
    record.update(
        rho_pooled=observed,
        rho_min=float(rho.min()),
        rho_max=float(rho.max()),
        ci_low=ci.low,
        ci_high=ci.high,
        n_boot_used=ci.n_used,
        p_value=_permutation_p(null, observed, alternative, exact),
        p_exact=exact,
        min_detectable=_threshold_from_null(null, DETECTABLE_ALPHA, exact),
    )
    return record


def pooled_within_model_table(
    frame: pd.DataFrame, by: Sequence[str] = ("target", "mode"), **kwargs: Any
) -> pd.DataFrame:
    """:func:`pooled_within_model` for every group of ``by`` (e.g. one row per target and mode,
    from :func:`selected_pairs` frames concatenated with a ``target`` column)."""
    return _grouped(frame, by, lambda sub: pooled_within_model(sub, **kwargs))


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
    _check_resampling(n_boot, level)
    _check_alternative(alternative)
    mats = _matrices(frame, [x_col, y_col], "pooled all-pairs")
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
    ci = _percentile_ci(spearman_rows(xb, yb), n_boot, level)
    perms, exact = _shared_permutations(n, n_perm, seed)
    yp = y[:, perms].transpose(1, 0, 2).reshape(len(perms), -1)
    null = spearman_rows(x.ravel(), yp)
    record.update(
        rho=observed,
        ci_low=ci.low,
        ci_high=ci.high,
        n_boot_used=ci.n_used,
        p_value=_permutation_p(null, observed, alternative, exact),
        p_exact=exact,
        min_detectable=_threshold_from_null(null, DETECTABLE_ALPHA, exact),
    )
    return record


def pooled_all_pairs_table(
    frame: pd.DataFrame, by: Sequence[str] = ("target", "mode"), **kwargs: Any
) -> pd.DataFrame:
    """:func:`pooled_all_pairs` for every group of ``by``."""
    return _grouped(frame, by, lambda sub: pooled_all_pairs(sub, **kwargs))


# --------------------------------------------------------------------------------------------
# 3. Across models, per dataset
# --------------------------------------------------------------------------------------------


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
    _check_resampling(n_boot, level)
    if min_models < 3:
        raise ConfigError(f"min_models must be >= 3 (tau over 2 models is +-1), got {min_models}")
    _require_pairs(frame, [x_col, y_col], "across-model")
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
        ci_tau = _percentile_ci(boot[:, 0], n_boot, level)
        ci_w = _percentile_ci(boot[:, 1], n_boot, level)
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

    summary = _grouped(frame, by, one)
    columns = [*by, *PER_DATASET_COLUMNS]
    details = (
        pd.concat(per_dataset, ignore_index=True)[columns]
        if per_dataset
        else pd.DataFrame(columns=columns)
    )
    return details, summary


# --------------------------------------------------------------------------------------------
# 4. Incremental validity
# --------------------------------------------------------------------------------------------


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
    :func:`pooled_within_model`. Models differ in scale, so ranks are never pooled across them.

    CI: bootstrap resampling datasets jointly for every model (ranks recomputed in each
    resample); resamples where some model's partial is undefined are dropped. p: permutation
    of the predictor's residuals given the baseline, within each model (Freedman-Lane: permute
    the residuals of rank P on [1, rank B], residualise the permuted vector on rank B again, and
    correlate with T's residuals), exact when (n!)^n_models <= ``n_perm``, else Monte Carlo
    with +1.

    Also reported, for context, the same pooled mean of plain Spearman rhos for P-T, B-T and P-B.
    Same dataset completeness rule as :func:`pooled_within_model`.

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
        :func:`pooled_within_model`), rho_predictor_target, rho_baseline_target,
        rho_predictor_baseline, models_dropped (JSON).
    """
    _check_resampling(n_boot, level)
    _check_alternative(alternative)
    cols = [predictor_col, target_col, baseline_col]
    mats = _matrices(frame, cols, "incremental validity")
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
    ci = _percentile_ci(boot.mean(axis=0), n_boot, level)
    perms, exact = _within_model_permutations(n_models, n, n_perm, seed)
    null_parts = []
    for m in range(n_models):
        rb = average_ranks(b[m])
        res_p = _residualise_rows(average_ranks(p[m]), rb)
        res_t = _residualise_rows(average_ranks(t[m]), rb)
        null_parts.append(_residual_correlation_rows(_residualise_rows(res_p[perms[m]], rb), res_t))
    null = np.stack(null_parts).mean(axis=0)
    record.update(
        partial_rho=observed,
        ci_low=ci.low,
        ci_high=ci.high,
        n_boot_used=ci.n_used,
        p_value=_permutation_p(null, observed, alternative, exact),
        p_exact=exact,
        min_detectable=_threshold_from_null(null, DETECTABLE_ALPHA, exact),
    )
    return record


def incremental_validity_table(
    frame: pd.DataFrame, by: Sequence[str] = ("target", "baseline_name"), **kwargs: Any
) -> pd.DataFrame:
    """:func:`incremental_validity` for every group of ``by`` (e.g. one row per target and
    baseline predictor, the baseline's values in one column and its name in ``baseline_name``)."""
    return _grouped(frame, by, lambda sub: incremental_validity(sub, **kwargs))


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
    _require_pairs(frame, cols, "incremental prediction")
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


# --------------------------------------------------------------------------------------------
# 5. Power, in plain words
# --------------------------------------------------------------------------------------------

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
    return _threshold_from_null(values, alpha, exact)


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
    ``min_detectable`` of :func:`pooled_within_model`); default :func:`min_detectable_correlation`
    of n.
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
