"""Transferability baselines: cheap pre-screens NTPS competes with (docs/predictors.md).

Each estimator is a pure function of one layer's pooled TRAIN features and their labels, computed
without fine-tuning and without a forward pass of its own::

    value = estimator(features, labels, n_classes, **settings)

with ``features`` of shape (n_samples, n_features) and integer ``labels`` of shape (n_samples,) in
``0..n_classes-1``. Higher values mean "a linear read-out of these features should work better", the
direction NTPS is read in, so every predictor is expected to correlate positively with held-out
probe accuracy, -MSE and -LoRA gain. Where an estimator has no finite value on the given features
(LogME's evidence unbounded, H-score's 0/0 on constant features) it raises
:class:`~ntps.errors.PredictorUndefined` with the reason; :func:`predictor_value` turns that into
``(NaN, reason)`` for the record.

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
from typing import Any

import numpy as np

from ntps.errors import ConfigError, DatasetError, PredictorUndefined
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


def standardize_features(features: np.ndarray) -> np.ndarray:
    """Each feature centred and divided by its standard deviation over the texts (ddof 0).

    Parameters
    ----------
    features : ndarray of shape (n_samples, n_features)

    Returns
    -------
    ndarray of shape (n_samples, n_features), float64
        Zero mean and unit variance per feature; a feature with the same value for every text
        becomes 0 (it carries nothing to scale). Unchanged by shifting any feature or scaling it
        by a positive factor, so no single channel's scale (LLMs' massive activations) dominates
        a Euclidean geometry.
    """
    x = np.asarray(features, dtype=np.float64)
    centred = x - x.mean(axis=0)
    scale = np.sqrt(np.mean(centred**2, axis=0))
    varies = np.ptp(x, axis=0) > 0  # exact: a constant channel's SD is rounding noise
    out = np.zeros_like(centred)
    out[:, varies] = centred[:, varies] / scale[varies]
    return out


def _all_constant(x: np.ndarray) -> bool:
    """True when every text has the same feature vector, shape (n_samples, n_features)."""
    return bool(x.shape[0] > 0 and np.all(x == x[0]))


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
    standardize: bool = False,
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
    standardize : bool
        Score :func:`standardize_features` of the features (the correlation matrix instead of the
        covariance). Without shrinkage the score is invariant to rescaling features anyway; the
        Ledoit-Wolf target ``mu I`` is not, so one high-variance channel sets its scale. False here
        (the published estimator); the workflow's default is the config schema's.

    Returns
    -------
    float
        Between 0 and ``n_classes - 1`` (the rank of the between-class covariance) without shrinkage.

    Raises
    ------
    PredictorUndefined
        When every text has the same features: both covariances vanish and the score is 0/0.

    Both covariances are normalised by N, so without shrinkage ``cov(X) = W + B`` exactly (law of
    total covariance; W within-class, B between-class) and the score is ``tr((W + B)^+ B)``.
    """
    if shrinkage not in SHRINKAGE_CHOICES:
        raise ConfigError(
            f"predictors.h_score.shrinkage must be one of {SHRINKAGE_CHOICES}, got {shrinkage!r}"
        )
    x, y = _check_inputs(features, labels, n_classes)
    if _all_constant(x):
        raise PredictorUndefined(
            "H-score undefined: every text has the same features, so cov(X) and the between-class "
            "covariance are both 0"
        )
    if standardize:
        x = standardize_features(x)
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


#: The fixed point stops (unconverged) before ``alpha + beta s_max`` passes this: its square and
#: ``beta**2`` stay finite in float64. Far below it the evidence has reached its limit to rounding
#: when the maximum lies at ``alpha -> inf`` (the features do not help) or ``beta -> inf`` with
#: rank N (bounded), the two directions in which the iteration diverges.
_PRECISION_MAX = 1e150
#: Below this fraction of ||y||^2, ``||y||^2 - ||U^T y||^2`` has lost most of its digits and the
#: part of y outside range(F) is measured from the residual vector instead.
_REST_BY_SUBTRACTION_MIN = 1e-8


