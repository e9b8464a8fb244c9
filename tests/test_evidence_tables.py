"""The study's evidence tables and its verdict (ntps.evidence_tables), on synthetic study tables:
the same points as the correlation tables, pooled and across-model views with 1, 2 and 3 models,
incremental validity, target noise, and the generated verdict."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ntps.analysis import (
    accuracy_se,
    incremental_validity,
    k_label,
    min_detectable_correlation,
    read_correlation,
    select_layer_k,
    spearman,
)
from ntps.evidence_tables import (
    ACROSS_COLUMNS,
    ACROSS_DATASET_COLUMNS,
    CORRELATION_COLUMNS,
    EVIDENCE_TABLES,
    INCREMENTAL_COLUMNS,
    PAIR_COLUMNS,
    POOLED_COLUMNS,
    TARGET_NOISE_COLUMNS,
    EvidenceSettings,
    StudyEvidence,
    Verdict,
    cheapest_tracking_baseline,
    cost_per_pair,
    evidence_tables,
    verdict,
    verdict_markdown,
    verdict_rst,
)
from ntps.predictors import judge_predictors
from ntps.summary import correlation_view, evidence_lines, markdown_table, verdict_lines
from ntps.tables import correlation_tables

ANALYSIS = {
    "score": "ntps_reg", "fixed_layer": -1, "fixed_k": 0.5, "n_bootstrap": 200,
    "n_permutations": 500, "seed": 0,
}  # fmt: skip
SETTINGS = EvidenceSettings.from_config(ANALYSIS, {"useful_rho": 0.5})
ENABLED = ["knn", "perception_only", "probe_accuracy"]
N_DATASETS = 6


def synthetic_study(models: list[str], seed: int = 0) -> dict[str, pd.DataFrame]:
    """Scores (3 layers x 2 k), probes, LoRA gains and predictor values of ``models`` on 6
    datasets: NTPS and kNN follow the probe accuracy, perception-only is noise."""
    rng = np.random.default_rng(seed)
    datasets = [f"d{i}" for i in range(N_DATASETS)]
    ease = rng.uniform(0, 1, size=N_DATASETS)
    scores, probes, values, lora = [], [], [], []
    for m_i, model in enumerate(models):
        for layer in range(3):
            for j, d in enumerate(datasets):
                acc = float(np.clip(0.5 + 0.3 * ease[j] + 0.1 * m_i + 0.05 * rng.normal(), 0, 1))
                probes.append({
                    "model": model, "dataset": d, "layer": layer, "accuracy": acc,
                    "mse": float(1 - acc + 0.02 * rng.normal()), "mse_se": 0.01 + 0.001 * j,
                    "n_test": 300, "chance_accuracy": 0.5,
                })  # fmt: skip
                for k in (0.25, 0.5):
                    scores.append({
                        "model": model, "dataset": d, "stage": "pre_lora", "layer": layer,
                        "k_spec": k, "k_label": k_label(k),
                        "ntps_reg": acc * k + 0.05 * rng.normal(), "ntps_reg_se": 0.02,
                    })  # fmt: skip
                for name, value in (
                    ("knn", acc + 0.02 * rng.normal()),
                    ("perception_only", rng.normal()),
                    ("probe_accuracy", acc),
                ):
                    values.append(
                        {"model": model, "dataset": d, "layer": layer, "predictor": name,
                         "value": value}
                    )  # fmt: skip
        for j, d in enumerate(datasets):
            gain = float(0.05 * (1 - ease[j]) + 0.01 * rng.normal())
            lora.append({
                "model": model, "dataset": d, "gain": gain, "gain_se": 0.01,
                "gain_within_noise": abs(gain) < 0.02, "n_params": 1000 * (m_i + 1),
            })  # fmt: skip
    probes = pd.DataFrame(probes)
    probes["accuracy_se"] = accuracy_se(probes["accuracy"].to_numpy(), probes["n_test"].to_numpy())
    fixed_layers = {m: -1 for m in models}
    frames = {
        "scores": pd.DataFrame(scores), "probes": probes, "lora": pd.DataFrame(lora),
        "values": pd.DataFrame(values),
    }  # fmt: skip
    frames["correlations"], _ = correlation_tables(frames["scores"], probes, ANALYSIS, fixed_layers)
    frames["lora_correlations"] = select_layer_k(
        frames["scores"], frames["lora"], score_col="ntps_reg", target_col="gain", sign=-1,
        fixed={m: (-1, 0.5) for m in models}, n_boot=200, n_perm=500, seed=0,
    )  # fmt: skip
    frames["predictors"] = judge_predictors(
        frames["values"], probes, ANALYSIS, fixed_layers, frames["lora"]
    )
    return frames


def tables_of(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    models = sorted(frames["scores"]["model"].unique())
    return evidence_tables(
        frames["scores"],
        frames["probes"],
        [frames["correlations"], frames["lora_correlations"], frames["predictors"]],
        {m: -1 for m in models},
        SETTINGS,
        lora=frames["lora"],
        values=frames["values"],
        enabled=ENABLED,
    )


@pytest.fixture(scope="module")
def three() -> tuple[dict, dict]:
    frames = synthetic_study(["m1", "m2", "m3"])
    return frames, tables_of(frames)


@pytest.fixture(scope="module")
def one() -> tuple[dict, dict]:
    frames = synthetic_study(["m1"])
    return frames, tables_of(frames)


# --------------------------------------------------------------------------------------------
# the points and the per-model rows
# --------------------------------------------------------------------------------------------


def test_tables_have_their_columns(three: tuple[dict, dict]) -> None:
    _, tables = three
    assert set(tables) == set(EVIDENCE_TABLES)
    for name, columns in (
        ("pairs", PAIR_COLUMNS), ("correlations", CORRELATION_COLUMNS),
        ("pooled", POOLED_COLUMNS), ("across_models", ACROSS_COLUMNS),
        ("across_models_datasets", ACROSS_DATASET_COLUMNS), ("incremental", INCREMENTAL_COLUMNS),
        ("targets", TARGET_NOISE_COLUMNS),
    ):  # fmt: skip
        assert list(tables[name].columns) == list(columns), name


def test_pairs_are_the_points_the_correlation_tables_correlate(three: tuple[dict, dict]) -> None:
    frames, tables = three
    pairs = tables["pairs"]
    assert list(dict.fromkeys(pairs["predictor"])) == ["ntps", *ENABLED]
    assert set(pairs.loc[pairs["predictor"] == "probe_accuracy", "target"]) == {"-gain"}
    per_model = pd.concat(
        [frames["correlations"].assign(predictor="ntps"),
         frames["lora_correlations"].assign(predictor="ntps"), frames["predictors"]]
    )  # fmt: skip
    for key, sub in pairs.groupby(["predictor", "model", "target", "mode"]):
        row = per_model.set_index(["predictor", "model", "target", "mode"]).loc[key]
        assert spearman(sub["score"], sub["target_value"]) == pytest.approx(row["rho"]), key
    # the target's SE is the probe's at the pair's layer (fixed: the last of 3 layers)
    fixed = pairs[(pairs["predictor"] == "ntps") & (pairs["mode"] == "fixed")]
    acc = fixed[fixed["target"] == "accuracy"]
    probes = frames["probes"]
    expected = probes[probes["layer"] == 2].set_index(["model", "dataset"])["accuracy_se"]
    got = acc.set_index(["model", "dataset"])["target_se"]
    assert np.allclose(got, expected.loc[got.index])
    assert (acc["layer"] == 2).all() and (acc["score_se"] == 0.02).all()
    gain = fixed[fixed["target"] == "-gain"]
    assert (gain["target_se"] == 0.01).all()
    assert pairs.loc[pairs["predictor"] == "knn", "score_se"].isna().all()


def test_correlation_rows_add_noise_ci_power_and_reading(three: tuple[dict, dict]) -> None:
    frames, tables = three
    rows = tables["correlations"]
    n_expected = (
        len(frames["correlations"]) + len(frames["lora_correlations"]) + len(frames["predictors"])
    )
    assert len(rows) == n_expected
    assert (rows["min_detectable"] == min_detectable_correlation(N_DATASETS)).all()
    for row in rows.itertuples():
        assert row.reading == read_correlation(row.ci_low, row.ci_high, 0.5)
    # every row has a CI with the target's noise; with it the interval is no narrower at the
    # top (noise pulls rho toward 0)
    assert np.isfinite(rows[["ci_low_noise", "ci_high_noise"]].to_numpy(float)).all()
    ntps = rows[rows["predictor"] == "ntps"]
    assert (ntps["ci_high_noise"] <= ntps["ci_high"] + 1e-12).mean() > 0.5


# --------------------------------------------------------------------------------------------
# pooled over models
# --------------------------------------------------------------------------------------------


def test_pooled_single_model_is_the_model_s_row_and_all_pairs_says_why(
    one: tuple[dict, dict],
) -> None:
    frames, tables = one
    pooled = tables["pooled"].set_index(["predictor", "target", "mode", "view"])
    corr = frames["correlations"].set_index(["target", "mode"])
    for target in ("accuracy", "-mse"):
        for mode in ("fixed", "in_sample", "lodo"):
            within = pooled.loc[("ntps", target, mode, "within_model")]
            row = corr.loc[(target, mode)]
            assert within["rho"] == pytest.approx(row["rho"])
            assert (within["ci_low"], within["ci_high"]) == pytest.approx(
                (row["ci_low"], row["ci_high"])
            )
            assert within["p_value"] == pytest.approx(row["p_value"])
            assert within["n_models"] == 1 and within["reason"] == ""
            every = pooled.loc[("ntps", target, mode, "all_pairs")]
            assert math.isnan(every["rho"]) and "fewer than 2 models (1)" in every["reason"]
            assert every["reading"].startswith("no reading")


def test_pooled_two_models_mean_of_model_rhos_and_all_pairs() -> None:
    frames = synthetic_study(["m1", "m2"], seed=3)
    tables = tables_of(frames)
    pooled = tables["pooled"].set_index(["predictor", "target", "mode", "view"])
    corr = frames["correlations"].set_index(["model", "target", "mode"])
    within = pooled.loc[("ntps", "accuracy", "fixed", "within_model")]
    assert within["rho"] == pytest.approx(
        np.mean([corr.loc[(m, "accuracy", "fixed"), "rho"] for m in ("m1", "m2")])
    )
    assert within["n_models"] == 2 and within["n_pairs"] == 2 * N_DATASETS
    every = pooled.loc[("ntps", "accuracy", "fixed", "all_pairs")]
    pairs = tables["pairs"]
    sub = pairs[
        (pairs["predictor"] == "ntps") & (pairs["target"] == "accuracy")
        & (pairs["mode"] == "fixed")
    ]  # fmt: skip
    assert every["rho"] == pytest.approx(spearman(sub["score"], sub["target_value"]))
    assert every["reason"] == "" and np.isfinite(every["min_detectable"])
    # across models with 2 models: every row empty, and why
    across = tables["across_models"]
    assert across["mean_tau"].isna().all()
    assert across["reason"].str.contains("fewer than 3 models (2)", regex=False).all()
    assert len(tables["across_models_datasets"]) > 0


# --------------------------------------------------------------------------------------------
# across models
# --------------------------------------------------------------------------------------------


def test_across_models_with_three_models(three: tuple[dict, dict]) -> None:
    _, tables = three
    summary = tables["across_models"]
    assert (summary["reason"] == "").all() and (summary["n_models"] == 3).all()
    assert np.isfinite(summary["mean_tau"].to_numpy(float)).all()
    top = dict(zip(summary["target"], summary["top"], strict=False))
    assert top == {"accuracy": "high", "-mse": "high", "-gain": "low"}
    assert np.isnan(summary["min_detectable"]).all()  # 3 models: no tau reaches p < 0.05
    pairs, per = tables["pairs"], tables["across_models_datasets"]
    for target, sign in (("accuracy", 1.0), ("-gain", -1.0)):
        fixed = pairs[
            (pairs["predictor"] == "ntps") & (pairs["target"] == target)
            & (pairs["mode"] == "fixed") & (pairs["dataset"] == "d0")
        ]  # fmt: skip
        row = per[
            (per["predictor"] == "ntps") & (per["target"] == target) & (per["mode"] == "fixed")
            & (per["dataset"] == "d0")
        ].iloc[0]  # fmt: skip
        x, y = fixed["score"].to_numpy(), fixed["target_value"].to_numpy()
        assert row["tau"] == pytest.approx(sps.kendalltau(x, y).statistic)
        # -gain: the top is the largest gain, i.e. the smallest -gain (and NTPS): both negated
        assert row["tau_w"] == pytest.approx(sps.weightedtau(sign * x, sign * y).statistic)
    # kNN ranks the models by accuracy almost perfectly
    knn = summary[(summary["predictor"] == "knn") & (summary["target"] == "accuracy")]
    assert (knn["mean_tau"] > 0.5).all()


# --------------------------------------------------------------------------------------------
# incremental validity and target noise
# --------------------------------------------------------------------------------------------


def test_incremental_rows_per_target_and_baseline(three: tuple[dict, dict]) -> None:
    _, tables = three
    inc = tables["incremental"]
    assert list(zip(inc["target"], inc["baseline"], strict=True)) == [
        ("accuracy", "knn"), ("accuracy", "perception_only"), ("-mse", "knn"),
        ("-mse", "perception_only"), ("-gain", "knn"), ("-gain", "perception_only"),
        ("-gain", "probe_accuracy"),
    ]  # fmt: skip
    assert (inc["scope"] == "pooled").all()
    pairs = tables["pairs"]
    fixed = pairs[(pairs["mode"] == "fixed") & (pairs["target"] == "accuracy")]
    frame = fixed[fixed["predictor"] == "ntps"][["model", "dataset", "score", "target_value"]]
    knn = fixed[fixed["predictor"] == "knn"][["model", "dataset", "score"]]
    frame = frame.merge(knn.rename(columns={"score": "baseline"}), on=["model", "dataset"])
    expected = incremental_validity(
        frame, "score", "target_value", "baseline", n_boot=200, n_perm=500, seed=0
    )
    got = inc.iloc[0]
    assert got["partial_rho"] == pytest.approx(expected["partial_rho"])
    assert got["p_value"] == pytest.approx(expected["p_value"])
    lodo = tables["incremental_lodo"]
    assert set(lodo["scope"]) == {"m1", "m2", "m3", "pooled"}


def test_target_noise_counts_gains_within_noise(three: tuple[dict, dict]) -> None:
    frames, tables = three
    noise = tables["targets"].set_index(["target", "model"])
    lora = frames["lora"]
    for model in ("m1", "m2", "m3"):
        row = noise.loc[("-gain", model)]
        own = lora[lora["model"] == model]
        assert row["n_within_noise"] == int(own["gain_within_noise"].sum())
        assert row["value_min"] == pytest.approx(own["gain"].min())
        assert row["mean_se"] == pytest.approx(0.01)
        assert row["sd_over_mean_se"] == pytest.approx(own["gain"].std() / 0.01)
    assert noise["n_within_noise"].loc["accuracy"].isna().all()


def test_tables_are_deterministic(one: tuple[dict, dict]) -> None:
    frames, tables = one
    again = tables_of(frames)
    for name in EVIDENCE_TABLES:
        assert tables[name].to_csv(index=False) == again[name].to_csv(index=False), name


# --------------------------------------------------------------------------------------------
# the verdict
# --------------------------------------------------------------------------------------------


def _pooled(rho: float, low: float, high: float, target: str = "accuracy", **extra) -> dict:
    return {
        "predictor": "ntps", "target": target, "mode": "fixed", "view": "within_model",
        "n_models": 2, "n_datasets": 8, "n_pairs": 16, "rho": rho, "ci_low": low,
        "ci_high": high, "min_detectable": 0.52, "reading": read_correlation(low, high),
        "reason": "", **extra,
    }  # fmt: skip


def _verdict_inputs(low: float, high: float, rho: float = 0.1) -> dict:
    pooled = pd.DataFrame(
        [
            _pooled(rho, low, high),
            _pooled(math.nan, math.nan, math.nan, view="all_pairs", reason="", n_pairs=16),
            _pooled(0.2, -0.5, 0.7, target="-gain"),
            _pooled(0.95, 0.8, 1.0, predictor="knn"),
            _pooled(0.6, 0.1, 0.9, predictor="perception_only"),
            _pooled(0.1, -0.4, 0.5, predictor="logme"),
        ]
    )
    across = pd.DataFrame(
        [{"predictor": "ntps", "target": "accuracy", "mode": "fixed", "mean_tau": math.nan,
          "reason": "fewer than 3 models (2): ranking models within a dataset needs at least 3"}]
    )  # fmt: skip
    noise = pd.DataFrame(
        [{"target": "-gain", "model": m, "n_datasets": 8, "n_within_noise": k}
         for m, k in (("a", 6), ("b", 5))]
    )  # fmt: skip
    incremental = pd.DataFrame(
        [
            {"target": "accuracy", "baseline": b, "partial_rho": p, "ci_low": lo,
             "ci_high": hi, "p_value": pv, "mae_baseline": 0.02, "mae_baseline_predictor": 0.021,
             "predictor_lowers_mae": False}
            for b, p, lo, hi, pv in (
                ("knn", 0.05, -0.6, 0.7, 0.8), ("perception_only", 0.4, 0.1, 0.8, 0.04),
                ("logme", 0.3, -0.2, 0.6, 0.3),
            )
        ]
    )  # fmt: skip
    return {
        "pooled": pooled, "across": across, "noise": noise, "incremental": incremental,
        "costs": {"knn": 2.0, "perception_only": 0.5, "logme": 0.1},
        "baselines": ["knn", "logme", "perception_only"], "useful": 0.5,
    }  # fmt: skip


def test_verdict_negative_evidence() -> None:
    v = verdict(**_verdict_inputs(-0.7, 0.4, rho=-0.2))
    assert v.overall == (
        "Overall, at the fixed setting: NTPS is not a usable pre-screen of probe accuracy "
        "(rho >= 0.5 is excluded)."
    )
    first = v.bullets[0]
    assert first.startswith("probe accuracy: rho = -0.20 [-0.70, 0.40] over 8 datasets, mean of 2")
    assert "(p < 0.05 needs |rho| >= 0.52)" in first
    assert "negative evidence: CI excludes rho >= 0.5 (spans both signs)" in first
    text = "\n".join(v.bullets)
    assert "11 of 16 gains are within 2 SE of 0" in text and "most gains are not measured" in text
    assert "Across models, per dataset (which model to pick), probe accuracy: not judged: " in text
    assert "fewer than 3 models (2)" in text
    # the cheapest baseline that TRACKS accuracy (rho >= 0.5): perception_only (0.5 s), not
    # logme (cheaper, rho 0.1); its partial CI excludes 0 but the MAE does not drop
    beyond = v.bullets[-1]
    assert beyond.startswith("The cheapest baseline that tracks probe accuracy is perception_only")
    assert "partial rho with probe accuracy is 0.40 [0.10, 0.80], p = 0.04" in beyond
    assert "weak evidence that NTPS adds information beyond perception_only" in beyond


@pytest.mark.parametrize(
    ("low", "high", "words"),
    [
        (0.55, 0.95, "NTPS tracks probe accuracy well enough to pre-screen it."),
        (0.1, 0.9, "NTPS tracks probe accuracy, but whether well enough to pre-screen it "
         "(rho >= 0.5) is open."),
        (0.05, 0.45, "NTPS tracks probe accuracy, but too weakly to pre-screen it."),
        (-0.9, -0.1, "NTPS runs against probe accuracy: not a usable pre-screen of it."),
        (-0.5, 0.8, "this study cannot tell whether NTPS pre-screens probe accuracy (the "
         "pooled rho's 95% CI [-0.50, 0.80] spans both signs and reaches 0.5)."),
    ],
)  # fmt: skip
def test_verdict_overall_follows_the_reading(low: float, high: float, words: str) -> None:
    v = verdict(**_verdict_inputs(low, high))
    assert v.overall == "Overall, at the fixed setting: " + words


def test_verdict_without_a_tracking_baseline_and_without_predictors() -> None:
    inputs = _verdict_inputs(-0.5, 0.8)
    inputs["pooled"].loc[inputs["pooled"]["predictor"] != "ntps", "rho"] = 0.2
    v = verdict(**inputs)
    assert v.bullets[-1].startswith("No baseline tracks probe accuracy: none reaches a pooled rho")
    # a baseline that orders the datasets exactly as the target: nothing left for a partial rho
    inputs["pooled"].loc[inputs["pooled"]["predictor"] == "knn", "rho"] = 1.0
    inputs["incremental"].loc[0, ["partial_rho", "ci_low", "ci_high"]] = math.nan
    v = verdict(**inputs)
    assert v.bullets[-1] == (
        "The cheapest baseline that tracks probe accuracy is knn (pooled rho 1.00, 2 s per pair): "
        "the partial rho of NTPS given knn is undefined (knn orders the datasets exactly as probe "
        "accuracy does, so nothing is left to explain); leave-one-dataset-out MAE from knn alone "
        "0.02, from knn and NTPS 0.021."
    )
    inputs["incremental"] = inputs["incremental"].iloc[:0]
    v = verdict(**inputs)
    assert not any("baseline" in b for b in v.bullets)
    empty = verdict(
        inputs["pooled"].iloc[:0], inputs["across"], inputs["noise"], inputs["incremental"],
        {}, [], 0.5,
    )  # fmt: skip
    assert empty.bullets == () and empty.intro.startswith("No verdict")


def test_verdict_renders_as_markdown_and_clean_rst() -> None:
    from docutils.core import publish_parts

    v = verdict(**_verdict_inputs(-0.5, 0.8))
    md = verdict_markdown(v)
    assert md[0] == v.intro and md[-1] == f"**{v.overall}**"
    assert all(f"- {b}" in md for b in v.bullets)
    rst = verdict_rst(v)
    assert "\\|rho\\|" in rst
    # halt on any warning: no stray markup (|rho| would be a substitution, trailing _ a link)
    html = publish_parts(
        rst, writer="html", settings_overrides={"halt_level": 2, "report_level": 5}
    )["html_body"]
    assert "|rho| &gt;= 0.52" in html and "<li>" in html and "Verdict." in html
    assert cost_per_pair(
        pd.DataFrame(
            {"predictor": ["knn", "knn", "probe_accuracy"], "seconds": [1.0, 3.0, math.nan],
             "job_seconds": [9.0, 9.0, 20.0]}
        )
    ) == {"knn": 2.0, "probe_accuracy": 20.0}  # fmt: skip
    pooled = _verdict_inputs(0, 1)["pooled"]
    both = ["knn", "perception_only"]
    assert cheapest_tracking_baseline(pooled, both, {"knn": 1.0}, "accuracy", 0.5) == (
        "knn", 0.95, 1.0,
    )  # fmt: skip
    # within a factor 2 of the cheapest, costs are timing noise: the better tracker wins
    assert cheapest_tracking_baseline(
        pooled, both, {"knn": 0.8, "perception_only": 0.5}, "accuracy", 0.5
    ) == ("knn", 0.95, 0.8)
    assert cheapest_tracking_baseline(
        pooled, both, {"knn": 1.2, "perception_only": 0.5}, "accuracy", 0.5
    ) == ("perception_only", 0.6, 0.5)


# --------------------------------------------------------------------------------------------
# the summary's sections
# --------------------------------------------------------------------------------------------


def test_summary_sections_render_the_evidence(three: tuple[dict, dict]) -> None:
    frames, tables = three
    evidence = StudyEvidence(tables, {"knn": 1.0, "perception_only": 0.1}, ENABLED, 0.5)
    lines = verdict_lines(evidence)
    assert lines[0] == "## Verdict" and isinstance(evidence.verdict(), Verdict)
    text = "\n".join(evidence_lines(evidence))
    for heading in (
        "## What the evidence can show", "### Power", "### How noisy the targets are",
        "### NTPS pooled over models", "### Every predictor at the fixed setting",
        "### Across models: which model to pick for a dataset",
        "### Does NTPS add information beyond the baselines?",
    ):  # fmt: skip
        assert heading in text, heading
    assert (
        "With 6 datasets one model's Spearman rho reaches p < 0.05 only from |rho| >= 0.89" in text
    )
    assert "of 18 LoRA gains are within 2 SE of 0" in text
    view = correlation_view(frames["correlations"], tables["correlations"])
    assert {"95% CI with target SE", "rho for p < 0.05", "reading"} <= set(view.columns)
    assert (view["rho for p < 0.05"] == "0.89").all()
    assert "|" not in "".join(view["reading"])  # safe in a Markdown table
    assert markdown_table(view).count("\n") == len(view) + 1
    # one model: the across-model section says why it is absent
    _, single = one_model_tables()
    text = "\n".join(evidence_lines(StudyEvidence(single, {}, [], 0.5)))
    assert "Not computed: fewer than 3 models (1)" in text


def one_model_tables() -> tuple[dict, dict]:
    frames = synthetic_study(["m1"], seed=5)
    return frames, tables_of(frames)
