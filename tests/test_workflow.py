"""End-to-end: the real Snakemake workflow on a tiny random Llama and generated datasets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_support import LORA_STEPS, SIGNAL, read_json, run_snakemake

from ntps.io import load_tensors

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tiny_study: Path) -> Path:
    """The session's tiny study (conftest.py), every target run."""
    return tiny_study


def jobs_planned(dry_run_stdout: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    counts = {}
    for line in dry_run_stdout.splitlines():
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def test_outputs_exist_and_are_complete(study: Path) -> None:
    results = study / "results"
    for dataset in SIGNAL:
        for name in (
            "stats.safetensors", "features.safetensors", "extract.json", "block_inputs.safetensors"
        ):  # fmt: skip
            assert (results / "extract" / "tiny-llama" / dataset / name).stat().st_size > 0
    for stem in ("ntps_vs_accuracy", "correlation_heatmap", "layer_profile"):
        for ext in ("png", "pdf"):
            assert (results / "plots" / "tiny-llama" / f"{stem}.{ext}").stat().st_size > 1000
    # No temporary files left behind by the atomic writers.
    assert not list(results.rglob("*.tmp"))
    # The acquired model: its folder (a directory() output) and its record beside it.
    model = study / "resources/models/tiny-llama"
    assert (model / "weights" / "config.json").is_file()
    assert read_json(model / "model.json")["name"] == "tiny-llama"


def test_scores_table_contents(study: Path) -> None:
    scores = pd.read_csv(study / "results/tables/scores.csv")
    # 4 datasets x 3 hidden-state layers (embeddings + 2 blocks) x 4 k settings, before and after LoRA.
    assert len(scores) == 2 * 4 * 3 * 4
    assert scores.groupby("stage").size().to_dict() == {"pre_lora": 48, "post_lora": 48}
    assert set(scores["dataset"]) == set(SIGNAL)
    assert set(scores["k_label"]) == {"0.25", "0.5", "0.75", "k=2"}
    for column in ("ntps_paper", "ntps_reg", "baseline"):
        assert scores[column].between(0, 1 + 1e-9).all(), column
    # The theorem: lower bound <= exact excess loss <= upper bound, on real activations.
    slack = 1e-8 * scores["bound_upper"].abs().max()
    assert (scores["bound_lower"] <= scores["excess_loss"] + slack).all()
    assert (scores["excess_loss"] <= scores["bound_upper"] + slack).all()
    # Nested subspaces: the regression form can only grow with k.
    fractions = scores[scores["k_label"] != "k=2"].sort_values("k_spec")
    for _, group in fractions.groupby(["stage", "dataset", "layer"]):
        assert np.all(np.diff(group["ntps_reg"].to_numpy()) >= -1e-9)
    # 3 classes: perception eigenvalues beyond the 3rd are degenerate, and flagged.
    assert (scores["n_nonzero_perception"] <= 3).all()
    assert (
        scores["paper_degenerate"] == (scores["k_perception"] > scores["n_nonzero_perception"])
    ).all()
    # Jackknife SEs over 10 train-text shards before LoRA; none after (no shards there).
    pre, post = scores[scores["stage"] == "pre_lora"], scores[scores["stage"] == "post_lora"]
    assert (pre["jackknife_shards"] == 10).all() and (post["jackknife_shards"] == 0).all()
    assert (pre["ntps_reg_se"] > 0).all() and (pre["ntps_reg_se"] < 0.5).all()
    assert post["ntps_reg_se"].isna().all()
    # The released convention's column and the precision-derived cut-off are in every row.
    assert scores["ntps_released"].notna().any() and (scores["eigen_cutoff"] > 0).all()
    # Its rounding spread (16 roundings by default) at the fixed setting only: last layer, k 0.5.
    spread = scores["released_roundings"] > 0
    at_fixed = (pre["layer"] == 2) & (pre["k_label"] == "0.5")
    assert spread.sum() == 4 and spread[at_fixed.index[at_fixed]].all()
    assert (scores.loc[spread, "released_roundings"] == 16).all()
    low, high = scores.loc[spread, "ntps_released_min"], scores.loc[spread, "ntps_released_max"]
    assert (low <= scores.loc[spread, "ntps_released"]).all()
    assert (scores.loc[spread, "ntps_released"] <= high).all()
    assert scores.loc[~spread, "ntps_released_min"].isna().all()


def test_regime_is_flagged_where_n_train_is_below_2d(study: Path) -> None:
    scores = pd.read_csv(study / "results/tables/scores.csv")
    regime = scores[scores["stage"] == "pre_lora"].groupby("dataset")["regime"].unique()
    assert {name: list(values) for name, values in regime.items()} == {
        "noisy": ["n_train<2d"], "weak": ["n_train<2d"], "medium": ["n_train<2d"], "strong": ["ok"],
    }  # fmt: skip
    assert (scores["hidden_size"] == 32).all()
    record = read_json(study / "results/extract/tiny-llama/noisy/extract.json")
    assert (record["n_train"], record["regime"]) == (63, "n_train<2d")
    assert len(record["cxx_rank"]) == 3 and max(record["cxx_rank"]) <= 32
    assert "fewer than 2 training texts per hidden dimension" in record["warning"]
    assert read_json(study / "results/extract/tiny-llama/strong/extract.json")["warning"] is None
    log = (study / "results/logs/score/tiny-llama/noisy.log").read_text()
    assert "REGIME" in log and "63 for d = 32" in log
    assert "REGIME" not in (study / "results/logs/score/tiny-llama/strong.log").read_text()
    summary = (study / "results/summary.md").read_text()
    assert "WARNING: too few training texts" in summary and "3 of 4" in summary


def test_probe_table_tracks_signal(study: Path) -> None:
    probes = pd.read_csv(study / "results/tables/probes.csv")
    assert len(probes) == 4 * 3
    assert probes["accuracy"].between(0, 1).all()
    # Held-out accuracy on the cleanest dataset beats the noisiest one (best layer of each).
    best = probes.groupby("dataset")["accuracy"].max()
    assert best["strong"] > best["noisy"]
    assert best["strong"] > 0.6  # 3 balanced classes: chance is 1/3
    # Standard errors of the held-out metrics: binomial for accuracy, per-text for the MSE.
    binomial = np.sqrt(probes["accuracy"] * (1 - probes["accuracy"]) / probes["n_test"])
    assert np.allclose(probes["accuracy_se"], binomial)
    assert (probes["mse_se"] > 0).all() and (probes["mse_se"] < probes["mse"]).all()
    record = read_json(study / "results/probes/tiny-llama/strong.json")
    assert record["provenance"]["seed"] == 0
    assert record["provenance"]["packages"]["torch"].startswith("2.")


def test_correlations_three_modes(study: Path) -> None:
    correlations = pd.read_csv(study / "results/tables/correlations.csv")
    assert set(correlations["mode"]) == {"fixed", "in_sample", "lodo"}
    assert set(correlations["target"]) == {"accuracy", "-mse"}
    assert correlations["rho"].between(-1, 1).all()
    assert (correlations["n_datasets"] == 4).all()
    fixed = correlations[correlations["mode"] == "fixed"]
    # fixed_layer -1 = last hidden-state layer (index 2); fixed_k 0.5.
    assert set(fixed["layer"].astype(str)) == {"2"}
    assert set(fixed["k_label"]) == {"0.5"}
    by_mode = correlations.pivot(index="target", columns="mode", values="rho")
    # The in-sample best is a maximum over a grid that contains the fixed setting.
    assert (by_mode["in_sample"] >= by_mode["fixed"] - 1e-12).all()


def test_lora_stage(study: Path) -> None:
    lora = pd.read_csv(study / "results/tables/lora.csv")
    assert set(lora["dataset"]) == set(SIGNAL)
    assert (lora["steps"] == LORA_STEPS).all()
    assert np.allclose(lora["gain"], lora["lora_accuracy"] - lora["probe_accuracy_last_layer"])
    # The head started from the last-layer probe: LoRA's first evaluation is the probe's.
    assert (lora["head_init"] == "probe").all() and (lora["first_adapted_block"] == 1).all()
    assert np.allclose(lora["lora_accuracy_at_start"], lora["probe_accuracy_last_layer"])
    for dataset in SIGNAL:
        metrics = read_json(study / f"results/lora/tiny-llama/{dataset}/metrics.json")
        head = load_tensors(study / f"results/probes/tiny-llama/{dataset}.head.safetensors")
        assert metrics["initial_test_predictions"] == head["test_predictions"].tolist()
        assert metrics["initial_agreement_with_probe"] == 1.0
    # Training really happened: the loss fell on the learnable dataset.
    strong = lora.set_index("dataset").loc["strong"]
    assert strong["loss_last_quarter"] < strong["loss_first_quarter"] and strong["learned"]
    adapter = study / "results/lora/tiny-llama/strong/adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    assert not (study / "results/lora/tiny-llama/strong/checkpoints").exists()
    # Post-LoRA statistics come from the adapted model: the last layer's features moved.
    scores = pd.read_csv(study / "results/tables/scores.csv")
    assert set(scores["stage"]) == {"pre_lora", "post_lora"}
    pre = scores[scores["stage"] == "pre_lora"].set_index(["dataset", "layer", "k_label"])
    post = scores[scores["stage"] == "post_lora"].set_index(["dataset", "layer", "k_label"])
    last = pre.index.get_level_values("layer") == 2
    assert not np.allclose(
        pre.loc[last, "ntps_reg"], post.loc[last, "ntps_reg"].reindex(pre.index[last])
    )
    # Only block 1 has adapters: hidden states 0 and 1 are unchanged by LoRA, exactly.
    below = pre.index.get_level_values("layer") <= 1
    assert np.array_equal(
        pre.loc[below, "ntps_reg"], post.loc[below, "ntps_reg"].reindex(pre.index[below])
    )
    correlations = pd.read_csv(study / "results/tables/lora_correlations.csv")
    assert set(correlations["mode"]) == {"fixed", "in_sample", "lodo"}
    assert set(correlations["target"]) == {"-gain"}
    summary = pd.read_csv(study / "results/tables/ntps_before_after_summary.csv")
    assert summary.loc[0, "n"] == 4 and 0 <= summary.loc[0, "share_rose"] <= 1
    prediction = pd.read_csv(study / "results/tables/gain_prediction_summary.csv")
    assert {"mae", "mae_baseline"} <= set(prediction.columns)
    for kind in ("ntps_vs_gain", "ntps_before_after"):
        assert (study / f"results/plots/lora/{kind}.png").stat().st_size > 1000


def test_lora_reads_the_block_inputs_the_extraction_kept(study: Path) -> None:
    """The extraction keeps hidden state 1 (top_blocks: 1 of 2 blocks) of every token, the very
    states the LoRA job computes in the extraction's batches, and the LoRA job reads them instead
    of running block 0."""
    import torch

    from ntps.datasets import load_prepared
    from ntps.io import load_tensor_metadata
    from ntps.layout import block_offsets_key, block_states_key
    from ntps.lora import LoRASettings, TextInputs, build_classifier, configure_split
    from ntps.models import load_for_inference
    from ntps.stages.extract import extraction_batching
    from ntps.workflow import DEFAULT_MODEL_THREADS

    config = yaml.safe_load((study / "config.yaml").read_text())
    settings = LoRASettings.from_dict(config["lora"]["settings"])
    cpu = torch.device("cpu")
    for dataset in SIGNAL:
        path = study / f"results/extract/tiny-llama/{dataset}/block_inputs.safetensors"
        assert load_tensor_metadata(path)["state"] == "1"
        log = (study / f"results/logs/lora/tiny-llama/{dataset}.log").read_text()
        assert "inputs of block 1 (kept in memory, read from the extraction)" in log
    stored = load_tensors(path)
    prepared = load_prepared(
        study / f"resources/datasets/{dataset}/data.parquet",
        study / f"resources/datasets/{dataset}/dataset.json",
    )
    base, tokenizer = load_for_inference(study / "resources/models/tiny-llama/weights", "float32")
    record = read_json(study / f"results/extract/tiny-llama/{dataset}/extract.json")
    batching = extraction_batching(record["settings"])
    threads = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_MODEL_THREADS)  # the jobs' thread count: kernels round alike
    classifier = build_classifier(base, len(prepared.label_names), settings).eval()
    for split in ("train", "test"):
        texts = prepared.frame.loc[prepared.frame["split"] == split, "text"].tolist()
        assert configure_split(classifier, tokenizer, texts, 32, cpu) == 1
        inputs = TextInputs(
            classifier, tokenizer, texts, 32, cpu, settings.eval_batch_size, None, split, batching
        )
        offsets = stored[block_offsets_key(split)]
        assert offsets.diff().tolist() == [len(ids) for ids in inputs.ids]
        assert torch.equal(torch.cat(inputs.cached), stored[block_states_key(split)]), split
    torch.set_num_threads(threads)


