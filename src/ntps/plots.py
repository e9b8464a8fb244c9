"""Figures for the NTPS workflow: one style, Okabe-Ito colours, PNG (200 dpi) and PDF.

Each ``*_figure`` builder takes a tidy frame and returns a matplotlib ``Figure`` (no pyplot global
state, so figures are freed with their last reference and no GUI backend is touched: PNG renders
with Agg, PDF with the pdf backend). Each ``plot_*`` function builds the figure and writes it to the paths it
is given (the rule's declared outputs; the format follows each suffix, ``.png`` or ``.pdf``),
atomically, and returns them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ntps.analysis.checks import bound_check
from ntps.analysis.ranks import spearman
from ntps.analysis.resampling import BootstrapCI
from ntps.errors import DatasetError
from ntps.io import atomic_path
from ntps.reference import short_model_name

DPI = 200

# Okabe & Ito (2008) colour-blind-safe palette, ordered for maximum contrast of the first few.
OKABE_ITO = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "bluish_green": "#009E73",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "sky_blue": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
}
PALETTE = list(OKABE_ITO.values())
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
# ColorBrewer RdBu is rated colour-blind safe; reversed so positive correlations are red.
DIVERGING_CMAP = "RdBu_r"

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
}

SCORE_LABELS = {
    "ntps_reg": "NTPS, regression form (unitless, [0, 1])",
    "ntps_paper": "NTPS, paper form (unitless, [0, 1])",
    "ntps": "NTPS (unitless, [0, 1])",
}
METRIC_LABELS = {
    "accuracy": "held-out probe accuracy (fraction correct)",
    "train_accuracy": "in-sample probe accuracy (fraction correct)",
    "macro_f1": "held-out probe macro-F1 (0 to 1)",
    "mse": "held-out probe MSE (squared error, one-hot labels)",
    "train_mse": "in-sample probe MSE (squared error, one-hot labels)",
    "gain": "LoRA gain (LoRA minus probe test accuracy, fraction correct)",
    "lora_accuracy": "LoRA test accuracy (fraction correct)",
}


def score_label(col: str) -> str:
    return SCORE_LABELS.get(col, f"{col} (unitless, [0, 1])")


def metric_label(col: str) -> str:
    return METRIC_LABELS.get(col, col)


def short_dataset_name(dataset: str) -> str:
    """Dataset name without the hub owner (``dair-ai/emotion`` -> ``emotion``)."""
    return str(dataset).rsplit("/", 1)[-1]


def _figure(width: float = 6.4, height: float = 4.8, **subplots: Any) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(**subplots) if subplots else fig.add_subplot()
    return fig, axes


def set_dpi(dpi: int) -> None:
    """Resolution of the PNG files written from now on (config: plots.dpi)."""
    global DPI
    DPI = int(dpi)


# Timestamps are left out of the metadata so identical figures give identical files.
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None}}


def save_figure(fig: Figure, outputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Write ``fig`` to each of ``outputs`` (PNG at the set dpi, or PDF, by suffix) atomically.

    The paths are the caller's (a rule's declared outputs), never derived here: renaming an output
    in a rule then renames the file, instead of leaving the declared one unwritten.
    """
    if isinstance(outputs, str | os.PathLike):
        raise TypeError("save_figure takes a list of output paths, not a single path or stem")
    written = []
    for output in outputs:
        path = Path(output)
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in _METADATA:
            raise ValueError(f"cannot write a figure as {path.name!r}: use a .png or .pdf path")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata=_METADATA[fmt])
        written.append(path)
    return written


def _for_model(frame: pd.DataFrame, model: str | None) -> pd.DataFrame:
    if model is None or "model" not in frame.columns:
        return frame
    sub = frame[frame["model"] == model]
    if sub.empty:
        raise DatasetError(
            f"no rows for model {model!r} in the plotted table; models: {sorted(frame['model'].unique())}"
        )
    return sub


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(f"{what}: table lacks column(s) {missing}; has {sorted(frame.columns)}")


def _ci_bounds(ci: BootstrapCI | Sequence[float] | None) -> tuple[float, float] | None:
    if ci is None:
        return None
    if isinstance(ci, BootstrapCI):
        return ci.low, ci.high
    low, high = ci
    return float(low), float(high)


