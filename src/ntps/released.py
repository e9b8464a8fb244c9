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
        ``U = solve(Cxy Cxy^T, Cxx)``, ``V = solve(S1 S1^T, S0)``, ``U_k = U[:, :k_U]``,
        ``V_k = V[:, :k_V]`` and ``P_k = V_k pinv(V_k)``.
    """
    u = released_solve(cxy @ cxy.T, cxx)
    v = released_solve(s1 @ s1.T, s0)
    out = []
    for k_spec in k_grid:
        k_u, k_v = released_k(k_spec, u.shape[1]), released_k(k_spec, v.shape[1])
        if k_u == 0 or k_v == 0:
            out.append(math.nan)
            continue
        u_k, v_k = u[:, :k_u], v[:, :k_v]
        projector = v_k @ np.linalg.pinv(v_k)
        out.append(float(np.square(projector @ u_k).sum() / np.square(u_k).sum()))
    return out


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
