"""NTPS scores: k resolution, planted subspaces, excess-loss identity and bounds, invariances."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ntps.eigen import generalized_eigh
from ntps.errors import ConfigError
from ntps.scores import (
    DEFAULT_K_GRID,
    RECORD_FIELDS,
    excess_loss,
    resolve_k,
    score_layer,
)
from ntps.stats import LayerMoments, StatisticsAccumulator

F64 = torch.float64
ARCH_FIELDS = {
    "n_train",
    "hidden_size",
    "regime",
    "k_spec",
    "k_perception",
    "k_ar",
    "rank_perception",
    "rank_ar",
    "n_nonzero_perception",
    "ntps_paper",
    "ntps_reg",
    "baseline",
    "excess_loss",
    "bound_lower",
    "bound_upper",
    "lam_min_cxx",
    "lam_max_cxx",
    "w_star_norm2",
    "paper_degenerate",
    "k_clipped",
    "eigen_cutoff",
    "ntps_released",
    "ntps_released_min",
    "ntps_released_max",
    "ntps_released_sd",
    "released_roundings",
    "lower_bound_zero",
    "ar_degenerate",
}


def moments(cxx, cxy, s0, s1, x_mean=None, y_mean=None, n=100, layer=None):
    d, c = cxy.shape
    return LayerMoments(
        cxx=cxx,
        cxy=cxy,
        s0=s0,
        s1=s1,
        x_mean=torch.zeros(d, dtype=F64) if x_mean is None else x_mean,
        y_mean=torch.full((c,), 1.0 / c, dtype=F64) if y_mean is None else y_mean,
        n_examples=n,
        n_pairs=10 * n,
        layer=layer,
    )


def rand_orth(d, g):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return q


def planted_ar(q):
    """S0 = I and S1 = Q diag(decreasing) Q^T: the AR eigenvectors are Q's columns in order."""
    d = q.shape[0]
    return torch.eye(d, dtype=F64), (q * torch.linspace(3.0, 0.5, d, dtype=F64)) @ q.T


def sample_problem(g, n, d, c, scales=None):
    """Finite sample: features X (n, d), one-hot labels Y (n, c) with a linear signal."""
    scales = torch.logspace(0, 1, d, dtype=F64) if scales is None else scales
    x = torch.randn(n, d, generator=g, dtype=F64) * scales
    w = torch.randn(d, c, generator=g, dtype=F64)
    labels = (x @ w + torch.randn(n, c, generator=g, dtype=F64)).argmax(1)
    y = torch.nn.functional.one_hot(labels, c).to(F64)
    return x, y


def random_ar(g, d):
    a = torch.randn(d, d, generator=g, dtype=F64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=F64), torch.randn(d, d, generator=g, dtype=F64)


def test_resolve_k_and_grid():
    assert resolve_k(3, 10) == 3
    assert resolve_k(50, 10) == 10
    assert resolve_k(0.5, 10) == 5
    assert resolve_k(0.05, 10) == 1  # max(1, floor(0.5))
    assert resolve_k(0.29, 100) == 29  # not 28 from 28.999999999999996
    assert resolve_k(0.95, 4096) == 3891
    assert resolve_k(np.int64(2), 5) == 2
    for bad in (0, -1, 0.0, 1.0, 1.5, True, "3"):
        with pytest.raises(ConfigError):
            resolve_k(bad, 10)
    assert len(DEFAULT_K_GRID) == 19
    assert DEFAULT_K_GRID[0] == 0.05 and DEFAULT_K_GRID[-1] == 0.95 and DEFAULT_K_GRID[5] == 0.3
    assert set(RECORD_FIELDS) == ARCH_FIELDS


