"""The released NTPS code's scoring procedure, reproduced for comparison (docs/method.md section 7).

The authors' numbers (~0.85-0.95 per pair in the paper) come from this procedure, not from the
top-k score of :mod:`ntps.scores`. It differs in three ways that matter:

- all four matrices are float32 numpy arrays;
- ``solve(A, B)`` whitens B with an ABSOLUTE cut-off (eigenvalues > 1e-8) and never reorders
  scipy's ascending eigenvalues, so the first columns are the SMALLEST generalized eigenvectors;
- k is ``int(f * number of columns)`` separately for U and V (truncation: small f can give k = 0,
  and then the score is NaN).

The smallest perception eigenvectors lie in the null space of the whitened ``Cxy Cxy^T`` (rank <= c,
so r - c eigenvalues are exactly zero), and float32 rounding decides their order and basis; the
smallest next-token eigenvalues and Cxx's and S0's smallest eigenpairs are below float32 precision
as well. The values therefore depend on the LAPACK driver, the BLAS thread count and the last bit
of the inputs, and are not reproducible across machines or libraries. They are reported as
``ntps_released``, never as the headline, with their rounding spread
(:func:`released_rounding_scores`, :func:`rounding_spread`): the same procedure on seeded random
float32 roundings of the same float64 statistics.

The projector ``P_k = V_k pinv(V_k)``: the released code forms it with one float32 pseudo-inverse
per k. It is the orthogonal projector onto the span of V_k's singular vectors above pinv's cut-off
(1e-15 x the largest singular value), and ``span V[:, :k]`` is nested in k, so here one block
Gram-Schmidt of V (float64, twice, columns in the released order; no pivoting, which would break
the nesting) gives every k at once (:func:`nested_projection_scores`). Directions are dropped as
pinv drops them: each new block's residual goes through an SVD and singular values at most
``max(d, k) * eps64 * ||V_k||_F`` count as zero (numpy's array-API pinv cut-off, with the
Frobenius norm bounding the largest singular value from above; 1e-15 itself is at float64's own
rounding of a d-term sum, so exact dependencies would fall on either side of it). V's singular
values are ``b^(-1/2)`` over the kept eigenvalues b of S0 (Q_r and Y orthonormal), so its
condition number is at most ``sqrt(b_max / 1e-8)``; on the default study's statistics it is at most
3e4 (SmolLM2-135M) and 9e4 (Gemma-3-270M) and nothing is dropped: the cut-off only matters for an
exactly rank-deficient V_k, which the procedure does not produce. Float64 rather than float32:
V is cast exactly, and the float32 ``V_k pinv(V_k)`` carries an error up to ``eps32 cond(V_k)``
that the float64 basis does not, at a cost of milliseconds at d = 576-640. The values agree with
the per-k float32 pinv to 7.4e-7 on every layer and k of the default study, far inside the
rounding spread (docs/method.md section 7).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from torch import Tensor

from ntps.errors import ConfigError

#: The released code's absolute eigenvalue cut-off when whitening B.
RELEASED_CUTOFF = 1e-8

#: Default number of random float32 roundings behind the spread (``scoring.released_roundings``).
DEFAULT_ROUNDINGS = 16


@dataclass(frozen=True)
class RoundingSpread:
    """Where and how to compute the released column's rounding spread.

    ``n_roundings`` random roundings (0: none) from ``seed``, at the hidden state ``layer`` (a
    layer spec as in the config: index, or fraction of depth; None: every layer) and the k of the
    grid in ``k`` (None: every k). :func:`ntps.stages.score.score_pair` resolves the layer;
    :func:`ntps.scores.score_layer` selects the k.
    """

    n_roundings: int = DEFAULT_ROUNDINGS
    seed: int = 0
    layer: int | float | None = None
    k: tuple[int | float, ...] | None = None

    def covers_k(self, k_spec: int | float) -> bool:
        """Whether the spread is wanted at ``k_spec`` (an int matches an int, a fraction a float)."""
        if self.k is None:
            return True
        return any(_same_k(k_spec, other) for other in self.k)


def _is_int(k: object) -> bool:
    return isinstance(k, numbers.Integral) and not isinstance(k, bool)


def _same_k(a: int | float, b: int | float) -> bool:
    return _is_int(a) == _is_int(b) and float(a) == float(b)


def released_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Generalized eigenvectors of ``A x = lam B x`` as the released code orders them (ascending).

    Parameters
    ----------
    a, b : ndarray of shape (d, d), float32
        B positive semi-definite.

    Returns
    -------
    x : ndarray of shape (d, r), float32
        ``W Y`` with ``W = Q_r diag(b_r)^(-1/2)`` over B's eigenvalues > 1e-8 and Y the
        eigenvectors of ``W^T A W``, both from :func:`scipy.linalg.eigh` (default driver),
        columns in ASCENDING order of eigenvalue.
    """
    b_values, b_vectors = scipy.linalg.eigh(b)
    keep = b_values > RELEASED_CUTOFF
    w = b_vectors[:, keep] / np.sqrt(b_values[keep])
    _, y = scipy.linalg.eigh(w.T @ a @ w)
    return w @ y


