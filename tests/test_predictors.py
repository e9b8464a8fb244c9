"""The predictors stage: per-pair job (ntps.stages.predictors), tables and judgement beside NTPS
(ntps.predictors), plot, summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ntps.baselines import h_score, knn_accuracy
from ntps.io import save_tensors, write_json
from ntps.layout import NTPS
from ntps.plots import plot_predictors
from ntps.predictors import (
    NO_K,
    PREDICTOR_COLUMNS,
    judge_predictors,
    predictor_costs_table,
    predictor_values_table,
    predictors_table,
)
from ntps.stages.predictors import predictors_pair
from ntps.summary import predictor_lines

ANALYSIS = {"n_bootstrap": 200, "n_permutations": 200, "seed": 0}
DATASETS = ["a", "b", "c", "d", "e"]


def write_features(path: Path, n_layers: int = 3, n: int = 40, d: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], n // 2)
    tensors = {
        "train.labels": torch.from_numpy(labels),
        "test.labels": torch.from_numpy(labels.copy()),
    }
    for layer in range(n_layers):
        x = rng.normal(size=(n, d)) + layer * np.eye(2, d)[labels]
        tensors[f"train.layer{layer}"] = torch.from_numpy(x.astype(np.float32))
        tensors[f"test.layer{layer}"] = torch.from_numpy(x.astype(np.float32))
    save_tensors(path, tensors, {"n_layers": str(n_layers), "dataset_fingerprint": "abc"})
    return labels


def test_predictors_pair_computes_every_layer_and_times_each_predictor(tmp_path: Path) -> None:
    features = tmp_path / "features.safetensors"
    labels = write_features(features)
    settings = {"h_score": {"shrinkage": "ledoit_wolf"}, "knn": {"k": 3, "folds": 4}}
    result = predictors_pair(features, 2, settings, "model 'm' x dataset 'a'")
    assert (result["n_layers"], result["n_train"], result["hidden_size"]) == (3, 40, 6)
    assert [(r["layer"], r["predictor"]) for r in result["records"]] == [
        (layer, name) for layer in range(3) for name in settings
    ]
    # NTPS is timed in the score job, not here (ntps.stages.score.score_pair).
    assert set(result["seconds"]) == set(settings) and min(result["seconds"].values()) > 0
    assert result["provenance"]["dataset_fingerprint"] == "abc"
    # The values are the pure functions on the stored (float32) features.
    from ntps.io import load_tensors

    x = load_tensors(features)["train.layer2"].numpy().astype(np.float64)
    last = {r["predictor"]: r["value"] for r in result["records"] if r["layer"] == 2}
    assert last["h_score"] == pytest.approx(h_score(x, labels, 2))
    assert last["knn"] == pytest.approx(knn_accuracy(x, labels, 2, k=3, folds=4))
    # Errors name the pair, the predictor and the layer.
    with pytest.raises(Exception, match=r"model 'm' x dataset 'a': predictor 'h_score', layer 0"):
        predictors_pair(
            features, 2, {"h_score": {"shrinkage": "oas"}}, where="model 'm' x dataset 'a'"
        )


def planted_tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Two layers; at layer 1 the predictor "logme" ranks datasets as probe accuracy does."""
    rng = np.random.default_rng(1)
    acc = dict(zip(DATASETS, [0.5, 0.6, 0.7, 0.8, 0.9], strict=True))
    probes, values = [], []
    for dataset, a in acc.items():
        for layer in (0, 1):
            probes.append({"model": "m", "dataset": dataset, "layer": layer,
                           "accuracy": a if layer == 1 else rng.uniform(), "mse": 1 - a})  # fmt: skip
            values.append({"model": "m", "dataset": dataset, "layer": layer, "predictor": "logme",
                           "value": 10 * a if layer == 1 else rng.uniform()})  # fmt: skip
    lora = pd.DataFrame({"model": "m", "dataset": DATASETS, "gain": [0.3, 0.2, 0.15, 0.1, 0.0]})
    return pd.DataFrame(values), pd.DataFrame(probes), lora