def test_planted_subspace_gives_one_and_zero():
    g = torch.Generator().manual_seed(0)
    d, c = 12, 3
    q = rand_orth(d, g)
    s0, s1 = planted_ar(q)
    a = torch.randn(d, d, generator=g, dtype=F64)
    sigma = a @ a.T + torch.eye(d, dtype=F64)
    r = torch.randn(3, c, generator=g, dtype=F64)
    inside = q[:, :3] @ r  # W* in span of the top-3 AR directions
    outside = q[:, 6:9] @ r  # W* orthogonal to the top-6 AR directions
    rec_in = score_layer(moments(sigma, sigma @ inside, s0, s1), [1, 3, 5, 6])
    rec_out = score_layer(moments(sigma, sigma @ outside, s0, s1), [3, 6, 9])
    assert [rec["k_ar"] for rec in rec_in] == [1, 3, 5, 6]
    assert rec_in[0]["ntps_reg"] < 0.99
    for rec in rec_in[1:]:
        assert rec["ntps_reg"] == pytest.approx(1.0, abs=1e-10)
        assert rec["excess_loss"] == pytest.approx(0.0, abs=1e-9)
        assert rec["w_star_norm2"] == pytest.approx(float(inside.square().sum()), rel=1e-8)
    assert rec_out[0]["ntps_reg"] == pytest.approx(0.0, abs=1e-10)
    assert rec_out[1]["ntps_reg"] == pytest.approx(0.0, abs=1e-10)
    assert rec_out[2]["ntps_reg"] == pytest.approx(1.0, abs=1e-10)
    assert rec_out[0]["excess_loss"] > 0.1


def test_random_subspaces_average_k_over_d():
    g = torch.Generator().manual_seed(1)
    d, c, k = 16, 4, 4
    a = torch.randn(d, d, generator=g, dtype=F64)
    sigma = a @ a.T + torch.eye(d, dtype=F64)
    cxy = sigma @ torch.randn(d, c, generator=g, dtype=F64)
    vals = []
    for _ in range(120):
        s0, s1 = planted_ar(rand_orth(d, g))
        (rec,) = score_layer(moments(sigma, cxy, s0, s1), [k])
        assert rec["baseline"] == k / d
        vals.append(rec["ntps_reg"])
    # per-trial sd ~0.07, so the mean of 120 has sd ~0.007
    assert np.mean(vals) == pytest.approx(k / d, abs=0.03)


@pytest.mark.parametrize("case", ["full", "singular", "ridge", "singular_ridge", "centered"])
def test_bounds_hold_and_excess_matches_reference(case):
    g = torch.Generator().manual_seed(2)
    ridge = 0.3 if "ridge" in case else 0.0
    for trial in range(12):
        d, c = 10, 2 + trial % 4
        n = 6 if "singular" in case else 80
        x, y = sample_problem(g, n, d, c)
        cxx, cxy = x.T @ x / n, x.T @ y / n
        s0, s1 = random_ar(g, d)
        m = moments(cxx, cxy, s0, s1, x.mean(0), y.mean(0), n=n)
        grid = [1, 2, 0.3, 0.5, 0.7, 0.95, d]
        recs = score_layer(m, grid, ridge=ridge, centered=case == "centered")
        _, v = generalized_eigh(s1 @ s1.T, s0)
        c_eff = cxx + ridge * torch.eye(d, dtype=F64)
        cxy_eff = cxy
        if case == "centered":
            mu, yb = x.mean(0), y.mean(0)
            c_eff, cxy_eff = cxx - torch.outer(mu, mu), cxy - torch.outer(mu, yb)
        for rec in recs:
            scale = rec["lam_max_cxx"] * rec["w_star_norm2"] + 1.0
            assert (
                rec["bound_lower"] - 1e-9 * scale
                <= rec["excess_loss"]
                <= rec["bound_upper"] + 1e-9 * scale
            )
            ref = excess_loss(c_eff, cxy_eff, v[:, : rec["k_ar"]])
            assert rec["excess_loss"] == pytest.approx(ref, rel=1e-7, abs=1e-10 * scale)
            if "singular" in case and ridge == 0:
                assert rec["lam_min_cxx"] == 0.0 and rec["rank_perception"] <= n
            if ridge:
                assert rec["lam_min_cxx"] >= ridge - 1e-12 and rec["rank_perception"] == d


