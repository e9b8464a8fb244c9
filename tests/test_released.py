"""The released convention's rounding spread: random float32 roundings of the same statistics.

Where the released procedure's first columns come from a degenerate eigenspace (the null space of
the whitened Cxy Cxy^T, of dimension r - c), float32 rounding picks them and the value moves between
equally faithful roundings; where the chosen columns are determined (a one-dimensional null space,
or k beyond it), it does not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ntps.errors import ConfigError
from ntps.released import (
    RoundingSpread,
    nested_projection_scores,
    released_k,
    released_rounding_scores,
    released_scores,
    released_scores_float32,
    released_solve,
    rounding_spread,
    stochastic_float32,
)
from ntps.scores import score_layer
from ntps.stats import LayerMoments

F64 = torch.float64


def synthetic_moments(d: int, c: int, n: int = 400, seed: int = 0) -> LayerMoments:
    """Well-conditioned moments of n random texts: d features, c classes, a random next-token map."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d))
    y = np.eye(c)[g.integers(0, c, n)]
    h = g.normal(size=(n, d))
    target = h @ g.normal(size=(d, d)) / np.sqrt(d) + g.normal(size=(n, d))
    cxx, cxy = x.T @ x / n, x.T @ y / n
    s0, s1 = h.T @ h / n, h.T @ target / n
    return LayerMoments(
        cxx=torch.from_numpy(cxx),
        cxy=torch.from_numpy(cxy),
        s0=torch.from_numpy(s0),
        s1=torch.from_numpy(s1),
        x_mean=torch.from_numpy(x.mean(0)),
        y_mean=torch.from_numpy(y.mean(0)),
        n_examples=n,
        n_pairs=10 * n,
        layer=0,
    )


def spread_of(m: LayerMoments, k_grid, n_roundings: int = 12, seed: int = 0) -> np.ndarray:
    """max - min of the released score per k over the nearest and n_roundings random roundings."""
    nearest = released_scores(m.cxx, m.cxy, m.s0, m.s1, k_grid)
    rounded = released_rounding_scores(
        m.cxx, m.cxy, m.s0, m.s1, k_grid, n_roundings=n_roundings, seed=seed
    )
    return np.array([high - low for low, high, _ in rounding_spread(nearest, rounded)])


def test_stochastic_rounding_picks_a_float32_neighbour_without_bias() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=2000) * 10.0 ** rng.integers(-6, 6, size=2000)
    rounded = stochastic_float32(x, rng)
    assert rounded.dtype == np.float32
    below = np.nextafter(x.astype(np.float32), np.float32(-np.inf))
    above = np.nextafter(x.astype(np.float32), np.float32(np.inf))
    nearest = x.astype(np.float32)
    assert np.all((rounded == nearest) | (rounded == below) | (rounded == above))
    # Each result brackets x with its float32 neighbour: never more than one float32 step away.
    assert np.all(np.abs(rounded.astype(np.float64) - x) <= np.spacing(np.abs(rounded)) * 1.0001)
    # Unbiased: 0.1 rounds up with probability p and down with 1 - p, and the mean is 0.1.
    many = stochastic_float32(np.full(40000, 0.1), rng).astype(np.float64)
    assert set(np.unique(many)) == {float(np.float32(0.1)), float(np.nextafter(np.float32(0.1), 0))}
    spacing = float(np.spacing(np.float32(0.1)))
    assert abs(many.mean() - 0.1) < 0.02 * spacing
    # Numbers that are float32 already stay as they are.
    exact = np.array([0.5, -3.0, 1024.0, 0.0])
    assert np.array_equal(stochastic_float32(exact, rng), exact.astype(np.float32))


def test_value_is_the_same_for_every_rounding_when_the_columns_are_determined() -> None:
    # d = 8, c = 7: the null space of the whitened Cxy Cxy^T is one-dimensional, so k = 1 picks
    # its one vector (up to sign), whatever the rounding; with c = 40 of d = 48 the null space has
    # 8 dimensions and k_U = int(0.5 * 48) = 24 takes all of them, in whatever basis.
    one_dim = spread_of(synthetic_moments(8, 7), [1])
    covered = spread_of(synthetic_moments(48, 40), [0.5])
    assert one_dim.max() < 1e-4 and covered.max() < 1e-4