def test_predictors_beside_ntps(study: Path) -> None:
    table = pd.read_csv(study / "results/tables/predictors.csv")
    names = ["ntps", "h_score", "logme", "knn", "perception_only", "probe_accuracy"]
    assert list(dict.fromkeys(table["predictor"])) == names
    assert set(table["mode"]) == {"fixed", "in_sample", "lodo"}
    assert (table["n_datasets"] == 4).all() and table["rho"].between(-1, 1).all()
    targets = table.groupby("predictor")["target"].unique().map(set)
    assert targets["probe_accuracy"] == {"-gain"}
    assert all(targets[name] == {"accuracy", "-mse", "-gain"} for name in names[:-1])
    # Fixed mode: the config's layer (-1 = hidden state 2); no k for the baselines.
    fixed = table[table["mode"] == "fixed"]
    assert set(fixed["layer"].astype(str)) == {"2"}
    assert set(fixed.loc[fixed["predictor"] != "ntps", "k_label"]) == {"-"}
    # NTPS's rows are the correlation tables' own, side by side with the baselines.
    ntps = table[table["predictor"] == "ntps"].set_index(["target", "mode"])["rho"]
    for name in ("correlations.csv", "lora_correlations.csv"):
        theirs = pd.read_csv(study / "results/tables" / name).set_index(["target", "mode"])["rho"]
        assert np.allclose(ntps.loc[theirs.index], theirs)
    # Cost beside quality: compute seconds timed in the job, and the producing job's wall time.
    cost = table.groupby("predictor")[["seconds_per_pair", "job_seconds_per_pair", "job"]].first()
    assert (cost.loc[names[:-1], "seconds_per_pair"] > 0).all()
    assert np.isnan(cost.loc["probe_accuracy", "seconds_per_pair"])
    assert (cost["job_seconds_per_pair"] > 0).all()
    assert cost["job"].to_dict() == {
        "ntps": "jackknife+score", "h_score": "predictors", "logme": "predictors", "knn": "predictors",
        "perception_only": "predictors", "probe_accuracy": "probe",
    }  # fmt: skip
    # Values: 4 datasets x 3 layers x 5 predictors; the feature-based perception-only equals the
    # same quantity from the extraction's float64 statistics (two cached inputs, one forward pass).
    values = pd.read_csv(study / "results/tables/predictor_values.csv")
    assert len(values) == 4 * 3 * 5
    assert values.loc[values["predictor"] == "knn", "value"].between(0, 1).all()
    from ntps.stats import LayerMoments

    stats = load_tensors(study / "results/extract/tiny-llama/strong/stats.safetensors")
    m = LayerMoments.from_tensors(stats, 2)
    cxx, cxy = m.cxx.numpy(), m.cxy.numpy()
    expected = np.trace(np.linalg.pinv(cxx, hermitian=True, rcond=1e-10) @ cxy @ cxy.T)
    got = values.query("dataset == 'strong' and layer == 2 and predictor == 'perception_only'")
    assert float(got["value"].iloc[0]) == pytest.approx(expected, rel=1e-4)
    record = read_json(study / "results/predictors/tiny-llama/strong.json")
    assert set(record["seconds"]) == {"h_score", "logme", "knn", "perception_only"}
    # NTPS's cost is timed in the score job and reaches the cost table from the score JSON.
    ntps_seconds = read_json(study / "results/scores/tiny-llama/strong.json")["seconds"]["ntps"]
    costs = pd.read_csv(study / "results/tables/predictor_costs.csv")
    got = costs.query("dataset == 'strong' and predictor == 'ntps' and model == 'tiny-llama'")
    assert ntps_seconds > 0 and float(got["seconds"].iloc[0]) == pytest.approx(ntps_seconds)
    assert record["provenance"]["dataset_fingerprint"] and record["n_train"] == 84
    for ext in ("png", "pdf"):
        assert (study / f"results/plots/predictors.{ext}").stat().st_size > 1000
    summary = (study / "results/summary.md").read_text()
    assert "## NTPS beside cheap pre-screens" in summary


