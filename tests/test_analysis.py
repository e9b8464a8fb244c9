"""Tests for ntps.analysis: correlations, resampling, layer/k selection, gain prediction."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ntps.analysis import (
    BootstrapCI,
    average_ranks,
    baseline_position,
    bootstrap_ci,
    bound_check,
    correlation_grid,
    k_label,
    kendall,
    lodo_scores,
    pair_with_target,
    paired_change,
    permutation_pvalue,
    predict_gain_lodo,
    resolve_layer,
    rows_at_setting,
    select_layer_k,
    spearman,
)
from ntps.errors import ConfigError, DatasetError

# --------------------------------------------------------------------------------------------
# correlations
# --------------------------------------------------------------------------------------------


def test_spearman_five_points_with_tie_hand_value_and_scipy() -> None:
    x = [1.0, 2.0, 2.0, 4.0, 5.0]
    y = [2.0, 1.0, 4.0, 3.0, 5.0]
    # ranks x: 1, 2.5, 2.5, 4, 5; y: 2, 1, 4, 3, 5 -> sum(dx dy) = 6.5, sum dx^2 = 9.5, sum dy^2 = 10
    hand = 6.5 / math.sqrt(9.5 * 10.0)
    assert spearman(x, y) == pytest.approx(hand, abs=1e-14)
    assert spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-14)


def test_average_ranks_hand_values_and_scipy_rankdata() -> None:
    assert average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert average_ranks([[5.0, 5.0, 5.0], [0.0, -1.0, 7.0]]).tolist() == [
        [2.0, 2.0, 2.0],
        [2.0, 1.0, 3.0],
    ]
    rng = np.random.default_rng(0)
    for shape in [(1,), (9,), (6, 11), (3, 4, 7)]:
        x = rng.integers(0, 4, size=shape).astype(float)  # many ties
        assert np.array_equal(average_ranks(x), sps.rankdata(x, axis=-1)), shape
    x = rng.normal(size=(4, 8))
    x[1, 3] = np.nan  # that row is all NaN, as scipy's default nan_policy
    ranks = average_ranks(x)
    assert np.isnan(ranks[1]).all() and not np.isnan(ranks[[0, 2, 3]]).any()
    assert np.array_equal(ranks, sps.rankdata(x, axis=-1), equal_nan=True)


def test_kendall_matches_scipy_tau_b_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(3, 15))
        x = rng.integers(0, 4, size=n).astype(float)  # many ties
        y = rng.integers(0, 4, size=n).astype(float)
        expected = sps.kendalltau(x, y).statistic
        got = kendall(x, y)
        if np.isnan(expected):
            assert np.isnan(got)
        else:
            assert got == pytest.approx(expected, abs=1e-12)
            assert spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)


def test_correlations_nan_for_too_few_points_or_constant_input() -> None:
    assert math.isnan(spearman([1, 2], [3, 4]))
    assert math.isnan(kendall([1, 2], [3, 4]))
    assert math.isnan(spearman([1, 1, 1, 1], [1, 2, 3, 4]))
    assert math.isnan(kendall([1, 2, 3, 4], [5, 5, 5, 5]))
    # NaN pairs are dropped, leaving a perfectly monotone set of 3.
    assert spearman([1, 2, np.nan, 3], [1, 2, 7, 3]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2, 3], [1, 2])


# --------------------------------------------------------------------------------------------
# bootstrap and permutation
# --------------------------------------------------------------------------------------------


def _noisy_pairs(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, x + rng.normal(scale=1.0, size=n)


def test_bootstrap_reproducible_and_seed_dependent() -> None:
    x, y = _noisy_pairs()
    a = bootstrap_ci(x, y, spearman, n_boot=500, seed=7)
    b = bootstrap_ci(x, y, spearman, n_boot=500, seed=7)
    c = bootstrap_ci(x, y, spearman, n_boot=500, seed=8)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert -1.0 <= a.low <= spearman(x, y) <= a.high <= 1.0
    assert a.n_used == 500 and a.level == 0.95


def test_bootstrap_drops_degenerate_resamples_and_reports_count() -> None:
    # Two distinct x values out of three: constant resamples are frequent (P = 9/27 for x alone).
    ci = bootstrap_ci([0.0, 0.0, 1.0], [0.0, 1.0, 2.0], spearman, n_boot=400, seed=0)
    assert isinstance(ci, BootstrapCI)
    assert 0 < ci.n_used < 400
    assert np.isfinite(ci.low) and np.isfinite(ci.high)
    # a generic callable statistic goes through the loop path and drops the same kind of resample
    ci_generic = bootstrap_ci(
        [0.0, 0.0, 1.0], [0.0, 1.0, 2.0], lambda a, b: np.corrcoef(a, b)[0, 1], n_boot=400
    )
    assert 0 < ci_generic.n_used < 400


def test_bootstrap_kendall_vectorised_equals_loop() -> None:
    x, y = _noisy_pairs(9, seed=2)
    fast = bootstrap_ci(x, y, kendall, n_boot=300, seed=1)
    slow = bootstrap_ci(x, y, lambda a, b: sps.kendalltau(a, b).statistic, n_boot=300, seed=1)
    assert fast.n_used == slow.n_used
    assert fast.low == pytest.approx(slow.low, abs=1e-12)
    assert fast.high == pytest.approx(slow.high, abs=1e-12)


def test_permutation_exact_for_monotone_n6() -> None:
    x = np.arange(6.0)
    y = x**2  # perfectly monotone: only the identity reaches rho = 1
    assert permutation_pvalue(x, y, spearman, alternative="greater") == pytest.approx(1 / 720)
    assert permutation_pvalue(x, y, spearman, alternative="two-sided") == pytest.approx(2 / 720)
    assert permutation_pvalue(x, y, spearman, alternative="less") == pytest.approx(1.0)
    assert permutation_pvalue(x, y, kendall, alternative="greater") == pytest.approx(1 / 720)


def test_permutation_monte_carlo_plus_one_and_reproducible() -> None:
    x = np.arange(8.0)  # 8! = 40320 > n_perm: Monte Carlo
    p = permutation_pvalue(x, x, spearman, n_perm=2000, seed=0, alternative="greater")
    assert p >= 1 / 2001  # the +1 correction: never zero
    assert p <= 3 / 2001
    assert p == permutation_pvalue(x, x, spearman, n_perm=2000, seed=0, alternative="greater")
    xs, ys = _noisy_pairs(10, seed=5)
    p1 = permutation_pvalue(xs, ys, spearman, n_perm=1000, seed=1)
    p2 = permutation_pvalue(xs, ys, spearman, n_perm=1000, seed=2)
    assert 0 < p1 <= 1 and p1 != p2
    assert math.isnan(permutation_pvalue([1, 1, 1, 1], [1, 2, 3, 4]))
    with pytest.raises(ConfigError, match="alternative"):
        permutation_pvalue(xs, ys, alternative="bigger")


# --------------------------------------------------------------------------------------------
# layer / k helpers
# --------------------------------------------------------------------------------------------


def test_resolve_layer() -> None:
    assert resolve_layer(-1, 13) == 12
    assert resolve_layer(0, 13) == 0
    assert resolve_layer(5, 13) == 5
    assert resolve_layer(0.5, 13) == 6
    assert resolve_layer(1.0, 13) == 12
    assert resolve_layer(0.0, 13) == 0
    for bad in (13, -14, 1.5, True, "last"):
        with pytest.raises(ConfigError):
            resolve_layer(bad, 13)  # type: ignore[arg-type]


def test_k_label() -> None:
    assert k_label(0.05) == "0.05"
    assert k_label(0.1) == "0.1"
    assert k_label(8) == "k=8"
    assert k_label(np.int64(3)) == "k=3"


# --------------------------------------------------------------------------------------------
# planted selection examples
# --------------------------------------------------------------------------------------------

LAYERS = [0, 1, 2, 3]
KS = [(0.1, "0.1"), (0.5, "0.5")]
PLANTED = (2, "0.5")


def _planted_tables(n_datasets: int = 8, seed: int = 0, planted: bool = True):
    """Scores on a 4 x 2 grid; the planted setting's score is a monotone map of the LoRA gain."""
    rng = np.random.default_rng(seed)
    datasets = [f"org/ds{i}" for i in range(n_datasets)]
    gain = rng.uniform(0.0, 0.2, size=n_datasets)
    rows = []
    for stage in ("pre_lora", "post_lora"):
        for layer in LAYERS:
            for k_spec, lab in KS:
                noise = rng.uniform(0.3, 0.9, size=n_datasets)
                for i, d in enumerate(datasets):
                    is_planted = planted and (layer, lab) == PLANTED and stage == "pre_lora"
                    score = 0.9 - gain[i] if is_planted else noise[i]
                    rows.append(
                        {
                            "model": "org/m",
                            "dataset": d,
                            "stage": stage,
                            "layer": layer,
                            "k_spec": k_spec,
                            "k_label": lab,
                            "ntps_reg": score,
                            "ntps_paper": score,
                            "baseline": 0.1,
                        }
                    )
    scores = pd.DataFrame(rows)
    lora = pd.DataFrame({"model": "org/m", "dataset": datasets, "gain": gain})
    return scores, lora


