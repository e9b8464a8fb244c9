"""Statistics behind the NTPS claims: rank correlations, uncertainty, honest layer/k selection.

Everything here is a pure function of numpy arrays or tidy pandas frames (no file I/O).

Conventions
-----------
* Correlations are taken across datasets (one point per dataset) for one model.
* ``sign`` flips a target so that "higher is better for the claim": the paper expects NTPS to rise
  with probe accuracy, and to fall with probe MSE and with LoRA gain, so targets are
  ``accuracy`` (sign +1), ``-mse`` and ``-gain`` (sign -1). Every correlation is then expected > 0.
* Pairing with targets (see :func:`pair_with_target`): a target table with a ``layer`` column
  (linear probes) is matched to NTPS of the SAME layer, as the paper correlates NTPS at layer l with
  the probe fitted on layer l; a target table without ``layer`` (LoRA gain, one number per
  model/dataset) is matched to every layer's NTPS.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ntps.errors import ConfigError, DatasetError

Statistic = Callable[[np.ndarray, np.ndarray], float]

ALTERNATIVES = ("two-sided", "greater", "less")
_ROW_CHUNK = 512  # rows per vectorised block: bounds memory of the pairwise Kendall tensors


# --------------------------------------------------------------------------------------------
# Rank correlations (scalar and row-vectorised versions agree exactly)
# --------------------------------------------------------------------------------------------


def _clean_pairs(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays of equal length with pairs containing NaN/inf dropped."""
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep]


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    num = (a * b).sum(axis=-1)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
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


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair (average ranks for ties, as scipy); NaN if a row is constant."""
    a = np.atleast_2d(a)
    b = np.atleast_2d(b)
    if a.shape[-1] < 3:
        return np.full(np.broadcast_shapes(a.shape, b.shape)[:-1], np.nan)
    return _pearson_rows(average_ranks(a), average_ranks(b))


def _kendall_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall tau-b of each row pair; NaN if a row is constant.

    tau_b = sum sgn(dx) sgn(dy) / sqrt(sum sgn(dx)^2 * sum sgn(dy)^2) over ordered pairs, which is
    (concordant - discordant) / sqrt((n0 - ties_x)(n0 - ties_y)): the tau-b scipy reports.
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
    xa, ya = _clean_pairs(x, y)
    return float(_spearman_rows(xa[None, :], ya[None, :])[0])


def kendall(x: Any, y: Any) -> float:
    """Kendall tau-b (matches ``scipy.stats.kendalltau`` with ties); NaN with < 3 pairs or constant input."""
    xa, ya = _clean_pairs(x, y)
    return float(_kendall_rows(xa[None, :], ya[None, :])[0])


# Vectorised twins of the two built-in statistics; other callables are evaluated in a loop.
_ROW_STATISTICS: dict[Any, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    spearman: _spearman_rows,
    kendall: _kendall_rows,
}


def _resolve_statistic(
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


# --------------------------------------------------------------------------------------------
# Bootstrap and permutation
# --------------------------------------------------------------------------------------------


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
        xa, ya = _clean_pairs(x, y)
        sa = None
    else:
        xs, ys, ss = (np.asarray(v, dtype=float).ravel() for v in (x, y, x_se))
        keep = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(ss)
        xa, ya, sa = xs[keep], ys[keep], ss[keep]
    n = xa.size
    if n < 3:
        return BootstrapCI(math.nan, math.nan, 0, n_boot, level)
    rows = _resolve_statistic(statistic)
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
    xa, ya = _clean_pairs(x, y)
    n = xa.size
    rows = _resolve_statistic(statistic)
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
# Layer / k handling
# --------------------------------------------------------------------------------------------


def resolve_layer(spec: int | float, n_layers: int) -> int:
    """Layer index from a config spec; ``n_layers`` counts hidden-state layers (0 = embeddings).

    int: index, negative counts from the end (-1 = last); float in [0, 1]: fraction of depth,
    rounded half up to the nearest index (0.0 = embeddings, 1.0 = last).
    """
    if n_layers < 1:
        raise ConfigError(f"n_layers must be >= 1, got {n_layers}")
    if isinstance(spec, bool) or not isinstance(spec, int | float | np.integer | np.floating):
        raise ConfigError(f"layer spec must be an int or a fraction in [0, 1], got {spec!r}")
    if isinstance(spec, int | np.integer):
        index = int(spec) + n_layers if spec < 0 else int(spec)
        if not 0 <= index < n_layers:
            raise ConfigError(
                f"layer {spec} is out of range for a model with {n_layers} hidden-state layers "
                f"(valid: {-n_layers}..{n_layers - 1})"
            )
        return index
    frac = float(spec)
    if not 0.0 <= frac <= 1.0:
        raise ConfigError(f"fractional layer spec must be in [0, 1], got {spec}")
    return math.floor(frac * (n_layers - 1) + 0.5)


def k_label(k_spec: int | float) -> str:
    """Default label for a k spec: a fraction as "0.05", an integer count as "k=8"."""
    if isinstance(k_spec, int | np.integer) and not isinstance(k_spec, bool):
        return f"k={int(k_spec)}"
    value = float(k_spec)
    if value >= 1 and value.is_integer():
        return f"k={int(value)}"
    return f"{value:g}"


def rows_at_setting(
    scores: pd.DataFrame,
    model: str,
    layer_spec: int | float,
    k_spec: int | float,
    stage: str = "pre_lora",
) -> tuple[pd.DataFrame, int | None]:
    """One model's score rows at a (layer, k) given as config specs, and the resolved layer.

    The layer spec resolves against the model's own depth; (empty frame, None) when the model has
    no rows for ``stage``.
    """
    sub = scores[(scores["model"] == model) & (scores["stage"] == stage)]
    if sub.empty:
        return sub, None
    layer = resolve_layer(layer_spec, int(sub["layer"].max()) + 1)
    return sub[(sub["layer"] == layer) & (sub["k_label"] == k_label(k_spec))], layer


def _require_columns(frame: pd.DataFrame, columns: list[str], table: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{table} table lacks column(s) {missing}; it has {sorted(map(str, frame.columns))}"
        )


def _target_name(target_col: str, sign: int) -> str:
    return f"-{target_col}" if sign < 0 else target_col


def pair_with_target(
    scores: pd.DataFrame,
    targets: pd.DataFrame,
    score_col: str,
    target_col: str,
    sign: int = 1,
    stage: str | None = "pre_lora",
) -> pd.DataFrame:
    """Join NTPS scores with a target metric, one row per (model, dataset, layer, k_label).

    Pairing rule: if ``targets`` has a ``layer`` column (probe metrics) the target of layer l is
    paired with NTPS of layer l ("same_layer"); otherwise (LoRA gain) the single per-dataset target
    is paired with every layer ("per_dataset"). ``stage`` filters the scores' ``stage`` column
    (None keeps all; the table must then hold one stage). Columns out: model, dataset, layer,
    k_label, k_order, score, score_se (the ``<score_col>_se`` column if the table has one, else NaN),
    target, pairing.
    """
    if sign not in (1, -1):
        raise ConfigError(f"sign must be +1 or -1, got {sign}")
    _require_columns(scores, ["model", "dataset", "layer", score_col], "scores")
    _require_columns(targets, ["model", "dataset", target_col], "targets")
    s = scores
    if stage is not None and "stage" in s.columns:
        s = s[s["stage"] == stage]
        if s.empty:
            raise DatasetError(
                f"scores table has no rows with stage == {stage!r}; "
                f"stages present: {sorted(scores['stage'].unique())}"
            )
    s = s.copy()
    if "k_label" not in s.columns:
        _require_columns(s, ["k_spec"], "scores")
        s["k_label"] = [k_label(k) for k in s["k_spec"]]
    # Order k settings numerically where k_spec is known (fractions < 1 before counts >= 1).
    s["k_order"] = s["k_spec"].astype(float) if "k_spec" in s.columns else np.nan
    keys = ["model", "dataset", "layer", "k_label"]
    dup = s.duplicated(keys, keep=False)
    if dup.any():
        first = s.loc[dup, keys].iloc[0].to_dict()
        raise DatasetError(
            f"scores table has duplicate rows for {first} (column 'stage' may be mixed; "
            f"pass stage=...)"
        )
    same_layer = "layer" in targets.columns
    t_keys = ["model", "dataset", "layer"] if same_layer else ["model", "dataset"]
    t = targets[[*t_keys, target_col]].copy()
    if t.duplicated(t_keys).any():
        first = t.loc[t.duplicated(t_keys, keep=False), t_keys].iloc[0].to_dict()
        raise DatasetError(f"targets table has duplicate rows for {first} (column {target_col!r})")
    t["target"] = sign * t[target_col].astype(float)
    se_col = f"{score_col}_se"
    s["score_se"] = s[se_col].astype(float) if se_col in s.columns else np.nan
    merged = s[[*keys, "k_order", score_col, "score_se"]].merge(
        t[[*t_keys, "target"]], on=t_keys, how="inner"
    )
    if merged.empty:
        raise DatasetError(
            f"no (model, dataset{', layer' if same_layer else ''}) rows are shared by the scores "
            f"and targets tables (target column {target_col!r}); check model and dataset names"
        )
    merged = merged.rename(columns={score_col: "score"})
    merged["score"] = merged["score"].astype(float)
    merged["pairing"] = "same_layer" if same_layer else "per_dataset"
    return merged.reset_index(drop=True)


@dataclass(frozen=True)
class _Grid:
    """One model's paired data as settings x datasets matrices (complete settings only)."""

    settings: list[tuple[int, str]]
    datasets: list[str]
    score: np.ndarray
    target: np.ndarray
    score_se: np.ndarray


