"""One function per workflow stage: read inputs, call the maths, return what the script writes.

Scripts under scripts/ only unpack the `snakemake` object and call these, so every stage can also be
run (and tested) from Python without Snakemake.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ntps.analysis import correlation_grid, k_label, rows_at_setting, select_layer_k
from ntps.io import load_tensors, provenance, read_json, save_tensors, write_json

LOG = logging.getLogger("ntps")


# --- extraction -----------------------------------------------------------------------------


def feature_key(split: str, layer: int) -> str:
    return f"{split}.layer{layer}"


def extract_pair(
    model_dir: str | Path,
    table_path: str | Path,
    dataset_record_path: str | Path,
    settings: Mapping[str, Any],
    out_stats: str | Path,
    out_features: str | Path,
    out_record: str | Path,
    model_record_path: str | Path | None = None,
    adapter_dir: str | Path | None = None,
    splits: Sequence[str] = ("train", "test"),
) -> dict[str, Any]:
    """Forward pass over train (statistics + pooled features) and test (pooled features).

    With ``adapter_dir`` (post-LoRA), the saved adapters are merged into the base model first, so
    pre- and post-LoRA statistics come from the same extraction code path.
    """
    import torch

    from ntps.extract import extract_features
    from ntps.models import load_for_inference, resolve_device, resolve_dtype

    table = pd.read_parquet(table_path)
    dataset_record = read_json(dataset_record_path)
    n_classes = len(dataset_record["label_names"])
    device = resolve_device(settings.get("device", "auto"))
    dtype = resolve_dtype(settings.get("dtype", "auto"), device)
    started = time.perf_counter()
    base_model, tokenizer = load_for_inference(model_dir, dtype=dtype, device=device)
    if adapter_dir is not None:
        from ntps.lora import load_lora_classifier, merged_base_model

        base_model = merged_base_model(load_lora_classifier(base_model, adapter_dir))
        LOG.info("merged LoRA adapters from %s", adapter_dir)
    load_seconds = time.perf_counter() - started
    LOG.info("loaded model from %s on %s (%s) in %.1f s", model_dir, device, dtype, load_seconds)

    features: dict[str, torch.Tensor] = {}
    split_records: dict[str, Any] = {}
    accumulator = None
    for split in splits:
        rows = table[table["split"] == split]
        labels = rows["label"].to_numpy(dtype=np.int64)
        result = extract_features(
            base_model,
            tokenizer,
            rows["text"].tolist(),
            labels.tolist(),
            n_classes,
            batch_size=int(settings["batch_size"]),
            max_length=int(settings["max_length"]),
            accumulate_statistics=(split == "train"),
            device=device,
            progress=bool(settings.get("progress", True)),
        )
        for layer in range(result.pooled.shape[0]):
            features[feature_key(split, layer)] = result.pooled[layer]
        features[f"{split}.labels"] = torch.from_numpy(labels.copy())
        if split == "train":
            accumulator = result.statistics
        split_records[split] = result.summary()
        LOG.info("%s: %s", split, split_records[split])

    assert accumulator is not None
    n_layers = sum(1 for key in features if key.startswith("train.layer"))
    model_record = read_json(model_record_path) if model_record_path else None
    # Carried in the tensors' metadata, so score and probe outputs name the data and model they
    # came from without another input file.
    meta = {
        "n_layers": str(n_layers),
        "n_classes": str(n_classes),
        "dataset_fingerprint": str(dataset_record.get("fingerprint")),
        "model_provenance": json.dumps(
            model_record.get("provenance") if model_record else None, sort_keys=True
        ),
    }
    save_tensors(out_stats, accumulator.to_tensors(), meta)
    save_tensors(out_features, features, meta)
    record = {
        "n_layers": n_layers,
        "hidden_size": int(features[feature_key("train", 0)].shape[1]),
        "n_classes": n_classes,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "settings": dict(settings),
        "adapter_dir": str(adapter_dir) if adapter_dir is not None else None,
        "load_seconds": load_seconds,
        "splits": split_records,
        "dataset_fingerprint": dataset_record.get("fingerprint"),
        "model": model_record,
        "provenance": provenance(),
    }
    write_json(out_record, record)
    return record


def input_provenance(meta: Mapping[str, str]) -> dict[str, Any]:
    """Dataset fingerprint and model provenance recorded by extract_pair in the tensors' metadata."""
    out: dict[str, Any] = {}
    if "dataset_fingerprint" in meta:
        out["dataset_fingerprint"] = meta["dataset_fingerprint"]
    if "model_provenance" in meta:
        out["model_provenance"] = json.loads(meta["model_provenance"])
    return out


# --- scoring --------------------------------------------------------------------------------


