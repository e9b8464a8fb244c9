"""Study-level tables read model and dataset names from the JSON each job wrote, not from paths."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ntps.io import write_json
from ntps.tables import SCORE_COLUMNS, lora_table, pair_from_path, probes_table, scores_table


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
