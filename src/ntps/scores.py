"""NTPS scores from one layer's moments (docs/method.md sections 2-3).

Per layer the expensive work (the eigendecomposition of Cxx, a Cholesky factorisation of S0, the
two generalized eigenproblems, one QR) is done once; every k of the grid is then read off
cumulative sums, because the top-k subspaces are nested: span(V_k) = span(Q[:, :k]) for the QR
factor Q of V.

The eigenvalue cut-off comes from the precision of the statistics (:data:`STATISTICS_PRECISION`,
:func:`ntps.eigen.precision_cutoff`), applied in Jacobi-scaled coordinates (see :mod:`ntps.eigen`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ntps.eigen import (
    UNIT_ROUNDOFF,
    Whitener,
    check_finite,
    count_nonzero,
    generalized_eigh_factored,
    generalized_eigh_lowrank,
    precision_cutoff,
    symmetrize,
    whitener,
    whitening_matrix,
)
from ntps.errors import ConfigError, NumericalError
from ntps.regime import regime
from ntps.stats import LayerMoments

if TYPE_CHECKING:
    from ntps.released import RoundingSpread

_F64 = torch.float64

#: Elementwise relative precision of the stored statistics, ``|dB_ij| / sqrt(B_ii B_jj)``. S0 and S1
#: are sums of float32 GEMM products over chunks of 512 rows (``ntps.stats``), and the jackknife
#: shard statistics are stored in float32; measured on SmolLM2-135M x rotten_tomatoes (1280 texts,
#: all 31 hidden states), float32 products deviate from float64 products by at most 8.9e-8 = 1.5 u32
#: elementwise; the typical deviation is far smaller. Two float32 unit roundoffs bound that maximum.
STATISTICS_PRECISION = 2 * UNIT_ROUNDOFF[torch.float32]

#: Two generalized eigenvalues closer than this (relative to themselves) count as tied: the top-k
#: subspace that splits them is not determined by the statistics.
TIE_RTOL = 1e-6

#: Relative threshold for non-zero perception eigenvalues and for rank in the excess-loss
#: Gram-Schmidt: a float64 rounding guard (those quantities are exact zeros in exact arithmetic).
_ZERO_RTOL = 1e-10

#: The paper's sweep: fractions 0.05, 0.10, ..., 0.95 of each problem's retained rank.
DEFAULT_K_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))

RECORD_FIELDS = (
    "n_train",
    "hidden_size",
    "regime",
    "k_spec",
    "k_perception",
    "k_ar",
    "eigen_cutoff",
    "rank_perception",
    "rank_ar",
    "n_nonzero_perception",
    "ntps_paper",
    "ntps_reg",
    "ntps_released",
    "ntps_released_min",
    "ntps_released_max",
    "ntps_released_sd",
    "released_roundings",
    "baseline",
    "excess_loss",
    "bound_lower",
    "bound_upper",
    "lower_bound_zero",
    "lam_min_cxx",
    "lam_max_cxx",
    "w_star_norm2",
    "paper_degenerate",
    "ar_degenerate",
    "k_clipped",
)


def _is_int(k: Any) -> bool:
    return isinstance(k, numbers.Integral) and not isinstance(k, bool)


def check_k_spec(k_spec: int | float) -> None:
    """Raise :class:`ConfigError` unless ``k_spec`` is an int >= 1 or a float in (0, 1)."""
    if _is_int(k_spec):
        if int(k_spec) < 1:
            raise ConfigError(f"k must be an integer >= 1 or a fraction in (0, 1), got {k_spec}")
    elif isinstance(k_spec, numbers.Real) and not isinstance(k_spec, bool):
        if not 0.0 < float(k_spec) < 1.0:
            raise ConfigError(f"fractional k must lie strictly between 0 and 1, got {k_spec}")
    else:
        raise ConfigError(f"k must be an int or a float fraction, got {k_spec!r}")


def resolve_k(k_spec: int | float, rank: int) -> int:
    """Integer k for a problem of retained rank ``rank``.

    int: as is, clipped to [1, rank]; float f in (0, 1): max(1, floor(f * rank)).
    """
    check_k_spec(k_spec)
    if rank < 1:
        raise NumericalError(f"cannot choose k for a problem of rank {rank}")
    if _is_int(k_spec):
        return max(1, min(int(k_spec), rank))
    # The small epsilon makes 0.29 * 100 give 29, not 28 (0.29 * 100 == 28.999999999999996).
    return max(1, math.floor(float(k_spec) * rank + 1e-9))


def excess_loss(cxx: Tensor, cxy: Tensor, basis: Tensor, *, rtol: float = 1e-10) -> float:
    """Reference closed form of ``L(P) - L*`` for P = projector onto range(``basis``) (d, k).

    ``tr(Cxy^T Cxx^+ Cxy) - tr(Cxy^T B (B^T Cxx B)^+ B^T Cxy)`` with B an orthonormal basis of
    range(basis). Dense O(d^3) per call; :func:`score_layer` gets all k at once more cheaply.
    """
    cxx = symmetrize(cxx)
    cxy = cxy.to(_F64)
    b, _ = torch.linalg.qr(basis.to(_F64))
    full = torch.trace(cxy.T @ torch.linalg.pinv(cxx, rtol=rtol, hermitian=True) @ cxy)
    g = b.T @ cxy
    h = symmetrize(b.T @ cxx @ b)
    part = torch.trace(g.T @ torch.linalg.pinv(h, rtol=rtol, hermitian=True) @ g)
    return float(full - part)


def default_cutoff(hidden_size: int) -> float:
    """The eigenvalue cut-off for statistics of :data:`STATISTICS_PRECISION` at width d."""
    return precision_cutoff(hidden_size, STATISTICS_PRECISION)


def resolve_cutoff(spec: float | str | None, hidden_size: int) -> float:
    """The cut-off a ``scoring.eigen_cutoff`` value means: "auto" (or None) -> :func:`default_cutoff`."""
    return default_cutoff(hidden_size) if spec is None or spec == "auto" else float(spec)


def tied_after(lam: Tensor, k: int, rtol: float = TIE_RTOL) -> bool:
    """Whether the k-th and (k+1)-th of ``lam`` (r,) DESCENDING tie: no top-k subspace is singled out.

    Tied means a gap of at most ``rtol`` times the k-th eigenvalue itself (relative to the largest
    it would call every pair of a graded spectrum's small eigenvalues tied), or within float64
    rounding of the largest (``_ZERO_RTOL``), where the order of two values is arbitrary.
    """
    if not 0 < k < lam.numel():
        return False
    top = float(lam[0])
    if not top > 0:
        return False
    gap = float(lam[k - 1] - lam[k])
    return gap <= max(rtol * abs(float(lam[k - 1])), _ZERO_RTOL * top)


def _nested_explained(
    m: Tensor, target: Tensor, ks: Sequence[int], tol2: float
) -> dict[int, float]:
    """``||Proj_{span m[:, :k]} target||_F^2`` for each k in ``ks``.

    Block Gram-Schmidt over the sorted ks, twice for stability, with a rank-revealing SVD of each
    new block: columns whose residual squared singular value is <= ``tol2`` add nothing (this is
    the pseudo-inverse cutoff of the closed form, applied incrementally).
    """
    out: dict[int, float] = {}
    basis = m.new_zeros(m.shape[0], 0)
    explained = 0.0
    prev = 0
    for k in sorted(set(ks)):
        blk = m[:, prev:k]
        if blk.shape[1]:
            for _ in range(2):
                blk = blk - basis @ (basis.T @ blk)
            u, sv, _ = torch.linalg.svd(blk, full_matrices=False)
            new = u[:, sv.square() > tol2]
            if new.shape[1]:
                # One more projection keeps the new directions orthogonal to the old ones.
                new = new - basis @ (basis.T @ new)
                new, _ = torch.linalg.qr(new)
                explained += float((new.T @ target).square().sum())
                basis = torch.cat([basis, new], dim=1)
        out[k] = explained
        prev = k
    return out


def _perception_problem(cxy: Tensor, w: Whitener, solver: str) -> tuple[Tensor, Tensor, int]:
    if solver == "lowrank":
        return generalized_eigh_lowrank(cxy, w, rtol=_ZERO_RTOL)
    if solver == "dense":
        lam, u = generalized_eigh_factored(cxy, w)
        return lam, u, count_nonzero(lam, rtol=_ZERO_RTOL)
    raise ConfigError(f"perception_solver must be 'lowrank' or 'dense', got {solver!r}")


def _prepared(m: LayerMoments, ridge: float, centered: bool) -> tuple[Tensor, Tensor]:
    """Cxx (symmetrized, centred / ridged as asked) and Cxy in float64; raises on NaN/inf."""
    if ridge < 0:
        raise ConfigError(f"ridge must be >= 0, got {ridge}")
    where = f"layer {m.layer}" if m.layer is not None else "this layer"
    cxx = symmetrize(m.cxx)
    cxy = m.cxy.to(_F64)
    if centered:
        mu = m.x_mean.to(_F64)
        cxx = symmetrize(cxx - torch.outer(mu, mu))
        cxy = cxy - torch.outer(mu, m.y_mean.to(_F64))
    if ridge > 0:
        cxx = cxx + ridge * torch.eye(cxx.shape[0], dtype=_F64, device=cxx.device)
    for name, x in (("Cxx", cxx), ("Cxy", cxy), ("S0", m.s0), ("S1", m.s1)):
        check_finite(x, f"{name} of {where}")
    return cxx, cxy


def ntps_forms(
    m: LayerMoments,
    k_grid: Sequence[int | float] = DEFAULT_K_GRID,
    *,
    tol: float | str | None = None,
    ridge: float = 0.0,
    centered: bool = False,
) -> list[tuple[float, float]]:
    """``(ntps_paper, ntps_reg)`` per k of ``k_grid``: the two scores without the diagnostics.

    Same numbers as :func:`score_layer` at a fraction of its cost (no excess loss, bounds or
    released form); used for the jackknife replicates.
    """
    return [(r["ntps_paper"], r["ntps_reg"]) for r in _score(m, k_grid, tol, ridge, centered)]


@dataclass(frozen=True)
class ReplicateCurves:
    """The two scores of one layer's moments at every k any grid can ask for.

    What a jackknife replicate is reduced to (:func:`replicate_curves`), so that the standard
    errors of a new k grid need no shard statistics: ``ntps_reg`` depends on k only through
    ``k_ar``, ``ntps_paper`` through ``(k_ar, k_perception)``, and both k are resolved from the
    two ranks (:func:`resolve_k`).

    Attributes
    ----------
    rank_perception, rank_ar : int
        Retained ranks of the perception and the autoregressive problem.
    reg : Tensor of shape (rank_ar,), float64
        ``ntps_reg`` at ``k_ar = 1 .. rank_ar`` (NaN when ``W* = 0``).
    pairs : Tensor of shape (n, 2), int64
        The ``(k_ar, k_perception)`` every integer k and every fraction in (0, 1) resolve to
        (:func:`reachable_k_pairs`).
    paper : Tensor of shape (n,), float64
        ``ntps_paper`` at ``pairs`` (NaN where ``||U_k||`` is 0).
    """

    rank_perception: int
    rank_ar: int
    reg: Tensor
    pairs: Tensor
    paper: Tensor

    def forms(self, k_grid: Sequence[int | float]) -> list[tuple[float, float]]:
        """``(ntps_paper, ntps_reg)`` per k of ``k_grid``, as :func:`ntps_forms` gives them."""
        index = {(int(a), int(p)): i for i, (a, p) in enumerate(self.pairs.tolist())}
        out = []
        for k_spec in k_grid:
            kp = resolve_k(k_spec, self.rank_perception)
            ka = resolve_k(k_spec, self.rank_ar)
            at = index.get((ka, kp))
            if at is None:  # reachable_k_pairs covers every k spec; this is a bug guard
                raise NumericalError(f"k = {k_spec}: (k_ar, k_perception) = {(ka, kp)} not kept")
            out.append((float(self.paper[at]), float(self.reg[ka - 1])))
        return out


def reachable_k_pairs(rank_ar: int, rank_p: int) -> Tensor:
    """Every ``(k_ar, k_perception)`` a k spec can resolve to (:func:`resolve_k`) -> (n, 2) int64.

    An integer k gives ``(min(k, rank_ar), min(k, rank_p))``. A fraction f gives
    ``k_ar = i`` only for f in ``[(i - 1e-9) / rank_ar, (i + 1) / rank_ar)``, hence ``k_perception``
    between ``floor(i rank_p / rank_ar) - 1`` and ``floor((i + 1) rank_p / rank_ar) + 1`` (from 1
    when ``i = 1``: small f clip to 1): a band of about ``rank_p / rank_ar + 3`` values per i, so
    O(rank) pairs, not rank_ar x rank_p. Sorted, unique.
    """
    if rank_ar < 1 or rank_p < 1:
        raise NumericalError(f"no k exists for ranks ({rank_ar}, {rank_p})")
    found = {(min(k, rank_ar), min(k, rank_p)) for k in range(1, max(rank_ar, rank_p) + 1)}
    for i in range(1, rank_ar + 1):
        low = 1 if i == 1 else max(1, (i * rank_p) // rank_ar - 1)
        high = min(rank_p, ((i + 1) * rank_p) // rank_ar + 1)
        found.update((i, kp) for kp in range(low, high + 1))
    return torch.tensor(sorted(found), dtype=torch.int64)


def _replicate_curves(
    paper_num: Tensor, paper_den: Tensor, reg_num: Tensor, w2: float, rank_p: int, rank_ar: int
) -> ReplicateCurves:
    pairs = reachable_k_pairs(rank_ar, rank_p)
    ka, kp = pairs[:, 0] - 1, pairs[:, 1] - 1
    den = paper_den[kp]
    nan = torch.full_like(den, math.nan)
    paper = torch.where(den > 0, paper_num[ka, kp] / torch.where(den > 0, den, 1.0), nan)
    reg = reg_num / w2 if w2 > 0 else torch.full_like(reg_num, math.nan)
    return ReplicateCurves(rank_p, rank_ar, reg.cpu(), pairs, paper.cpu())


def replicate_curves(
    m: LayerMoments,
    *,
    tol: float | str | None = None,
    ridge: float = 0.0,
    centered: bool = False,
) -> ReplicateCurves:
    """Both scores of ``m`` at every k (:class:`ReplicateCurves`): :func:`ntps_forms` for any grid.

    The same computation as :func:`ntps_forms` with the nested bases taken over the whole
    retained ranks; its values at a grid's k agree with :func:`ntps_forms` up to float64 rounding
    (the QR then spans more columns).
    """
    return _score(m, (), tol, ridge, centered, curves=True)


def score_layer(
    m: LayerMoments,
    k_grid: Sequence[int | float] = DEFAULT_K_GRID,
    *,
    tol: float | str | None = None,
    ridge: float = 0.0,
    centered: bool = False,
    perception_solver: str = "lowrank",
    released: bool = True,
    rounding_spread: RoundingSpread | None = None,
) -> list[dict[str, Any]]:
    """Score one layer for every k of ``k_grid``; one record (plain python scalars) per k.

    ``tol`` is the eigenvalue cut-off in Jacobi-scaled coordinates: a number, or "auto" / None for
    :func:`default_cutoff` of the layer's width (:func:`resolve_cutoff`). ``ridge`` replaces Cxx by Cxx + ridge*I everywhere
    (solver, W*, excess loss, bounds); ``centered`` uses Cxx - mu mu^T and Cxy - mu ybar^T.
    ``perception_solver``: "lowrank" exploits rank(Cxy Cxy^T) <= c (SVD of the c-column whitened
    Cxy); "dense" is the reference solver. They agree on everything except the arbitrary basis of
    the degenerate eigenspace, i.e. except ``ntps_paper`` where ``paper_degenerate`` is true.
    ``released`` adds ``ntps_released`` (:func:`ntps.released.released_scores`, the authors'
    procedure on the uncentred, unridged statistics), else NaN. ``rounding_spread`` (with
    ``released``) adds its spread over random float32 roundings of the statistics at the k it
    covers: ``ntps_released_min``, ``_max``, ``_sd`` and ``released_roundings`` (the number of
    random roundings; NaN and 0 elsewhere; :func:`ntps.released.rounding_spread`).
    """
    records = _score(m, k_grid, tol, ridge, centered, perception_solver, diagnostics=True)
    for record in records:
        record.update(
            ntps_released=math.nan,
            ntps_released_min=math.nan,
            ntps_released_max=math.nan,
            ntps_released_sd=math.nan,
            released_roundings=0,
        )
    records = [{key: record[key] for key in RECORD_FIELDS} for record in records]
    if released:
        add_released(records, m, k_grid, rounding_spread)
    return records


def add_released(
    records: list[dict[str, Any]],
    m: LayerMoments,
    k_grid: Sequence[int | float],
    rounding_spread: RoundingSpread | None = None,
) -> None:
    """Fill, in place, the released-convention fields of :func:`score_layer` records made with
    ``released=False`` (one per k of ``k_grid``, of the same ``m``): ``score_layer(...)`` equals
    ``score_layer(..., released=False)`` followed by this. Lets a caller time NTPS itself apart
    from the released column, which only qualifies it (:func:`ntps.stages.score.score_pair`)."""
    from ntps.released import released_scores  # scipy: imported only when used

    values = released_scores(m.cxx, m.cxy, m.s0, m.s1, k_grid)
    for record, value in zip(records, values, strict=True):
        record["ntps_released"] = value
    if rounding_spread is not None and rounding_spread.n_roundings > 0:
        _add_rounding_spread(records, m, k_grid, rounding_spread)


def _add_rounding_spread(
    records: list[dict[str, Any]],
    m: LayerMoments,
    k_grid: Sequence[int | float],
    spread: RoundingSpread,
) -> None:
    """Fill the released spread fields of the records whose k ``spread`` covers."""
    from ntps.released import released_rounding_scores, rounding_spread

    at = [i for i, k_spec in enumerate(k_grid) if spread.covers_k(k_spec)]
    if not at:
        return
    ks = [k_grid[i] for i in at]
    rounded = released_rounding_scores(
        m.cxx, m.cxy, m.s0, m.s1, ks, n_roundings=spread.n_roundings, seed=spread.seed
    )
    nearest = [records[i]["ntps_released"] for i in at]
    for i, (low, high, sd) in zip(at, rounding_spread(nearest, rounded), strict=True):
        records[i].update(
            ntps_released_min=low,
            ntps_released_max=high,
            ntps_released_sd=sd,
            released_roundings=spread.n_roundings,
        )


def _score(
    m: LayerMoments,
    k_grid: Sequence[int | float],
    tol: float | str | None,
    ridge: float,
    centered: bool,
    perception_solver: str = "lowrank",
    *,
    diagnostics: bool = False,
    ar_whitening: str = "cholesky",
    curves: bool = False,
) -> Any:
    """The records of :func:`score_layer` (``diagnostics``) or of :func:`ntps_forms`; with
    ``curves`` (``k_grid`` then only checked) the layer's :class:`ReplicateCurves` instead."""
    for k in k_grid:
        check_k_spec(k)
    where = f"layer {m.layer}" if m.layer is not None else "this layer"
    cxx, cxy = _prepared(m, ridge, centered)
    d = cxx.shape[0]
    tol = resolve_cutoff(tol, d)

    # Perception side: one eigendecomposition of (scaled) Cxx serves W*, the whitening and the
    # excess loss.
    wx = whitener(cxx, tol=tol)
    rank_p = wx.rank
    if rank_p == 0:
        raise NumericalError(f"Cxx of {where} is zero: the pooled features carry no signal")
    wm = wx.matrix  # (d, r): W^T Cxx W = I
    b_white = wm.T @ cxy  # (r, c): ||b_white||^2 = tr(Cxy^T Cxx^+ Cxy)
    w_star = wm @ b_white  # Cxx^+ Cxy (pseudo-inverse on the retained range)
    w2 = float(w_star.square().sum())
    lam_p, u, n_nonzero = _perception_problem(cxy, wx, perception_solver)

    # Autoregressive side. Only span(V_k) and the eigenvalues are used, which do not depend on
    # the whitening: a Cholesky factor when S0 is numerically full rank (``ar_whitening="eigh"``:
    # always the eigendecomposition, the reference the tests compare with).
    s0_white = (
        whitener(m.s0, tol=tol).matrix
        if ar_whitening == "eigh"
        else whitening_matrix(m.s0, tol=tol)
    )
    lam_ar, v = generalized_eigh_factored(m.s1, s0_white)
    rank_ar = v.shape[1]
    if rank_ar == 0:
        raise NumericalError(
            f"S0 of {where} is zero: no (prefix, next token) pairs were accumulated"
        )

    ks = [(k, resolve_k(k, rank_p), resolve_k(k, rank_ar)) for k in k_grid]
    if curves:
        # Every k any grid can ask for: the whole nested range of both problems.
        kp_max, ka_max = rank_p, rank_ar
    else:
        kp_max = max(kp for _, kp, _ in ks)
        ka_max = max(ka for _, _, ka in ks)
    q, _ = torch.linalg.qr(v[:, :ka_max])  # nested orthonormal bases of span(V_k)

    # Paper form: ||Q_k^T U_k||^2 / ||U_k||^2 for all (k_ar, k_p) via 2-D cumulative sums.
    u = u[:, :kp_max]
    paper_num = (q.T @ u).square().cumsum(0).cumsum(1)
    paper_den = u.square().sum(0).cumsum(0)
    # Regression form: ||Q_k^T W*||^2 for all k_ar.
    reg_num = (q.T @ w_star).square().sum(1).cumsum(0)
    if curves:
        return _replicate_curves(paper_num, paper_den, reg_num, w2, rank_p, rank_ar)

    records = []
    for k_spec, kp, ka in ks:
        num, den = float(paper_num[ka - 1, kp - 1]), float(paper_den[kp - 1])
        records.append(
            {
                "k_spec": k_spec.item() if hasattr(k_spec, "item") else k_spec,
                "k_perception": kp,
                "k_ar": ka,
                "ntps_paper": num / den if den > 0 else math.nan,
                "ntps_reg": float(reg_num[ka - 1]) / w2 if w2 > 0 else math.nan,
            }
        )
    if not diagnostics:
        return records

    # Bounds use Cxx's own extreme eigenvalues (not the scaled matrix's). Below full rank Cxx is
    # singular by the same cut-off that defines the pseudo-inverse; eigh would report its zero
    # eigenvalues as +-1e-16 noise.
    lam_cxx = torch.linalg.eigvalsh(cxx)
    lam_max = float(lam_cxx[-1])
    lower_bound_zero = rank_p < d
    lam_min = 0.0 if lower_bound_zero else max(float(lam_cxx[0]), 0.0)
    explained_full = float(b_white.square().sum())  # L(0) - L*
    # Exact excess loss: L(P_k) - L* = ||b||^2 - ||Proj_{range(G^T Q_k)} b||^2 with b = W^T Cxy and
    # Cxx ~= G G^T, in the retained r coordinates.
    mq = wx.root.T @ q
    explained = _nested_explained(mq, b_white, [ka for _, _, ka in ks], _ZERO_RTOL * lam_max)
    for record, (k_spec, kp, ka) in zip(records, ks, strict=True):
        resid2 = max(w2 - float(reg_num[ka - 1]), 0.0)  # ||(I - P_k) W*||^2
        record.update(
            {
                "n_train": m.n_examples,
                "hidden_size": d,
                "regime": regime(m.n_examples, d),
                "eigen_cutoff": tol,
                "rank_perception": rank_p,
                "rank_ar": rank_ar,
                "n_nonzero_perception": n_nonzero,
                "baseline": ka / d,
                # Clipped at 0: rounding can turn an exact zero into -1e-17.
                "excess_loss": max(explained_full - explained[ka], 0.0),
                "bound_lower": lam_min * resid2,
                "bound_upper": lam_max * resid2,
                "lower_bound_zero": lower_bound_zero,
                "lam_min_cxx": lam_min,
                "lam_max_cxx": lam_max,
                "w_star_norm2": w2,
                # Beyond the non-zero eigenvalues the basis is arbitrary; at a tie the top-k
                # subspace is not unique (e.g. balanced classes when N <= rank(Cxx)).
                "paper_degenerate": kp > n_nonzero or tied_after(lam_p, kp),
                "ar_degenerate": tied_after(lam_ar, ka),
                "k_clipped": _is_int(k_spec) and (int(k_spec) > rank_p or int(k_spec) > rank_ar),
            }
        )
    return records


def jackknife_se(replicates: Any) -> float:
    """Delete-a-group jackknife standard error from K leave-one-group-out estimates.

    ``sqrt((K - 1) / K * sum_j (theta_j - mean)^2)`` (Efron & Stein 1981). NaN with fewer than two
    replicates or any non-finite one.
    """
    values = np.asarray(replicates, dtype=float)
    if values.size < 2 or not np.isfinite(values).all():
        return math.nan
    k = values.size
    return float(math.sqrt((k - 1) / k * np.square(values - values.mean()).sum()))