def score_pair(
    stats_path: str | Path,
    k_grid: Sequence[int | float],
    *,
    rtol: float,
    ridge: float,
    centered: bool,
) -> dict[str, Any]:
    """NTPS records for every layer and k, loading one layer's statistics at a time."""
    from safetensors import safe_open

    from ntps.scores import score_layer
    from ntps.stats import LayerMoments

    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    with safe_open(str(stats_path), framework="pt") as handle:
        meta = handle.metadata()
        n_layers = int(meta["n_layers"])
        keys = list(handle.keys())
        for layer in range(n_layers):
            prefix = f"layer{layer}."
            tensors = {
                k: handle.get_tensor(k) for k in keys if k.startswith(prefix) or "." not in k
            }
            moments = LayerMoments.from_tensors(tensors, layer)
            for record in score_layer(moments, k_grid, rtol=rtol, ridge=ridge, centered=centered):
                records.append({"layer": layer, **record})
    # Timings go to the log, not the output: score JSONs are byte-identical across runs.
    LOG.info("scored %d layers in %.2f s", n_layers, time.perf_counter() - started)
    return {
        "n_layers": n_layers,
        "k_grid": list(k_grid),
        "settings": {"rtol": rtol, "ridge": ridge, "centered": centered},
        "records": records,
        "provenance": provenance(**input_provenance(meta)),
    }


# --- probes ---------------------------------------------------------------------------------


