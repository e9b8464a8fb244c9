"""Study-level tables: the per-pair JSONs of every (model, dataset) gathered into tidy frames,
the correlations of NTPS with the probe metrics and the LoRA gain, and the frames the plots draw.

Model and dataset names come from the JSON each job wrote (``model``, ``dataset``; ``name`` in a
model record), not from file paths; only Snakemake's benchmark files, which hold no names, are
read through :func:`pair_from_path`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ntps.analysis.layer_k import k_label, rows_at_setting
from ntps.analysis.prediction import paired_change, predict_gain_lodo
from ntps.analysis.selection import correlation_grid, select_layer_k
from ntps.io import read_json
from ntps.layout import pair_of


def pair_from_path(path: str | Path) -> tuple[str, str]:
    """``results/<kind>/<model>/<dataset>.<ext>`` -> (model, dataset): for files that do not name
    their pair themselves (Snakemake benchmark files)."""
    p = Path(path)
    return p.parent.name, p.stem


# --- per-pair records -----------------------------------------------------------------------


def records_table(paths: Iterable[str | Path], **constant: Any) -> pd.DataFrame:
    """One row per record of each per-pair JSON (scores, probes), with its model and dataset."""
    rows = []
    for path in paths:
        data = read_json(path)
        model, dataset = pair_of(data)
        for record in data["records"]:
            if "k_spec" in record:  # label before pandas turns integer k into floats
                record = {**record, "k_label": k_label(record["k_spec"])}
            rows.append({"model": model, "dataset": dataset, **constant, **record})
    return pd.DataFrame(rows)


# Column order of the scores table (docs/outputs.md, "Tables"): keys first, the scores, diagnostics.
SCORE_COLUMNS = (
    "model", "dataset", "stage", "layer", "k_label", "k_spec", "k_perception", "k_ar",
    "ntps_paper", "ntps_reg", "ntps_paper_se", "ntps_reg_se", "ntps_released",
    "ntps_released_min", "ntps_released_max", "ntps_released_sd", "released_roundings", "baseline",
    "excess_loss", "bound_lower", "bound_upper", "lower_bound_zero", "paper_degenerate",
    "ar_degenerate", "k_clipped", "eigen_cutoff", "rank_perception", "rank_ar",
    "n_nonzero_perception", "jackknife_shards", "lam_min_cxx", "lam_max_cxx", "w_star_norm2",
)  # fmt: skip
PROBE_COLUMNS = (
    "model", "dataset", "layer", "accuracy", "macro_f1", "mse", "train_accuracy", "train_mse",
    "chance_accuracy", "n_train", "n_test", "n_classes", "logistic_c", "ridge_alpha",
)  # fmt: skip


def _ordered(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    first = [c for c in columns if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


def scores_table(
    paths: Iterable[str | Path], post_lora_paths: Iterable[str | Path] = ()
) -> pd.DataFrame:
    frame = pd.concat(
        [records_table(paths, stage="pre_lora"), records_table(post_lora_paths, stage="post_lora")],
        ignore_index=True,
    )
    frame = frame.sort_values(["model", "dataset", "stage", "layer"], kind="stable")
    return _ordered(frame, SCORE_COLUMNS).reset_index(drop=True)


def probes_table(paths: Iterable[str | Path]) -> pd.DataFrame:
    frame = records_table(paths).sort_values(["model", "dataset", "layer"], kind="stable")
    return _ordered(frame, PROBE_COLUMNS).reset_index(drop=True)


# --- correlations ---------------------------------------------------------------------------

# Targets NTPS is compared with: (probe column, sign). Sign -1 where lower is better, so a positive
# correlation always means "NTPS agrees with the task being easy".
PROBE_TARGETS: tuple[tuple[str, int], ...] = (("accuracy", 1), ("mse", -1))


def n_layers_by_model(scores: pd.DataFrame) -> dict[str, int]:
    return {m: int(g["layer"].max()) + 1 for m, g in scores.groupby("model")}


def correlation_tables(
    scores: pd.DataFrame,
    probes: pd.DataFrame,
    analysis: Mapping[str, Any],
    fixed_layers: Mapping[str, int | float],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Correlations under the three selection modes, and the full (layer, k) grid, per target."""
    score_col = analysis["score"]
    fixed = {model: (layer, analysis["fixed_k"]) for model, layer in fixed_layers.items()}
    n_layers = n_layers_by_model(scores)
    selections, grids = [], []
    for target, sign in PROBE_TARGETS:
        selections.append(
            select_layer_k(
                scores,
                probes,
                score_col=score_col,
                target_col=target,
                sign=sign,
                fixed=fixed,
                n_layers=n_layers,
                n_boot=analysis["n_bootstrap"],
                n_perm=analysis["n_permutations"],
                seed=analysis["seed"],
            )
        )
        grids.append(correlation_grid(scores, probes, score_col, target, sign))
    return pd.concat(selections, ignore_index=True), pd.concat(grids, ignore_index=True)


