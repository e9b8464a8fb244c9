"""The N_train vs d regime of a pair: when NTPS describes the model and when the sample size.

Without torch or scipy, so that the summary job can state it without importing either.
"""

from __future__ import annotations

#: Training texts per hidden dimension below which scores are flagged (``regime``).
MIN_TEXTS_PER_DIMENSION = 2
REGIME_OK = "ok"
REGIME_FEW_TEXTS = "n_train<2d"
REGIME_RANK_DEFICIENT = "n_train<d"
REGIME_EXPLANATION = (
    "fewer than {per_dim} training texts per hidden dimension: Cxx = E[x x^T] is estimated from too few "
    "texts ({n_train} for d = {d}). Below d it is rank-deficient: W* = Cxx^+ Cxy is confined to "
    "the span of the training features, the regression form sits below the random-subspace "
    "baseline k/d by construction and the lower bound is exactly 0. Such scores describe the "
    "sample size, not the model; use at least {need} training texts."
)


def regime(n_train: int, hidden_size: int) -> str:
    """``ok`` when ``n_train >= 2 d``; else ``n_train<2d``, or ``n_train<d`` (rank-deficient Cxx)."""
    if n_train >= MIN_TEXTS_PER_DIMENSION * hidden_size:
        return REGIME_OK
    return REGIME_RANK_DEFICIENT if n_train < hidden_size else REGIME_FEW_TEXTS


def regime_warning(n_train: int, hidden_size: int) -> str | None:
    """Plain-words warning for a study outside the ``ok`` regime, else None."""
    if regime(n_train, hidden_size) == REGIME_OK:
        return None
    return REGIME_EXPLANATION.format(
        per_dim=MIN_TEXTS_PER_DIMENSION,
        n_train=n_train,
        d=hidden_size,
        need=MIN_TEXTS_PER_DIMENSION * hidden_size,
    )
