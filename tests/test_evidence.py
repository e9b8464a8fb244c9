"""Tests for the evidence analyses of ntps.analysis: target noise (uncertainty), pooled and
across-model views (pooled, across), incremental validity (incremental), power (power), and the
selection modes' pairs (selection.selected_pairs)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ntps.analysis import (
    accuracy_se,
    across_models,
    across_models_table,
    bootstrap_ci,
    error_bootstrap_ci,
    evidence_line,
    gain_uncertainty,
    gain_within_noise,
    incremental_validity,
    incremental_validity_table,
    lodo_incremental_prediction,
    mean_se,
    min_detectable_correlation,
    paired_bootstrap_gain_se,
    partial_spearman,
    pearson_rows,
    permutation_pvalue,
    pooled_all_pairs,
    pooled_within_model,
    pooled_within_model_table,
    read_correlation,
    select_layer_k,
    selected_pairs,
    spearman,
    useful_tau,
    weighted_tau,
    with_power_columns,
)
from ntps.errors import ConfigError, DatasetError


def _pairs(models: dict[str, tuple[np.ndarray, np.ndarray]], **extra: np.ndarray) -> pd.DataFrame:
    """A (model, dataset) frame with columns score, target (and ``extra`` per model)."""
    rows = []
    for model, (x, y) in models.items():
        for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
            row = {"model": model, "dataset": f"d{i}", "score": xi, "target": yi}
            row.update({k: v[model][i] for k, v in extra.items()})
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# 1. target uncertainty (analysis/uncertainty.py)
# --------------------------------------------------------------------------------------------


def test_accuracy_and_mean_se_hand_values() -> None:
    assert accuracy_se(0.8, 300) == pytest.approx(math.sqrt(0.8 * 0.2 / 300), rel=1e-12)
    assert accuracy_se(0.8, 300) == pytest.approx(0.023094, abs=1e-6)
    got = accuracy_se([0.5, 1.0, 0.9], [100, 50, 0])
    assert got[0] == pytest.approx(0.05) and got[1] == 0.0 and math.isnan(got[2])
    # per-text values 1, 2, 3, 4: sd = sqrt(5/3), SE = sd / 2
    assert mean_se([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-12)
    assert mean_se([1.0, np.nan, 3.0]) == pytest.approx(math.sqrt(2) / math.sqrt(2))
    assert math.isnan(mean_se([1.0]))


def test_paired_bootstrap_se_matches_binomial_formula_for_independent_predictions() -> None:
    rng = np.random.default_rng(0)
    m = 300
    before = (rng.uniform(size=m) < 0.70).astype(float)
    after = (rng.uniform(size=m) < 0.75).astype(float)  # independent of before
    se = paired_bootstrap_gain_se(before, after, n_boot=4000, seed=1)
    a, b = after.mean(), before.mean()
    binomial = math.sqrt(a * (1 - a) / m + b * (1 - b) / m)  # SE of a difference of independents
    assert se == pytest.approx(binomial, rel=0.2)
    # and the bootstrap reproduces its own large-sample value sqrt(var(d) / m) closely
    assert se == pytest.approx(np.std(after - before) / math.sqrt(m), rel=0.05)
    assert se == paired_bootstrap_gain_se(before, after, n_boot=4000, seed=1)  # reproducible
    assert se != paired_bootstrap_gain_se(before, after, n_boot=4000, seed=2)


def test_paired_bootstrap_se_is_small_when_classifiers_agree() -> None:
    rng = np.random.default_rng(3)
    m = 300
    before = (rng.uniform(size=m) < 0.8).astype(float)
    after = before.copy()
    flips = rng.choice(m, size=6, replace=False)  # they disagree on 6 texts only
    after[flips] = 1 - after[flips]
    se = paired_bootstrap_gain_se(before, after, n_boot=4000, seed=0)
    unpaired = math.sqrt(2 * 0.8 * 0.2 / m)
    assert se < 0.5 * unpaired
    assert se == pytest.approx(math.sqrt(6) / m, rel=0.15)  # d = +-1 on 6 texts: sd ~ sqrt(6/m)
    assert paired_bootstrap_gain_se(before, before, n_boot=100) == 0.0
    with pytest.raises(DatasetError, match="same test texts"):
        paired_bootstrap_gain_se(before, after[:-1])
    with pytest.raises(ConfigError, match="n_boot"):
        paired_bootstrap_gain_se(before, after, n_boot=1)


def test_gain_within_noise_rule() -> None:
    assert gain_within_noise(0.01, 0.02) is True
    assert gain_within_noise(-0.05, 0.02) is False
    assert gain_within_noise(0.04, 0.02) is False  # exactly 2 SE is not within
    assert gain_within_noise(0.0, 0.0) is True  # the two cannot be told apart
    assert gain_within_noise(0.01, math.nan) is False
    got = gain_within_noise(np.array([0.01, 0.05, -0.03]), np.array([0.02, 0.02, 0.02]), 1.0)
    assert got.tolist() == [True, False, False]


def test_gain_uncertainty_record() -> None:
    before = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0, 1], dtype=float)  # 0.6
    after = np.array([1, 1, 1, 0, 1, 0, 1, 1, 1, 1], dtype=float)  # 0.8
    rec = gain_uncertainty(before, after, n_boot=500, seed=0)
    assert rec["n_texts"] == 10
    assert rec["accuracy_before"] == pytest.approx(0.6)
    assert rec["accuracy_after"] == pytest.approx(0.8)
    assert rec["gain"] == pytest.approx(0.2)
    assert rec["accuracy_after_se"] == pytest.approx(math.sqrt(0.16 / 10))
    assert rec["gain_se"] == paired_bootstrap_gain_se(before, after, n_boot=500, seed=0)
    # d is +1 on 2 of 10 texts: sqrt(var(d)/m) = sqrt(0.16/10) = 0.126; the gain 0.2 < 2 SE
    assert rec["gain_se"] == pytest.approx(0.126, rel=0.15)
    assert rec["gain_within_noise"] is True


def test_error_bootstrap_reduces_to_dataset_bootstrap_and_widens_with_noise() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=10)
    y = x + 0.5 * rng.normal(size=10)
    x_se = np.full(10, 0.3)
    y_se = np.full(10, 0.2)
    # no target SE: the x-only measurement-error bootstrap of ntps.analysis, draw for draw
    assert error_bootstrap_ci(x, y, x_se, n_boot=300, seed=5) == bootstrap_ci(
        x, y, x_se=x_se, n_boot=300, seed=5
    )
    # target SE only: by symmetry of rho, the same with the roles swapped
    assert error_bootstrap_ci(x, y, None, y_se, n_boot=300, seed=5) == bootstrap_ci(
        y, x, x_se=y_se, n_boot=300, seed=5
    )
    # zero SEs: the plain dataset bootstrap
    assert error_bootstrap_ci(x, y, 0 * x_se, 0 * y_se, n_boot=300, seed=5) == bootstrap_ci(
        x, y, n_boot=300, seed=5
    )
    plain = error_bootstrap_ci(x, y, n_boot=2000, seed=0)
    noisy = error_bootstrap_ci(x, y, 3 * x_se, 5 * y_se, n_boot=2000, seed=0)
    assert noisy.low < plain.low - 0.2  # huge noise attenuates rho and widens the interval
    assert noisy.high - noisy.low > plain.high - plain.low
    assert math.isnan(error_bootstrap_ci([1, 2], [1, 2]).low)
    with pytest.raises(DatasetError, match="same length"):
        error_bootstrap_ci(x, y, x_se[:5])


# --------------------------------------------------------------------------------------------
# 2. pooled within-model correlation (analysis/pooled.py)
# --------------------------------------------------------------------------------------------

N8 = np.arange(8.0)


def test_pooled_opposite_models_cancel_with_large_p() -> None:
    frame = _pairs({"a": (N8, N8**2), "b": (N8, -N8)})  # rho +1 and -1
    rec = pooled_within_model(frame, n_boot=500, n_perm=2000)
    assert rec["rho_pooled"] == pytest.approx(0.0, abs=1e-12)
    assert json.loads(rec["rho_per_model"]) == {"a": 1.0, "b": -1.0}
    assert (rec["rho_min"], rec["rho_max"]) == (-1.0, 1.0)
    assert rec["p_value"] == 1.0  # |mean| >= 0 for every permutation
    assert rec["n_models"] == 2 and rec["n_datasets"] == 8 and rec["pooling"] == "mean"
    # the joint bootstrap keeps the two models' resamples paired: +1 and -1 stay +1 and -1
    assert rec["ci_low"] == pytest.approx(0.0, abs=1e-12)
    assert rec["ci_high"] == pytest.approx(0.0, abs=1e-12)


def test_pooled_agreeing_models_give_one_with_small_p() -> None:
    frame = _pairs({"a": (N8, N8**3), "b": (N8, np.exp(N8))})  # rho +1 and +1
    rec = pooled_within_model(frame, n_boot=500, n_perm=2000)
    assert rec["rho_pooled"] == pytest.approx(1.0)
    # Monte Carlo: both independent permutations at |rho| = 1 has probability ~(2/8!)^2
    assert not rec["p_exact"]
    assert rec["p_value"] == pytest.approx(1 / 2001)
    assert rec["ci_low"] == pytest.approx(1.0)


def test_pooled_single_model_equals_per_model_row() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=8)
    y = x + rng.normal(size=8)
    rec = pooled_within_model(_pairs({"m": (x, y)}), n_boot=400, n_perm=1000, seed=3)
    assert rec["rho_pooled"] == pytest.approx(spearman(x, y), abs=1e-14)
    ci = bootstrap_ci(x, y, spearman, n_boot=400, seed=3)
    assert (rec["ci_low"], rec["ci_high"], rec["n_boot_used"]) == (ci.low, ci.high, ci.n_used)
    assert rec["p_value"] == permutation_pvalue(x, y, spearman, n_perm=1000, seed=3)


def test_pooled_min_detectable_comes_from_the_test_s_own_null() -> None:
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=7), rng.normal(size=7)
    # one model, 7! <= n_perm: the exact untied null, as min_detectable_correlation
    rec = pooled_within_model(_pairs({"m": (x, y)}), n_boot=100, n_perm=6000)
    assert rec["p_exact"] and rec["min_detectable"] == pytest.approx(min_detectable_correlation(7))
    # the mean over two models varies less under the null: a smaller rho is detectable
    two = pooled_within_model(_pairs({"a": (x, y), "b": (y, x**3)}), n_boot=100, n_perm=4000)
    assert two["min_detectable"] < rec["min_detectable"]
    assert 0.4 < two["min_detectable"] < 0.75
    pooled = pooled_all_pairs(_pairs({"a": (x, y), "b": (y, x**3)}), n_boot=100, n_perm=6000)
    assert pooled["p_exact"] and 0 < pooled["min_detectable"] <= 1
    assert math.isnan(pooled_all_pairs(_pairs({"a": (x, y)}))["min_detectable"])


def test_pearson_rows_relative_threshold_for_residuals() -> None:
    a = np.array([[1.0, 2.0, 3.0, 4.0], [1e-17, -1e-17, 0.0, 0.0]])
    b = np.array([[2.0, 1.0, 4.0, 3.0], [1.0, 2.0, 3.0, 5.0]])
    plain = pearson_rows(a, b)
    assert plain[0] == pytest.approx(0.6) and np.isfinite(plain[1])  # rounding noise correlates
    strict = pearson_rows(a, b, rtol=1e-12)
    assert strict[0] == plain[0] and np.isnan(strict[1])  # ... unless counted as constant
    assert np.isnan(pearson_rows(np.ones(4), b[0]))


def test_pooled_bootstrap_resamples_datasets_jointly() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=8)
    y = x + rng.normal(size=8)
    one = pooled_within_model(_pairs({"m": (x, y)}), n_boot=400, seed=1)
    # two identical models: jointly resampled, their mean is the single model's resample
    two = pooled_within_model(_pairs({"m": (x, y), "n": (x, y)}), n_boot=400, seed=1)
    assert (two["ci_low"], two["ci_high"]) == pytest.approx((one["ci_low"], one["ci_high"]))


def test_pooled_exact_permutation_matches_brute_force() -> None:
    xa, ya = np.array([0.0, 1, 2, 3]), np.array([0.0, 2, 1, 3])
    xb, yb = np.array([3.0, 1, 2, 0]), np.array([1.0, 0, 3, 2])
    rec = pooled_within_model(_pairs({"a": (xa, ya), "b": (xb, yb)}), n_perm=1000)
    assert rec["p_exact"]  # 4!^2 = 576 <= 1000
    observed = (spearman(xa, ya) + spearman(xb, yb)) / 2
    assert rec["rho_pooled"] == pytest.approx(observed)
    null = [
        (spearman(xa, ya[list(p)]) + spearman(xb, yb[list(q)])) / 2
        for p in itertools.permutations(range(4))
        for q in itertools.permutations(range(4))
    ]
    expected = np.mean(np.abs(null) >= abs(observed) - 1e-12)
    assert rec["p_value"] == pytest.approx(expected)
    one_sided = pooled_within_model(
        _pairs({"a": (xa, ya), "b": (xb, yb)}), n_perm=1000, alternative="greater"
    )
    assert one_sided["p_value"] == pytest.approx(np.mean(np.array(null) >= observed - 1e-12))


def test_pooled_drops_incomplete_datasets_and_constant_models() -> None:
    frame = _pairs({"a": (N8, N8), "b": (N8, -N8), "c": (np.ones(8), N8)})
    frame.loc[(frame.model == "b") & (frame.dataset == "d7"), "target"] = np.nan
    rec = pooled_within_model(frame, n_boot=100, n_perm=100)
    assert rec["n_datasets"] == 7 and json.loads(rec["datasets_dropped"]) == ["d7"]
    assert rec["n_models"] == 2 and json.loads(rec["models_dropped"]) == ["c"]
    with pytest.raises(DatasetError, match="several rows"):
        pooled_within_model(pd.concat([frame, frame]))
    with pytest.raises(DatasetError, match="lacks"):
        pooled_within_model(frame.drop(columns="target"))


def test_pooled_table_groups_rows() -> None:
    agree = _pairs({"a": (N8, N8), "b": (N8, N8)}).assign(target_name="acc", mode="fixed")
    cancel = _pairs({"a": (N8, N8), "b": (N8, -N8)}).assign(target_name="acc", mode="lodo")
    table = pooled_within_model_table(
        pd.concat([agree, cancel]), by=["target_name", "mode"], n_boot=50, n_perm=50
    )
    assert list(table["mode"]) == ["fixed", "lodo"]
    assert table["rho_pooled"].tolist() == pytest.approx([1.0, 0.0])
    assert list(table.columns[:3]) == ["target_name", "mode", "n_models"]


def test_pooled_all_pairs_value_cluster_bootstrap_and_exact_p() -> None:
    x = {"a": np.array([0.0, 1, 2, 3, 4]), "b": np.array([5.0, 6, 7, 8, 9])}
    y = {"a": np.array([1.0, 0, 2, 4, 3]), "b": np.array([3.0, 5, 4, 6, 7])}
    frame = _pairs({m: (x[m], y[m]) for m in x})
    rec = pooled_all_pairs(frame, n_boot=300, n_perm=1000)
    allx = np.concatenate([x["a"], x["b"]])
    ally = np.concatenate([y["a"], y["b"]])
    assert rec["rho"] == pytest.approx(sps.spearmanr(allx, ally).statistic)
    assert rec["n_pairs"] == 10 and rec["reason"] == ""
    assert rec["ci_low"] <= rec["rho"] <= rec["ci_high"]
    # exact: one permutation of the 5 datasets shared by both models (5! = 120)
    assert rec["p_exact"]
    null = [
        spearman(allx, np.concatenate([y["a"][list(p)], y["b"][list(p)]]))
        for p in itertools.permutations(range(5))
    ]
    assert rec["p_value"] == pytest.approx(np.mean(np.abs(null) >= abs(rec["rho"]) - 1e-12))
    lonely = pooled_all_pairs(frame[frame.model == "a"])
    assert math.isnan(lonely["rho"]) and "fewer than 2 models" in lonely["reason"]


# --------------------------------------------------------------------------------------------
# 3. across models, per dataset (analysis/across.py)
# --------------------------------------------------------------------------------------------


def test_weighted_tau_hand_case_and_direction() -> None:
    # x = 1, 2, 3; y swaps the top two. Hyperbolic additive weights 1/(r+1) + 1/(s+1):
    # by x the pairs weigh (1,2): 1/3+1/2, (1,3): 1/3+1, (2,3): 1/2+1 (the discordant one), so
    # tau = (5/6 + 4/3 - 3/2) / (11/3) = 2/11; by y the same. Top = LARGEST values.
    assert weighted_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(2 / 11, abs=1e-12)
    assert sps.weightedtau([1, 2, 3], [1, 3, 2]).statistic == pytest.approx(2 / 11, abs=1e-12)
    # the same swap at the bottom costs less: (1/2+1/3) instead of (1+1/2)
    assert weighted_tau([1, 2, 3], [2, 1, 3]) == pytest.approx(6 / 11, abs=1e-12)
    assert weighted_tau([1, 2, 3], [1, 3, 2], top="low") == pytest.approx(6 / 11, abs=1e-12)
    assert spearman([1, 2, 3], [1, 3, 2]) == spearman([1, 2, 3], [2, 1, 3])  # unweighted: equal


def test_weighted_tau_matches_scipy_on_hand_cases() -> None:
    cases = [
        ([0.1, 0.4, 0.35, 0.8], [0.6, 0.7, 0.9, 0.95]),
        ([3, 1, 2, 5, 4], [30, 10, 20, 40, 50]),
        ([1, 1, 2, 3], [4, 3, 2, 1]),  # tie in x
        ([5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]),
    ]
    for x, y in cases:
        assert weighted_tau(x, y) == pytest.approx(sps.weightedtau(x, y).statistic, abs=1e-12)
        neg = sps.weightedtau(-np.asarray(x, float), -np.asarray(y, float)).statistic
        assert weighted_tau(x, y, top="low") == pytest.approx(neg, abs=1e-12)
    assert weighted_tau([5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]) == pytest.approx(-1.0)
    assert math.isnan(weighted_tau([1, 1, 1], [1, 2, 3]))
    assert weighted_tau([1, 2, np.nan, 3], [1, 2, 9, 3]) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="top"):
        weighted_tau([1, 2, 3], [1, 2, 3], top="best")


def _study(n_models: int, n_datasets: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(n_models):
        for d in range(n_datasets):
            target = rng.uniform(0.5, 1.0)
            rows.append(
                {
                    "model": f"m{m}",
                    "dataset": f"d{d}",
                    "score": target + 0.1 * rng.normal(),
                    "target": target,
                }
            )
    return pd.DataFrame(rows)


def test_across_models_per_dataset_taus_and_mean() -> None:
    frame = _study(4, 6, seed=1)
    result = across_models(frame, n_boot=500, seed=0)
    per = result.per_dataset
    assert list(per["dataset"]) == [f"d{d}" for d in range(6)]
    for row in per.itertuples():
        sub = frame[frame.dataset == row.dataset]
        assert row.n_models == 4 and row.reason == ""
        assert row.tau == pytest.approx(sps.kendalltau(sub.score, sub.target).statistic)
        assert row.tau_w == pytest.approx(sps.weightedtau(sub.score, sub.target).statistic)
    s = result.summary
    assert s["n_models"] == 4 and s["n_datasets"] == 6 and s["reason"] == ""
    assert s["mean_tau"] == pytest.approx(per["tau"].mean())
    assert s["mean_tau_w"] == pytest.approx(per["tau_w"].mean())
    assert s["tau_ci_low"] <= s["mean_tau"] <= s["tau_ci_high"]
    assert s["tau_w_ci_low"] <= s["mean_tau_w"] <= s["tau_w_ci_high"]
    assert s["mean_tau"] > 0.3  # the score tracks the target across models
    # bootstrap over datasets of the mean, by hand with the same draws
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 6, size=(500, 6))
    low, high = np.quantile(per["tau"].to_numpy()[idx].mean(axis=1), [0.025, 0.975])
    assert (s["tau_ci_low"], s["tau_ci_high"]) == pytest.approx((low, high))


def test_across_models_with_too_few_models_gives_a_reason_not_an_error() -> None:
    result = across_models(_study(2, 5))
    assert math.isnan(result.summary["mean_tau"]) and math.isnan(result.summary["mean_tau_w"])
    assert "fewer than 3 models (2)" in result.summary["reason"]
    assert (result.per_dataset["reason"] == "fewer than 3 models (2)").all()
    assert result.per_dataset["tau"].isna().all()
    # one dataset missing a model, one constant predictor: those rows say why
    frame = _study(3, 4, seed=2)
    frame = frame[~((frame.model == "m0") & (frame.dataset == "d1"))].copy()
    frame.loc[frame.dataset == "d2", "score"] = 0.5
    result = across_models(frame)
    reasons = dict(zip(result.per_dataset["dataset"], result.per_dataset["reason"], strict=True))
    assert reasons == {
        "d0": "",
        "d1": "fewer than 3 models (2)",
        "d2": "predictor constant across models",
        "d3": "",
    }
    assert result.summary["n_datasets"] == 2 and result.summary["reason"] == ""


def test_across_models_table_on_a_dress_rehearsal_shape() -> None:
    # 3 models x 12 datasets, two predictors: one tracks the target, one is noise
    frame = _study(3, 12, seed=5)
    rng = np.random.default_rng(9)
    both = pd.concat(
        [
            frame.assign(predictor="tracks"),
            frame.assign(predictor="noise", score=rng.normal(size=len(frame))),
        ]
    )
    details, summary = across_models_table(both, by=["predictor"], n_boot=200)
    assert list(summary["predictor"]) == ["tracks", "noise"]
    assert len(details) == 24 and (details["n_models"] == 3).all()
    by = summary.set_index("predictor")
    assert by.loc["tracks", "mean_tau"] > by.loc["noise", "mean_tau"]
    assert (by["n_datasets"] == 12).all()


# --------------------------------------------------------------------------------------------
# 4. incremental validity (analysis/incremental.py)
# --------------------------------------------------------------------------------------------


def _residual_rank_partial(p: np.ndarray, t: np.ndarray, b: np.ndarray) -> float:
    """Independent computation: scipy ranks, numpy least squares, numpy correlation."""
    rp, rt, rb = (sps.rankdata(v) for v in (p, t, b))
    design = np.column_stack([np.ones_like(rb), rb])
    res_p = rp - design @ np.linalg.lstsq(design, rp, rcond=None)[0]
    res_t = rt - design @ np.linalg.lstsq(design, rt, rcond=None)[0]
    return float(np.corrcoef(res_p, res_t)[0, 1])


def test_partial_spearman_matches_residual_rank_computation() -> None:
    rng = np.random.default_rng(11)
    for n in (6, 8, 15, 40):
        b = rng.normal(size=n)
        p = b + rng.normal(size=n)
        t = 0.5 * b + p + rng.normal(size=n)
        p[0] = p[1]  # a tie
        got = partial_spearman(p, t, b)
        assert got == pytest.approx(_residual_rank_partial(p, t, b), abs=1e-12)
        # and the textbook formula from the three pairwise rhos
        r_pt, r_pb, r_tb = spearman(p, t), spearman(p, b), spearman(t, b)
        formula = (r_pt - r_pb * r_tb) / math.sqrt((1 - r_pb**2) * (1 - r_tb**2))
        assert got == pytest.approx(formula, abs=1e-12)
    x = np.arange(8.0)
    assert math.isnan(partial_spearman(x**3, rng.normal(size=8), x))  # P a function of B
    assert math.isnan(partial_spearman([1, 2, 3], [1, 2, 3], [3, 1, 2]))  # n < 4


def _iv_frame(p: np.ndarray, t: np.ndarray, b: np.ndarray, model: str = "m") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": model,
            "dataset": [f"d{i}" for i in range(len(p))],
            "score": p,
            "target": t,
            "baseline": b,
        }
    )


def test_predictor_that_is_baseline_plus_noise_adds_nothing() -> None:
    rng = np.random.default_rng(0)
    n = 40
    b = rng.normal(size=n)
    t = b + 0.5 * rng.normal(size=n)
    p = b + 0.5 * rng.normal(size=n)
    frame = _iv_frame(p, t, b)
    rec = incremental_validity(frame, n_boot=500, n_perm=2000)
    assert rec["rho_predictor_target"] > 0.5  # P tracks T ...
    assert abs(rec["partial_rho"]) < 0.2  # ... only through B
    assert rec["ci_low"] < 0 < rec["ci_high"]
    assert rec["p_value"] > 0.3
    pred = lodo_incremental_prediction(frame).iloc[0]
    assert pred["scope"] == "m" and pred["n_rows"] == 40
    assert pred["mae_baseline"] < 0.8 * pred["mae_mean"]  # B predicts T
    assert not pred["predictor_lowers_mae"]
    assert pred["mae_baseline_predictor"] == pytest.approx(pred["mae_baseline"], rel=0.05)


def test_predictor_with_information_beyond_baseline_is_detected() -> None:
    rng = np.random.default_rng(0)
    n = 40
    b = rng.normal(size=n)
    p = rng.normal(size=n)
    t = b + p + 0.3 * rng.normal(size=n)
    frame = _iv_frame(p, t, b)
    rec = incremental_validity(frame, n_boot=500, n_perm=2000)
    assert rec["partial_rho"] > 0.8
    assert rec["ci_low"] > 0.6
    assert rec["p_value"] == pytest.approx(1 / 2001)
    pred = lodo_incremental_prediction(frame).iloc[0]
    assert pred["predictor_lowers_mae"]
    assert pred["mae_baseline_predictor"] < 0.5 * pred["mae_baseline"]


def test_incremental_validity_within_model_mean_and_exact_freedman_lane_p() -> None:
    rng = np.random.default_rng(5)
    parts, partials = [], []
    for model in ("a", "b"):
        b = rng.normal(size=8)
        p = rng.normal(size=8)
        t = b + p + rng.normal(size=8)
        parts.append(_iv_frame(p, t, b, model))
        partials.append(partial_spearman(p, t, b))
    rec = incremental_validity(pd.concat(parts), n_boot=300, n_perm=500)
    assert rec["partial_rho"] == pytest.approx(np.mean(partials))
    assert json.loads(rec["partial_per_model"]) == pytest.approx(
        dict(zip("ab", partials, strict=True))
    )
    assert rec["n_models"] == 2 and not rec["p_exact"]
    # exact Freedman-Lane p for one model of 5 datasets, by brute force
    b = np.array([0.3, -1.0, 2.0, 0.5, 1.1])
    p = np.array([1.0, 0.2, -0.4, 2.2, 0.9])
    t = np.array([1.5, -0.3, 1.1, 2.9, 2.0])
    rec = incremental_validity(_iv_frame(p, t, b), n_perm=200)
    assert rec["p_exact"]
    rb = sps.rankdata(b)
    design = np.column_stack([np.ones(5), rb])

    def resid(v: np.ndarray) -> np.ndarray:
        return v - design @ np.linalg.lstsq(design, v, rcond=None)[0]

    res_p, res_t = resid(sps.rankdata(p)), resid(sps.rankdata(t))
    observed = np.corrcoef(res_p, res_t)[0, 1]
    null = [
        np.corrcoef(resid(res_p[list(q)]), res_t)[0, 1] for q in itertools.permutations(range(5))
    ]
    assert rec["partial_rho"] == pytest.approx(observed)
    assert rec["p_value"] == pytest.approx(np.mean(np.abs(null) >= abs(observed) - 1e-12))


def test_lodo_incremental_prediction_pooled_scope_uses_model_intercepts() -> None:
    rng = np.random.default_rng(2)
    parts = []
    for model, offset in (("a", 0.0), ("b", 10.0)):
        b = rng.normal(size=6)
        p = rng.normal(size=6)
        parts.append(_iv_frame(p, offset + 2 * b + p, b, model))  # exact: T = offset + 2B + P
    frame = pd.concat(parts)
    pred = lodo_incremental_prediction(frame).set_index("scope")
    assert list(pred.index) == ["a", "b", "pooled"]
    assert pred.loc["pooled", "n_rows"] == 12 and pred.loc["pooled", "n_datasets"] == 6
    assert pred["mae_baseline_predictor"].max() < 1e-9  # B + P recovers T exactly, offsets too
    assert (pred["mae_baseline"] > 0.1).all()
    assert pred["predictor_lowers_mae"].all()
    table = incremental_validity_table(
        frame.assign(baseline_name="knn"), by=["baseline_name"], n_boot=50, n_perm=50
    )
    assert list(table["baseline_name"]) == ["knn"] and table["n_models"].iloc[0] == 2


# --------------------------------------------------------------------------------------------
# 5. power and readings (analysis/power.py)
# --------------------------------------------------------------------------------------------


def test_min_detectable_spearman_exact_values() -> None:
    # n = 8: rho = 1 - 6 S / 504; S = 22 gives 31/42 = 0.738 (p = 0.0458); S = 24 gives 0.714
    assert min_detectable_correlation(8) == pytest.approx(31 / 42, abs=1e-12)
    assert min_detectable_correlation(5) == pytest.approx(1.0)  # only a perfect order
    assert math.isnan(min_detectable_correlation(4))  # 2/24 > 0.05: nothing can be shown
    assert math.isnan(min_detectable_correlation(2))
    assert min_detectable_correlation(8, statistic="kendall") == pytest.approx(9 / 14)
    assert min_detectable_correlation(8, alpha=0.01) > min_detectable_correlation(8)
    # the same test ntps.analysis runs: exact permutation p at and just below the threshold
    x = np.arange(8.0)

    def ordering_with(rho: float) -> np.ndarray:
        for perm in itertools.permutations(range(8)):
            if abs(spearman(x, np.array(perm)) - rho) < 1e-12:
                return np.array(perm, dtype=float)
        raise AssertionError(rho)

    at, below = ordering_with(31 / 42), ordering_with(30 / 42)
    assert permutation_pvalue(x, at, n_perm=40320) == pytest.approx(0.0458333, abs=1e-6)
    assert permutation_pvalue(x, below, n_perm=40320) == pytest.approx(0.0575893, abs=1e-6)


def test_min_detectable_monte_carlo_beyond_nine() -> None:
    assert min_detectable_correlation(12) == pytest.approx(0.59, abs=0.02)
    assert min_detectable_correlation(16) == pytest.approx(0.50, abs=0.02)
    assert min_detectable_correlation(12, seed=1) == pytest.approx(0.59, abs=0.02)
    with pytest.raises(ConfigError, match="statistic"):
        min_detectable_correlation(8, statistic="pearson")


def test_read_correlation_rules() -> None:
    assert read_correlation(-0.6, 0.8) == "inconclusive: CI spans both signs"
    assert read_correlation(-0.97, 0.41) == (
        "negative evidence: CI excludes rho >= 0.5 (spans both signs)"
    )
    assert read_correlation(-0.9, -0.1) == "negative evidence: CI excludes rho >= 0 (reversed)"
    assert read_correlation(0.1, 0.9) == "positive evidence: CI excludes 0"
    assert read_correlation(0.1, 0.4) == "weak positive evidence: CI excludes 0 and rho >= 0.5"
    assert read_correlation(0.55, 0.95) == "positive evidence: CI excludes rho < 0.5"
    assert read_correlation(0.0, 0.6) == "inconclusive: CI spans both signs"  # 0 is not excluded
    assert read_correlation(math.nan, 0.3).startswith("no reading")
    assert read_correlation(-0.2, 0.65, useful=0.7) == (
        "negative evidence: CI excludes rho >= 0.7 (spans both signs)"
    )


def test_useful_tau_and_readings_of_tau() -> None:
    # bivariate normal: rho_S = 0.5 <-> r = 2 sin(pi/12) <-> tau = (2/pi) asin(r)
    assert useful_tau(0.5) == pytest.approx(2 / math.pi * math.asin(2 * math.sin(math.pi / 12)))
    assert useful_tau(0.5) == pytest.approx(0.346, abs=1e-3)
    assert useful_tau(1.0) == pytest.approx(1.0) and useful_tau(0.0) == 0.0
    assert read_correlation(0.4, 0.9, useful_tau(0.5), "tau") == (
        "positive evidence: CI excludes tau < 0.35"
    )
    assert read_correlation(-0.2, 0.3, 0.35, "tau") == (
        "negative evidence: CI excludes tau >= 0.35 (spans both signs)"
    )
    with pytest.raises(ConfigError, match="useful rho"):
        useful_tau(1.5)


def test_evidence_line_and_power_columns() -> None:
    line = evidence_line(8, -0.47, -0.97, 0.41)
    assert line == (
        "rho = -0.47 [-0.97, 0.41] over 8 datasets (p < 0.05 needs |rho| >= 0.74): "
        "negative evidence: CI excludes rho >= 0.5 (spans both signs)"
    )
    assert "no value can reach p < 0.05" in evidence_line(
        3, 0.5, -1.0, 1.0, unit="models", statistic="kendall", symbol="tau"
    )
    # a pooled test's own threshold instead of the single-correlation one
    assert "(p < 0.05 needs |rho| >= 0.55)" in evidence_line(
        8, 0.3, -0.2, 0.7, unit="datasets, mean of 2 models", threshold=0.55
    )
    table = pd.DataFrame({"n_datasets": [8, 4], "ci_low": [0.2, -1.0], "ci_high": [0.9, 1.0]})
    out = with_power_columns(table)
    assert out["min_detectable"].iloc[0] == pytest.approx(31 / 42)
    assert math.isnan(out["min_detectable"].iloc[1])
    assert list(out["reading"]) == [
        "positive evidence: CI excludes 0",
        "inconclusive: CI spans both signs",
    ]
    assert "reading" not in table.columns  # a copy


# --------------------------------------------------------------------------------------------
# selection modes: the same points as select_layer_k (analysis/selection.py)
# --------------------------------------------------------------------------------------------

LAYERS = [0, 1, 2, 3]
KS = [(0.1, "0.1"), (0.5, "0.5")]


def _grid_study(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    datasets = [f"org/ds{i}" for i in range(8)]
    score_rows, probe_rows = [], []
    for model in ("m1", "m2"):
        for layer in LAYERS:
            acc = rng.uniform(0.5, 1.0, size=8)
            for i, d in enumerate(datasets):
                probe_rows.append(
                    {"model": model, "dataset": d, "layer": layer, "accuracy": acc[i]}
                )
                for k_spec, lab in KS:
                    score_rows.append(
                        {
                            "model": model,
                            "dataset": d,
                            "stage": "pre_lora",
                            "layer": layer,
                            "k_spec": k_spec,
                            "k_label": lab,
                            "ntps_reg": acc[i] + 0.2 * rng.normal(),
                            "ntps_reg_se": 0.05,
                        }
                    )
    return pd.DataFrame(score_rows), pd.DataFrame(probe_rows)


def test_selected_pairs_reproduce_select_layer_k() -> None:
    scores, probes = _grid_study()
    fixed = {"m1": (0.5, 0.1), "m2": (-1, "0.5")}
    pairs = selected_pairs(scores, probes, fixed=fixed)
    result = select_layer_k(scores, probes, fixed=fixed, n_boot=200, n_perm=300, seed=4)
    assert list(pairs.columns) == [
        "mode", "model", "dataset", "layer", "k_label", "score", "score_se", "target",
    ]  # fmt: skip
    assert (pairs.groupby(["mode", "model"]).size() == 8).all()
    for row in result.itertuples():
        sub = pairs[(pairs["mode"] == row.mode) & (pairs["model"] == row.model)]
        assert spearman(sub["score"], sub["target"]) == pytest.approx(row.rho, abs=1e-14)
        if row.mode != "lodo":
            assert (sub["layer"] == row.layer).all() and (sub["k_label"] == row.k_label).all()
        # one model's pooled row is its select_layer_k row, CI and p included
        rec = pooled_within_model(sub, n_boot=200, n_perm=300, seed=4)
        assert (rec["ci_low"], rec["ci_high"], rec["p_value"]) == (
            row.ci_low,
            row.ci_high,
            row.p_value,
        )
    fixed_m1 = pairs[(pairs["mode"] == "fixed") & (pairs["model"] == "m1")]
    assert set(fixed_m1["layer"]) == {2} and set(fixed_m1["k_label"]) == {"0.1"}  # 0.5 of 0..3
    table = pooled_within_model_table(pairs, by=["mode"], n_boot=50, n_perm=50)
    assert list(table["mode"]) == ["fixed", "in_sample", "lodo"]
    assert (table["n_models"] == 2).all()
    with pytest.raises(ConfigError, match="not in the scored grid"):
        selected_pairs(scores, probes, fixed={"m1": (0, 0.3), "m2": (0, 0.1)})
    with pytest.raises(ConfigError, match="m2"):
        selected_pairs(scores, probes, fixed={"m1": (0, 0.1)})
