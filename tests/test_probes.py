"""Probe metrics, and the probe head folded onto raw features (what a LoRA head starts from)."""

from __future__ import annotations

import numpy as np
import pytest

from ntps.probes import classification_metrics, fit_probe, folded_head


def test_classification_metrics_hand_values_and_sklearn_to_the_bit():
    # Class 0: tp 1, 2 true, 1 predicted -> F1 2/3; class 1: tp 1, 1 true, 2 predicted -> 2/3;
    # class 2: never true nor predicted -> 0. Accuracy 2/3.
    accuracy, macro_f1 = classification_metrics([0, 0, 1], [0, 1, 1], 3)
    assert accuracy == pytest.approx(2 / 3) and macro_f1 == pytest.approx((2 / 3 + 2 / 3) / 3)
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    for _ in range(200):
        n_classes, n = int(rng.integers(2, 7)), int(rng.integers(1, 40))
        y_true = rng.integers(0, n_classes, size=n)
        y_pred = np.where(rng.random(n) < 0.5, y_true, rng.integers(0, n_classes, size=n))
        labels = list(range(n_classes))
        want = (
            accuracy_score(y_true, y_pred),
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
        )
        assert classification_metrics(y_true, y_pred, n_classes) == want  # equal, not close
    assert all(np.isnan(classification_metrics([], [], 3)))
    with pytest.raises(ValueError, match="2 labels but 3 predictions"):
        classification_metrics([0, 1], [0, 1, 1], 2)