def probe_pair(
    features_path: str | Path, n_classes: int, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """Held-out linear probes for every layer."""
    from safetensors import safe_open

    from ntps.probes import fit_probe

    records = []
    started = time.perf_counter()
    with safe_open(str(features_path), framework="pt") as handle:
        meta = handle.metadata()
        n_layers = int(meta["n_layers"])
        train_y = handle.get_tensor("train.labels").numpy()
        test_y = handle.get_tensor("test.labels").numpy()
        for layer in range(n_layers):
            result = fit_probe(
                handle.get_tensor(feature_key("train", layer)).numpy(),
                train_y,
                handle.get_tensor(feature_key("test", layer)).numpy(),
                test_y,
                n_classes,
                c_grid=settings["c_grid"],
                cv_folds=settings["cv_folds"],
                seed=settings["seed"],
            )
            records.append({"layer": layer, **result.to_dict()})
            LOG.info("layer %d: accuracy %.3f mse %.3f", layer, result.accuracy, result.mse)
    LOG.info("probed %d layers in %.1f s", n_layers, time.perf_counter() - started)
    return {
        "n_layers": n_layers,
        "settings": dict(settings),
        "records": records,
        "provenance": provenance(seed=settings["seed"], **input_provenance(meta)),
    }


# --- LoRA -----------------------------------------------------------------------------------


def train_lora_pair(
    model_dir: str | Path,
    table_path: str | Path,
    dataset_record_path: str | Path,
    settings: Mapping[str, Any],
    device_spec: str,
    out_adapter_dir: str | Path,
    checkpoint_dir: str | Path | None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune LoRA adapters + a linear head on one dataset; save them; return the metrics."""
    from ntps.lora import LoRASettings, save_lora, train_lora_classifier
    from ntps.models import load_for_inference, resolve_device

    lora_settings = LoRASettings.from_dict(dict(settings))
    table = pd.read_parquet(table_path)
    n_classes = len(read_json(dataset_record_path)["label_names"])
    device = resolve_device(device_spec)
    # Training always runs in fp32 weights; on CUDA the LoRA code uses bf16 autocast.
    base_model, tokenizer = load_for_inference(model_dir, dtype="float32", device=device)
    train = table[table["split"] == "train"]
    test = table[table["split"] == "test"]
    result = train_lora_classifier(
        base_model,
        tokenizer,
        train["text"].tolist(),
        train["label"].astype(int).tolist(),
        n_classes,
        lora_settings,
        device=device,
        test_texts=test["text"].tolist(),
        test_labels=test["label"].astype(int).tolist(),
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        log=LOG.info,
    )
    save_lora(result, out_adapter_dir)
    summary = result.to_dict()
    LOG.info(
        "LoRA: %d steps, test accuracy %.4f, %.1f s",
        summary["steps_done"], summary["test_accuracy"], summary["wall_time_s"],
    )  # fmt: skip
    return {**summary, "device": str(device), "provenance": provenance(seed=lora_settings.seed)}


def lora_table(metrics_paths: Iterable[str | Path], probes: pd.DataFrame,
               model_records: Mapping[str, str | Path]) -> pd.DataFrame:  # fmt: skip
    """One row per (model, dataset): LoRA test accuracy, last-layer probe accuracy, and the gain."""
    last_layer = probes.loc[probes.groupby(["model", "dataset"])["layer"].idxmax()]
    probe_acc = last_layer.set_index(["model", "dataset"])["accuracy"]
    rows = []
    for path in metrics_paths:
        model, dataset = Path(path).parent.parent.name, Path(path).parent.name
        metrics = read_json(path)
        probe = float(probe_acc.loc[(model, dataset)])
        rows.append(
            {
                "model": model,
                "dataset": dataset,
                "lora_accuracy": metrics["test_accuracy"],
                "lora_macro_f1": metrics["test_macro_f1"],
                "probe_accuracy_last_layer": probe,
                "gain": metrics["test_accuracy"] - probe,
                "n_params": read_json(model_records[model])["n_parameters"],
                "steps": metrics["steps_done"],
                "final_loss": metrics["loss_curve"][-1] if metrics["loss_curve"] else np.nan,
                "first_loss": metrics["loss_curve"][0] if metrics["loss_curve"] else np.nan,
            }
        )
    return pd.DataFrame(rows).sort_values(["model", "dataset"]).reset_index(drop=True)


def lora_analysis(
    scores: pd.DataFrame,
    lora: pd.DataFrame,
    analysis: Mapping[str, Any],
    fixed_layers: Mapping[str, int | float],
) -> dict[str, pd.DataFrame]:
    """Gain correlations (three modes), NTPS before/after LoRA, and leave-one-dataset-out gain
    prediction from pre-LoRA NTPS at the fixed setting."""
    from ntps.analysis import paired_change, predict_gain_lodo

    score_col = analysis["score"]
    fixed = {model: (layer, analysis["fixed_k"]) for model, layer in fixed_layers.items()}
    pre = scores[scores["stage"] == "pre_lora"]
    correlations = select_layer_k(
        pre, lora, score_col=score_col, target_col="gain", sign=-1, fixed=fixed,
        n_layers=n_layers_by_model(pre), n_boot=analysis["n_bootstrap"],
        n_perm=analysis["n_permutations"], seed=analysis["seed"],
    )  # fmt: skip
    at_fixed = []
    for model, layer_spec in fixed_layers.items():
        for stage in ("pre_lora", "post_lora"):
            chosen, _ = rows_at_setting(scores, model, layer_spec, analysis["fixed_k"], stage)
            if chosen.empty:
                continue
            at_fixed.append(chosen[["model", "dataset", "stage", "layer", "k_label", score_col]])
    fixed_frame = pd.concat(at_fixed, ignore_index=True)
    wide = fixed_frame.pivot_table(
        index=["model", "dataset", "layer", "k_label"], columns="stage", values=score_col
    ).reset_index()
    before_after = wide.merge(lora, on=["model", "dataset"], how="inner")
    paired_rows = []
    for model, group in before_after.groupby("model"):
        if "post_lora" in group:
            paired_rows.append(
                {"model": model, **paired_change(group["pre_lora"], group["post_lora"])}
            )
    prediction = predict_gain_lodo(
        before_after.rename(columns={"pre_lora": score_col}), ntps_col=score_col
    )
    return {
        "correlations": correlations,
        "before_after": before_after,
        "paired": pd.DataFrame(paired_rows),
        "prediction": prediction.predictions,
        "prediction_summary": prediction.summary,
    }


# --- tables ---------------------------------------------------------------------------------


def pair_from_path(path: str | Path) -> tuple[str, str]:
    """results/<kind>/<model>/<dataset>.json -> (model, dataset)."""
    p = Path(path)
    return p.parent.name, p.stem


def records_table(paths: Iterable[str | Path], **constant: Any) -> pd.DataFrame:
    rows = []
    for path in paths:
        model, dataset = pair_from_path(path)
        for record in read_json(path)["records"]:
            if "k_spec" in record:  # label before pandas turns integer k into floats
                record = {**record, "k_label": k_label(record["k_spec"])}
            rows.append({"model": model, "dataset": dataset, **constant, **record})
    return pd.DataFrame(rows)


# Column order of the scores table (README, "Tables"): keys first, then the scores, then diagnostics.
SCORE_COLUMNS = (
    "model", "dataset", "stage", "layer", "k_label", "k_spec", "k_perception", "k_ar",
    "ntps_paper", "ntps_reg", "baseline", "excess_loss", "bound_lower", "bound_upper",
    "paper_degenerate", "k_clipped", "rank_perception", "rank_ar", "n_nonzero_perception",
    "lam_min_cxx", "lam_max_cxx", "w_star_norm2",
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


def write_pair_json(path: str | Path, model: str, dataset: str, payload: dict[str, Any]) -> None:
    write_json(path, {"model": model, "dataset": dataset, **payload})


__all__ = [
    "extract_pair",
    "feature_key",
    "load_tensors",
    "probe_pair",
    "probes_table",
    "score_pair",
    "scores_table",
    "write_pair_json",
]