def test_evidence_tables(study: Path) -> None:
    tables = study / "results/tables"
    # The LoRA gain's paired-bootstrap SE over the test texts, and whether it is within noise.
    lora = pd.read_csv(tables / "lora.csv")
    assert (lora["gain_se"] >= 0).all() and (lora["n_test"] > 0).all()
    assert (lora["gain_se"] > 0).any()  # 0 only where probe and LoRA agree on every text
    within = (lora["gain"].abs() < 2 * lora["gain_se"]) | (lora["gain"] == 0)
    assert (lora["gain_within_noise"] == within).all()
    evidence = {
        name: pd.read_csv(tables / f"evidence_{name}.csv")
        for name in (
            "targets", "correlations", "pooled", "across_models", "across_models_datasets",
            "incremental", "incremental_lodo", "pairs",
        )
    }  # fmt: skip
    # The per-model rows are the correlation tables' own, with power and a reading.
    rows = evidence["correlations"]
    assert set(rows["predictor"]) == {
        "ntps", "h_score", "logme", "knn", "perception_only", "probe_accuracy",
    }  # fmt: skip
    ntps = rows[rows["predictor"] == "ntps"].set_index(["target", "mode"])
    for name in ("correlations.csv", "lora_correlations.csv"):
        theirs = pd.read_csv(tables / name).set_index(["target", "mode"])
        assert np.allclose(ntps.loc[theirs.index, "rho"], theirs["rho"])
        assert np.allclose(ntps.loc[theirs.index, "ci_low"], theirs["ci_low"])
    assert rows["min_detectable"].isna().all()  # 4 datasets: no rho can reach p < 0.05
    assert rows["reading"].str.len().gt(0).all()
    # One model: pooled within-model rows are its own; all pairs and across models say why not.
    pooled = evidence["pooled"]
    within = pooled[(pooled["view"] == "within_model") & (pooled["predictor"] == "ntps")]
    within = within.set_index(["target", "mode"])
    assert np.allclose(within.loc[ntps.index, "rho"], ntps["rho"], equal_nan=True)
    every = pooled[pooled["view"] == "all_pairs"]
    assert every["rho"].isna().all()
    assert every["reason"].str.contains("fewer than 2 models (1)", regex=False).all()
    across = evidence["across_models"]
    assert across["mean_tau"].isna().all()
    assert across["reason"].str.contains("fewer than 3 models (1)", regex=False).all()
    assert (evidence["across_models_datasets"]["n_models"] == 1).all()
    # What NTPS adds beyond each baseline, per target (probe accuracy only for the gain).
    incremental = evidence["incremental"]
    baselines = incremental.groupby("target")["baseline"].apply(set).to_dict()
    assert baselines["accuracy"] == {"h_score", "logme", "knn", "perception_only"}
    assert baselines["-gain"] == {"h_score", "logme", "knn", "perception_only", "probe_accuracy"}
    # (a baseline undefined on every dataset has no prediction scope)
    assert set(incremental["scope"].dropna()) == {"tiny-llama"}
    assert (incremental.loc[incremental["baseline"] == "knn", "scope"] == "tiny-llama").all()
    # Target noise at the fixed setting: the gains within noise counted as lora.csv flags them.
    targets = evidence["targets"].set_index("target")
    assert targets.loc["-gain", "n_within_noise"] == int(lora["gain_within_noise"].sum())
    assert (targets["mean_se"] > 0).all()
    # The summary states the verdict and what the evidence can show; the verdict is a file.
    summary = (study / "results/summary.md").read_text()
    k, n = int(lora["gain_within_noise"].sum()), len(lora)
    assert "## Verdict" in summary and "## What the evidence can show" in summary
    assert f"{k} of {n} gains are within 2 SE of 0" in summary
    assert "Not computed: fewer than 3 models (1)" in summary
    assert "no value can reach p < 0.05" in summary
    verdict = (study / "results/verdict.rst").read_text()
    assert verdict.startswith("**Verdict.**") and "Overall, at the fixed setting" in verdict


