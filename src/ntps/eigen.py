"""Generalized symmetric eigenproblems ``A x = lam B x`` with B positive SEMI-definite.

The solver whitens B on its numerical range and eigendecomposes the whitened A; eigenvalues come
back in DESCENDING order (scipy/LAPACK return them ascending, which is what misled the released NTPS
code into using the smallest eigenvectors).

B is whitened in Jacobi-scaled coordinates, ``B' = D^-1 B D^-1`` with ``D = sqrt(diag B)`` (unit
diagonal). LLM hidden states have a few "massive" channels whose variance is 1e6 times the others',
so the raw B is graded: its condition number (1e8-1e9) is set by the channel scales, not by any
near-dependence, and a cut-off relative to its largest eigenvalue throws away well-determined
directions of the small channels. The rounding error of the statistics is elementwise relative
(``|dB_ij| <= eps sqrt(B_ii B_jj)``, the float32 GEMM error bound), i.e. ``|dB'_ij| <= eps`` in
scaled coordinates, so there an absolute cut-off on the eigenvalues of B' (``tol``, see
:func:`precision_cutoff`) separates determined directions from rounding noise. The generalized
eigenvalues and the subspaces do not depend on D (``A x = lam B x`` iff
``A' y = lam B' y`` with ``y = D x``); only which directions count as numerically zero does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ntps.errors import NumericalError

#: Unit roundoff of float32 and float64.
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def precision_cutoff(hidden_size: int, element_precision: float) -> float:
    """Eigenvalue cut-off in Jacobi-scaled coordinates for statistics of a given precision.

    ``element_precision`` eps bounds the elementwise relative error ``|dB_ij| / sqrt(B_ii B_jj)``.
    A symmetric d x d error matrix with entries of size eps and random signs has spectral norm
    about ``2 sqrt(d) eps`` (at most ``d eps``), and Weyl's inequality moves every eigenvalue of the
    scaled B' by at most that norm: eigenvalues below ``2 sqrt(d) eps`` are not determined by the
    data. Rounding errors of long sums behave like random signs.
    """
    if hidden_size < 1 or not element_precision > 0:
        raise ValueError(
            f"hidden_size must be >= 1 and element_precision > 0, got {hidden_size}, "
            f"{element_precision}"
        )
    return 2.0 * math.sqrt(hidden_size) * element_precision


class Whitener(NamedTuple):
    """Whitening of a PSD matrix B on its numerical range: ``matrix.T @ B @ matrix = I_r``.

    The rank r is decided in Jacobi-scaled coordinates (eigenvalues of ``B' = D^-1 B D^-1`` above
    ``tol``); ``matrix`` spans the Euclidean orthogonal complement of B's numerical null space, as
    the Moore-Penrose pseudo-inverse does, so ``matrix @ matrix.T`` is ``B^+`` on that range.
    """

    values: Tensor  # (r,) retained eigenvalues of the scaled B', ascending, all > tol
    matrix: Tensor  # (d, r) W with W^T B W = I_r, columns in range(B)
    source: Tensor  # (d, d) B itself (symmetrized, float64)

    @property
    def rank(self) -> int:
        return int(self.values.shape[0])

    @property
    def root(self) -> Tensor:
        """G = B W: ``B ~= G G^T`` on the retained range and ``W^T G = I_r``."""
        return self.source @ self.matrix


def symmetrize(a: Tensor) -> Tensor:
    """Return (a + a^T)/2 in float64: accumulated sums are symmetric only up to rounding."""
    a = a.to(torch.float64)
    return (a + a.T) * 0.5


def jacobi_scaled(b: Tensor) -> tuple[Tensor, Tensor]:
    """``(D^-1 B D^-1, D)`` with ``D = sqrt(diag B)``; rows/columns with diag <= 0 are left unscaled.

    A PSD matrix with a zero diagonal entry has that whole row and column zero, so leaving it
    unscaled keeps it an exact zero direction.
    """
    b = symmetrize(b)
    diag = b.diagonal()
    scale = torch.where(diag > 0, diag.clamp(min=0).sqrt(), torch.ones_like(diag))
    return symmetrize(b / scale[:, None] / scale[None, :]), scale


def _scaled_eigh(b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors of ``D^-1 B D^-1``, and D (see jacobi_scaled)."""
    scaled, scale = jacobi_scaled(b)
    values, vectors = torch.linalg.eigh(scaled)
    return values, vectors, scale


def whitener(b: Tensor, *, tol: float = 1e-10) -> Whitener:
    """Whiten symmetric PSD ``b`` on its numerical range; see :class:`Whitener`.

    ``tol`` is absolute on the unit-diagonal scaled matrix (trace d); see :func:`precision_cutoff`.
    Full rank (the usual case): one eigendecomposition. Rank-deficient: the scaled eigenvectors
    below ``tol`` give the null directions ``D^-1 q``; B is then whitened on their Euclidean
    complement (a second, smaller eigendecomposition), which keeps W W^T the Moore-Penrose inverse.
    """
    if b.ndim != 2 or b.shape[0] != b.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(b.shape)}")
    b = symmetrize(b)
    d = b.shape[0]
    values, vectors, scale = _scaled_eigh(b)
    if not (values.numel() and float(values[-1]) > 0.0) or not torch.isfinite(values).all():
        # No positive direction at all: nothing to whiten (e.g. an all-zero covariance).
        return Whitener(values[:0], b.new_zeros(d, 0), b)
    keep = values > tol
    if bool(keep.all()):
        return Whitener(values, vectors / values.sqrt() / scale[:, None], b)
    null = vectors[:, ~keep] / scale[:, None]
    q_full, _ = torch.linalg.qr(null, mode="complete")
    complement = q_full[:, null.shape[1] :]  # (d, r) orthonormal, orthogonal to the null space
    inner_values, inner_vectors, inner_scale = _scaled_eigh(complement.T @ b @ complement)
    # The complement excludes the null directions, so B is positive definite on it; the clamp only
    # guards against rounding of an eigenvalue that sat right at the cut-off.
    inner_values = inner_values.clamp(min=tol)
    matrix = complement @ (inner_vectors / inner_values.sqrt() / inner_scale[:, None])
    return Whitener(values[keep], matrix, b)