def released_k(k_spec: int | float, n_columns: int) -> int:
    """``int(f * n_columns)`` for a fraction f (may be 0); an integer k clipped to the columns."""
    if _is_int(k_spec):
        return min(int(k_spec), n_columns)
    return int(float(k_spec) * n_columns)


def _nested_basis(v: np.ndarray, k_values: Sequence[int]) -> tuple[np.ndarray, dict[int, int]]:
    """An orthonormal basis of span(v) whose first n_k columns span ``v[:, :k]`` for each k given.

    Block Gram-Schmidt in float64 over the sorted k, twice for stability, with a rank-revealing
    SVD of each new block: a direction whose residual singular value is at most
    ``max(d, k) * eps64 * ||v[:, :k]||_F`` is numerically zero and dropped, as the pseudo-inverse
    drops singular values below its cut-off (module docstring). No column pivoting: it would
    break the nesting.

    Parameters
    ----------
    v : ndarray of shape (d, r), any float dtype (cast to float64 exactly)
    k_values : column counts in [0, r]

    Returns
    -------
    basis : ndarray of shape (d, n), float64, orthonormal columns
    n_of_k : dict k -> n_k, the number of basis columns spanning ``v[:, :k]`` (n_k <= k)
    """
    v64 = np.asarray(v, dtype=np.float64)
    d = v64.shape[0]
    eps = np.finfo(np.float64).eps
    col_norm2 = np.concatenate([[0.0], np.cumsum(np.square(v64).sum(axis=0))])
    basis = np.zeros((d, 0))
    n_of_k: dict[int, int] = {}
    prev = 0
    for k in sorted(set(k_values)):
        block = v64[:, prev:k]
        if block.shape[1]:
            for _ in range(2):
                block = block - basis @ (basis.T @ block)
            left, sv, _ = np.linalg.svd(block, full_matrices=False)
            tol = max(d, k) * eps * math.sqrt(col_norm2[k])
            new = left[:, sv > tol]
            if new.shape[1]:
                # One more projection keeps the new directions orthogonal to the old ones.
                new = new - basis @ (basis.T @ new)
                new, _ = np.linalg.qr(new)
                basis = np.concatenate([basis, new], axis=1)
        n_of_k[k] = basis.shape[1]
        prev = k
    return basis, n_of_k