def fixed_setting_frame(
    scores: pd.DataFrame,
    probes: pd.DataFrame,
    model: str,
    layer_spec: int | float,
    k_spec: int | float,
    score_col: str,
) -> tuple[pd.DataFrame, int]:
    """Per-dataset NTPS at the model's fixed (layer, k) beside the probe metrics of that layer."""
    chosen, layer = rows_at_setting(scores, model, layer_spec, k_spec)
    if layer is None:
        raise ValueError(f"no pre-LoRA scores for model '{model}'")
    merged = chosen.merge(probes, on=["model", "dataset", "layer"], how="inner")
    return merged.sort_values("dataset").reset_index(drop=True), layer


def fixed_correlation(correlations: pd.DataFrame, model: str, target: str) -> pd.Series:
    """The fixed-setting row of ``model`` and ``target`` in the correlations table."""
    rows = correlations[
        (correlations["model"] == model)
        & (correlations["target"] == target)
        & (correlations["mode"] == "fixed")
    ]
    return rows.iloc[0]


def layer_profile_frame(scores: pd.DataFrame, model: str, k_spec: int | float) -> pd.DataFrame:
    """Pre-LoRA scores of ``model`` at one k across layers and datasets (the layer profile)."""
    return scores[
        (scores["model"] == model)
        & (scores["stage"] == "pre_lora")
        & (scores["k_label"] == k_label(k_spec))
    ]


