"""The released NTPS code's scoring procedure, reproduced for comparison (docs/method.md section 7).

The authors' numbers (~0.85-0.95 per pair in the paper) come from this procedure, not from the
top-k score of :mod:`ntps.scores`. It differs in three ways that matter:

- all four matrices are float32 numpy arrays;
- ``solve(A, B)`` whitens B with an ABSOLUTE cut-off (eigenvalues > 1e-8) and never reorders
  scipy's ascending eigenvalues, so the first columns are the SMALLEST generalized eigenvectors;
- k is ``int(f * number of columns)`` separately for U and V (truncation: small f can give k = 0,
  and then the score is NaN).

The smallest perception eigenvectors span Cxx's numerical null space, whose basis is whatever the
LAPACK driver returns: the values depend on the driver (scipy's default ``evr`` here) and are not
reproducible across libraries. They are reported as ``ntps_released``, never as the headline.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import scipy.linalg
from torch import Tensor

#: The released code's absolute eigenvalue cut-off when whitening B.
RELEASED_CUTOFF = 1e-8


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
    if isinstance(k_spec, numbers.Integral) and not isinstance(k_spec, bool):
        return min(int(k_spec), n_columns)
    return int(float(k_spec) * n_columns)


def released_scores(
    cxx: Tensor, cxy: Tensor, s0: Tensor, s1: Tensor, k_grid: Sequence[int | float]
) -> list[float]:
    """The released paper-form score for each k of ``k_grid`` (NaN where a k is 0).

    Parameters
    ----------
    cxx : Tensor of shape (d, d)
    cxy : Tensor of shape (d, c)
    s0, s1 : Tensor of shape (d, d)
        Normalised moments (as :class:`ntps.stats.LayerMoments` holds them); cast to float32.

    Returns
    -------
    scores : list of float, one per k: ``||P_k U_k||_F^2 / ||U_k||_F^2`` with
        ``U = solve(Cxy Cxy^T, Cxx)``, ``V = solve(S1 S1^T, S0)``, ``U_k = U[:, :k_U]``,
        ``V_k = V[:, :k_V]`` and ``P_k = V_k pinv(V_k)``.
    """
    cxx32, cxy32, s0_32, s1_32 = (
        x.detach().cpu().numpy().astype(np.float32) for x in (cxx, cxy, s0, s1)
    )
    u = released_solve(cxy32 @ cxy32.T, cxx32)
    v = released_solve(s1_32 @ s1_32.T, s0_32)
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