def test_lodo_picks_planted_setting_and_in_sample_at_least_lodo() -> None:
    scores, lora = _planted_tables()
    picks = lodo_scores(scores, lora, "ntps_reg", "gain", sign=-1)
    assert len(picks) == 8
    assert set(zip(picks["layer"], picks["k_label"], strict=True)) == {PLANTED}
    assert np.allclose(picks["inner_rho"], 1.0)

    result = select_layer_k(
        scores,
        lora,
        score_col="ntps_reg",
        target_col="gain",
        sign=-1,
        fixed={"org/m": (0, 0.1)},
        n_boot=200,
        n_perm=500,
    )
    by_mode = result.set_index("mode")
    assert list(result["mode"]) == ["fixed", "in_sample", "lodo"]
    assert (by_mode.loc["in_sample", "layer"], by_mode.loc["in_sample", "k_label"]) == PLANTED
    assert by_mode.loc["in_sample", "rho"] == pytest.approx(1.0)
    assert by_mode.loc["lodo", "rho"] == pytest.approx(1.0)
    assert by_mode.loc["in_sample", "rho"] >= by_mode.loc["lodo", "rho"]
    assert json.loads(by_mode.loc["lodo", "picks"]) == {f"org/ds{i}": [2, "0.5"] for i in range(8)}
    assert by_mode.loc["in_sample", "optimistic"] and not by_mode.loc["lodo", "optimistic"]
    assert (result["target"] == "-gain").all() and (result["pairing"] == "per_dataset").all()
    assert (result["n_datasets"] == 8).all()
    # the fixed noise setting is just a noise correlation, the planted one is perfect
    assert by_mode.loc["fixed", "rho"] < 1.0
    assert by_mode.loc["in_sample", "p_value"] < 0.01
    assert by_mode.loc["in_sample", "ci_low"] == pytest.approx(1.0)


