"""Correlation of a score with a target across datasets, per model, and honest (layer, k) selection.

Settings are chosen three ways (:func:`select_layer_k`): fixed in advance, in-sample (the best
setting on the same datasets, optimistic) and leave-one-dataset-out (:func:`lodo_scores`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ntps.analysis.layer_k import k_label, resolve_layer
from ntps.analysis.pairing import Grid, model_grid, pair_with_target, signed_target_name
from ntps.analysis.ranks import kendall, kendall_rows, spearman, spearman_rows
from ntps.analysis.resampling import BootstrapCI, bootstrap_ci, permutation_pvalue
from ntps.errors import ConfigError


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
        grid = model_grid(sub)
        if not grid.settings:
            continue
        rho = spearman_rows(grid.score, grid.target)
        tau = kendall_rows(grid.score, grid.target)
        k_order = sub.drop_duplicates(["layer", "k_label"]).set_index(["layer", "k_label"])[
            "k_order"
        ]
        for i, (layer, klab) in enumerate(grid.settings):
            records.append(
                {
                    "model": model,
                    "target": signed_target_name(target_col, sign),
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


def _lodo_from_grid(grid: Grid) -> pd.DataFrame:
    rows = []
    n = len(grid.datasets)
    for j, dataset in enumerate(grid.datasets):
        others = [i for i in range(n) if i != j]
        inner = spearman_rows(grid.score[:, others], grid.target[:, others])
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
        frame = _lodo_from_grid(model_grid(sub))
        frame.insert(0, "model", model)
        parts.append(frame)
    columns = ["model", "dataset", "layer", "k_label", "score", "target", "inner_rho", "score_se"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def _match_setting(
    grid: Grid, paired: pd.DataFrame, layer: int, k: int | float | str, model: str
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
    target_name = signed_target_name(target_col, sign)
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
        grid = model_grid(sub)
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
        rho_all = spearman_rows(grid.score, grid.target)
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