def _panel_grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return (n + cols - 1) // cols, cols


# --------------------------------------------------------------------------------------------
# NTPS vs a probe metric
# --------------------------------------------------------------------------------------------


def ntps_vs_metric_figure(
    frame: pd.DataFrame,
    model: str,
    metric: str,
    rho: float,
    ci: BootstrapCI | Sequence[float] | None,
    *,
    score_col: str = "ntps_reg",
    setting: str = "",
) -> Figure:
    """Scatter of NTPS (x) against ``metric`` (y) across datasets for one model, labelled points.

    Horizontal error bars show +-1 jackknife SE of each NTPS where ``<score_col>_se`` is present.
    """
    sub = _for_model(frame, model)
    _require(sub, ["dataset", score_col, metric], "ntps_vs_metric")
    with mpl.rc_context(STYLE):
        fig, ax = _figure()
        x = sub[score_col].to_numpy(float)
        y = sub[metric].to_numpy(float)
        se_col = f"{score_col}_se"
        has_se = se_col in sub.columns and bool(np.isfinite(sub[se_col].to_numpy(float)).any())
        if has_se:
            ax.errorbar(
                x,
                y,
                xerr=sub[se_col].to_numpy(float),
                fmt="none",
                ecolor="0.35",
                elinewidth=1.0,
                capsize=2.5,
                zorder=2,
            )
        ax.scatter(x, y, s=36, color=OKABE_ITO["blue"], edgecolor="black", linewidth=0.5, zorder=3)
        for xi, yi, name in zip(x, y, sub["dataset"], strict=True):
            ax.annotate(
                short_dataset_name(name),
                (xi, yi),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
            )
        ax.set_xlabel(score_label(score_col) + (" (bars: ±1 jackknife SE)" if has_se else ""))
        ax.set_ylabel(metric_label(metric))
        title = f"{short_model_name(model)}: Spearman ρ = {rho:.2f}"
        bounds = _ci_bounds(ci)
        if bounds is not None and np.all(np.isfinite(bounds)):
            title += f" (95% CI {bounds[0]:.2f} to {bounds[1]:.2f})"
        title += f", n = {len(sub)} datasets"
        if setting:
            title += f"\n{setting}"
        ax.set_title(title)
    return fig


def plot_ntps_vs_metric(
    frame: pd.DataFrame,
    model: str,
    metric: str,
    rho: float,
    ci: BootstrapCI | Sequence[float] | None,
    outputs: Sequence[str | os.PathLike[str]],
    *,
    score_col: str = "ntps_reg",
    setting: str = "",
) -> list[Path]:
    """Write the NTPS-vs-metric scatter; returns [png, pdf]."""
    fig = ntps_vs_metric_figure(frame, model, metric, rho, ci, score_col=score_col, setting=setting)
    return save_figure(fig, outputs)


# --------------------------------------------------------------------------------------------
# Correlation heatmap over the (layer, k) grid
# --------------------------------------------------------------------------------------------


def correlation_heatmap_figure(grid: pd.DataFrame, model: str) -> Figure:
    """Layer x k heatmap of Spearman rho (from ``analysis.correlation_grid``), centred at 0."""
    sub = _for_model(grid, model)
    _require(sub, ["layer", "k_label", "rho"], "correlation_heatmap")
    if "k_order" in sub.columns:
        k_order = (
            sub.drop_duplicates("k_label").sort_values(["k_order", "k_label"])["k_label"].tolist()
        )
    else:
        k_order = list(dict.fromkeys(sub["k_label"]))
    table = sub.pivot_table(index="layer", columns="k_label", values="rho", aggfunc="first")
    table = table.reindex(columns=k_order).sort_index()
    values = table.to_numpy(float)
    layers = table.index.to_numpy()
    with mpl.rc_context({**STYLE, "axes.grid": False}):
        width = min(12.0, max(6.0, 1.6 + 0.45 * len(k_order)))
        height = min(10.0, max(3.5, 1.4 + 0.22 * len(layers)))
        fig, ax = _figure(width, height)
        image = ax.imshow(
            np.ma.masked_invalid(values),
            cmap=DIVERGING_CMAP,
            vmin=-1.0,
            vmax=1.0,
            origin="lower",
            aspect="auto",
            interpolation="nearest",
        )
        cbar = fig.colorbar(image, ax=ax)
        cbar.set_label("Spearman ρ across datasets (unitless, [-1, 1])")
        ax.set_xticks(range(len(k_order)), labels=k_order, rotation=45, ha="right")
        step = max(1, int(np.ceil(len(layers) / 20)))
        ax.set_yticks(range(0, len(layers), step), labels=[str(v) for v in layers[::step]])
        ax.set_xlabel("k (fraction of retained rank, or count k=...)")
        ax.set_ylabel("layer (0 = embedding output)")
        n = int(sub["n_datasets"].max()) if "n_datasets" in sub.columns else None
        target = f" vs {sub['target'].iloc[0]}" if "target" in sub.columns else ""
        title = f"{short_model_name(model)}: ρ(NTPS{target})" + (f", {n} datasets" if n else "")
        if np.isfinite(values).any():
            r, c = np.unravel_index(np.nanargmax(values), values.shape)
            ax.scatter([c], [r], marker="*", s=90, color="black")
            k_text = k_order[c] if str(k_order[c]).startswith("k=") else f"k = {k_order[c]}"
            title += f"\n★ max ρ = {values[r, c]:.2f} at layer {layers[r]}, {k_text}"
        ax.set_title(title)
    return fig


