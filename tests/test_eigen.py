"""Generalized eigen-solver: ordering, agreement with scipy, singular B, low-rank fast path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from ntps.eigen import (
    cholesky_whitening,
    generalized_eigh,
    generalized_eigh_factored,
    generalized_eigh_lowrank,
    generalized_eigh_whitened,
    jacobi_scaled,
    whitener,
    whitening_matrix,
)


def rand_psd(d, rank, seed, cond=10.0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    vals = torch.zeros(d, dtype=torch.float64)
    vals[:rank] = torch.logspace(0, np.log10(cond), rank, dtype=torch.float64)
    return (q * vals) @ q.T


def rand_sym(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_descending_and_agrees_with_scipy(seed):
    d = 12
    a, b = rand_sym(d, seed), rand_psd(d, d, seed + 100)
    lam, x = generalized_eigh(a, b)
    assert lam.shape == (d,) and x.shape == (d, d)
    assert bool((lam[:-1] >= lam[1:]).all()), "eigenvalues must be descending"
    ref_lam, ref_x = scipy.linalg.eigh(a.numpy(), b.numpy())  # ascending, X^T B X = I
    np.testing.assert_allclose(lam.numpy(), ref_lam[::-1], rtol=1e-9, atol=1e-9 * ref_lam.max())
    # Distinct eigenvalues: same eigenvectors up to sign, compared in the B inner product.
    overlap = x.numpy().T @ b.numpy() @ ref_x[:, ::-1]
    np.testing.assert_allclose(np.abs(np.diag(overlap)), 1.0, atol=1e-7)
    # Eigenspaces of the top-k: equal B-orthogonal projectors
    for k in (1, 4, 9):
        p1 = x[:, :k].numpy() @ x[:, :k].numpy().T
        p2 = ref_x[:, ::-1][:, :k] @ ref_x[:, ::-1][:, :k].T
        np.testing.assert_allclose(p1, p2, atol=1e-7 * np.abs(p2).max())


def test_b_orthonormal_and_equation():
    a, b = rand_sym(9, 5), rand_psd(9, 9, 6)
    lam, x = generalized_eigh(a, b)
    torch.testing.assert_close(x.T @ b @ x, torch.eye(9, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(a @ x, b @ x * lam, atol=1e-8 * float(a.abs().max()), rtol=0)


def test_rank_deficient_b():
    d, r = 10, 6
    a, b = rand_sym(d, 7), rand_psd(d, r, 8)
    lam, x = generalized_eigh(a, b)
    assert lam.shape == (r,) and x.shape == (d, r)
    assert bool(torch.isfinite(lam).all()) and bool(torch.isfinite(x).all())
    assert bool((lam[:-1] >= lam[1:]).all())
    # On B's range: Q_r Q_r^T A x = lam B x, and x lies in range(B).
    evals, evecs = torch.linalg.eigh(b)
    qr = evecs[:, evals > 1e-10 * evals.max()]
    assert qr.shape == (d, r) and whitener(b).rank == r
    proj = qr @ qr.T
    torch.testing.assert_close(proj @ a @ x, b @ x * lam, atol=1e-8 * float(a.abs().max()), rtol=0)
    torch.testing.assert_close(proj @ x, x, atol=1e-9, rtol=0)
    # When A's range lies in B's range the unprojected equation holds as well.
    a2 = b @ a @ b
    lam2, x2 = generalized_eigh(a2, b)
    torch.testing.assert_close(a2 @ x2, b @ x2 * lam2, atol=1e-8 * float(a2.abs().max()), rtol=0)
    # Zero B: nothing to return, no crash.
    lam0, x0 = generalized_eigh(a, torch.zeros(d, d, dtype=torch.float64))
    assert lam0.shape == (0,) and x0.shape == (d, 0)


def test_tolerance_is_on_the_jacobi_scaled_matrix():
    # Graded channel scales are not near-dependence: scaling makes this diagonal B the identity
    # (the zero channel stays zero), so no cut-off below 1 drops a channel.
    graded = torch.diag(torch.tensor([1.0, 1e-3, 1e-12, 0.0], dtype=torch.float64))
    assert whitener(graded, tol=1e-10).rank == 3
    assert whitener(graded, tol=0.5).rank == 3
    # Near-dependence is: two channels with correlation 1 - delta give scaled eigenvalues
    # 2 - delta and delta, whatever their scales.
    delta, scales = 1e-6, torch.tensor([1e3, 1e-3], dtype=torch.float64)
    corr = torch.tensor([[1.0, 1 - delta], [1 - delta, 1.0]], dtype=torch.float64)
    b = scales[:, None] * corr * scales[None, :]
    assert whitener(b, tol=1e-7).rank == 2
    assert whitener(b, tol=1e-5).rank == 1
    w = whitener(b, tol=1e-5)
    torch.testing.assert_close(w.matrix.T @ b @ w.matrix, torch.eye(1, dtype=torch.float64))
    # W W^T is the Moore-Penrose inverse of the rank-1 approximation: its columns lie in range(B)'s
    # Euclidean complement of the dropped direction, not in a D-weighted one.
    evals, evecs = torch.linalg.eigh(b)
    top = evecs[:, -1:]
    torch.testing.assert_close(w.matrix @ w.matrix.T, top @ top.T / evals[-1], rtol=1e-5, atol=0)


def test_float32_input_is_solved_in_float64():
    a, b = rand_sym(7, 9), rand_psd(7, 7, 10)
    lam, x = generalized_eigh(a.float(), b.float())
    assert lam.dtype == torch.float64 and x.device == a.device


@pytest.mark.parametrize("rank_b", [15, 11])
def test_lowrank_fast_path_matches_dense(rank_b):
    d, c = 15, 3
    g = torch.Generator().manual_seed(11)
    b = rand_psd(d, rank_b, 12)
    f = b @ torch.randn(d, c, generator=g, dtype=torch.float64)  # like Cxy, in range(Cxx)
    w = whitener(b)
    lam_d, x_d = generalized_eigh_whitened(f @ f.T, w)
    lam_f, x_f, n_nonzero = generalized_eigh_lowrank(f, w)
    assert n_nonzero == c and lam_f.shape == lam_d.shape == (rank_b,)
    torch.testing.assert_close(lam_f, lam_d, atol=1e-9 * float(lam_d[0]), rtol=0)
    overlap = x_f[:, :c].T @ b @ x_d[:, :c]
    torch.testing.assert_close(
        overlap.diag().abs(), torch.ones(c, dtype=torch.float64), atol=1e-8, rtol=0
    )
    # Degenerate columns: an orthonormal (in B) basis of the same eigenspace (B-orthogonal to the top c).
    torch.testing.assert_close(
        x_f.T @ b @ x_f, torch.eye(rank_b, dtype=torch.float64), atol=1e-9, rtol=0
    )
    assert float((f.T @ x_f[:, c:]).abs().max()) < 1e-8 * float(f.abs().max())


def test_factored_solver_matches_dense():
    g = torch.Generator().manual_seed(13)
    f = torch.randn(8, 8, generator=g, dtype=torch.float64)
    b = rand_psd(8, 8, 14)
    lam, x = generalized_eigh(f @ f.T, b)
    lam_f, x_f = generalized_eigh_factored(f, whitener(b))
    torch.testing.assert_close(lam_f, lam, rtol=1e-9, atol=1e-12)
    overlap = (x_f.T @ b @ x).diag().abs()
    torch.testing.assert_close(overlap, torch.ones(8, dtype=torch.float64), atol=1e-7, rtol=0)


# --- the Cholesky whitening of the autoregressive side ----------------------------------------


def graded_psd(d: int, seed: int) -> torch.Tensor:
    """Full-rank PSD with channel scales over 1e-1..1e3 (variance ratio 1e8), like S0."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 3, d, dtype=torch.float64)[torch.randperm(d, generator=g)]
    x = torch.randn(3 * d, d, generator=g, dtype=torch.float64) * scales
    return x.T @ x / (3 * d)


