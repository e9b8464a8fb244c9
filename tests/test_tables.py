"""Study-level tables read model and dataset names from the JSON each job wrote, not from paths."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ntps.analysis import paired_bootstrap_gain_se
from ntps.errors import DatasetError
from ntps.io import save_tensors, write_json
from ntps.layout import HEAD_TEST_PREDICTIONS_KEY, labels_key
from ntps.tables import (
    GAIN_NOISE_COLUMNS,
    SCORE_COLUMNS,
    lora_table,
    pair_from_path,
    probes_table,
    scores_table,
)


def test_scores_and_probes_tables_take_names_from_the_json(tmp_path: Path) -> None:
    # Files in folders that do not name their pair: the tables must not look at the path.
    score = tmp_path / "elsewhere" / "one.json"
    write_json(score, {"model": "m", "dataset": "d.v2", "records": [
        {"layer": 0, "k_spec": 2, "ntps_reg": 0.5}, {"layer": 0, "k_spec": 0.25, "ntps_reg": 0.25},
    ]})  # fmt: skip
    post = tmp_path / "post.json"
    write_json(
        post,
        {"model": "m", "dataset": "d.v2", "records": [{"layer": 0, "k_spec": 2, "ntps_reg": 0.75}]},
    )
    scores = scores_table([score], [post])
    assert scores[["model", "dataset", "stage"]].drop_duplicates().values.tolist() == [
        ["m", "d.v2", "post_lora"], ["m", "d.v2", "pre_lora"],
    ]  # fmt: skip
    assert list(scores["k_label"]) == ["k=2", "k=2", "0.25"]
    assert list(scores.columns[:3]) == list(SCORE_COLUMNS[:3])
    probe = tmp_path / "p.json"
    write_json(probe, {"model": "m", "dataset": "d.v2", "records": [{"layer": 1, "accuracy": 1.0}]})
    assert probes_table([probe]).loc[0, ["model", "dataset"]].tolist() == ["m", "d.v2"]


def test_lora_table_reads_parameter_counts_from_the_model_records(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    write_json(record, {"name": "m", "n_parameters": 1234})
    metrics = tmp_path / "metrics.json"
    write_json(metrics, {
        "model": "m", "dataset": "d", "test_accuracy": 0.75, "test_macro_f1": 0.7,
        "steps_done": 3, "loss_first_quarter": 1.0, "loss_last_quarter": 0.5,
    })  # fmt: skip
    probes = pd.DataFrame(
        {"model": ["m", "m"], "dataset": ["d", "d"], "layer": [0, 1],
         "accuracy": [0.5, 0.625], "chance_accuracy": [0.5, 0.5]}
    )  # fmt: skip
    row = lora_table([metrics], probes, [record]).iloc[0]
    assert (row["n_params"], row["gain"], bool(row["learned"])) == (1234, 0.125, True)


def test_benchmark_files_are_named_by_their_path() -> None:
    assert pair_from_path("results/benchmarks/score/m/d.v2.tsv") == ("m", "d.v2")


def test_probes_table_has_the_standard_errors(tmp_path: Path) -> None:
    probe = tmp_path / "p.json"
    write_json(probe, {"model": "m", "dataset": "d", "records": [
        {"layer": 0, "accuracy": 0.8, "mse": 0.3, "mse_se": 0.02, "n_test": 100},
        {"layer": 1, "accuracy": 0.9, "mse": 0.2, "mse_se": 0.01, "n_test": 100},
    ]})  # fmt: skip
    table = probes_table([probe])
    assert list(table.columns[:8]) == [
        "model", "dataset", "layer", "accuracy", "accuracy_se", "mse", "mse_se", "n_test",
    ]  # fmt: skip
    assert table["accuracy_se"].tolist() == pytest.approx([0.04, 0.03])
    assert table["mse_se"].tolist() == [0.02, 0.01]
    # records written before the probe job recorded it: the column is there, NaN
    old = tmp_path / "old.json"
    write_json(old, {"model": "m", "dataset": "d", "records": [
        {"layer": 0, "accuracy": 0.5, "mse": 0.3, "n_test": 4},
    ]})  # fmt: skip
    assert math.isnan(probes_table([old]).loc[0, "mse_se"])


def _lora_pair(tmp_path: Path, labels, probe_pred, lora_pred) -> tuple[Path, Path, Path]:
    features = tmp_path / "features.safetensors"
    save_tensors(features, {labels_key("test"): np.asarray(labels, dtype=np.int64),
                            labels_key("train"): np.zeros(3, dtype=np.int64)})  # fmt: skip
    head = tmp_path / "head.safetensors"
    save_tensors(head, {HEAD_TEST_PREDICTIONS_KEY: np.asarray(probe_pred, dtype=np.int64)})
    metrics = tmp_path / "metrics.json"
    accuracy = float(np.mean(np.asarray(lora_pred) == np.asarray(labels)))
    write_json(metrics, {
        "model": "m", "dataset": "d", "test_accuracy": accuracy, "test_macro_f1": 0.5,
        "steps_done": 3, "test_predictions": list(map(int, lora_pred)),
    })  # fmt: skip
    return features, head, metrics


def test_lora_gain_standard_error_from_per_text_predictions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probe_pred = np.where(rng.uniform(size=300) < 0.7, labels, (labels + 1) % 3)
    lora_pred = np.where(rng.uniform(size=300) < 0.75, labels, (labels + 2) % 3)
    features, head, metrics = _lora_pair(tmp_path, labels, probe_pred, lora_pred)
    record = tmp_path / "record.json"
    write_json(record, {"name": "m", "n_parameters": 10})
    probe_accuracy = float(np.mean(probe_pred == labels))
    probes = pd.DataFrame({
        "model": ["m"], "dataset": ["d"], "layer": [2], "accuracy": [probe_accuracy],
        "chance_accuracy": [0.34],
    })  # fmt: skip
    row = lora_table(
        [metrics], probes, [record], {("m", "d"): (features, head)}, gain_bootstrap=500, seed=3
    ).iloc[0]
    assert list(row.index[-len(GAIN_NOISE_COLUMNS) :]) == list(GAIN_NOISE_COLUMNS)
    before = (probe_pred == labels).astype(float)
    after = (lora_pred == labels).astype(float)
    assert row["gain_se"] == paired_bootstrap_gain_se(before, after, n_boot=500, seed=3)
    # independent classifiers: the paired SE is the SE of a difference of two binomials
    a, b = after.mean(), before.mean()
    assert row["gain_se"] == pytest.approx(np.sqrt(a * (1 - a) / 300 + b * (1 - b) / 300), rel=0.2)
    assert row["n_test"] == 300
    assert row["lora_accuracy_se"] == pytest.approx(np.sqrt(a * (1 - a) / 300))
    assert bool(row["gain_within_noise"]) == (abs(row["gain"]) < 2 * row["gain_se"])
    # without the files: the table as before, no noise columns
    plain = lora_table([metrics], probes, [record]).iloc[0]
    assert "gain_se" not in plain.index and plain["gain"] == row["gain"]
    # predictions that do not reproduce the recorded accuracy: the labels do not match
    probes.loc[0, "accuracy"] = probe_accuracy + 0.1
    with pytest.raises(DatasetError, match="probe accuracy from the per-text predictions"):
        lora_table([metrics], probes, [record], {("m", "d"): (features, head)})
    with pytest.raises(DatasetError, match="no features and probe head file"):
        lora_table([metrics], probes, [record], {})
