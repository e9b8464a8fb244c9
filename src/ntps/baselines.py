"""Transferability baselines: cheap pre-screens NTPS competes with (docs/predictors.md).

Each estimator is a pure function of one layer's pooled TRAIN features and their labels, computed
without fine-tuning and without a forward pass of its own::

    value = estimator(features, labels, n_classes, **settings)

with ``features`` of shape (n_samples, n_features) and integer ``labels`` of shape (n_samples,) in
``0..n_classes-1``. Higher values mean "a linear read-out of these features should work better", the
direction NTPS is read in, so every predictor is expected to correlate positively with held-out
probe accuracy, -MSE and -LoRA gain.

:data:`PREDICTORS` is the registry the workflow reads: adding a predictor is one function here, one
:class:`Predictor` entry, its name in ``predictors.enabled`` of the config schema and what it takes
from the config in :data:`ntps.workflow.FEATURE_PREDICTOR_SETTINGS` (tests check that the three
lists agree).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ntps.errors import ConfigError, DatasetError
from ntps.probes import one_hot


def _check_inputs(
    features: np.ndarray, labels: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise DatasetError(f"features must have shape (n_samples, n_features), got {x.shape}")
    if y.shape != (x.shape[0],):
        raise DatasetError(
            f"labels must have shape ({x.shape[0]},) to match the features, got {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"labels must be integers 0..{n_classes - 1}, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DatasetError(f"labels must lie in 0..{n_classes - 1}, got {y.min()}..{y.max()}")
    if not np.isfinite(x).all():
        raise DatasetError("features contain NaN or inf")
    return x, y.astype(np.int64)


# --------------------------------------------------------------------------------------------
# H-score
# --------------------------------------------------------------------------------------------

SHRINKAGE_CHOICES = ("ledoit_wolf", "none")


def h_score(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    shrinkage: str = "ledoit_wolf",
    rcond: float = 1e-12,
) -> float:
    """H-score ``tr(cov(X)^-1 cov(E[X | y]))`` (Bao et al., "An information-theoretic approach to
    transferability in task transfer learning", ICIP 2019).

    Parameters
    ----------
    features : ndarray of shape (n_samples, n_features)
    labels : ndarray of shape (n_samples,), integers in ``0..n_classes-1``
    n_classes : int
    shrinkage : {"ledoit_wolf", "none"}
        "ledoit_wolf": the regularised H-score of Ibrahim, Ponomareva and Mazumder ("Newer is not
        always better: rethinking transferability metrics, their peculiarities, stability and
        performance", ECML-PKDD 2022), ``tr(S_a^-1 (1 - a) cov(E[X | y]))`` with ``S_a`` the
        Ledoit-Wolf shrinkage covariance (Ledoit and Wolf 2004, scikit-learn's estimator) and ``a``
        its shrinkage intensity: with fewer texts than dimensions the sample covariance is singular
        and the plain score is dominated by its smallest, noisiest eigenvalues. "none": the sample
        covariance and its pseudo-inverse (Bao et al.'s definition).
    rcond : float
        Relative cut-off of the pseudo-inverse (``shrinkage="none"`` only).

    Returns
    -------
    float
        Between 0 and ``n_classes - 1`` (the rank of the between-class covariance) without shrinkage.

    Both covariances are normalised by N, so without shrinkage ``cov(X) = W + B`` exactly (law of
    total covariance; W within-class, B between-class) and the score is ``tr((W + B)^+ B)``.
    """
    if shrinkage not in SHRINKAGE_CHOICES:
        raise ConfigError(
            f"predictors.h_score.shrinkage must be one of {SHRINKAGE_CHOICES}, got {shrinkage!r}"
        )
    x, y = _check_inputs(features, labels, n_classes)
    n = x.shape[0]
    x = x - x.mean(axis=0)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    # Class means of the centred features, weighted by sqrt(N_c / N): their Gram matrix is B.
    means = (one_hot(y, n_classes).T @ x)[present] / counts[present, None]
    weighted = means * np.sqrt(counts[present] / n)[:, None]
    between = weighted.T @ weighted
    if shrinkage == "none":
        cov = x.T @ x / n
        return float(np.trace(np.linalg.pinv(cov, rcond=rcond, hermitian=True) @ between))
    from sklearn.covariance import LedoitWolf

    estimator = LedoitWolf(assume_centered=True, store_precision=False).fit(x)
    alpha = float(estimator.shrinkage_)
    # S_a is positive definite whenever the features are not all constant: a solve is enough.
    solved = np.linalg.solve(estimator.covariance_, weighted.T)  # S_a^-1 M^T, (d, c)
    return float((1.0 - alpha) * np.sum(weighted.T * solved))


# --------------------------------------------------------------------------------------------
# LogME
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """Maximised log evidence of one target column and the hyper-parameters attaining it."""

    log_evidence: float  # log p(y | F, alpha, beta), NOT divided by N
    alpha: float  # prior precision of the weights
    beta: float  # noise precision
    iterations: int
    converged: bool


def _evidence_terms(
    x2: np.ndarray, sigma: np.ndarray, rest: float, alpha: float, beta: float
) -> tuple[float, float, float]:
    """gamma, ||m||^2 and ||y - F m||^2 of the posterior mean m at (alpha, beta), in F's SVD basis.

    ``x2`` = (U^T y)^2 and ``sigma`` = squared singular values (both (r,)); ``rest`` = the part of
    ||y||^2 outside range(F).
    """
    denom = alpha + beta * sigma
    gamma = float(np.sum(beta * sigma / denom))
    m2 = float(np.sum(beta**2 * sigma * x2 / denom**2))
    res2 = float(np.sum(x2 * (alpha / denom) ** 2) + rest)
    return gamma, m2, res2


def log_evidence(
    x2: np.ndarray, sigma: np.ndarray, rest: float, n: int, d: int, alpha: float, beta: float
) -> float:
    """log p(y | alpha, beta) of Bayesian linear regression, Bishop (2006) eq. 3.86.

    ``D/2 log a + N/2 log b - b/2 ||y - F m||^2 - a/2 ||m||^2 - 1/2 log|A| - N/2 log 2 pi`` with
    ``A = a I_D + b F^T F``; its ``D - r`` zero eigenvalues of F^T F contribute ``log a`` each
    (they are easy to drop when only the r singular values are at hand).
    """
    _, m2, res2 = _evidence_terms(x2, sigma, rest, alpha, beta)
    log_det = float(np.sum(np.log(alpha + beta * sigma))) + (d - sigma.size) * math.log(alpha)
    return (
        0.5 * d * math.log(alpha)
        + 0.5 * n * math.log(beta)
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * log_det
        - 0.5 * n * math.log(2.0 * math.pi)
    )


def max_evidence(
    x2: np.ndarray,
    sigma: np.ndarray,
    rest: float,
    n: int,
    d: int,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    tol: float = 1e-8,
    max_iter: int = 1000,
) -> Evidence:
    """Maximise the evidence over (alpha, beta) by MacKay's fixed point, as in LogME's Algorithm 1.

    ``gamma = sum b s_i / (a + b s_i)``, ``a <- gamma / ||m||^2``, ``b <- (N - gamma) / ||y - F m||^2``
    until ``a / b`` changes by less than ``tol`` (relative). LogME stops at 1e-3 or 11 iterations;
    iterating to convergence makes the value a property of the data rather than of the stopping rule.
    """
    converged = False
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        gamma, m2, res2 = _evidence_terms(x2, sigma, rest, alpha, beta)
        ratio = alpha / beta
        # A target that F fits exactly (res2 = 0) or not at all (m2 = 0) has no finite maximum:
        # stop at the last finite point rather than divide by zero.
        if m2 <= 0.0 or res2 <= 0.0 or n - gamma <= 0.0:
            break
        alpha, beta = gamma / m2, (n - gamma) / res2
        if abs(alpha / beta - ratio) <= tol * ratio:
            converged = True
            break
    return Evidence(
        log_evidence(x2, sigma, rest, n, d, alpha, beta), alpha, beta, iterations, converged
    )


def logme(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    tol: float = 1e-8,
    max_iter: int = 1000,
) -> float:
    """LogME (You, Liu, Wang and Long, "LogME: practical assessment of pre-trained models for
    transfer learning", ICML 2021): the maximised log evidence of Bayesian linear regression
    ``y_c ~ N(F w, 1/beta)``, ``w ~ N(0, 1/alpha)`` for each one-hot class column ``y_c``, averaged
    over the classes and divided by N.

    Parameters
    ----------
    features : ndarray of shape (n_samples, n_features)
        Used as given (no centring or scaling, as in LogME).
    labels : ndarray of shape (n_samples,), integers in ``0..n_classes-1``
    n_classes : int
    tol, max_iter : float, int
        Stopping rule of the fixed point (:func:`max_evidence`).

    Returns
    -------
    float
        Mean over classes of max log p(y_c | F) / N (nats per example).

    One thin SVD of F serves every class. With fewer texts than dimensions the ``D - N`` zero
    eigenvalues of F^T F still enter log|A| (as ``log alpha``); transformer-ranker (0.2.0)
    sums only over the returned singular values, which drops ``(D - N)/2 log alpha``.
    """
    x, y = _check_inputs(features, labels, n_classes)
    n, d = x.shape
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    keep = s > s.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    u, sigma = u[:, keep], s[keep] ** 2
    total = 0.0
    for column in one_hot(y, n_classes).T:
        proj = u.T @ column
        x2 = proj**2
        rest = max(float(column @ column - x2.sum()), 0.0)
        total += max_evidence(x2, sigma, rest, n, d, tol=tol, max_iter=max_iter).log_evidence / n
    return total / n_classes


# --------------------------------------------------------------------------------------------
# kNN accuracy
# --------------------------------------------------------------------------------------------

KNN_METRICS = ("euclidean", "cosine")


def knn_accuracy(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    k: int = 5,
    folds: int = 5,
    metric: str = "euclidean",
    seed: int = 0,
) -> float:
    """k-nearest-neighbour accuracy by stratified ``folds``-fold cross-validation on these texts.

    Parameters
    ----------
    features : ndarray of shape (n_samples, n_features)
    labels : ndarray of shape (n_samples,), integers in ``0..n_classes-1``
    n_classes : int
    k : int
        Neighbours (majority vote; ties go to the smallest label, scikit-learn's rule). Clipped to
        the size of the smallest training fold.
    folds : int
        Stratified folds (shuffled with ``seed``); every text is predicted once, from the others.
    metric : {"euclidean", "cosine"}

    Returns
    -------
    float
        Fraction of texts whose held-out kNN prediction is correct.

    A non-parametric read-out of the same features (as transformer-ranker's nearest-neighbour
    estimator, which uses leave-one-out instead of folds).
    """
    if metric not in KNN_METRICS:
        raise ConfigError(f"predictors.knn.metric must be one of {KNN_METRICS}, got {metric!r}")
    if k < 1 or folds < 2:
        raise ConfigError(f"predictors.knn needs k >= 1 and folds >= 2, got k={k}, folds={folds}")
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    x, y = _check_inputs(features, labels, n_classes)
    counts = np.bincount(y)
    if x.shape[0] < 2 or counts.max() < 2:
        raise DatasetError(f"kNN cross-validation needs a class with 2 texts, got counts {counts}")
    # StratifiedKFold refuses more folds than the largest class has texts (and warns, but works,
    # when the smallest class has fewer texts than folds): fewer folds are still cross-validation.
    n_splits = min(folds, int(counts.max()))
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(x, y))
    correct = 0
    for train, test in splits:
        neighbours = max(1, min(k, train.size))
        clf = KNeighborsClassifier(n_neighbors=neighbours, metric=metric, algorithm="brute")
        clf.fit(x[train], y[train])
        correct += int(np.sum(clf.predict(x[test]) == y[test]))
    return correct / x.shape[0]


# --------------------------------------------------------------------------------------------
# Perception-only ablation
# --------------------------------------------------------------------------------------------


def perception_eigenvalues(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    eigen_cutoff: float | str = "auto",
    ridge: float = 0.0,
    centered: bool = False,
) -> np.ndarray:
    """Generalized eigenvalues of NTPS's perception problem ``Cxy Cxy^T u = lam Cxx u`` (descending).

    ``Cxx = X^T X / N`` and ``Cxy = X^T Y / N`` from the pooled features and one-hot labels, with
    NTPS's ``scoring`` settings (``ridge`` added to Cxx, ``centered`` moments, ``eigen_cutoff`` of
    Cxx's range: "auto" or a number, as for the score), solved by the same code as the score
    (:mod:`ntps.eigen`).
    """
    import torch

    from ntps.eigen import generalized_eigh_lowrank, whitener
    from ntps.scores import resolve_cutoff

    x, y = _check_inputs(features, labels, n_classes)
    n = x.shape[0]
    yy = one_hot(y, n_classes)
    if centered:
        x = x - x.mean(axis=0)
        yy = yy - yy.mean(axis=0)
    cxx = torch.from_numpy(x.T @ x / n)
    if ridge > 0:
        cxx = cxx + ridge * torch.eye(cxx.shape[0], dtype=cxx.dtype)
    cxy = torch.from_numpy(x.T @ yy / n)
    tol = resolve_cutoff(eigen_cutoff, cxx.shape[0])
    lam, _, _ = generalized_eigh_lowrank(cxy, whitener(cxx, tol=tol))
    return lam.numpy()


def perception_only(
    features: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    eigen_cutoff: float | str = "auto",
    ridge: float = 0.0,
    centered: bool = False,
) -> float:
    """``tr(Cxx^+ Cxy Cxy^T)``: the perception side of NTPS without the next-token side.

    The sum of the perception problem's generalized eigenvalues (:func:`perception_eigenvalues`),
    i.e. the least-squares loss reduction ``L(0) - L*`` a linear map of the features achieves on
    one-hot labels (close to an uncentred H-score). If it predicts probe quality as well as NTPS,
    the autoregressive subspace adds nothing. Parameters as :func:`perception_eigenvalues`.
    """
    lam = perception_eigenvalues(
        features, labels, n_classes, eigen_cutoff=eigen_cutoff, ridge=ridge, centered=centered
    )
    return float(np.clip(lam, 0.0, None).sum())


def preload() -> None:
    """Import the estimators' heavy dependencies now, so per-predictor timings measure compute."""
    import importlib

    for module in (
        "sklearn.covariance", "sklearn.model_selection", "sklearn.neighbors", "torch", "ntps.eigen",
    ):  # fmt: skip
        importlib.import_module(module)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

#: Where a predictor's values come from: computed from the cached features, or read from the
#: probe stage's table.
SOURCE_FEATURES = "features"
SOURCE_PROBES = "probes"
ALL_TARGETS = ("accuracy", "mse", "gain")


@dataclass(frozen=True)
class Predictor:
    """One registered predictor.

    ``compute(features, labels, n_classes, **settings) -> float`` for ``source == "features"``;
    ``None`` for a predictor read from another stage (``source == "probes"``: the held-out probe
    accuracy column). ``targets`` lists what it is judged against (probe accuracy cannot predict
    itself). What it takes from the config: :data:`ntps.workflow.FEATURE_PREDICTOR_SETTINGS`.
    """

    name: str
    label: str
    citation: str
    compute: Callable[..., float] | None = None
    source: str = SOURCE_FEATURES
    targets: tuple[str, ...] = ALL_TARGETS


PREDICTORS: dict[str, Predictor] = {
    p.name: p
    for p in (
        Predictor(
            "h_score", "H-score", "Bao et al. 2019; shrinkage: Ibrahim et al. 2022", h_score,
        ),
        Predictor(
            "logme", "LogME", "You et al. 2021", logme,
        ),
        Predictor(
            "knn", "kNN accuracy", "cross-validated on the train split", knn_accuracy,
        ),
        Predictor(
            "perception_only", "perception only", "tr(Cxx^+ Cxy Cxy^T), NTPS without V",
            perception_only,
        ),
        Predictor(
            "probe_accuracy", "probe accuracy", "held-out linear probe (probe stage)",
            source=SOURCE_PROBES, targets=("gain",),
        ),
    )
}  # fmt: skip


def predictor(name: str) -> Predictor:
    """Registry entry by name; a clear error for an unknown one."""
    try:
        return PREDICTORS[name]
    except KeyError:
        raise ConfigError(
            f"predictors.enabled: unknown predictor {name!r}; known: {sorted(PREDICTORS)}"
        ) from None