def test_value_depends_on_the_rounding_inside_a_degenerate_null_space() -> None:
    # d = 32, c = 2: a 30-dimensional null space; k_U = 8 of its vectors, chosen by rounding.
    m = synthetic_moments(32, 2)
    spread = spread_of(m, [0.25, 0.5])
    assert spread.min() > 0.02
    # The nearest rounding (the ntps_released column) is one of the values the spread covers.
    nearest = released_scores(m.cxx, m.cxy, m.s0, m.s1, [0.25])
    rounded = released_rounding_scores(m.cxx, m.cxy, m.s0, m.s1, [0.25], n_roundings=4)
    ((low, high, sd),) = rounding_spread(nearest, rounded)
    assert low <= nearest[0] <= high and sd > 0
    assert np.isclose(sd, np.std(np.concatenate([nearest, rounded[:, 0]]), ddof=1))


def test_roundings_are_seeded() -> None:
    m = synthetic_moments(32, 2)
    args = (m.cxx, m.cxy, m.s0, m.s1, [0.25, 2])

    def draw(seed: int) -> np.ndarray:
        return released_rounding_scores(*args, n_roundings=3, seed=seed)

    first = draw(7)
    assert first.shape == (3, 2)
    assert np.array_equal(first, draw(7))
    assert not np.array_equal(first, draw(8))
    assert released_rounding_scores(*args, n_roundings=0).shape == (0, 2)
    with pytest.raises(ConfigError, match="released_roundings"):
        released_rounding_scores(*args, n_roundings=-1)


def test_spread_ignores_non_finite_values_and_needs_two_for_an_sd() -> None:
    spread = rounding_spread([math.nan, 0.4, 0.5], np.array([[math.nan, 0.2, math.nan]]))
    assert all(math.isnan(v) for v in spread[0])
    assert spread[1] == (0.2, 0.4, pytest.approx(np.std([0.4, 0.2], ddof=1)))
    assert spread[2][:2] == (0.5, 0.5) and math.isnan(spread[2][2])


def test_score_layer_records_the_spread_only_where_asked() -> None:
    m = synthetic_moments(32, 2)
    grid = [0.25, 0.5, 2]
    plain = score_layer(m, grid)
    assert all(r["released_roundings"] == 0 for r in plain)
    assert all(math.isnan(r[f"ntps_released_{s}"]) for r in plain for s in ("min", "max", "sd"))
    spread = RoundingSpread(n_roundings=5, seed=1, k=(0.5,))
    records = score_layer(m, grid, rounding_spread=spread)
    at = [r for r in records if r["k_spec"] == 0.5]
    assert len(at) == 1 and at[0]["released_roundings"] == 5
    assert at[0]["ntps_released_min"] <= at[0]["ntps_released"] <= at[0]["ntps_released_max"]
    assert at[0]["ntps_released_sd"] > 0
    # Every other field, and every other row, as without the spread.
    spread_keys = (
        "ntps_released_min",
        "ntps_released_max",
        "ntps_released_sd",
        "released_roundings",
    )
    for a, b in zip(plain, records, strict=True):
        assert {k: v for k, v in a.items() if k not in spread_keys} == {
            k: v for k, v in b.items() if k not in spread_keys
        }
        if b["k_spec"] != 0.5:
            assert b["released_roundings"] == 0 and math.isnan(b["ntps_released_min"])
    # An integer k matches an integer, not the fraction of the same value; no released, no spread.
    assert RoundingSpread(k=(2,)).covers_k(2) and not RoundingSpread(k=(2,)).covers_k(2.0)
    bare = score_layer(m, grid, released=False, rounding_spread=spread)
    assert all(r["released_roundings"] == 0 and math.isnan(r["ntps_released"]) for r in bare)


def test_the_summary_shows_the_released_value_with_its_range() -> None:
    import pandas as pd

    from ntps.summary import _released_spread_text, with_released_spread

    table = pd.DataFrame(
        {
            "dataset": ["a", "b"],
            "ntps_released": [0.4106, 0.45],
            "ntps_released_min": [0.4094, math.nan],
            "ntps_released_max": [0.4601, math.nan],
            "ntps_released_sd": [0.014, math.nan],
        }
    )
    view = with_released_spread(table)
    assert list(view.columns) == ["dataset", "ntps_released"]
    assert list(view["ntps_released"]) == ["0.41 (0.41-0.46)", "0.450"]
    scores = pd.DataFrame({"released_roundings": [0, 16, 0]})
    assert "16 seeded random float32" in _released_spread_text(scores)
    assert _released_spread_text(scores.iloc[[0]]) == ""


def pinv_score(u: np.ndarray, v: np.ndarray, k_u: int, k_v: int, rcond: float = 1e-15) -> float:
    """The released closed form: ``||V_k pinv(V_k) U_k||_F^2 / ||U_k||_F^2``."""
    u_k, v_k = u[:, :k_u], v[:, :k_v]
    projector = v_k @ np.linalg.pinv(v_k, rcond=rcond)
    return float(np.square(projector @ u_k).sum() / np.square(u_k).sum())