def bounds_frame(scores: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """Pre-LoRA scores with the held-out probe MSE of the same layer (``probe_mse``)."""
    return scores[scores["stage"] == "pre_lora"].merge(
        probes[["model", "dataset", "layer", "mse"]].rename(columns={"mse": "probe_mse"}),
        on=["model", "dataset", "layer"],
        how="left",
    )


# --- LoRA ------------------------------------------------------------------------------------


def lora_table(
    metrics_paths: Iterable[str | Path],
    probes: pd.DataFrame,
    model_records: Iterable[str | Path],
) -> pd.DataFrame:
    """One row per (model, dataset): LoRA test accuracy, last-layer probe accuracy, and the gain.

    Also whether LoRA learned (mean training loss of the last quarter of steps below the first
    quarter) and the test majority-class rate LoRA accuracy must not fall below. ``model_records``
    are the acquisition records (``model.json``), which give each model's parameter count.
    """
    n_params = {}
    for path in model_records:
        record = read_json(path)
        n_params[record["name"]] = record["n_parameters"]
    last_layer = probes.loc[probes.groupby(["model", "dataset"])["layer"].idxmax()]
    last_layer = last_layer.set_index(["model", "dataset"])
    rows = []
    for path in metrics_paths:
        metrics = read_json(path)
        model, dataset = pair_of(metrics)
        probe = float(last_layer.loc[(model, dataset), "accuracy"])
        majority = float(last_layer.loc[(model, dataset), "chance_accuracy"])
        first, last = metrics.get("loss_first_quarter"), metrics.get("loss_last_quarter")
        rows.append(
            {
                "model": model,
                "dataset": dataset,
                "lora_accuracy": metrics["test_accuracy"],
                "lora_macro_f1": metrics["test_macro_f1"],
                "probe_accuracy_last_layer": probe,
                "gain": metrics["test_accuracy"] - probe,
                "lora_accuracy_at_start": metrics.get("initial_test_accuracy", np.nan),
                "majority_rate": majority,
                "above_majority": metrics["test_accuracy"] >= majority,
                "loss_first_quarter": first if first is not None else np.nan,
                "loss_last_quarter": last if last is not None else np.nan,
                "learned": first is not None and last is not None and last < first,
                "head_init": metrics.get("head_init", "random"),
                "first_adapted_block": metrics.get("first_adapted_block"),
                "n_params": n_params[model],
                "steps": metrics["steps_done"],
            }
        )
    return pd.DataFrame(rows).sort_values(["model", "dataset"]).reset_index(drop=True)


#: Layer spec of the last hidden state (the one the LoRA head reads).
LAST_LAYER = -1


def lora_analysis(
    scores: pd.DataFrame,
    lora: pd.DataFrame,
    analysis: Mapping[str, Any],
    fixed_layers: Mapping[str, int | float],
) -> dict[str, pd.DataFrame]:
    """Gain correlations (three modes), NTPS before/after LoRA, and leave-one-dataset-out gain
    prediction from pre-LoRA NTPS at the fixed setting.

    Before/after compares NTPS at the fixed k on the LAST layer: the one the LoRA head reads and
    one the adapters change whichever blocks they sit on (with adapters on the top blocks only,
    the fixed middle layer is unchanged by construction).
    """
    score_col = analysis["score"]
    fixed = {model: (layer, analysis["fixed_k"]) for model, layer in fixed_layers.items()}
    pre = scores[scores["stage"] == "pre_lora"]
    correlations = select_layer_k(
        pre, lora, score_col=score_col, target_col="gain", sign=-1, fixed=fixed,
        n_layers=n_layers_by_model(pre), n_boot=analysis["n_bootstrap"],
        n_perm=analysis["n_permutations"], seed=analysis["seed"],
    )  # fmt: skip
    at_fixed = []
    for model in fixed_layers:
        for stage in ("pre_lora", "post_lora"):
            chosen, _ = rows_at_setting(scores, model, LAST_LAYER, analysis["fixed_k"], stage)
            if chosen.empty:
                continue
            at_fixed.append(chosen[["model", "dataset", "stage", "layer", "k_label", score_col]])
    fixed_frame = pd.concat(at_fixed, ignore_index=True)
    wide = fixed_frame.pivot_table(
        index=["model", "dataset", "layer", "k_label"], columns="stage", values=score_col
    ).reset_index()
    # The gain is predicted from NTPS at the fixed (layer, k), as in the correlations' fixed mode.
    fixed_pre = pd.concat(
        [
            rows_at_setting(scores, model, layer_spec, analysis["fixed_k"], "pre_lora")[0]
            for model, layer_spec in fixed_layers.items()
        ],
        ignore_index=True,
    )[["model", "dataset", score_col]]
    before_after = wide.merge(
        fixed_pre.rename(columns={score_col: "ntps_fixed_setting"}), on=["model", "dataset"]
    ).merge(lora, on=["model", "dataset"], how="inner")
    paired_rows = []
    for model, group in before_after.groupby("model"):
        if "post_lora" in group:
            paired_rows.append(
                {"model": model, **paired_change(group["pre_lora"], group["post_lora"])}
            )
    prediction = predict_gain_lodo(
        fixed_pre.merge(lora, on=["model", "dataset"], how="inner"), ntps_col=score_col
    )
    return {
        "correlations": correlations,
        "before_after": before_after,
        "paired": pd.DataFrame(paired_rows),
        "prediction": prediction.predictions,
        "prediction_summary": prediction.summary,
    }


def gain_plot_frame(before_after: pd.DataFrame, score_col: str) -> pd.DataFrame:
    """The NTPS-vs-gain figure's frame: pre-LoRA NTPS at the fixed setting under ``score_col``,
    beside each pair's LoRA gain (from ``ntps_before_after.csv``)."""
    return before_after.drop(columns="pre_lora").rename(columns={"ntps_fixed_setting": score_col})


def before_after_plot_frame(before_after: pd.DataFrame) -> pd.DataFrame:
    """The before/after figure's frame: last-layer NTPS as ``ntps_before`` and ``ntps_after``."""
    return before_after.rename(columns={"pre_lora": "ntps_before", "post_lora": "ntps_after"})