def test_judge_uses_the_fixed_layer_and_probe_accuracy_only_for_the_gain() -> None:
    values, probes, lora = planted_tables()
    both = predictor_values_table([], probes, ["probe_accuracy"])
    assert set(both["predictor"]) == {"probe_accuracy"} and len(both) == len(probes)
    assert predictor_values_table([], probes, ["logme"]).empty
    values = pd.concat([values, both], ignore_index=True)
    judged = judge_predictors(values, probes, ANALYSIS, {"m": 1}, lora)
    good = judged[judged["predictor"] == "logme"].set_index(["target", "mode"])
    assert good.loc[("accuracy", "fixed"), "rho"] == pytest.approx(1.0)
    assert good.loc[("-mse", "fixed"), "rho"] == pytest.approx(1.0)
    assert good.loc[("-gain", "fixed"), "rho"] == pytest.approx(1.0)  # higher value, smaller gain
    assert good.loc[("accuracy", "fixed"), "layer"] == 1
    assert good.loc[("accuracy", "fixed"), "k_label"] == NO_K
    assert good.loc[("accuracy", "in_sample"), "layer"] == 1
    probe = judged[judged["predictor"] == "probe_accuracy"]
    assert set(probe["target"]) == {"-gain"} and set(probe["mode"]) == {
        "fixed",
        "in_sample",
        "lodo",
    }
    # Fixed layer given as a fraction of depth resolves like NTPS's (0.0 -> embeddings).
    at_zero = judge_predictors(values, probes, ANALYSIS, {"m": 0.0}, lora)
    assert set(at_zero.loc[at_zero["mode"] == "fixed", "layer"]) == {0}
    # Without LoRA only the probe targets remain, and probe accuracy has nothing to predict.
    no_lora = judge_predictors(values, probes, ANALYSIS, {"m": 1}, None)
    assert set(no_lora["target"]) == {"accuracy", "-mse"}
    assert set(no_lora["predictor"]) == {"logme"}


def test_predictors_table_puts_ntps_first_with_costs(tmp_path: Path) -> None:
    values, probes, lora = planted_tables()
    judged = judge_predictors(values, probes, ANALYSIS, {"m": 1}, lora)
    ntps = (
        judged[judged["predictor"] == "logme"]
        .drop(columns="predictor")
        .assign(k_label="0.5", score_col="ntps_reg", stage="pre_lora")
    )
    paths, score_paths = [], []
    for dataset in DATASETS:
        path = tmp_path / "predictors" / "m" / f"{dataset}.json"
        write_json(
            path, {"model": "m", "dataset": dataset, "records": [], "seconds": {"logme": 0.5}}
        )
        paths.append(path)
        # NTPS's compute seconds come from the score JSON (the last pair's is missing: NaN).
        if dataset != DATASETS[-1]:
            score = tmp_path / "scores" / "m" / f"{dataset}.json"
            write_json(
                score, {"model": "m", "dataset": dataset, "records": [], "seconds": {NTPS: 0.25}}
            )
            score_paths.append(score)
        for job, wall in (("jackknife", 1.5), ("score", 0.5), ("predictors", 1.0)):
            bench = tmp_path / job / "m" / f"{dataset}.tsv"
            bench.parent.mkdir(parents=True, exist_ok=True)
            bench.write_text(f"s\th:m:s\tmax_rss\n{wall}\t0:00:02\t100\n")
    benchmarks = {
        job: sorted((tmp_path / job).rglob("*.tsv")) for job in ("jackknife", "score", "predictors")
    }
    costs = predictor_costs_table(paths, score_paths, ["logme"], benchmarks)
    costs = costs.set_index(["dataset", "predictor"])
    assert len(costs) == 10
    assert np.isnan(costs.loc[(DATASETS[-1], NTPS), "seconds"])
    assert costs.loc[("a", NTPS)].to_dict() == {
        "model": "m", "seconds": 0.25, "job": "jackknife+score", "job_seconds": 2.0
    }  # fmt: skip
    assert costs.loc[("e", "logme")].to_dict() == {
        "model": "m", "seconds": 0.5, "job": "predictors", "job_seconds": 1.0
    }  # fmt: skip
    costs = costs.reset_index()
    table = predictors_table(judged, [ntps, None], costs, ["logme"])
    assert list(table.columns) == list(PREDICTOR_COLUMNS)
    assert table["predictor"].iloc[0] == NTPS
    assert list(dict.fromkeys(table["target"])) == ["accuracy", "-mse", "-gain"]
    cost = table.groupby("predictor")[["seconds_per_pair", "job_seconds_per_pair"]].first()
    assert cost.loc[NTPS].tolist() == [0.25, 2.0] and cost.loc["logme"].tolist() == [0.5, 1.0]
    # The plot and the summary section read the table as written.
    written = plot_predictors(
        table, [tmp_path / "plots" / "predictors.png", tmp_path / "plots" / "predictors.pdf"]
    )
    assert all(p.stat().st_size > 1000 for p in written)
    text = "\n".join(predictor_lines(table))
    assert (
        "cheap pre-screens" in text
        and "1.00 [1.00, 1.00]" in text
        and "2.0 (jackknife+score)" in text
    )
    assert predictor_lines(None) == []
