"""Transferability baselines (ntps.baselines) against closed forms and independent computations."""

from __future__ import annotations

import copy
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import yaml
from scipy.stats import multivariate_normal

from ntps.baselines import (
    PREDICTORS,
    SOURCE_FEATURES,
    evidence_is_unbounded,
    h_score,
    knn_accuracy,
    log_evidence,
    logme,
    max_evidence,
    perception_eigenvalues,
    perception_only,
    predictor_value,
    standardize_features,
)
from ntps.config import load_schema, validate_config
from ntps.errors import ConfigError, NumericalError, PredictorUndefined
from ntps.workflow import FEATURE_PREDICTOR_SETTINGS, enabled_predictors, predictor_settings

REPO = Path(__file__).resolve().parents[1]
#: The schema's default of ``predictors.{h_score,knn}.standardize`` (docs/predictors.md: measured).
STANDARDIZE = True


def two_gaussians(
    n: int, d: int, separation: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two balanced classes N(+-mu, I_d) with |mu| = separation / 2 along a random direction."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    mu = 0.5 * separation * direction / np.linalg.norm(direction)
    y = np.repeat([0, 1], n // 2)
    x = (
        rng.normal(size=(n, d)) + np.where(y[:, None] == 0, mu, -mu) + 3.0
    )  # offset: centring matters
    return x, y


# --- H-score --------------------------------------------------------------------------------


def test_h_score_two_classes_equals_its_closed_form() -> None:
    """tr((W + B)^-1 B) with B = p0 p1 delta delta^T is q / (1 + q), q = p0 p1 delta^T W^-1 delta."""
    x, y = two_gaussians(2000, 8, separation=4.0)
    n = len(y)
    p = np.bincount(y) / n
    means = np.stack([x[y == c].mean(0) for c in (0, 1)])
    centred = x - means[y]
    within = centred.T @ centred / n
    delta = means[0] - means[1]
    q = p[0] * p[1] * delta @ np.linalg.solve(within, delta)
    assert h_score(x, y, 2, shrinkage="none") == pytest.approx(q / (1 + q), rel=1e-10)
    # Population value for N(+-mu, I): |mu|^2 / (1 + |mu|^2) = 4 / 5; the sample is close to it.
    assert h_score(x, y, 2, shrinkage="none") == pytest.approx(0.8, abs=0.02)
    # With N >> d the Ledoit-Wolf shrinkage is small and changes little.
    assert h_score(x, y, 2) == pytest.approx(0.8, abs=0.03)


def ledoit_wolf_h_score_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Independent implementation: Ledoit and Wolf (2004)'s intensity written out (as in
    transformer-ranker's regularised H-score), both covariances normalised by N."""
    x = x - x.mean(0)
    n, d = x.shape
    cov = x.T @ x / n
    mu = np.trace(cov) / d
    x2 = x**2
    beta = (np.sum(x2.T @ x2) / n - np.sum(cov**2)) / (d * n)
    delta = (np.sum(cov**2) - 2 * mu * np.trace(cov) + d * mu**2) / d
    a = min(max(beta / delta, 0.0), 1.0)
    shrunk = (1 - a) * cov + a * mu * np.eye(d)
    between = np.zeros((d, d))
    for c in np.unique(y):
        m = x[y == c].mean(0)
        between += np.mean(y == c) * np.outer(m, m)
    return float(np.trace(np.linalg.inv(shrunk) @ ((1 - a) * between)))


@pytest.mark.parametrize(("n", "d"), [(300, 10), (40, 100)])
def test_h_score_ledoit_wolf_matches_written_out_reference(n: int, d: int) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + rng.normal(size=(3, d))[y]
    assert h_score(x, y, 3) == pytest.approx(ledoit_wolf_h_score_reference(x, y), rel=1e-9)


def test_h_score_without_shrinkage_saturates_when_n_below_d() -> None:
    """Why shrinkage: with N < d the sample covariance separates any labelling (H = c - 1)."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 100)), rng.integers(0, 3, 30)
    assert h_score(x, y, 3, shrinkage="none") == pytest.approx(2.0, abs=1e-6)
    assert h_score(x, y, 3) < 0.5
    with pytest.raises(ConfigError, match=r"predictors\.h_score\.shrinkage"):
        h_score(x, y, 3, shrinkage="oas")


def test_h_score_on_constant_features_is_undefined_not_a_linalg_error() -> None:
    x, y = np.full((20, 6), 3.25), np.repeat([0, 1], 10)
    for shrinkage in ("ledoit_wolf", "none"):
        with pytest.raises(PredictorUndefined, match="every text has the same features"):
            h_score(x, y, 2, shrinkage=shrinkage)
    value, reason = predictor_value("h_score", x, y, 2, shrinkage="ledoit_wolf")
    assert math.isnan(value) and reason is not None and reason.startswith("H-score undefined")
    # One constant channel among varying ones is fine (and standardised to 0).
    rng = np.random.default_rng(12)
    x[:, 1:] = rng.normal(size=(20, 5)) + np.eye(2, 5)[y]
    assert math.isfinite(h_score(x, y, 2)) and math.isfinite(h_score(x, y, 2, standardize=True))
    assert np.all(standardize_features(x)[:, 0] == 0.0)


# --- per-feature standardisation ------------------------------------------------------------


def with_massive_channel(seed: int = 13) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three classes separated in 8 channels plus one label-free channel; returns the features, the
    same features with that channel scaled by 1e4 (an LLM's massive activation), and the labels."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 9)) + 2.0 * np.eye(3, 9)[y] + 5.0
    scaled = x.copy()
    scaled[:, 8] *= 1e4
    return x, scaled, y


def test_standardize_features_is_zero_mean_unit_variance_and_scale_free() -> None:
    x, scaled, _ = with_massive_channel()
    z = standardize_features(x)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(standardize_features(scaled - 7.0), z, rtol=1e-9, atol=1e-9)


def test_standardised_h_score_and_knn_do_not_see_one_channel_s_scale() -> None:
    x, scaled, y = with_massive_channel()
    plain = h_score(x, y, 3, standardize=True)
    assert h_score(scaled, y, 3, standardize=True) == pytest.approx(plain, rel=1e-9)
    assert knn_accuracy(scaled, y, 3, standardize=True) == knn_accuracy(x, y, 3, standardize=True)
    # Without it one label-free channel decides both (why the option exists) ...
    assert h_score(scaled, y, 3) < 0.5 * h_score(x, y, 3)
    assert knn_accuracy(scaled, y, 3) < knn_accuracy(x, y, 3) - 0.3
    # ... while the H-score without shrinkage never depended on feature scales.
    assert h_score(scaled, y, 3, shrinkage="none") == pytest.approx(
        h_score(x, y, 3, shrinkage="none"), rel=1e-7
    )
    assert h_score(x, y, 3, shrinkage="none", standardize=True) == pytest.approx(
        h_score(x, y, 3, shrinkage="none"), rel=1e-9
    )


# --- LogME ----------------------------------------------------------------------------------


def direct_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, I/beta + F F^T/alpha): the marginal likelihood with full N x N matrices."""
    n = f.shape[0]
    cov = np.eye(n) / beta + f @ f.T / alpha
    return float(multivariate_normal(mean=np.zeros(n), cov=cov).logpdf(y))


def svd_parts(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    x2 = (u.T @ y) ** 2
    return x2, s**2, float(y @ y - x2.sum())


@pytest.mark.parametrize(("n", "d"), [(150, 12), (40, 90)])
def test_max_evidence_is_the_maximum_of_the_direct_log_evidence(n: int, d: int) -> None:
    """Data drawn from LogME's own model; the fixed point is checked against the evidence written
    with full matrices: equal value there, and no better point on a grid around it."""
    rng = np.random.default_rng(3)
    f = rng.normal(size=(n, d))
    alpha_true, beta_true = 2.0, 25.0
    y = f @ rng.normal(scale=alpha_true**-0.5, size=d) + rng.normal(scale=beta_true**-0.5, size=n)
    x2, sigma, rest = svd_parts(f, y)
    found = max_evidence(x2, sigma, rest, n, d)
    assert found.converged
    direct = direct_log_evidence(f, y, found.alpha, found.beta)
    assert found.log_evidence == pytest.approx(direct, rel=1e-9, abs=1e-8)
    factors = np.exp(np.linspace(-0.3, 0.3, 7))
    grid = [
        direct_log_evidence(f, y, found.alpha * a, found.beta * b) for a in factors for b in factors
    ]
    assert max(grid) <= direct + 1e-8
    # The stationary point: the gradient of the direct evidence vanishes there.
    h = 1e-5
    for da, db in ((h, 0.0), (0.0, h)):
        up = direct_log_evidence(f, y, found.alpha * math.exp(da), found.beta * math.exp(db))
        down = direct_log_evidence(f, y, found.alpha * math.exp(-da), found.beta * math.exp(-db))
        assert abs(up - down) / (2 * h) < 1e-3
    if n > d:  # enough data: the hyper-parameters are recovered
        assert found.beta == pytest.approx(beta_true, rel=0.3)


def test_log_evidence_formula_counts_the_zero_eigenvalues_when_n_below_d() -> None:
    rng = np.random.default_rng(4)
    f, y = rng.normal(size=(20, 50)), rng.normal(size=20)
    x2, sigma, rest = svd_parts(f, y)
    assert sigma.size == 20
    for alpha, beta in ((0.5, 2.0), (3.0, 0.7)):
        assert log_evidence(x2, sigma, rest, 20, 50, alpha, beta) == pytest.approx(
            direct_log_evidence(f, y, alpha, beta), rel=1e-10
        )


def test_logme_prefers_labels_its_model_generated_over_shuffled_ones() -> None:
    rng = np.random.default_rng(5)
    n, d, c = 400, 16, 3
    x = rng.normal(size=(n, d))
    y = np.argmax(x @ rng.normal(size=(d, c)) + 0.3 * rng.normal(size=(n, c)), axis=1)
    real = logme(x, y, c)
    shuffled = [logme(x, rng.permutation(y), c) for _ in range(5)]
    assert real > max(shuffled) + 0.05
    # Averaged over classes and divided by N: the mean of the per-class maxima.
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    per_class = []
    for k in range(c):
        col = (y == k).astype(float)
        x2 = (u.T @ col) ** 2
        per_class.append(max_evidence(x2, s**2, float(col @ col - x2.sum()), n, d).log_evidence / n)
    assert real == pytest.approx(np.mean(per_class), rel=1e-12)


def test_logme_with_labels_in_the_span_of_rank_deficient_features_is_undefined() -> None:
    """Two distinct texts, each repeated 20 times (N <= d with duplicates): every class column lies
    in range(F) of rank 2 < N, the evidence grows without bound. Before, this overflowed in
    ``beta**2`` or returned a value set by rounding."""
    y = np.repeat([0, 1], 20)
    for seed in range(5):
        x = np.random.default_rng(seed).normal(size=(2, 10))[y]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow, no RuntimeWarning
            with pytest.raises(PredictorUndefined, match=r"class\(es\) \[0, 1\].*rank 2 is below"):
                logme(x, y, 2)
            value, reason = predictor_value("logme", x, y, 2)
        assert math.isnan(value) and "evidence grows without bound" in reason
    # The job's catch-all sees a NumericalError naming the cause, should it not record NaN.
    assert issubclass(PredictorUndefined, NumericalError)
    # One duplicated text among otherwise distinct ones, N < d: still in the span.
    rng = np.random.default_rng(14)
    x, labels = rng.normal(size=(30, 64)), rng.integers(0, 3, 30)
    x[1], labels[1] = x[0], labels[0]
    with pytest.raises(PredictorUndefined):
        logme(x, labels, 3)
    x[1] = x[0] + 1e-3 * rng.normal(size=64)  # no longer a duplicate: rank N, bounded
    assert math.isfinite(logme(x, labels, 3))


def test_evidence_is_unbounded_only_below_full_rank() -> None:
    rng = np.random.default_rng(15)
    f = rng.normal(size=(20, 50))  # rank N: every y is in range(F), the evidence stays bounded
    y = (rng.integers(0, 2, 20) == 1).astype(float)
    x2, sigma, _ = svd_parts(f, y)
    assert not evidence_is_unbounded(x2, sigma, 0.0, 20, 50)
    assert math.isfinite(max_evidence(x2, sigma, 0.0, 20, 50).log_evidence)
    assert evidence_is_unbounded(x2[:19], sigma[:19], 0.0, 20, 50)
    found = max_evidence(x2[:19], sigma[:19], 0.0, 20, 50)
    assert found.log_evidence == math.inf and found.beta == math.inf
    assert not evidence_is_unbounded(x2[:19], sigma[:19], 1e-3, 20, 50)
    # A zero target (a class without texts) is left to the fixed point, as before.
    assert not evidence_is_unbounded(np.zeros(19), sigma[:19], 0.0, 20, 50)


def test_max_evidence_reaches_the_no_feature_limit_without_overflow() -> None:
    """Features almost orthogonal to y: the maximum lies at alpha -> inf (weights pinned to 0),
    where the evidence is max_beta log N(y; 0, I/beta). The iteration stops before alpha overflows."""
    rng = np.random.default_rng(11)
    n, d = 60, 8
    f = rng.normal(size=(n, d))
    f = f - f.mean(0) + 1e-3 * rng.normal(size=(n, d))
    y = np.ones(n)
    x2, sigma, rest = svd_parts(f, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = max_evidence(x2, sigma, rest, n, d)
    assert not found.converged and found.alpha > 1e100
    beta = n / (y @ y)
    limit = 0.5 * n * math.log(beta) - 0.5 * beta * (y @ y) - 0.5 * n * math.log(2 * math.pi)
    assert found.log_evidence == pytest.approx(limit, rel=1e-12)


# --- kNN ------------------------------------------------------------------------------------


def test_knn_on_separable_points_is_one() -> None:
    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(4), 15)
    x = 100.0 * np.eye(4)[y] @ rng.normal(size=(4, 8)) + rng.normal(size=(60, 8))
    for metric in ("euclidean", "cosine"):
        assert knn_accuracy(x, y, 4, k=5, folds=5, metric=metric) == 1.0


def test_knn_matches_a_hand_written_vote_on_the_same_folds() -> None:
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 90)
    x = rng.normal(size=(90, 5)) + 0.8 * np.eye(3, 5)[y]
    correct = 0
    for train, test in StratifiedKFold(4, shuffle=True, random_state=3).split(x, y):
        dist = ((x[test, None, :] - x[None, train, :]) ** 2).sum(-1)
        nearest = np.argsort(dist, axis=1)[:, :7]
        votes = np.stack([np.bincount(y[train][row], minlength=3) for row in nearest])
        correct += int(np.sum(votes.argmax(1) == y[test]))
    assert knn_accuracy(x, y, 3, k=7, folds=4, seed=3) == pytest.approx(correct / 90)
    with pytest.raises(ConfigError, match=r"predictors\.knn\.metric"):
        knn_accuracy(x, y, 3, metric="manhattan")


# --- perception-only ------------------------------------------------------------------------


def test_perception_only_is_the_sum_of_the_generalized_eigenvalues() -> None:
    rng = np.random.default_rng(8)
    n, d, c = 200, 12, 4
    y = rng.integers(0, c, n)
    x = rng.normal(size=(n, d)) + rng.normal(size=(c, d))[y]
    onehot = np.eye(c)[y]
    cxx, cxy = x.T @ x / n, x.T @ onehot / n
    lam = scipy.linalg.eigh(cxy @ cxy.T, cxx, eigvals_only=True)
    assert perception_only(x, y, c) == pytest.approx(lam.sum(), rel=1e-9)
    np.testing.assert_allclose(
        perception_eigenvalues(x, y, c)[:c], np.sort(lam)[::-1][:c], rtol=1e-8, atol=1e-12
    )
    # Centred moments and a ridge: the same identity with the modified matrices.
    xc, yc = x - x.mean(0), onehot - onehot.mean(0)
    a, b = (xc.T @ yc / n) @ (xc.T @ yc / n).T, xc.T @ xc / n + 0.1 * np.eye(d)
    assert perception_only(x, y, c, centered=True, ridge=0.1) == pytest.approx(
        scipy.linalg.eigh(a, b, eigvals_only=True).sum(), rel=1e-9
    )


def test_perception_only_uses_the_pseudo_inverse_when_n_below_d() -> None:
    rng = np.random.default_rng(9)
    n, d, c = 15, 40, 3
    x, y = rng.normal(size=(n, d)), rng.integers(0, c, n)
    onehot = np.eye(c)[y]
    cxx, cxy = x.T @ x / n, x.T @ onehot / n
    expected = np.trace(np.linalg.pinv(cxx, hermitian=True) @ cxy @ cxy.T)
    assert perception_only(x, y, c) == pytest.approx(expected, rel=1e-8)
    # N < d: one-hot labels are reproduced exactly, so the loss reduction is E||y||^2 = 1.
    assert expected == pytest.approx(1.0, rel=1e-8)


# --- registry and config --------------------------------------------------------------------


def test_registry_and_schema_name_the_same_predictors() -> None:
    schema = load_schema()["properties"]["predictors"]["properties"]["enabled"]
    assert schema["items"]["enum"] == list(PREDICTORS)
    assert schema["default"] == list(PREDICTORS)
    for name, entry in PREDICTORS.items():
        assert entry.name == name
        assert (entry.compute is not None) == (entry.source == SOURCE_FEATURES)
    assert PREDICTORS["probe_accuracy"].targets == ("gain",)
    # What each takes from the config is read by the rules, which do not import the estimators.
    computed = [name for name, entry in PREDICTORS.items() if entry.source == SOURCE_FEATURES]
    assert list(FEATURE_PREDICTOR_SETTINGS) == computed


def test_config_defaults_and_settings_reach_every_feature_predictor() -> None:
    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert enabled_predictors(config) == list(PREDICTORS)
    settings = predictor_settings(config)
    assert settings == {
        "h_score": {"shrinkage": "ledoit_wolf", "standardize": STANDARDIZE},
        "logme": {},
        "knn": {"k": 5, "folds": 5, "metric": "euclidean", "seed": 0, "standardize": STANDARDIZE},
        "perception_only": {"eigen_cutoff": "auto", "ridge": 0.0, "centered": False},
    }
    rng = np.random.default_rng(10)
    y = np.repeat([0, 1, 2], 10)
    x = rng.normal(size=(30, 6)) + np.eye(3, 6)[y]
    for name, kwargs in settings.items():
        assert math.isfinite(PREDICTORS[name].compute(x, y, 3, **kwargs)), name
    # Defaults fill in when the section is left out; bad values name their key.
    minimal = {k: copy.deepcopy(config[k]) for k in ("models", "datasets")}
    assert validate_config(minimal)["predictors"]["knn"]["k"] == 5
    for bad, key in (
        ({"knn": {"k": 0}}, "predictors.knn.k"),
        ({"enabled": ["h_score", "fisher"]}, "predictors.enabled[1]"),
        ({"h_score": {"shrinkage": "oas"}}, "predictors.h_score.shrinkage"),
        ({"knn": {"standardize": "yes"}}, "predictors.knn.standardize"),
    ):
        broken = {**copy.deepcopy(minimal), "predictors": bad}
        with pytest.raises(ConfigError, match=re.escape(key)):
            validate_config(broken)