def test_pure_noise_in_sample_is_optimistic_relative_to_lodo() -> None:
    # Without signal, the best of 8 settings looks good in-sample; LODO should not, on average.
    in_sample, lodo, varies = [], [], []
    for seed in range(20):
        scores, lora = _planted_tables(n_datasets=10, seed=seed, planted=False)
        result = select_layer_k(
            scores, lora, score_col="ntps_reg", target_col="gain", sign=-1, n_boot=20, n_perm=20
        ).set_index("mode")
        in_sample.append(result.loc["in_sample", "rho"])
        lodo.append(result.loc["lodo", "rho"])
        varies.append(result.loc["lodo", "layer"] == "varies")
    assert np.mean(in_sample) > np.mean(lodo) + 0.3
    assert np.mean(in_sample) > 0.4 and abs(np.mean(lodo)) < 0.3
    assert any(varies)  # with nothing predictive, folds pick different settings


def test_same_layer_pairing_with_probe_targets() -> None:
    rng = np.random.default_rng(1)
    datasets = [f"d{i}" for i in range(7)]
    scores_rows, probe_rows = [], []
    for layer in LAYERS:
        acc = rng.uniform(0.5, 1.0, size=7)
        for i, d in enumerate(datasets):
            probe_rows.append({"model": "m", "dataset": d, "layer": layer, "accuracy": acc[i]})
            for k_spec, lab in KS:
                # at layer 1, k=0.1 the score tracks THAT layer's probe accuracy exactly
                score = acc[i] if (layer, lab) == (1, "0.1") else rng.uniform()
                scores_rows.append(
                    {
                        "model": "m",
                        "dataset": d,
                        "stage": "pre_lora",
                        "layer": layer,
                        "k_spec": k_spec,
                        "k_label": lab,
                        "ntps_reg": score,
                    }
                )
    scores, probes = pd.DataFrame(scores_rows), pd.DataFrame(probe_rows)
    paired = pair_with_target(scores, probes, "ntps_reg", "accuracy")
    assert (paired["pairing"] == "same_layer").all()
    assert len(paired) == len(scores)
    row = paired[(paired.layer == 3) & (paired.dataset == "d2")]
    expected = probes[(probes.layer == 3) & (probes.dataset == "d2")]["accuracy"].iloc[0]
    assert (row["target"] == expected).all()

    grid = correlation_grid(scores, probes, "ntps_reg", "accuracy")
    assert len(grid) == len(LAYERS) * len(KS)
    best = grid.loc[grid["rho"].idxmax()]
    assert (best["layer"], best["k_label"], best["rho"]) == (1, "0.1", pytest.approx(1.0))
    res = select_layer_k(scores, probes, fixed={"m": (-3, "0.1")}, n_boot=100, n_perm=100)
    fixed = res.set_index("mode").loc["fixed"]
    assert (fixed["layer"], fixed["k_label"]) == (1, "0.1")
    assert fixed["rho"] == pytest.approx(1.0)
    assert res.set_index("mode").loc["lodo", "rho"] == pytest.approx(1.0)