def test_folded_head_closed_form_binary_and_multiclass():
    rng = np.random.default_rng(0)
    mean, scale = rng.normal(size=4), rng.uniform(0.5, 2.0, size=4)
    x = rng.normal(size=(7, 4))
    z = (x - mean) / scale
    # binary: one logit z.w + b becomes the pair (0, z.w + b)
    coef, intercept = rng.normal(size=(1, 4)), rng.normal(size=1)
    weight, bias = folded_head(coef, intercept, mean, scale, 2)
    logits = x @ weight.T + bias
    np.testing.assert_allclose(logits[:, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(logits[:, 1], z @ coef[0] + intercept[0], rtol=1e-12)
    # multiclass: every logit is the standardised-space logit
    coef, intercept = rng.normal(size=(3, 4)), rng.normal(size=3)
    weight, bias = folded_head(coef, intercept, mean, scale, 3)
    np.testing.assert_allclose(x @ weight.T + bias, z @ coef.T + intercept, rtol=1e-12)
    with pytest.raises(ValueError, match="3 logits for 4 classes"):
        folded_head(coef, intercept, mean, scale, 4)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_fit_probe_head_reproduces_its_predictions(n_classes):
    rng = np.random.default_rng(1)
    centers = (
        rng.normal(scale=3.0, size=(n_classes, 6)) + 10.0
    )  # far from the origin: offsets matter
    y_train, y_test = rng.integers(0, n_classes, 60), rng.integers(0, n_classes, 30)
    x_train = centers[y_train] + rng.normal(size=(60, 6)) * rng.uniform(0.1, 5, 6)
    x_test = centers[y_test] + rng.normal(size=(30, 6)) * rng.uniform(0.1, 5, 6)
    result = fit_probe(x_train, y_train, x_test, y_test, n_classes, c_grid=[1.0], keep_head=True)
    logits = x_test @ result.head_weight.T + result.head_bias
    assert logits.argmax(1).tolist() == result.test_predictions.tolist()
    assert np.mean(result.test_predictions == y_test) == pytest.approx(result.accuracy)
    assert "head_weight" not in result.to_dict()


def test_fit_probe_records_the_standard_error_of_its_mse():
    rng = np.random.default_rng(2)
    y_train, y_test = rng.integers(0, 3, 90), rng.integers(0, 3, 40)
    centers = rng.normal(scale=2.0, size=(3, 5))
    x_train = centers[y_train] + rng.normal(size=(90, 5))
    x_test = centers[y_test] + rng.normal(size=(40, 5))
    result = fit_probe(x_train, y_train, x_test, y_test, 3, c_grid=[1.0])
    record = result.to_dict()
    assert list(record)[:4] == ["accuracy", "macro_f1", "mse", "mse_se"]
    # the SE of a mean over the 40 test texts, from the same ridge fit recomputed here
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    from ntps.probes import DEFAULT_RIDGE_ALPHAS

    scaler = StandardScaler().fit(x_train)
    ridge = RidgeCV(alphas=list(DEFAULT_RIDGE_ALPHAS)).fit(
        scaler.transform(x_train), np.eye(3)[y_train]
    )
    per_text = ((np.eye(3)[y_test] - ridge.predict(scaler.transform(x_test))) ** 2).sum(axis=1)
    assert result.mse == pytest.approx(per_text.mean(), rel=1e-12)
    assert result.mse_se == pytest.approx(per_text.std(ddof=1) / np.sqrt(40), rel=1e-12)


@pytest.mark.parametrize(
    ("n", "d", "k"),
    [(120, 15, 4), (200, 40, 1), (40, 90, 3), (60, 60, 2), (25, 8, 5)],
    ids=["n>d", "n>d-single-target", "n<d", "n=d", "small"],
)
def test_ridge_gcv_is_ridgecv(n, d, k):
    """The same alpha, coefficients and intercept as scikit-learn's RidgeCV, in both regimes."""
    from sklearn.linear_model import RidgeCV

    from ntps.probes import DEFAULT_RIDGE_ALPHAS, ridge_gcv

    rng = np.random.default_rng(n * 1000 + d)
    # correlated, off-centre features and labels that depend on them: an interior alpha
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(scale=5.0, size=d)
    labels = (x[:, :3] @ rng.normal(size=(3, k)) + rng.normal(scale=4.0, size=(n, k))).argmax(1)
    y = np.eye(k)[labels] if k > 1 else x[:, :1] + rng.normal(size=(n, 1))
    reference = RidgeCV(alphas=list(DEFAULT_RIDGE_ALPHAS)).fit(x, y)
    coef, intercept, alpha = ridge_gcv(x, y, DEFAULT_RIDGE_ALPHAS)
    assert alpha == reference.alpha_
    assert coef.shape == (k, d) and intercept.shape == (k,)
    np.testing.assert_allclose(coef, reference.coef_.reshape(k, d), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(intercept, np.reshape(reference.intercept_, k), rtol=1e-9)
    x_new = rng.normal(size=(30, d)) * 2.0
    np.testing.assert_allclose(
        x_new @ coef.T + intercept, reference.predict(x_new).reshape(30, k), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize(("n", "d"), [(150, 10), (30, 50)])
def test_ridge_gcv_chooses_ridgecv_alpha_on_every_grid(n, d):
    """The choice over many grids (interior optima, unsorted grids, a single alpha), as RidgeCV's."""
    from sklearn.linear_model import RidgeCV

    from ntps.probes import ridge_gcv

    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0, d)
    y = x @ rng.normal(size=(d, 2)) + rng.normal(scale=3.0, size=(n, 2))
    grids = [np.logspace(lo, lo + 3, 7) for lo in range(-3, 4)]
    grids += [[100.0, 0.1, 10.0, 1.0], [3.0]]
    chosen = set()
    for grid in grids:
        alpha = ridge_gcv(x, y, grid)[2]
        assert alpha == RidgeCV(alphas=list(grid)).fit(x, y).alpha_
        chosen.add(alpha)
    assert len(chosen) > 3  # not always an end of the grid


def test_fit_probe_ridge_matches_ridgecv_on_tiny_models_n_below_d():
    """fit_probe's ridge numbers are RidgeCV's where N < d (the workflow's test models)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    from ntps.probes import DEFAULT_RIDGE_ALPHAS

    rng = np.random.default_rng(3)
    y_train, y_test = rng.integers(0, 4, 24), rng.integers(0, 4, 12)
    x_train, x_test = rng.normal(size=(24, 32)) + 3.0, rng.normal(size=(12, 32)) + 3.0
    x_train[:, :4] += 2.0 * np.eye(4)[y_train]
    result = fit_probe(x_train, y_train, x_test, y_test, 4, c_grid=[1.0])
    scaler = StandardScaler().fit(x_train)
    ridge = RidgeCV(alphas=list(DEFAULT_RIDGE_ALPHAS)).fit(
        scaler.transform(x_train), np.eye(4)[y_train]
    )
    assert result.ridge_alpha == ridge.alpha_
    test_errors = ((np.eye(4)[y_test] - ridge.predict(scaler.transform(x_test))) ** 2).sum(1)
    train_errors = ((np.eye(4)[y_train] - ridge.predict(scaler.transform(x_train))) ** 2).sum(1)
    assert result.mse == pytest.approx(test_errors.mean(), rel=1e-9)
    assert result.train_mse == pytest.approx(train_errors.mean(), rel=1e-9)