def nested_projection_scores(
    u: np.ndarray, v: np.ndarray, k_pairs: Sequence[tuple[int, int]]
) -> list[float]:
    """``||P_k U[:, :k_u]||_F^2 / ||U[:, :k_u]||_F^2`` for each (k_u, k_v), P_k the projector
    onto span(V[:, :k_v]), from ONE nested orthonormalisation of V.

    With Q the nested basis of :func:`_nested_basis` (``span Q[:, :n] = span V[:, :k_v]``),
    ``||P_k U_k||_F^2`` is the sum of ``(Q^T U)^2`` over the first n rows and k_u columns, read for
    every pair from one 2-D cumulative sum. This equals ``V_k pinv(V_k) U_k`` up to rounding:
    ``V_k pinv(V_k)`` is the orthogonal projector onto the span of V_k's singular vectors above
    the cut-off.

    Parameters
    ----------
    u : ndarray of shape (d, r_u), any float dtype (cast to float64 exactly)
    v : ndarray of shape (d, r_v), any float dtype
    k_pairs : (k_u, k_v) with 0 <= k_u <= r_u, 0 <= k_v <= r_v

    Returns
    -------
    scores : list of float, one per pair; NaN where k_u or k_v is 0 (or U_k is zero).
    """
    u64 = np.asarray(u, dtype=np.float64)
    basis, n_of_k = _nested_basis(v, [kv for ku, kv in k_pairs if ku and kv])
    # explained[i, j] = ||Q[:, :i]^T U[:, :j]||_F^2, with a zero first row and column.
    explained = np.zeros((basis.shape[1] + 1, u64.shape[1] + 1))
    explained[1:, 1:] = np.square(basis.T @ u64).cumsum(axis=0).cumsum(axis=1)
    total = np.concatenate([[0.0], np.square(u64).sum(axis=0).cumsum()])
    out = []
    for k_u, k_v in k_pairs:
        if k_u == 0 or k_v == 0 or total[k_u] == 0:
            out.append(math.nan)
            continue
        # Rounding can push the projected norm a hair above the total: the ratio is <= 1.
        out.append(min(float(explained[n_of_k[k_v], k_u] / total[k_u]), 1.0))
    return out


def released_scores_float32(
    cxx: np.ndarray,
    cxy: np.ndarray,
    s0: np.ndarray,
    s1: np.ndarray,
    k_grid: Sequence[int | float],
) -> list[float]:
    """The released paper-form score for each k of ``k_grid`` from float32 statistics.

    Parameters
    ----------
    cxx : ndarray of shape (d, d), float32
    cxy : ndarray of shape (d, c), float32
    s0, s1 : ndarray of shape (d, d), float32

    Returns
    -------
    scores : list of float, one per k (NaN where a k is 0): ``||P_k U_k||_F^2 / ||U_k||_F^2`` with
        ``U = solve(Cxy Cxy^T, Cxx)``, ``V = solve(S1 S1^T, S0)`` (float32, :func:`released_solve`),
        ``U_k = U[:, :k_U]``, ``V_k = V[:, :k_V]`` and ``P_k = V_k pinv(V_k)``, the orthogonal
        projector onto span(V_k). The released code forms P_k with one float32 pseudo-inverse per
        k; here the projections come from one nested orthonormalisation of V in float64
        (:func:`nested_projection_scores`): the same projector without the float32 error of
        ``V_k pinv(V_k)`` (docs/method.md section 7).
    """
    u = released_solve(cxy @ cxy.T, cxx)
    v = released_solve(s1 @ s1.T, s0)
    pairs = [(released_k(k, u.shape[1]), released_k(k, v.shape[1])) for k in k_grid]
    return nested_projection_scores(u, v, pairs)


def released_scores(
    cxx: Tensor, cxy: Tensor, s0: Tensor, s1: Tensor, k_grid: Sequence[int | float]
) -> list[float]:
    """The released paper-form score for each k of ``k_grid`` (NaN where a k is 0).

    Parameters
    ----------
    cxx : Tensor of shape (d, d)
    cxy : Tensor of shape (d, c)
    s0, s1 : Tensor of shape (d, d)
        Normalised moments (as :class:`ntps.stats.LayerMoments` holds them), cast to float32 by
        rounding to nearest, as the released code does; see :func:`released_scores_float32`.
    """
    return released_scores_float32(
        *(x.detach().cpu().numpy().astype(np.float32) for x in (cxx, cxy, s0, s1)), k_grid
    )