def plot_correlation_heatmap(
    grid: pd.DataFrame, model: str, outputs: Sequence[str | os.PathLike[str]]
) -> list[Path]:
    """Write the layer x k correlation heatmap; returns [png, pdf]."""
    return save_figure(correlation_heatmap_figure(grid, model), outputs)


# --------------------------------------------------------------------------------------------
# Excess-loss bounds
# --------------------------------------------------------------------------------------------


def _value_scale(values: np.ndarray) -> tuple[str, dict[str, float]]:
    """Log axis when the values span more than two decades; symlog if some are <= 0."""
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if positive.size == 0 or positive.max() / positive.min() <= 100:
        return "linear", {}
    if (finite <= 0).any():
        return "symlog", {"linthresh": float(positive.min())}
    return "log", {}


def bounds_figure(frame: pd.DataFrame, *, mse_col: str = "probe_mse") -> Figure:
    """Exact excess loss per row (sorted) with its lower/upper bound; held-out probe MSE if given."""
    _require(frame, ["excess_loss", "bound_lower", "bound_upper"], "bounds")
    checked = bound_check(frame).sort_values("excess_loss", kind="stable").reset_index(drop=True)
    idx = np.arange(len(checked))
    excess = checked["excess_loss"].to_numpy(float)
    lower = checked["bound_lower"].to_numpy(float)
    upper = checked["bound_upper"].to_numpy(float)
    has_mse = mse_col in checked.columns
    with mpl.rc_context(STYLE):
        fig, ax = _figure(7.0, 5.2)
        ax.vlines(idx, lower, upper, color="0.75", linewidth=0.8, zorder=1)
        small = len(idx) > 200
        ms = 6 if small else 18
        ax.scatter(
            idx,
            upper,
            marker="v",
            s=ms,
            color=OKABE_ITO["vermillion"],
            label="upper bound λmax‖W*‖²(1 − NTPS_reg)",
            zorder=2,
        )
        ax.scatter(
            idx,
            lower,
            marker="^",
            s=ms,
            color=OKABE_ITO["orange"],
            label="lower bound λmin‖W*‖²(1 − NTPS_reg)",
            zorder=2,
        )
        ax.scatter(
            idx,
            excess,
            marker="o",
            s=ms,
            color=OKABE_ITO["blue"],
            label="exact excess loss L(P) − L*",
            zorder=3,
        )
        plotted = [excess, lower, upper]
        if has_mse:
            mse = checked[mse_col].to_numpy(float)
            ax.scatter(
                idx,
                mse,
                marker="s",
                s=ms,
                color=OKABE_ITO["bluish_green"],
                label="held-out probe MSE (full layer, for scale)",
                zorder=2,
            )
            plotted.append(mse)
        scale, kwargs = _value_scale(np.concatenate(plotted))
        ax.set_yscale(scale, **kwargs)
        violations = checked.loc[~checked["bound_holds"]]
        if len(violations):
            ax.scatter(
                violations.index,
                violations["excess_loss"],
                marker="x",
                s=40,
                color="black",
                label="bound violated",
                zorder=4,
            )
        ax.set_xlabel("(model, dataset, layer, k) rows, sorted by exact excess loss")
        ax.set_ylabel("loss (squared error, one-hot labels)")
        n_ok = int(checked["bound_holds"].sum())
        ax.set_title(f"Excess-loss bounds: hold in {n_ok} of {len(checked)} rows")
        # Outside the axes: with hundreds of rows the data fill the whole panel.
        fig.legend(loc="outside lower center", ncols=2, frameon=False)
    return fig