def _model_grid(paired: pd.DataFrame) -> _Grid:
    settings_frame = (
        paired[["layer", "k_label", "k_order"]]
        .drop_duplicates(["layer", "k_label"])
        .sort_values(["layer", "k_order", "k_label"], na_position="last")
    )
    settings = [(int(r.layer), str(r.k_label)) for r in settings_frame.itertuples()]
    datasets = sorted(paired["dataset"].unique())
    index = pd.MultiIndex.from_tuples(settings, names=["layer", "k_label"])
    score = paired.pivot_table(
        index=["layer", "k_label"], columns="dataset", values="score", aggfunc="first"
    ).reindex(index=index, columns=datasets)
    target = paired.pivot_table(
        index=["layer", "k_label"], columns="dataset", values="target", aggfunc="first"
    ).reindex(index=index, columns=datasets)
    score_se = paired.pivot_table(
        index=["layer", "k_label"], columns="dataset", values="score_se", aggfunc="first",
        dropna=False,
    ).reindex(index=index, columns=datasets)  # fmt: skip
    s = score.to_numpy(dtype=float)
    t = target.to_numpy(dtype=float)
    # A setting missing any dataset cannot be compared fairly with the others: drop it.
    complete = np.isfinite(s).all(axis=1) & np.isfinite(t).all(axis=1)
    return _Grid(
        [st for st, ok in zip(settings, complete, strict=True) if ok],
        datasets,
        s[complete],
        t[complete],
        score_se.to_numpy(dtype=float)[complete],
    )