@pytest.mark.parametrize("seed", [0, 1])
def test_cholesky_whitening_whitens_and_gives_the_eigh_subspaces(seed):
    d = 40
    b = graded_psd(d, seed)
    g = torch.Generator().manual_seed(seed + 10)
    f = torch.randn(d, d, generator=g, dtype=torch.float64) * b.diagonal().sqrt()[:, None]
    w = cholesky_whitening(b, tol=1e-8)
    assert w is not None and w.shape == (d, d)
    torch.testing.assert_close(w.T @ b @ w, torch.eye(d, dtype=torch.float64), atol=1e-9, rtol=0)
    lam_c, x_c = generalized_eigh_factored(f, w)
    lam_e, x_e = generalized_eigh_factored(f, whitener(b, tol=1e-8))
    torch.testing.assert_close(lam_c, lam_e, rtol=1e-9, atol=1e-12 * float(lam_e[0]))
    # Simple eigenvalues: the same eigenvectors up to sign (B-normalised).
    overlap = (x_c.T @ b @ x_e).diag().abs()
    torch.testing.assert_close(overlap, torch.ones(d, dtype=torch.float64), atol=1e-7, rtol=0)


def test_cholesky_whitening_decides_full_rank_as_the_eigenvalue_cutoff_does():
    b = graded_psd(12, 3)
    lam_min = float(torch.linalg.eigvalsh(jacobi_scaled(b)[0])[0])
    # Just above and just below the smallest eigenvalue of the scaled matrix.
    assert cholesky_whitening(b, tol=0.99 * lam_min) is not None
    assert cholesky_whitening(b, tol=1.01 * lam_min) is None
    assert whitener(b, tol=0.99 * lam_min).rank == 12
    assert whitener(b, tol=1.01 * lam_min).rank == 11
    # Rank-deficient B: no Cholesky whitening; whitening_matrix falls back to the eigh route.
    singular = rand_psd(12, 9, 4)
    assert cholesky_whitening(singular, tol=1e-8) is None
    torch.testing.assert_close(
        whitening_matrix(singular, tol=1e-8), whitener(singular, tol=1e-8).matrix
    )
    assert whitening_matrix(b, tol=1e-8).shape == (12, 12)


def test_lowrank_complement_is_the_complete_qr_complement():
    # The degenerate columns are W times columns c.. of the complete Householder Q of the
    # whitened Cxy's singular vectors: the same basis as forming that Q explicitly.
    d, c = 30, 4
    g = torch.Generator().manual_seed(17)
    b = graded_psd(d, 5)
    f = b @ torch.randn(d, c, generator=g, dtype=torch.float64)
    w = whitener(b)
    _, x, _ = generalized_eigh_lowrank(f, w)
    y_c, _, _ = torch.linalg.svd(w.matrix.T @ f, full_matrices=False)
    q_full, _ = torch.linalg.qr(y_c, mode="complete")
    explicit = w.matrix @ torch.cat([y_c, q_full[:, c:]], dim=1)
    scale = float(explicit.abs().max())
    torch.testing.assert_close(x, explicit, atol=1e-12 * scale, rtol=0)