def test_selection_errors_name_the_problem() -> None:
    scores, lora = _planted_tables()
    with pytest.raises(ConfigError, match="org/m"):
        select_layer_k(scores, lora, target_col="gain", fixed={"other": (0, 0.1)}, n_boot=10)
    with pytest.raises(ConfigError, match="not in the scored grid"):
        select_layer_k(scores, lora, target_col="gain", fixed={"org/m": (0, 0.3)}, n_boot=10)
    with pytest.raises(DatasetError, match="duplicate"):
        pair_with_target(scores, lora, "ntps_reg", "gain", stage=None)
    with pytest.raises(DatasetError, match="'gain'"):
        pair_with_target(scores, lora.drop(columns="gain"), "ntps_reg", "gain")
    with pytest.raises(DatasetError, match="no \\(model, dataset\\) rows are shared"):
        pair_with_target(scores, lora.assign(model="other"), "ntps_reg", "gain")
    with pytest.raises(DatasetError, match="stage"):
        pair_with_target(scores, lora, "ntps_reg", "gain", stage="after")


# --------------------------------------------------------------------------------------------
# gain prediction
# --------------------------------------------------------------------------------------------


def test_gain_prediction_hand_example() -> None:
    frame = pd.DataFrame(
        {"model": "m", "dataset": ["a", "b", "c"], "ntps": [0.0, 1.0, 2.0], "gain": [0.0, 1.0, 2.0]}
    )
    res = predict_gain_lodo(frame)
    per = res.predictions[res.predictions.scope == "m"].set_index("dataset")
    assert np.allclose(per["pred"], [0.0, 1.0, 2.0])  # an exact line is recovered out of sample
    assert np.allclose(per["pred_baseline"], [1.5, 1.0, 0.5])
    summary = res.summary.set_index("scope").loc["m"]
    assert summary["mae"] == pytest.approx(0.0, abs=1e-12)
    assert summary["mae_baseline"] == pytest.approx((1.5 + 0.0 + 1.5) / 3)
    assert summary["rmse_baseline"] == pytest.approx(math.sqrt((2.25 + 0.0 + 2.25) / 3))


def test_gain_prediction_beats_baseline_on_planted_linear_example() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for model, size in (("small", 1e8), ("big", 1e9)):
        for i in range(10):
            ntps = rng.uniform(0.5, 0.95)
            gain = 0.4 - 0.4 * ntps - 0.02 * np.log(size) + rng.normal(scale=0.005)
            rows.append(
                {"model": model, "dataset": f"d{i}", "ntps": ntps, "gain": gain, "n_params": size}
            )
    res = predict_gain_lodo(pd.DataFrame(rows))
    s = res.summary.set_index("scope")
    for scope in ("small", "big", "pooled"):
        assert s.loc[scope, "mae"] < 0.5 * s.loc[scope, "mae_baseline"]
        assert s.loc[scope, "rmse"] < 0.5 * s.loc[scope, "rmse_baseline"]
    assert bool(s.loc["pooled", "uses_size"]) and not bool(s.loc["small", "uses_size"])
    assert s.loc["pooled", "n_rows"] == 20 and s.loc["pooled", "n_datasets"] == 10


