"""Generalized symmetric eigenproblems ``A x = lam B x`` with B positive SEMI-definite.

The solver whitens B on its numerical range (eigenvalues above ``rtol`` times the largest) and
eigendecomposes the whitened A; eigenvalues come back in DESCENDING order (scipy/LAPACK return them
ascending, which is what misled the released NTPS code into using the smallest eigenvectors).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ntps.errors import NumericalError


class Whitener(NamedTuple):
    """Retained eigenpairs of a PSD matrix B: ``B ~= vectors @ diag(values) @ vectors.T``."""

    values: Tensor  # (r,) retained eigenvalues, ascending, all > rtol * max
    vectors: Tensor  # (d, r) orthonormal eigenvectors
    max_value: float  # largest eigenvalue of B (the tolerance reference)
    min_value: float  # smallest eigenvalue of B over all d (may be ~0 or slightly negative)

    @property
    def rank(self) -> int:
        return int(self.values.shape[0])

    @property
    def matrix(self) -> Tensor:
        """W = Q_r diag(b_r)^(-1/2), so that W^T B W = I_r."""
        return self.vectors / self.values.sqrt()


def symmetrize(a: Tensor) -> Tensor:
    """Return (a + a^T)/2 in float64: accumulated sums are symmetric only up to rounding."""
    a = a.to(torch.float64)
    return (a + a.T) * 0.5


def whitener(b: Tensor, *, rtol: float = 1e-10) -> Whitener:
    """Eigendecompose symmetric PSD ``b`` and keep eigenvalues > ``rtol`` * largest eigenvalue."""
    if b.ndim != 2 or b.shape[0] != b.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(b.shape)}")
    values, vectors = torch.linalg.eigh(symmetrize(b))
    max_value = float(values[-1]) if values.numel() else 0.0
    min_value = float(values[0]) if values.numel() else 0.0
    if not max_value > 0.0 or not torch.isfinite(values).all():
        # No positive direction at all: nothing to whiten (e.g. an all-zero covariance).
        keep = torch.zeros_like(values, dtype=torch.bool)
    else:
        keep = values > rtol * max_value
    return Whitener(values[keep], vectors[:, keep], max_value, min_value)


def _descending(lam: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    return lam.flip(0), y.flip(1)


def generalized_eigh_whitened(a: Tensor, w: Whitener) -> tuple[Tensor, Tensor]:
    """Solve ``A x = lam B x`` given B's :class:`Whitener`; eigenvalues descending.

    Returns ``(lam (r,), X (d, r))`` with ``X^T B X = I_r`` on B's retained range.
    """
    if w.rank == 0:
        d = a.shape[0]
        return a.new_zeros(0, dtype=torch.float64), a.new_zeros(d, 0, dtype=torch.float64)
    wm = w.matrix
    lam, y = torch.linalg.eigh(symmetrize(wm.T @ symmetrize(a) @ wm))
    lam, y = _descending(lam, y)
    return lam, wm @ y


def generalized_eigh_factored(f: Tensor, w: Whitener) -> tuple[Tensor, Tensor]:
    """Dense solve of ``F F^T x = lam B x`` given B's :class:`Whitener`, without forming F F^T.

    ``W^T F F^T W = M M^T`` with ``M = W^T F``: one GEMM fewer than :func:`generalized_eigh`
    (used for the autoregressive problem, F = S1). Eigenvalues descending.
    """
    if w.rank == 0:
        d = f.shape[0]
        return f.new_zeros(0, dtype=torch.float64), f.new_zeros(d, 0, dtype=torch.float64)
    wm = w.matrix
    m = wm.T @ f.to(torch.float64)
    lam, y = torch.linalg.eigh(symmetrize(m @ m.T))
    lam, y = _descending(lam, y)
    return lam, wm @ y


def generalized_eigh(a: Tensor, b: Tensor, *, rtol: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Generalized symmetric eigenproblem ``A x = lam B x``, B PSD and possibly singular.

    Keeps B's eigenvalues > ``rtol`` * largest (rank r), whitens with ``W = Q_r diag(b_r)^(-1/2)``,
    eigendecomposes ``W^T A W = Y diag(lam) Y^T`` and returns ``(lam, X = W Y)``: eigenvalues
    (r,) in DESCENDING order and eigenvectors (d, r), float64 on the input's device.
    """
    if a.shape != b.shape:
        raise ValueError(
            f"A and B must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return generalized_eigh_whitened(a, whitener(b, rtol=rtol))


def generalized_eigh_released_order(
    a: Tensor, b: Tensor, *, rtol: float = 1e-10
) -> tuple[Tensor, Tensor]:
    """Compatibility only: same eigenpairs as :func:`generalized_eigh` in ASCENDING order.

    This is the ordering of scipy's ``eigh`` that the released NTPS code sliced from the front,
    i.e. it used the SMALLEST generalized eigenvectors. Do not use it for the score.
    """
    lam, x = generalized_eigh(a, b, rtol=rtol)
    return lam.flip(0), x.flip(1)


def generalized_eigh_lowrank(
    f: Tensor, w: Whitener, *, rtol: float = 1e-10
) -> tuple[Tensor, Tensor, int]:
    """Fast path for ``A = F F^T`` with F (d, c), c small (the perception problem, F = Cxy).

    ``W^T A W = M M^T`` with ``M = W^T F`` (r, c): its non-zero eigenpairs come from the thin SVD
    of M; the remaining r - c eigenvalues are exactly zero and their eigenspace is completed with an
    (arbitrary but deterministic) orthonormal complement from a complete QR. Returns
    ``(lam (r,) descending, X (d, r), n_nonzero)``; columns beyond ``n_nonzero`` span the degenerate
    eigenspace, so only the first ``n_nonzero`` agree with the dense solver column by column.
    """
    r = w.rank
    if r == 0:
        d = f.shape[0]
        return f.new_zeros(0, dtype=torch.float64), f.new_zeros(d, 0, dtype=torch.float64), 0
    wm = w.matrix
    m = wm.T @ f.to(torch.float64)  # (r, c)
    y_c, sv, _ = torch.linalg.svd(m, full_matrices=False)  # sv descending
    lam_c = sv.square()
    n_c = y_c.shape[1]
    if n_c < r:
        q_full, _ = torch.linalg.qr(y_c, mode="complete")
        y = torch.cat([y_c, q_full[:, n_c:]], dim=1)
        lam = torch.cat([lam_c, lam_c.new_zeros(r - n_c)])
    else:
        y, lam = y_c, lam_c
    top = float(lam[0]) if lam.numel() else 0.0
    n_nonzero = int((lam > rtol * top).sum()) if top > 0 else 0
    return lam, wm @ y, n_nonzero


def count_nonzero(lam: Tensor, *, rtol: float = 1e-10) -> int:
    """Number of eigenvalues > ``rtol`` * the largest (0 if none is positive)."""
    if lam.numel() == 0:
        return 0
    top = float(lam.max())
    if not top > 0.0:
        return 0
    return int((lam > rtol * top).sum())


def check_finite(x: Tensor, what: str) -> None:
    """Raise :class:`NumericalError` if ``x`` holds NaN/inf; ``what`` names the matrix and layer."""
    if not bool(torch.isfinite(x).all()):
        raise NumericalError(
            f"{what} contains NaN or inf; recompute the statistics in float32/bf16"
        )