def test_extraction_record(study: Path) -> None:
    record = read_json(study / "results/extract/tiny-llama/strong/extract.json")
    assert record["n_layers"] == 3
    assert record["hidden_size"] == 32
    assert record["splits"]["train"]["n_texts"] + record["splits"]["test"]["n_texts"] == 120
    assert record["dataset_fingerprint"]
    assert record["settings"]["prompt_format"] == "raw" and "progress" not in record["settings"]


def test_summary_and_report(study: Path) -> None:
    summary = (study / "results/summary.md").read_text()
    assert "leave-one-dataset-out" in summary and "in-sample best (optimistic)" in summary
    assert "Qwen2-0.5B" in summary  # the paper's reference correlations are included
    magnitudes = pd.read_csv(study / "results/tables/magnitudes.csv")
    assert len(magnitudes) == 4 and magnitudes["position"].le(1 + 1e-9).all()
    paper = pd.read_csv(study / "results/tables/paper_correlations.csv")
    assert len(paper) == 24
    run_snakemake(study, "--report", "results/report.html")
    html = (study / "results/report.html").read_text(errors="replace")
    assert len(html) > 100_000 and "leave-one-dataset-out" in html
    assert "Cheap pre-screens" in html  # the predictors table and plot have their category
    # The landing page carries the study's verdict (report/workflow.rst includes verdict.rst).
    assert "Overall, at the fixed setting" in html and "Evidence" in html