def _best_row(rho: np.ndarray) -> int | None:
    """First setting (grid order: layer, then k) attaining the maximal correlation, if any."""
    if not np.isfinite(rho).any():
        return None
    best = np.nanmax(rho)
    return int(np.flatnonzero(rho >= best - 1e-12)[0])


def correlation_grid(
    scores: pd.DataFrame,
    targets: pd.DataFrame,
    score_col: str = "ntps_reg",
    target_col: str = "accuracy",
    sign: int = 1,
    stage: str | None = "pre_lora",
) -> pd.DataFrame:
    """Spearman rho (and Kendall tau) across datasets for every (model, layer, k) setting.

    Columns: model, target, layer, k_label, k_order, n_datasets, rho, tau. Pairing as in
    :func:`pair_with_target`.
    """
    paired = pair_with_target(scores, targets, score_col, target_col, sign, stage)
    records = []
    for model, sub in paired.groupby("model", sort=True):
        grid = _model_grid(sub)
        if not grid.settings:
            continue
        rho = _spearman_rows(grid.score, grid.target)
        tau = _kendall_rows(grid.score, grid.target)
        k_order = sub.drop_duplicates(["layer", "k_label"]).set_index(["layer", "k_label"])[
            "k_order"
        ]
        for i, (layer, klab) in enumerate(grid.settings):
            records.append(
                {
                    "model": model,
                    "target": _target_name(target_col, sign),
                    "layer": layer,
                    "k_label": klab,
                    "k_order": float(k_order.loc[(layer, klab)]),
                    "n_datasets": len(grid.datasets),
                    "rho": float(rho[i]),
                    "tau": float(tau[i]),
                }
            )
    return pd.DataFrame.from_records(
        records,
        columns=["model", "target", "layer", "k_label", "k_order", "n_datasets", "rho", "tau"],
    )