def stochastic_float32(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x`` rounded at random to one of its two float32 neighbours, without bias.

    Parameters
    ----------
    x : ndarray, float64
    rng : numpy Generator

    Returns
    -------
    rounded : ndarray of x's shape, float32
        Each entry is the float32 number just below or just above it, with probabilities
        proportional to closeness (so its expectation is x); float32 numbers stay as they are.
    """
    nearest = x.astype(np.float32)
    toward = np.where(nearest.astype(np.float64) < x, np.inf, -np.inf).astype(np.float32)
    other = np.nextafter(nearest, toward)
    gap = np.abs(other.astype(np.float64) - nearest.astype(np.float64))
    p_other = np.divide(
        np.abs(x - nearest.astype(np.float64)), gap, out=np.zeros(x.shape), where=gap > 0
    )
    return np.where(rng.random(x.shape) < p_other, other, nearest)


def _stochastic_symmetric(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """:func:`stochastic_float32` of a symmetric matrix: its lower triangle, mirrored."""
    rounded = stochastic_float32(x, rng)
    return np.tril(rounded) + np.tril(rounded, -1).T


def released_rounding_scores(
    cxx: Tensor,
    cxy: Tensor,
    s0: Tensor,
    s1: Tensor,
    k_grid: Sequence[int | float],
    *,
    n_roundings: int = DEFAULT_ROUNDINGS,
    seed: int = 0,
) -> np.ndarray:
    """The released scores on ``n_roundings`` random float32 roundings of the same statistics.

    Each rounding draws every entry of the four float64 moments to one of its two float32
    neighbours (:func:`stochastic_float32`; Cxx and S0 stay symmetric) and runs the released
    procedure on them. Each is within one float32 step of the statistics (rounding to nearest:
    half a step); the output moves because the float32 eigendecompositions settle the perception
    null space, the smallest eigenpairs of Cxx and S0 and the smallest next-token eigenvalues by
    rounding (docs/method.md section 7), as it moves with the BLAS thread count.

    Parameters
    ----------
    cxx : Tensor of shape (d, d)
    cxy : Tensor of shape (d, c)
    s0, s1 : Tensor of shape (d, d)
        Normalised float64 moments.
    k_grid : the k specs, as for :func:`released_scores`.
    n_roundings, seed : how many roundings, from which seed (numpy ``default_rng``).

    Returns
    -------
    scores : ndarray of shape (n_roundings, len(k_grid)), float64
        NaN where a k is 0.
    """
    if n_roundings < 0:
        raise ConfigError(f"scoring.released_roundings must be >= 0, got {n_roundings}")
    rng = np.random.default_rng(seed)
    cxx64, cxy64, s0_64, s1_64 = (x.detach().cpu().double().numpy() for x in (cxx, cxy, s0, s1))
    out = np.full((n_roundings, len(k_grid)), np.nan)
    for i in range(n_roundings):
        rounded = (
            _stochastic_symmetric(cxx64, rng),
            stochastic_float32(cxy64, rng),
            _stochastic_symmetric(s0_64, rng),
            stochastic_float32(s1_64, rng),
        )
        out[i] = released_scores_float32(*rounded, k_grid)
    return out


def rounding_spread(
    nearest: Sequence[float], rounded: np.ndarray
) -> list[tuple[float, float, float]]:
    """Per k: (min, max, SD) of the released score over all roundings.

    Parameters
    ----------
    nearest : sequence of float, length n_k
        :func:`released_scores` (rounding to nearest, the ``ntps_released`` column).
    rounded : ndarray of shape (R, n_k)
        :func:`released_rounding_scores`.

    Returns
    -------
    spread : list of (min, max, sd) per k over the R + 1 values, finite ones only (sample SD,
        ddof = 1); NaN where none is finite (SD: fewer than two).
    """
    values = np.vstack([np.asarray(nearest, dtype=float)[None, :], np.asarray(rounded, float)])
    out = []
    for column in values.T:
        finite = column[np.isfinite(column)]
        if finite.size == 0:
            out.append((math.nan, math.nan, math.nan))
            continue
        sd = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        out.append((float(finite.min()), float(finite.max()), sd))
    return out