@dataclass(frozen=True)
class Evidence:
    """Maximised log evidence of one target column and the hyper-parameters attaining it.

    ``log_evidence`` is ``inf`` (and ``beta`` too) when the evidence has no upper bound
    (:func:`evidence_is_unbounded`).
    """

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


def evidence_is_unbounded(x2: np.ndarray, sigma: np.ndarray, rest: float, n: int, d: int) -> bool:
    """True when y lies in range(F) and F has rank below N: the evidence then has no maximum.

    ``log N(y; 0, I/beta + F F^T/alpha)``: as ``beta -> inf`` the covariance tends to
    ``F F^T/alpha``, singular when rank(F) = r < N, and y on its support has a density that grows
    without bound (duplicated texts do this when N <= d, for every class column that is equal on
    the duplicates). "In the span" to the precision of the rank decision:
    ``||y - U U^T y|| <= max(N, D) eps ||y||``. With r = N any y lies in range(F) but the limit is
    finite. Arguments as :func:`log_evidence`; a zero target (a class without texts) is left to the
    fixed point, as before.
    """
    norm2 = float(np.sum(x2)) + rest
    tol = max(n, d) * np.finfo(np.float64).eps
    return bool(sigma.size < n and 0.0 < norm2 and rest <= tol**2 * norm2)


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
    When :func:`evidence_is_unbounded`, returns ``log_evidence = beta = inf`` without iterating.
    """
    if evidence_is_unbounded(x2, sigma, rest, n, d):
        return Evidence(math.inf, alpha, math.inf, 0, False)
    s_max = float(sigma.max(initial=0.0))
    converged = False
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        gamma, m2, res2 = _evidence_terms(x2, sigma, rest, alpha, beta)
        ratio = alpha / beta
        # A target that F fits exactly (res2 = 0) or not at all (m2 = 0) has its supremum on the
        # boundary: stop at the last finite point rather than divide by zero.
        if m2 <= 0.0 or res2 <= 0.0 or n - gamma <= 0.0:
            break
        next_alpha, next_beta = gamma / m2, (n - gamma) / res2
        if not next_alpha + next_beta * s_max < _PRECISION_MAX:
            break
        alpha, beta = next_alpha, next_beta
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

    Raises
    ------
    PredictorUndefined
        When a class column lies in the span of features of rank below N
        (:func:`evidence_is_unbounded`; e.g. duplicated texts with N <= D): its evidence grows
        without bound as the noise variance goes to 0, and any finite value would be set by
        rounding.

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
    unbounded = []
    for label, column in enumerate(one_hot(y, n_classes).T):
        proj = u.T @ column
        x2 = proj**2
        rest = max(float(column @ column - x2.sum()), 0.0)
        if rest <= _REST_BY_SUBTRACTION_MIN * float(column @ column):
            residual = column - u @ proj  # accurate to rounding where the difference is not
            rest = float(residual @ residual)
        found = max_evidence(x2, sigma, rest, n, d, tol=tol, max_iter=max_iter)
        if math.isinf(found.log_evidence):
            unbounded.append(label)
        total += found.log_evidence / n
    if unbounded:
        raise PredictorUndefined(
            f"LogME undefined: the labels of class(es) {unbounded} lie in the span of the "
            f"features, whose rank {sigma.size} is below the {n} texts (duplicated texts?), so "
            "the evidence grows without bound as the noise variance goes to 0"
        )
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
    standardize: bool = False,
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
    standardize : bool
        Vote in the geometry of :func:`standardize_features`, whose means and SDs come from all
        the texts (no labels): otherwise Euclidean distances are those of the few channels with
        the largest variance. False here; the workflow's default is the config schema's.

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
    if standardize:
        x = standardize_features(x)
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


def predictor_value(
    name: str, features: np.ndarray, labels: np.ndarray, n_classes: int, **settings: Any
) -> tuple[float, str | None]:
    """``(value, None)``, or ``(NaN, reason)`` when the predictor is undefined on these features
    (:class:`~ntps.errors.PredictorUndefined`). Other errors propagate. Arguments as the
    predictor's ``compute``."""
    try:
        return predictor(name).compute(features, labels, n_classes, **settings), None
    except PredictorUndefined as exc:
        return math.nan, str(exc)