def _lodo_from_grid(grid: _Grid) -> pd.DataFrame:
    rows = []
    n = len(grid.datasets)
    for j, dataset in enumerate(grid.datasets):
        others = [i for i in range(n) if i != j]
        inner = _spearman_rows(grid.score[:, others], grid.target[:, others])
        best = _best_row(inner)
        if best is None:
            rows.append((dataset, None, None, math.nan, math.nan, math.nan, math.nan))
            continue
        layer, klab = grid.settings[best]
        rows.append(
            (
                dataset,
                layer,
                klab,
                grid.score[best, j],
                grid.target[best, j],
                float(inner[best]),
                grid.score_se[best, j],
            )
        )
    return pd.DataFrame(
        rows,
        columns=["dataset", "layer", "k_label", "score", "target", "inner_rho", "score_se"],
    )


def lodo_scores(
    scores: pd.DataFrame,
    targets: pd.DataFrame,
    score_col: str = "ntps_reg",
    target_col: str = "accuracy",
    sign: int = 1,
    stage: str | None = "pre_lora",
) -> pd.DataFrame:
    """Leave-one-dataset-out picks: for each held-out dataset, the (layer, k) maximising Spearman rho
    on the other datasets (ties: first in layer, k order), and the held-out dataset's score there.

    With same-layer pairing the held-out target is the probe metric at the picked layer.
    Columns: model, dataset, layer, k_label, score, target, inner_rho, score_se.
    """
    paired = pair_with_target(scores, targets, score_col, target_col, sign, stage)
    parts = []
    for model, sub in paired.groupby("model", sort=True):
        frame = _lodo_from_grid(_model_grid(sub))
        frame.insert(0, "model", model)
        parts.append(frame)
    columns = ["model", "dataset", "layer", "k_label", "score", "target", "inner_rho", "score_se"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def _match_setting(
    grid: _Grid, paired: pd.DataFrame, layer: int, k: int | float | str, model: str
) -> int:
    """Row of ``grid`` for a fixed (layer, k); k is a label string or a numeric k_spec."""
    for i, (g_layer, g_label) in enumerate(grid.settings):
        if g_layer != layer:
            continue
        if isinstance(k, str):
            if g_label == k:
                return i
        else:
            order = paired.loc[
                (paired["layer"] == g_layer) & (paired["k_label"] == g_label), "k_order"
            ].iloc[0]
            if np.isfinite(order) and np.isclose(order, float(k), rtol=1e-9, atol=1e-12):
                return i
    available = sorted({lab for lay, lab in grid.settings if lay == layer})
    raise ConfigError(
        f"fixed setting (layer={layer}, k={k!r}) for model {model!r} is not in the scored grid "
        f"(complete over datasets); k labels available at that layer: {available}"
    )


def select_layer_k(
    scores: pd.DataFrame,
    targets: pd.DataFrame,
    *,
    score_col: str = "ntps_reg",
    target_col: str = "accuracy",
    sign: int = 1,
    fixed: Mapping[str, tuple[int | float, int | float | str]] | None = None,
    n_layers: Mapping[str, int] | None = None,
    stage: str | None = "pre_lora",
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    alternative: str = "two-sided",
) -> pd.DataFrame:
    """Correlation of ``score_col`` with ``sign * target_col`` per model, three selection modes.

    * ``fixed``: the (layer spec, k) given per model in ``fixed`` (layer resolved with
      :func:`resolve_layer` against ``n_layers[model]``, default max scored layer + 1).
    * ``in_sample``: the grid setting with the highest Spearman rho (optimistic: chosen and
      evaluated on the same datasets, the paper's procedure).
    * ``lodo``: out-of-sample scores from :func:`lodo_scores`, correlated with their targets.

    CIs bootstrap the final (score, target) pairs over datasets and p-values permute them; neither
    re-runs the selection, so for ``in_sample`` both are optimistic. Columns: model, target,
    score_col, stage, pairing, mode, optimistic, layer, k_label, picks (JSON {dataset: [layer,
    k_label]} for lodo), n_datasets, rho, tau, ci_low, ci_high, ci_low_se, ci_high_se,
    n_boot_used, p_value. ``ci_*_se`` also propagate each score's jackknife SE (the
    ``<score_col>_se`` column; :func:`bootstrap_ci` with ``x_se``), NaN where a score has none.
    """
    paired = pair_with_target(scores, targets, score_col, target_col, sign, stage)
    target_name = _target_name(target_col, sign)
    records: list[dict[str, Any]] = []

    def summarise(
        model: str,
        mode: str,
        layer: Any,
        klab: Any,
        x: np.ndarray,
        y: np.ndarray,
        x_se: np.ndarray,
        picks: str = "",
    ) -> None:
        ci = bootstrap_ci(x, y, spearman, n_boot=n_boot, seed=seed, level=level)
        with_se = (
            bootstrap_ci(x, y, spearman, n_boot=n_boot, seed=seed, level=level, x_se=x_se)
            if np.isfinite(x_se).all()
            else BootstrapCI(math.nan, math.nan, 0, n_boot, level)
        )
        records.append(
            {
                "model": model,
                "target": target_name,
                "score_col": score_col,
                "stage": stage if stage is not None else "",
                "pairing": str(paired["pairing"].iloc[0]),
                "mode": mode,
                "optimistic": mode == "in_sample",
                "layer": layer,
                "k_label": klab,
                "picks": picks,
                "n_datasets": int(np.sum(np.isfinite(x) & np.isfinite(y))),
                "rho": spearman(x, y),
                "tau": kendall(x, y),
                "ci_low": ci.low,
                "ci_high": ci.high,
                "ci_low_se": with_se.low,
                "ci_high_se": with_se.high,
                "n_boot_used": ci.n_used,
                "p_value": permutation_pvalue(
                    x, y, spearman, n_perm=n_perm, seed=seed, alternative=alternative
                ),
            }
        )

    for model, sub in paired.groupby("model", sort=True):
        grid = _model_grid(sub)
        if not grid.settings:
            continue
        if fixed is not None:
            if model not in fixed:
                raise ConfigError(
                    f"no fixed (layer, k) configured for model {model!r}; configured: {sorted(fixed)}"
                )
            layer_spec, k = fixed[model]
            depth = (n_layers or {}).get(model, int(sub["layer"].max()) + 1)
            row = _match_setting(grid, sub, resolve_layer(layer_spec, depth), k, model)
            layer, klab = grid.settings[row]
            summarise(
                model, "fixed", layer, klab, grid.score[row], grid.target[row], grid.score_se[row]
            )
        rho_all = _spearman_rows(grid.score, grid.target)
        best = _best_row(rho_all)
        if best is not None:
            layer, klab = grid.settings[best]
            summarise(
                model,
                "in_sample",
                layer,
                klab,
                grid.score[best],
                grid.target[best],
                grid.score_se[best],
            )
        lodo = _lodo_from_grid(grid)
        picked = lodo.dropna(subset=["layer"])
        settings = {(int(r.layer), str(r.k_label)) for r in picked.itertuples()}
        if len(settings) == 1:
            layer, klab = next(iter(settings))
        else:
            layer, klab = "varies", "varies"
        picks = json.dumps(
            {r.dataset: [int(r.layer), str(r.k_label)] for r in picked.itertuples()}, sort_keys=True
        )
        summarise(
            model,
            "lodo",
            layer,
            klab,
            lodo["score"].to_numpy(float),
            lodo["target"].to_numpy(float),
            lodo["score_se"].to_numpy(float),
            picks,
        )
    columns = [
        "model",
        "target",
        "score_col",
        "stage",
        "pairing",
        "mode",
        "optimistic",
        "layer",
        "k_label",
        "picks",
        "n_datasets",
        "rho",
        "tau",
        "ci_low",
        "ci_high",
        "ci_low_se",
        "ci_high_se",
        "n_boot_used",
        "p_value",
    ]
    return pd.DataFrame.from_records(records, columns=columns)


# --------------------------------------------------------------------------------------------
# Gain prediction
# --------------------------------------------------------------------------------------------


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
    _require_columns(frame, ["model", "dataset", ntps_col, gain_col], "gain")
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


# --------------------------------------------------------------------------------------------
# Paired change and magnitudes
# --------------------------------------------------------------------------------------------


def paired_change(before: Any, after: Any) -> dict[str, float]:
    """Summary of after - before over pairs (NaN pairs dropped): n, share_rose (after > before),
    mean_change, median_change, wilcoxon_p (two-sided signed-rank; NaN if all changes are 0)."""
    b, a = _clean_pairs(before, after)
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
    _require_columns(scores, ["excess_loss", "bound_lower", "bound_upper"], "scores")
    out = scores.copy()
    excess = out["excess_loss"].to_numpy(float)
    lower = out["bound_lower"].to_numpy(float)
    upper = out["bound_upper"].to_numpy(float)
    tol = atol + rtol * np.abs(upper)
    out["slack_lower"] = excess - lower
    out["slack_upper"] = upper - excess
    out["bound_holds"] = (out["slack_lower"] >= -tol) & (out["slack_upper"] >= -tol)
    return out
