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
from ntps.analysis.uncertainty import accuracy_se, gain_uncertainty
from ntps.errors import DatasetError
from ntps.io import read_json
from ntps.layout import HEAD_TEST_PREDICTIONS_KEY, labels_key, pair_of


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
    "model", "dataset", "layer", "accuracy", "accuracy_se", "macro_f1", "mse", "mse_se",
    "train_accuracy", "train_mse", "chance_accuracy", "n_train", "n_test", "n_classes",
    "logistic_c", "ridge_alpha",
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
    """One row per (model, dataset, layer) of the probe records, with the standard errors of the
    held-out metrics: ``accuracy_se`` binomial from accuracy and ``n_test``
    (:func:`ntps.analysis.accuracy_se`), ``mse_se`` as the probe job recorded it (NaN for records
    written before it did)."""
    frame = records_table(paths).sort_values(["model", "dataset", "layer"], kind="stable")
    if "accuracy" in frame.columns and "n_test" in frame.columns:
        frame["accuracy_se"] = accuracy_se(
            frame["accuracy"].to_numpy(float), frame["n_test"].to_numpy(float)
        )
    if "mse" in frame.columns and "mse_se" not in frame.columns:
        frame["mse_se"] = np.nan
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


def read_array(path: str | Path, key: str) -> np.ndarray:
    """One tensor of a safetensors file as a numpy array (the others are not read; no torch)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        if key not in handle.keys():
            raise DatasetError(f"{path} has no tensor {key!r}; it has {sorted(handle.keys())}")
        return handle.get_tensor(key)


def per_text_correct(labels: np.ndarray, predictions: Any, what: str) -> np.ndarray:
    """Per-text 0/1 correctness, shape (n_test,), of ``predictions`` against ``labels``."""
    predicted = np.asarray(predictions, dtype=np.int64).ravel()
    if predicted.shape != labels.shape:
        raise DatasetError(f"{what}: {predicted.size} test predictions for {labels.size} labels")
    return (predicted == labels).astype(np.float64)


#: Columns the per-text test predictions add to the LoRA table (:func:`lora_table`).
GAIN_NOISE_COLUMNS = ("n_test", "lora_accuracy_se", "gain_se", "gain_within_noise")


def gain_noise(
    metrics: Mapping[str, Any],
    features_path: str | Path,
    probe_head_path: str | Path,
    probe_accuracy: float,
    *,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The uncertainty of one pair's LoRA gain, from the per-text test predictions.

    Before: the last-layer probe's test predictions (saved with its head, the classifier the
    gain is measured against whatever ``head_init``); after: the LoRA model's
    (``test_predictions`` in ``metrics``). Paired bootstrap over the same test texts
    (:func:`ntps.analysis.gain_uncertainty`). Both accuracies must equal the tables' (the
    probe's, and LoRA's ``test_accuracy``): the texts and labels are then the ones scored.
    """
    model, dataset = pair_of(metrics)
    what = f"LoRA gain of {model} x {dataset}"
    labels = read_array(features_path, labels_key("test"))
    probe_predictions = read_array(probe_head_path, HEAD_TEST_PREDICTIONS_KEY)
    before = per_text_correct(labels, probe_predictions, f"{what} ({probe_head_path})")
    after = per_text_correct(labels, metrics["test_predictions"], f"{what} (LoRA metrics)")
    record = gain_uncertainty(before, after, n_boot=n_boot, seed=seed)
    for name, mine, theirs in (
        ("probe accuracy", record["accuracy_before"], probe_accuracy),
        ("LoRA test accuracy", record["accuracy_after"], metrics["test_accuracy"]),
    ):
        if not np.isclose(mine, theirs, rtol=0, atol=1e-9):
            raise DatasetError(
                f"{what}: {name} from the per-text predictions is {mine:.6f}, the recorded one "
                f"{theirs:.6f}: the predictions and the labels in {features_path} do not match"
            )
    return {
        "n_test": record["n_texts"],
        "lora_accuracy_se": record["accuracy_after_se"],
        "gain_se": record["gain_se"],
        "gain_within_noise": record["gain_within_noise"],
    }


def lora_table(
    metrics_paths: Iterable[str | Path],
    probes: pd.DataFrame,
    model_records: Iterable[str | Path],
    test_files: Mapping[tuple[str, str], tuple[str | Path, str | Path]] | None = None,
    *,
    gain_bootstrap: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (model, dataset): LoRA test accuracy, last-layer probe accuracy, and the gain.

    Also whether LoRA learned (mean training loss of the last quarter of steps below the first
    quarter) and the test majority-class rate LoRA accuracy must not fall below. ``model_records``
    are the acquisition records (``model.json``), which give each model's parameter count.
    ``test_files`` maps (model, dataset) to its (features file, probe head file): with them the
    gain gets its uncertainty (:func:`gain_noise`, ``gain_bootstrap`` resamples, ``seed``), in
    the columns ``GAIN_NOISE_COLUMNS``, after the others.
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
        row = {
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
        if test_files is not None:
            if (model, dataset) not in test_files:
                raise DatasetError(
                    f"no features and probe head file given for the LoRA pair {model} x "
                    f"{dataset} ({path})"
                )
            features_path, head_path = test_files[(model, dataset)]
            row.update(
                gain_noise(
                    metrics, features_path, head_path, probe, n_boot=gain_bootstrap, seed=seed
                )
            )
        rows.append(row)
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