def cholesky_whitening(b: Tensor, *, tol: float = 1e-10) -> Tensor | None:
    """``W = D^-1 L^-T`` (d, d) with ``W^T B W = I`` when B is numerically full rank, else None.

    Full rank means what :func:`whitener` keeps: every eigenvalue of the scaled ``B' = L L^T``
    above ``tol``, i.e. ``B' - tol I`` positive definite, which its Cholesky factorisation decides
    without any eigenvalue. Any ``W`` with ``W^T B W = I`` gives the same generalized
    eigenvalues and, for simple eigenvalues, the same eigenvectors up to sign, so a solver that
    only needs the whitened problem (:func:`generalized_eigh_factored`) gets the same subspaces as
    with :func:`whitener`, at two Cholesky factorisations and one triangular solve (~5/3 d^3 flop)
    instead of an eigendecomposition with eigenvectors (~9 d^3). Not for the perception side,
    where the basis of the degenerate eigenspace (``ntps_paper`` beyond the non-zero eigenvalues)
    depends on ``W``.
    """
    if b.ndim != 2 or b.shape[0] != b.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(b.shape)}")
    scaled, scale = jacobi_scaled(b)
    eye = torch.eye(scaled.shape[0], dtype=scaled.dtype, device=scaled.device)
    _, info = torch.linalg.cholesky_ex(scaled - tol * eye)
    if int(info) != 0:  # an eigenvalue of B' at or below tol (or a zero row): not full rank
        return None
    lower, info = torch.linalg.cholesky_ex(scaled)
    if int(info) != 0:
        return None
    inv_lower = torch.linalg.solve_triangular(lower, eye, upper=False)  # L^-1
    return inv_lower.T / scale[:, None]


def whitening_matrix(b: Tensor, *, tol: float = 1e-10) -> Tensor:
    """W (d, r) with ``W^T B W = I_r`` on B's numerical range: :func:`cholesky_whitening` when B is
    numerically full rank (the usual case), else :func:`whitener` (rank decided the same way)."""
    w = cholesky_whitening(b, tol=tol)
    return whitener(b, tol=tol).matrix if w is None else w


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


def generalized_eigh_factored(f: Tensor, w: Whitener | Tensor) -> tuple[Tensor, Tensor]:
    """Dense solve of ``F F^T x = lam B x`` given B's :class:`Whitener`, without forming F F^T.

    ``W^T F F^T W = M M^T`` with ``M = W^T F``: one GEMM fewer than :func:`generalized_eigh`
    (used for the autoregressive problem, F = S1). ``w`` may also be the whitening matrix W
    (d, r) itself (:func:`whitening_matrix`). Eigenvalues descending.
    """
    wm = w.matrix if isinstance(w, Whitener) else w
    if wm.shape[1] == 0:
        d = f.shape[0]
        return f.new_zeros(0, dtype=torch.float64), f.new_zeros(d, 0, dtype=torch.float64)
    m = wm.T @ f.to(torch.float64)
    lam, y = torch.linalg.eigh(symmetrize(m @ m.T))
    lam, y = _descending(lam, y)
    return lam, wm @ y


def generalized_eigh(a: Tensor, b: Tensor, *, tol: float = 1e-10) -> tuple[Tensor, Tensor]:
    """Generalized symmetric eigenproblem ``A x = lam B x``, B PSD and possibly singular.

    Keeps the eigenvalues of B's Jacobi-scaled form > ``tol`` (rank r), whitens with
    ``W = D^-1 Q_r diag(b_r)^(-1/2)``,
    eigendecomposes ``W^T A W = Y diag(lam) Y^T`` and returns ``(lam, X = W Y)``: eigenvalues
    (r,) in DESCENDING order and eigenvectors (d, r), float64 on the input's device.
    """
    if a.shape != b.shape:
        raise ValueError(
            f"A and B must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return generalized_eigh_whitened(a, whitener(b, tol=tol))


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
    x = wm @ y_c
    if n_c < r:
        # The complement: columns n_c.. of the complete Householder Q of y_c (the Q that
        # torch.linalg.qr(y_c, mode="complete") forms), applied to W without forming the r x r Q:
        # O(d r c) instead of a d x r x r GEMM.
        reflectors, tau = torch.geqrf(y_c)
        complement = torch.ormqr(reflectors, tau, wm, left=False)[:, n_c:]
        x = torch.cat([x, complement], dim=1)
        lam = torch.cat([lam_c, lam_c.new_zeros(r - n_c)])
    else:
        lam = lam_c
    top = float(lam[0]) if lam.numel() else 0.0
    n_nonzero = int((lam > rtol * top).sum()) if top > 0 else 0
    return lam, x, n_nonzero


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
