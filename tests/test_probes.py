"""The probe head folded onto raw features (what a LoRA head starts from)."""

from __future__ import annotations

import numpy as np
import pytest

from ntps.probes import fit_probe, folded_head


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