def plot_bounds(
    frame: pd.DataFrame, outputs: Sequence[str | os.PathLike[str]], *, mse_col: str = "probe_mse"
) -> list[Path]:
    """Write the bound-check figure; returns [png, pdf]."""
    return save_figure(bounds_figure(frame, mse_col=mse_col), outputs)


# --------------------------------------------------------------------------------------------
# NTPS vs LoRA gain
# --------------------------------------------------------------------------------------------


def ntps_vs_gain_figure(
    frame: pd.DataFrame, *, score_col: str = "ntps", gain_col: str = "gain"
) -> Figure:
    """NTPS (x) vs LoRA gain (y), one colour/marker per model, per-model Spearman in the legend."""
    _require(frame, ["model", score_col, gain_col], "ntps_vs_gain")
    with mpl.rc_context(STYLE):
        fig, ax = _figure()
        ax.axhline(0.0, color="0.4", linewidth=0.8, linestyle=":")
        for i, (model, sub) in enumerate(frame.groupby("model", sort=True)):
            x = sub[score_col].to_numpy(float)
            y = sub[gain_col].to_numpy(float)
            rho = spearman(x, y)
            ax.scatter(
                x,
                y,
                s=30,
                marker=MARKERS[i % len(MARKERS)],
                color=PALETTE[i % len(PALETTE)],
                edgecolor="black",
                linewidth=0.4,
                label=f"{short_model_name(str(model))} (ρ = {rho:.2f}, n = {len(sub)})",
                zorder=3,
            )
        ax.set_xlabel(score_label(score_col))
        ax.set_ylabel(metric_label(gain_col))
        ax.set_title("LoRA gain vs NTPS (claim: negative correlation)")
        ax.legend(frameon=False)
    return fig


def plot_ntps_vs_gain(
    frame: pd.DataFrame,
    outputs: Sequence[str | os.PathLike[str]],
    *,
    score_col: str = "ntps",
    gain_col: str = "gain",
) -> list[Path]:
    """Write the NTPS-vs-LoRA-gain scatter; returns [png, pdf]."""
    return save_figure(ntps_vs_gain_figure(frame, score_col=score_col, gain_col=gain_col), outputs)


# --------------------------------------------------------------------------------------------
# NTPS before / after LoRA
# --------------------------------------------------------------------------------------------


def _before_after_wide(frame: pd.DataFrame, score_col: str) -> pd.DataFrame:
    if {"ntps_before", "ntps_after"} <= set(frame.columns):
        return frame
    _require(frame, ["model", "dataset", "stage", score_col], "ntps_before_after")
    keys = ["model", "dataset", "stage"]
    if frame.duplicated(keys).any():
        first = frame.loc[frame.duplicated(keys, keep=False), keys].iloc[0].to_dict()
        raise DatasetError(
            f"ntps_before_after: several rows for {first}; filter to one (layer, k) first"
        )
    wide = frame.pivot(index=["model", "dataset"], columns="stage", values=score_col)
    _require(wide, ["pre_lora", "post_lora"], "ntps_before_after (stage values)")
    return wide.rename(columns={"pre_lora": "ntps_before", "post_lora": "ntps_after"}).reset_index()