def test_nested_projection_equals_the_pinv_projector() -> None:
    # Columns scaled over four orders of magnitude, as V = W Y is (W = Q_r diag(b)^(-1/2)), yet
    # well conditioned in float64; the inputs are float32 numbers, as the released procedure's.
    g = np.random.default_rng(3)
    d = 40
    u = (g.normal(size=(d, 30)) * 10.0 ** g.uniform(-2, 2, 30)).astype(np.float32)
    v = (g.normal(size=(d, d)) * 10.0 ** g.uniform(-2, 2, d)).astype(np.float32)
    pairs = [(1, 1), (3, 7), (30, 2), (12, 12), (5, 36), (30, 39), (0, 4), (4, 0), (7, 7)]
    got = nested_projection_scores(u, v, pairs)
    for (k_u, k_v), value in zip(pairs, got, strict=True):
        if k_u == 0 or k_v == 0:
            assert math.isnan(value)
            continue
        expected = pinv_score(u.astype(np.float64), v.astype(np.float64), k_u, k_v)
        assert value == pytest.approx(expected, abs=1e-10)
    # k_V = d: V_k spans R^d and every U_k lies in it.
    assert nested_projection_scores(u, v, [(30, d)])[0] == pytest.approx(1.0, abs=1e-12)


def test_released_scores_match_the_float32_pinv_loop() -> None:
    # The released code's own loop (float32 pinv per k) on the same U and V: equal up to float32
    # rounding of V_k pinv(V_k) on well-conditioned statistics.
    m = synthetic_moments(24, 3)
    cxx, cxy, s0, s1 = (x.numpy().astype(np.float32) for x in (m.cxx, m.cxy, m.s0, m.s1))
    grid = [0.05, 0.25, 0.5, 0.95, 1, 4]
    u = released_solve(cxy @ cxy.T, cxx)
    v = released_solve(s1 @ s1.T, s0)
    got = released_scores_float32(cxx, cxy, s0, s1, grid)
    for k_spec, value in zip(grid, got, strict=True):
        k_u, k_v = released_k(k_spec, u.shape[1]), released_k(k_spec, v.shape[1])
        if k_u == 0 or k_v == 0:
            assert math.isnan(value)
            continue
        assert value == pytest.approx(pinv_score(u, v, k_u, k_v), abs=1e-5)


def test_nested_projection_drops_the_directions_pinv_drops() -> None:
    # V_k rank deficient: a zero column, an exact duplicate and an exact sum of earlier columns
    # (exact in float32: small integers). pinv's cut-off drops their zero singular values, so
    # P_k projects onto the span of the independent columns; the nested basis must not add a
    # direction for them, nor let a later column's component along a dropped one be lost.
    g = np.random.default_rng(5)
    d = 12
    base = g.integers(-4, 5, size=(d, 6)).astype(np.float32)
    v = np.column_stack(
        [
            base[:, 0],
            np.zeros(d, np.float32),  # zero
            base[:, 1],
            base[:, 0],  # duplicate
            base[:, 0] + base[:, 1],  # sum
            base[:, 2],
            base[:, 3],
            base[:, 2] - 2 * base[:, 3],  # combination, in the same block as its parts
            base[:, 4],
            base[:, 5],
        ]
    )
    u = g.normal(size=(d, 8)).astype(np.float32)
    pairs = [(k_u, k_v) for k_u in (1, 3, 8) for k_v in (1, 2, 4, 5, 8, 9, 10)]
    got = nested_projection_scores(u, v, pairs)
    independent = {1: [0], 2: [0], 4: [0, 2], 5: [0, 2], 8: [0, 2, 5, 6], 9: [0, 2, 5, 6, 8]}
    independent[10] = [*independent[9], 9]
    u64, v64 = u.astype(np.float64), v.astype(np.float64)
    for (k_u, k_v), value in zip(pairs, got, strict=True):
        # The closed form on the independent columns alone, and pinv of V_k with a cut-off
        # clear of float64 rounding: the same projector.
        q, _ = np.linalg.qr(v64[:, independent[k_v]])
        u_k = u64[:, :k_u]
        expected = float(np.square(q.T @ u_k).sum() / np.square(u_k).sum())
        assert value == pytest.approx(expected, abs=1e-12)
        assert value == pytest.approx(pinv_score(u64, v64, k_u, k_v, rcond=1e-10), abs=1e-12)