def test_second_run_does_nothing(study: Path) -> None:
    result = run_snakemake(study, "--dry-run")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_toggling_the_progress_bar_reruns_nothing(study: Path) -> None:
    # `progress` reaches the jobs as a no_rerun param (rules/common.smk), which Snakemake's params
    # rerun trigger does not record: no re-extraction, no retraining.
    config = yaml.safe_load((study / "config.yaml").read_text())
    config["extraction"]["progress"] = not config["extraction"]["progress"]
    changed = study / "config-progress.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = run_snakemake(study, "--dry-run", configfile=changed)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_k_grid_does_not_rerun_extraction(study: Path) -> None:
    config = yaml.safe_load((study / "config.yaml").read_text())
    config["scoring"]["k_grid"] = [0.5, 4]
    config["plots"] = {"dpi": 100}
    changed = study / "config-changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = run_snakemake(study, "--dry-run", configfile=changed)
    planned = jobs_planned(result.stdout)
    assert planned.get("score") == 4
    # The jackknife replicates serve any k grid: the shard statistics (deleted by default once
    # scored) are not needed again.
    assert "jackknife" not in planned, planned
    assert not list((study / "results/extract").rglob("stats_shards.safetensors"))
    assert "extract" not in planned and "acquire_model" not in planned
    assert "prepare_dataset" not in planned and "probe" not in planned
    # The baselines do not depend on the k grid: NTPS is timed in the score job, not re-scored in
    # the predictors jobs; only their table (which reads the new score JSONs' times) re-runs.
    assert "predictors" not in planned, planned


def test_changing_the_lora_settings_does_not_rerun_extraction(study: Path) -> None:
    """Which hidden state the extraction keeps for LoRA is a no_rerun param: new LoRA settings
    retrain, and the LoRA jobs compute the states the file does not hold."""
    config = yaml.safe_load((study / "config.yaml").read_text())
    config["lora"]["settings"]["top_blocks"] = 2
    changed = study / "config-lora.yaml"
    changed.write_text(yaml.safe_dump(config))
    planned = jobs_planned(run_snakemake(study, "--dry-run", configfile=changed).stdout)
    assert planned.get("lora") == len(SIGNAL) and "extract" not in planned