def ntps_before_after_figure(frame: pd.DataFrame, *, score_col: str = "ntps_reg") -> Figure:
    """Paired lines pre-LoRA -> post-LoRA NTPS per dataset, one panel per model.

    ``frame``: tidy (model, dataset, stage in {pre_lora, post_lora}, score_col) for one (layer, k),
    or wide with ntps_before / ntps_after columns.
    """
    wide = _before_after_wide(frame, score_col)
    models = sorted(wide["model"].unique())
    rows, cols = _panel_grid(len(models))
    with mpl.rc_context(STYLE):
        fig, axes = _figure(
            3.2 * cols + 0.6, 3.4 * rows, nrows=rows, ncols=cols, squeeze=False, sharey=True
        )
        for ax in axes.ravel()[len(models) :]:
            ax.set_visible(False)
        for ax, model in zip(axes.ravel(), models, strict=False):
            sub = wide[wide["model"] == model]
            rose = 0
            for r in sub.itertuples():
                up = r.ntps_after > r.ntps_before
                rose += int(up)
                color = OKABE_ITO["blue"] if up else OKABE_ITO["vermillion"]
                ax.plot(
                    [0, 1],
                    [r.ntps_before, r.ntps_after],
                    marker="o",
                    markersize=4,
                    color=color,
                    linewidth=1.2,
                    alpha=0.9,
                )
                ax.annotate(
                    short_dataset_name(r.dataset),
                    (1, r.ntps_after),
                    xytext=(4, 0),
                    textcoords="offset points",
                    fontsize=6,
                    va="center",
                )
            ax.set_xticks([0, 1], labels=["pre-LoRA", "post-LoRA"])
            ax.set_xlim(-0.2, 1.6)
            ax.set_title(f"{short_model_name(str(model))}: rose in {rose} of {len(sub)}")
        for ax in axes[:, 0]:
            ax.set_ylabel(score_label(score_col))
        for ax in axes[-1, :]:
            ax.set_xlabel("stage")
        handles = [
            mpl.lines.Line2D([], [], color=OKABE_ITO["blue"], marker="o", label="NTPS rose"),
            mpl.lines.Line2D([], [], color=OKABE_ITO["vermillion"], marker="o", label="NTPS fell"),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    return fig


def plot_ntps_before_after(
    frame: pd.DataFrame, outputs: Sequence[str | os.PathLike[str]], *, score_col: str = "ntps_reg"
) -> list[Path]:
    """Write the paired before/after figure; returns [png, pdf]."""
    return save_figure(ntps_before_after_figure(frame, score_col=score_col), outputs)


# --------------------------------------------------------------------------------------------
# Layer profile
# --------------------------------------------------------------------------------------------


def layer_profile_figure(frame: pd.DataFrame, *, score_col: str = "ntps_reg") -> Figure:
    """NTPS against layer, one line per dataset, with the random-subspace baseline k/d.

    ``frame``: one (layer, k) row per (model, dataset, layer), e.g. the scores filtered to one k.
    One panel per model.
    """
    _require(frame, ["model", "dataset", "layer", score_col, "baseline"], "layer_profile")
    keys = ["model", "dataset", "layer"]
    if frame.duplicated(keys).any():
        first = frame.loc[frame.duplicated(keys, keep=False), keys].iloc[0].to_dict()
        raise DatasetError(f"layer_profile: several rows for {first}; filter to one k (and stage)")
    models = sorted(frame["model"].unique())
    rows, cols = _panel_grid(len(models), max_cols=3)
    k_text = ""
    if "k_label" in frame.columns and frame["k_label"].nunique() == 1:
        k_text = f", k = {frame['k_label'].iloc[0]}"
    with mpl.rc_context(STYLE):
        fig, axes = _figure(
            4.6 * cols + 1.8, 3.6 * rows, nrows=rows, ncols=cols, squeeze=False, sharey=True
        )
        for ax in axes.ravel()[len(models) :]:
            ax.set_visible(False)
        datasets = sorted(frame["dataset"].unique())
        style = {
            d: (PALETTE[i % len(PALETTE)], MARKERS[(i // len(PALETTE)) % len(MARKERS)])
            for i, d in enumerate(datasets)
        }
        for ax, model in zip(axes.ravel(), models, strict=False):
            sub = frame[frame["model"] == model].sort_values("layer")
            for dataset, g in sub.groupby("dataset", sort=True):
                color, marker = style[dataset]
                ax.plot(
                    g["layer"],
                    g[score_col],
                    color=color,
                    marker=marker,
                    markersize=3,
                    linewidth=1.1,
                    label=short_dataset_name(dataset),
                )
            base = sub.groupby("layer")["baseline"].mean()
            ax.plot(
                base.index,
                base.to_numpy(),
                color="black",
                linestyle="--",
                linewidth=1.2,
                label="random-subspace baseline k/d",
            )
            ax.set_title(f"{short_model_name(str(model))}{k_text}")
            ax.set_xlabel("layer (0 = embedding output)")
            ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
        for ax in axes[:, 0]:
            ax.set_ylabel(score_label(score_col))
        # Datasets may differ between models: collect legend entries from every panel.
        entries: dict[str, Any] = {}
        for ax in axes.ravel()[: len(models)]:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                entries.setdefault(label, handle)
        fig.legend(list(entries.values()), list(entries), loc="outside right center", frameon=False)
    return fig


def plot_layer_profile(
    frame: pd.DataFrame, outputs: Sequence[str | os.PathLike[str]], *, score_col: str = "ntps_reg"
) -> list[Path]:
    """Write the per-layer NTPS profile; returns [png, pdf]."""
    return save_figure(layer_profile_figure(frame, score_col=score_col), outputs)


# --------------------------------------------------------------------------------------------
# NTPS beside the transferability baselines
# --------------------------------------------------------------------------------------------

PREDICTOR_MODES = (
    ("fixed", "fixed in config", "o", OKABE_ITO["blue"]),
    ("lodo", "leave-one-dataset-out", "s", OKABE_ITO["vermillion"]),
    ("in_sample", "in-sample best (optimistic)", "^", "0.55"),
)
PREDICTOR_TARGETS = ("accuracy", "-mse", "-gain")


def predictors_figure(table: pd.DataFrame) -> Figure:
    """Spearman rho (95% bootstrap CI) of each predictor against each target, per selection mode.

    ``table`` is results/tables/predictors.csv. One row of panels per model, one panel per target;
    predictors top to bottom in table order (NTPS first).
    """
    _require(
        table, ["model", "predictor", "target", "mode", "rho", "ci_low", "ci_high"], "predictors"
    )
    models = sorted(table["model"].unique())
    targets = [t for t in PREDICTOR_TARGETS if t in set(table["target"])]
    if not models or not targets:
        raise DatasetError("predictors: the table has no rows to plot")
    predictors = list(dict.fromkeys(table["predictor"]))
    with mpl.rc_context(STYLE):
        fig, axes = _figure(
            3.2 * len(targets) + 1.6,
            0.35 * len(predictors) * len(models) + 1.2 * len(models),
            nrows=len(models),
            ncols=len(targets),
            squeeze=False,
            sharex=True,
        )
        for i, model in enumerate(models):
            for j, target in enumerate(targets):
                ax = axes[i, j]
                ax.axvline(0.0, color="0.4", linewidth=0.8, linestyle=":")
                sub = table[(table["model"] == model) & (table["target"] == target)]
                for m, (mode, label, marker, color) in enumerate(PREDICTOR_MODES):
                    rows = sub[sub["mode"] == mode].set_index("predictor")
                    for p, name in enumerate(predictors):
                        if name not in rows.index:
                            continue
                        row = rows.loc[name]
                        y = p + (m - 1) * 0.22
                        low, high = float(row["ci_low"]), float(row["ci_high"])
                        rho = float(row["rho"])
                        if np.isfinite(low) and np.isfinite(high) and np.isfinite(rho):
                            ax.plot([low, high], [y, y], color=color, linewidth=1.0)
                        ax.scatter(
                            [rho], [y], marker=marker, s=22, color=color, edgecolor="black",
                            linewidth=0.4, zorder=3, label=label,
                        )  # fmt: skip
                ax.set_yticks(range(len(predictors)))
                ax.set_yticklabels(predictors if j == 0 else [])
                ax.set_ylim(len(predictors) - 0.5, -0.5)
                ax.set_xlim(-1.05, 1.05)
                ax.set_title(f"{short_model_name(str(model))}: {target}")
                if i == len(models) - 1:
                    ax.set_xlabel("Spearman ρ across datasets (95% CI)")
        entries: dict[str, Any] = {}
        for ax in axes.ravel():
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                entries.setdefault(label, handle)
        fig.legend(
            list(entries.values()),
            list(entries),
            loc="outside lower center",
            ncols=3,
            frameon=False,
        )
    return fig


def plot_predictors(table: pd.DataFrame, outputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Write the predictors x targets comparison; returns [png, pdf]."""
    return save_figure(predictors_figure(table), outputs)