def test_gain_prediction_equals_baseline_when_ntps_constant() -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {
            "model": "m",
            "dataset": [f"d{i}" for i in range(6)],
            "ntps": 0.7,
            "gain": rng.normal(size=6),
        }
    )
    res = predict_gain_lodo(frame)
    assert np.allclose(res.predictions["pred"], res.predictions["pred_baseline"], atol=1e-10)
    s = res.summary.set_index("scope").loc["m"]
    assert s["mae"] == pytest.approx(s["mae_baseline"])


# --------------------------------------------------------------------------------------------
# paired change and magnitudes
# --------------------------------------------------------------------------------------------


def test_paired_change_hand_example() -> None:
    before = [0.1, 0.2, 0.3, 0.4, np.nan]
    after = [0.2, 0.1, 0.5, 0.6, 0.9]
    out = paired_change(before, after)
    assert out["n"] == 4
    assert out["share_rose"] == pytest.approx(0.75)
    assert out["mean_change"] == pytest.approx(0.1)
    assert out["median_change"] == pytest.approx(0.15)
    diffs = np.array([0.1, -0.1, 0.2, 0.2])
    assert out["wilcoxon_p"] == pytest.approx(sps.wilcoxon(diffs).pvalue)
    assert math.isnan(paired_change([1, 2], [1, 2])["wilcoxon_p"])


def test_baseline_position() -> None:
    pos = baseline_position([0.55, 0.1, 0.05, 1.0, 0.5], [0.1, 0.1, 0.1, 0.1, 1.0])
    assert np.allclose(pos[:4], [0.5, 0.0, -0.05 / 0.9, 1.0])
    assert np.isnan(pos[4])


def test_bound_check() -> None:
    frame = pd.DataFrame(
        {
            "excess_loss": [0.5, 0.05, 0.3 + 1e-15, 0.7],
            "bound_lower": [0.1, 0.1, 0.3, 0.1],
            "bound_upper": [0.9, 0.9, 0.3, 0.6],
        }
    )
    out = bound_check(frame)
    assert out["bound_holds"].tolist() == [True, False, True, False]
    assert np.allclose(out["slack_lower"], [0.4, -0.05, 0.0, 0.6])
    assert np.allclose(out["slack_upper"], [0.4, 0.85, 0.0, -0.1])


def test_rows_at_setting_resolves_the_layer_per_model_depth() -> None:
    rows = [
        {"model": model, "stage": "pre_lora", "dataset": dataset, "layer": layer, "k_label": k}
        for model, depth in (("shallow", 3), ("deep", 9))
        for dataset in ("a", "b")
        for layer in range(depth)
        for k in ("0.25", "k=8")
    ]
    scores = pd.DataFrame(rows)
    shallow, layer = rows_at_setting(scores, "shallow", 0.5, 0.25)
    assert layer == 1 and set(shallow["layer"]) == {1} and set(shallow["k_label"]) == {"0.25"}
    deep, layer = rows_at_setting(scores, "deep", 0.5, 8)
    assert layer == 4 and len(deep) == 2 and set(deep["k_label"]) == {"k=8"}
    assert rows_at_setting(scores, "deep", -1, 8)[1] == 8
    missing, layer = rows_at_setting(scores, "deep", 0.5, 8, stage="post_lora")
    assert missing.empty and layer is None


def test_every_public_name_resolves_to_its_module() -> None:
    """The package imports a module on first use of one of its names (ntps/analysis/__init__.py)."""
    import importlib

    import ntps.analysis as package

    for name in package.__all__:
        module = importlib.import_module(f"ntps.analysis.{package._MODULE_OF[name]}")
        assert getattr(package, name) is getattr(module, name), name
    with pytest.raises(AttributeError, match="no attribute 'spearman_rho'"):
        _ = package.spearman_rho