def test_bounds_are_equalities_for_isotropic_cxx():
    g = torch.Generator().manual_seed(3)
    d, c, s = 9, 3, 2.5
    cxy = torch.randn(d, c, generator=g, dtype=F64)
    s0, s1 = random_ar(g, d)
    for rec in score_layer(moments(s * torch.eye(d, dtype=F64), cxy, s0, s1), [1, 3, 0.5, 8]):
        assert rec["excess_loss"] == pytest.approx(rec["bound_lower"], rel=1e-9, abs=1e-14)
        assert rec["excess_loss"] == pytest.approx(rec["bound_upper"], rel=1e-9, abs=1e-14)
        expect = s * rec["w_star_norm2"] * (1 - rec["ntps_reg"])
        assert rec["excess_loss"] == pytest.approx(expect, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("n", [60, 7])
def test_excess_loss_equals_least_squares_mse_difference(n):
    g = torch.Generator().manual_seed(4)
    d, c = 10, 3
    x, y = sample_problem(g, n, d, c)
    s0, s1 = random_ar(g, d)
    m = moments(x.T @ x / n, x.T @ y / n, s0, s1, n=n)
    _, v = generalized_eigh(s1 @ s1.T, s0)
    xn, yn = x.numpy(), y.numpy()

    def mse(features):
        coef = np.linalg.lstsq(features, yn, rcond=None)[0]
        return float(np.square(yn - features @ coef).sum() / n)

    full = mse(xn)
    for rec in score_layer(m, [1, 2, 4, 0.5, 0.8, 9]):
        projected = mse(xn @ v[:, : rec["k_ar"]].numpy())
        assert rec["excess_loss"] == pytest.approx(projected - full, rel=1e-7, abs=1e-10)


def test_paper_form_matches_direct_projector_and_fast_path_matches_dense():
    g = torch.Generator().manual_seed(5)
    d, c, n = 14, 3, 100
    x, y = sample_problem(g, n, d, c)
    s0, s1 = random_ar(g, d)
    m = moments(x.T @ x / n, x.T @ y / n, s0, s1, n=n)
    grid = list(range(1, d + 1))
    dense = score_layer(m, grid, perception_solver="dense")
    fast = score_layer(m, grid, perception_solver="lowrank")
    lam_u, u = generalized_eigh(m.cxy @ m.cxy.T, m.cxx)
    _, v = generalized_eigh(s1 @ s1.T, s0)
    for rd, rf in zip(dense, fast, strict=True):
        k = rd["k_perception"]
        vk, uk = v[:, : rd["k_ar"]], u[:, :k]
        p = vk @ torch.linalg.pinv(vk)
        direct = float((p @ uk).square().sum() / uk.square().sum())
        if not rd["paper_degenerate"]:  # beyond c the basis (hence the value) is solver-specific
            assert rd["ntps_paper"] == pytest.approx(direct, rel=1e-7, abs=1e-12)
        assert 0.0 <= rd["ntps_paper"] <= 1.0 + 1e-12
        for key in (
            "ntps_reg",
            "excess_loss",
            "bound_lower",
            "bound_upper",
            "w_star_norm2",
            "lam_min_cxx",
            "lam_max_cxx",
        ):
            assert rf[key] == pytest.approx(rd[key], rel=1e-8, abs=1e-12), key
        for key in (
            "n_nonzero_perception",
            "paper_degenerate",
            "rank_perception",
            "rank_ar",
            "k_ar",
        ):
            assert rf[key] == rd[key], key
        if not rd["paper_degenerate"]:
            assert rf["ntps_paper"] == pytest.approx(rd["ntps_paper"], rel=1e-7, abs=1e-12)
    # sanity: the degenerate basis really is solver-dependent somewhere (else the flag means nothing)
    assert any(
        abs(rd["ntps_paper"] - rf["ntps_paper"]) > 1e-6 for rd, rf in zip(dense, fast, strict=True)
    )
    assert int((lam_u > 1e-10 * lam_u[0]).sum()) == c


def test_degenerate_flag_exactly_beyond_nonzero_eigenvalues():
    g = torch.Generator().manual_seed(6)
    d, c, n = 12, 4, 200
    x, y = sample_problem(g, n, d, c)
    s0, s1 = random_ar(g, d)
    m = moments(x.T @ x / n, x.T @ y / n, s0, s1, x.mean(0), y.mean(0), n=n)
    for centered, expect in ((False, c), (True, c - 1)):  # centering removes one direction
        recs = score_layer(m, list(range(1, d + 1)), centered=centered)
        assert {rec["n_nonzero_perception"] for rec in recs} == {expect}
        assert [rec["paper_degenerate"] for rec in recs] == [k > expect for k in range(1, d + 1)]
    m_low = moments(x.T @ x / n, x.T @ y / n, s0, s1, n=n)
    recs = score_layer(m_low, [5, 100])
    assert [rec["k_clipped"] for rec in recs] == [False, True]
    assert recs[1]["k_perception"] == recs[1]["rank_perception"] == d


def test_centered_equals_scoring_centered_features():
    g = torch.Generator().manual_seed(7)
    d, c, n = 8, 3, 120
    x, y = sample_problem(g, n, d, c)
    x = x + 3.0  # a strong common offset, as in LLM hidden states
    s0, s1 = random_ar(g, d)
    xc = x - x.mean(0)
    a = score_layer(
        moments(x.T @ x / n, x.T @ y / n, s0, s1, x.mean(0), y.mean(0), n=n),
        [2, 0.5],
        centered=True,
    )
    b = score_layer(moments(xc.T @ xc / n, xc.T @ y / n, s0, s1, n=n), [2, 0.5])
    for ra, rb in zip(a, b, strict=True):
        for key in ("ntps_reg", "excess_loss", "bound_upper", "n_nonzero_perception"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-8), key
        if not ra["paper_degenerate"]:
            assert ra["ntps_paper"] == pytest.approx(rb["ntps_paper"], rel=1e-8)
    assert not a[0]["paper_degenerate"]


def accumulate(texts, labels, c, batch=5, rotate=None):
    d = texts[0].shape[-1]
    acc = StatisticsAccumulator(1, d, c, product_dtype=F64)
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        t_max = max(t.shape[0] for t in chunk)
        h = torch.zeros(1, len(chunk), t_max, d, dtype=F64)
        mask = torch.zeros(len(chunk), t_max, dtype=torch.int64)
        for b, t in enumerate(chunk):
            h[0, b, : t.shape[0]] = t if rotate is None else t @ rotate
            mask[b, : t.shape[0]] = 1
        acc.update(h, mask, torch.tensor(labels[start : start + batch]))
    return acc.layer_moments(0)


def test_invariant_to_example_order_and_orthogonal_change_of_basis():
    g = torch.Generator().manual_seed(8)
    d, c, n_texts = 6, 3, 40
    lengths = torch.randint(1, 9, (n_texts,), generator=g).tolist()
    mix = torch.randn(d, d, generator=g, dtype=F64)
    texts = [torch.randn(n, d, generator=g, dtype=F64) @ mix + 0.5 for n in lengths]
    labels = torch.randint(0, c, (n_texts,), generator=g).tolist()
    grid = [1, 2, 3, 0.5, 0.9]
    base = score_layer(accumulate(texts, labels, c), grid)
    perm = torch.randperm(n_texts, generator=g).tolist()
    shuffled = score_layer(
        accumulate([texts[i] for i in perm], [labels[i] for i in perm], c, batch=7), grid
    )
    rotated = score_layer(accumulate(texts, labels, c, rotate=rand_orth(d, g)), grid)
    for other in (shuffled, rotated):
        for r0, r1 in zip(base, other, strict=True):
            for key in (
                "ntps_reg",
                "excess_loss",
                "bound_lower",
                "bound_upper",
                "w_star_norm2",
                "lam_max_cxx",
                "k_ar",
                "k_perception",
                "n_nonzero_perception",
            ):
                assert r1[key] == pytest.approx(r0[key], rel=1e-7, abs=1e-12), key
            if not r0["paper_degenerate"]:
                assert r1["ntps_paper"] == pytest.approx(r0["ntps_paper"], rel=1e-7, abs=1e-12)
    assert 0.0 < base[0]["ntps_reg"] < 1.0


def test_score_layer_records_are_plain_json():
    g = torch.Generator().manual_seed(9)
    d, c, n = 6, 2, 50
    x, y = sample_problem(g, n, d, c)
    s0, s1 = random_ar(g, d)
    m = moments(x.T @ x / n, x.T @ y / n, s0, s1, n=n, layer=4)
    recs = score_layer(m, [1, 0.5])
    assert len(recs) == 2 and set(recs[0]) == ARCH_FIELDS
    json.dumps(recs)  # python scalars only
    assert all(type(v) in (int, float, bool, str) for r in recs for v in r.values())
    # n = 50 texts for d = 6: more than 2d, so the regime is fine.
    assert {(r["n_train"], r["hidden_size"], r["regime"]) for r in recs} == {(50, 6, "ok")}
    assert len(score_layer(m, DEFAULT_K_GRID, ridge=0.1)) == 19
    with pytest.raises(ConfigError):
        score_layer(m, [1], perception_solver="magic")


def test_regime_thresholds_and_warning():
    from ntps.regime import regime, regime_warning

    assert [regime(n, 576) for n in (180, 575, 576, 1151, 1152, 5000)] == [
        "n_train<d", "n_train<d", "n_train<2d", "n_train<2d", "ok", "ok",
    ]  # fmt: skip
    assert regime_warning(1152, 576) is None
    text = regime_warning(180, 576)
    assert (
        "180 for d = 576" in text and "at least 1152" in text and "lower bound is exactly 0" in text
    )


def graded_moments(g, n, d, c):
    """Statistics with channel scales 1e-1..1e3 (a few 'massive' channels), AR side as prefix sums."""
    scales = torch.logspace(-1, 1, d, dtype=F64)
    scales[:3] = 1e3
    x, y = sample_problem(g, n, d, c, scales)
    s = torch.randn(3 * n, d, generator=g, dtype=F64) * scales
    h = (
        s @ (torch.randn(d, d, generator=g, dtype=F64) / d)
        + torch.randn(3 * n, d, generator=g, dtype=F64) * scales
    )
    return moments(x.T @ x / n, x.T @ y / n, s.T @ s / n, s.T @ h / n, x.mean(0), y.mean(0), n)


@pytest.mark.parametrize(("n", "d", "c"), [(200, 24, 3), (60, 40, 5)])
def test_cholesky_ar_whitening_changes_scores_only_within_float64_rounding(n, d, c):
    """The default AR whitening (Cholesky of S0) against the eigendecomposition it replaced: every
    score moves by no more than perturbing the statistics by one float64 ulp moves them."""
    import dataclasses

    from ntps.scores import _score

    g = torch.Generator().manual_seed(d)
    m = graded_moments(g, n, d, c)
    grid = [*DEFAULT_K_GRID, 1, 2, 4]

    def run(mm, how):
        return _score(mm, grid, None, 0.0, False, diagnostics=True, ar_whitening=how)

    ref, new = run(m, "eigh"), run(m, "cholesky")
    fields = ("ntps_paper", "ntps_reg", "excess_loss", "bound_lower", "bound_upper")
    sensitivity = dict.fromkeys(fields, 0.0)
    for _ in range(3):  # how far one ulp of input rounding moves the reference itself
        pert = {}
        for name in ("cxx", "s0", "s1"):
            x = getattr(m, name)
            e = torch.randn(x.shape, generator=g, dtype=F64) * 2.0**-52
            pert[name] = x * (1 + ((e + e.T) / 2 if name != "s1" else e))
        for a, b in zip(ref, run(dataclasses.replace(m, **pert), "eigh"), strict=True):
            for f in fields:
                sensitivity[f] = max(sensitivity[f], abs(a[f] - b[f]))
    for a, b in zip(ref, new, strict=True):
        assert {k: v for k, v in a.items() if k not in fields} == {
            k: v for k, v in b.items() if k not in fields
        }
        for f in fields:
            if f == "ntps_paper" and a["paper_degenerate"]:
                continue  # arbitrary basis (its value is not determined by the statistics)
            scale = max(abs(a[f]), 1e-300)
            assert abs(a[f] - b[f]) <= 10 * sensitivity[f] + 1e-14 * scale, (f, a, b)
        assert abs(a["ntps_reg"] - b["ntps_reg"]) < 1e-7
