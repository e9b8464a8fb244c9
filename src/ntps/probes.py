"""Held-out linear probes on pooled features.

Regularisation (stated because it changes the numbers):
- Logistic regression: L2, inverse strength C chosen by stratified k-fold cross-validation on the
  TRAIN split only from ``c_grid``. Layers differ in scale and conditioning by orders of magnitude and
  small training sets have N < d, where an unregularised fit separates the data perfectly; a fixed C
  would over-regularise some layers and under-regularise others. The test split is never seen while
  choosing C.
- Least squares on one-hot labels: ridge with alpha chosen by efficient leave-one-out CV on the
  train split (:func:`ridge_gcv`: the estimator of scikit-learn's ``RidgeCV``, computed from one
  eigendecomposition), for the same N < d reason (plain least squares interpolates the training
  labels and its held-out MSE is meaningless).
Features are standardised with train-split statistics. MSE is the mean over examples of the squared
error summed over classes, E||y - y_hat||^2, the loss the NTPS excess-loss bound is stated in; its
standard error ``mse_se`` is that of a mean over the test texts (:func:`ntps.analysis.mean_se`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

# scikit-learn is imported where a probe is fitted: the LoRA job takes its metrics from here and
# would otherwise pay ~1 s for an import it does not use.
if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

DEFAULT_C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
DEFAULT_RIDGE_ALPHAS: tuple[float, ...] = tuple(np.logspace(-2, 4, 13).tolist())


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float
    macro_f1: float
    mse: float
    # Standard error of the held-out MSE: of the mean of the per-text squared errors.
    mse_se: float
    train_accuracy: float
    train_mse: float
    logistic_c: float
    ridge_alpha: float
    n_train: int
    n_test: int
    n_classes: int
    chance_accuracy: float
    # The fitted logistic probe as a linear map of the RAW features (scaler folded in) and its test
    # predictions: what a LoRA head starts from. Not part of the JSON record.
    head_weight: np.ndarray | None = field(default=None, repr=False, compare=False)
    head_bias: np.ndarray | None = field(default=None, repr=False, compare=False)
    test_predictions: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, float | int]:
        skip = {"head_weight", "head_bias", "test_predictions"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


def folded_head(
    coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray, scale: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A logistic probe fitted on standardised features, as logits of the raw features.

    Parameters
    ----------
    coef : ndarray of shape (n_classes, d), or (1, d) for a binary probe
    intercept : ndarray of shape (n_classes,), or (1,)
    mean, scale : ndarray of shape (d,)
        The standardisation ``z = (x - mean) / scale`` the probe was fitted on.
    n_classes : int

    Returns
    -------
    weight : ndarray of shape (n_classes, d)
    bias : ndarray of shape (n_classes,)
        ``x @ weight.T + bias`` gives logits whose softmax equals the probe's class probabilities
        (a binary probe's single logit ``z`` becomes the pair ``(0, z)``).
    """
    weight = coef / scale[None, :]
    bias = intercept - weight @ mean
    if coef.shape[0] == 1 and n_classes == 2:
        weight = np.vstack([np.zeros_like(weight), weight])
        bias = np.concatenate([np.zeros_like(bias), bias])
    if weight.shape[0] != n_classes:
        raise ValueError(f"probe has {weight.shape[0]} logits for {n_classes} classes")
    return weight, bias


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> tuple[float, float]:
    """Accuracy and macro-F1 of predicted labels: the one definition of both for probes and LoRA.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,), labels in 0..n_classes-1
    n_classes : int
        Macro-F1 averages over all of 0..n_classes-1; a class never in ``y_true`` nor ``y_pred``
        scores 0.

    Returns
    -------
    accuracy, macro_f1 : float
        NaN for empty inputs. The values of scikit-learn's ``accuracy_score`` and
        ``f1_score(average="macro", labels=range(n_classes), zero_division=0)``, to the bit:
        per class F1 = 2 tp / (n_true + n_predicted).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.shape[0]} labels but {y_pred.shape[0]} predictions")
    if not y_true.size:
        return float("nan"), float("nan")
    hit = y_true == y_pred
    tp = np.bincount(y_true[hit], minlength=n_classes)[:n_classes].astype(np.float64)
    denominator = (
        np.bincount(y_true, minlength=n_classes)[:n_classes]
        + np.bincount(y_pred, minlength=n_classes)[:n_classes]
    ).astype(np.float64)
    f1 = np.divide(2.0 * tp, denominator, out=np.zeros(n_classes), where=denominator > 0)
    return float(np.mean(hit)), float(np.mean(f1))


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """One-hot matrix of shape (n_samples, n_classes), float64, from integer ``labels`` of shape
    (n_samples,) in ``0..n_classes-1``: the least-squares probe's targets."""
    out = np.zeros((labels.shape[0], n_classes), dtype=np.float64)
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out


def squared_errors(y_true_onehot: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-example squared error summed over classes: shape (n_samples,) from two
    (n_samples, n_classes) arrays."""
    return np.sum((y_true_onehot - y_pred) ** 2, axis=1)


def squared_error(y_true_onehot: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over examples of the squared error summed over classes."""
    return float(np.mean(squared_errors(y_true_onehot, y_pred)))


def ridge_gcv(
    x: np.ndarray, y: np.ndarray, alphas: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge regression with an intercept, alpha chosen by efficient leave-one-out CV.

    The estimator of scikit-learn's ``RidgeCV(alphas=alphas)`` (no sample weights, default
    scoring, ``alpha_per_target=False``, ``gcv_mode="auto"``): the same leave-one-out errors per
    alpha up to rounding, the same choice, and the chosen fit's coefficients by the same sequence
    of operations (the formulas are those of scikit-learn 1.9's ``_RidgeGCV``). ``RidgeCV`` in its
    ``n > d`` mode builds the d x d inverse and the diagonal of ``X H^-1 X^T`` anew for every alpha,
    O(n d^2) each; here one eigendecomposition ``Xc^T Xc = V diag(lam) V^T`` serves all alphas,
    with ``Xc V`` precomputed, so each alpha costs O(n d k). For ``n <= d`` it is the Gram form
    ``Xc Xc^T = Q diag(lam) Q^T``, as in ``RidgeCV``.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples, n_targets)
    alphas : sequence of float
        Candidate penalties, tried in the given order.

    Returns
    -------
    coef : ndarray of shape (n_targets, n_features)
    intercept : ndarray of shape (n_targets,)
        Predictions are ``x @ coef.T + intercept``.
    alpha : float
        The alpha of the smallest mean over samples and targets of the squared leave-one-out
        error; ties go to the first in ``alphas`` (``RidgeCV``'s strict ``>`` on the score).

    Notes
    -----
    With ``Xc``, ``yc`` the centred data and ``H = Xc^T Xc + alpha I``, the leave-one-out residual
    of sample i is ``(yc - Xc H^-1 Xc^T yc)_i / (1 - h_i - (1 - (Xc H^-1 Xc^T 1)_i) / n)`` with
    ``h_i = (Xc H^-1 Xc^T)_ii``: the hat matrix of ridge plus the unpenalised intercept. The
    ``Xc^T 1`` term is zero but for rounding; it is kept because ``RidgeCV`` keeps it.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be (n_samples, n_targets) with n_samples={x.shape[0]}")
    if not len(alphas):
        raise ValueError("ridge_gcv needs at least one alpha")
    n, d = x.shape
    # Centring as RidgeCV does it (mean of x and y; ones as the square-root sample weights).
    x_mean = np.mean(x, axis=0)
    xc = x - x_mean
    y_mean = np.mean(y, axis=0)
    yc = y - y_mean
    ones = np.ones(n)
    if n > d:
        lam, v = np.linalg.eigh(xc.T @ xc)
        xty = xc.T @ yc
        xv = xc @ v  # (n, d)
        xv2 = xv**2
        vt_xty = v.T @ xty  # (d, k)
        vt_xt1 = v.T @ (xc.T @ ones)  # (d,)

        def loo_score(alpha: float) -> float:
            inv = 1.0 / (lam + alpha)
            residual = yc - xv @ (inv[:, None] * vt_xty)
            denominator = 1.0 - xv2 @ inv - (1.0 - xv @ (inv * vt_xt1)) / n
            return float(np.mean(-((residual / denominator[:, None]) ** 2)))

        def coefficients(alpha: float) -> np.ndarray:
            # RidgeCV's own order of products, so the chosen fit matches it to the last bits.
            return ((v * (1.0 / (lam + alpha))) @ v.T) @ xty
    else:
        lam, q = np.linalg.eigh(xc @ xc.T)
        q2 = q**2
        qt_y = q.T @ yc  # (n, k)
        qt_1 = q.T @ ones  # (n,)

        def dual(alpha: float) -> tuple[np.ndarray, np.ndarray]:
            inv = 1.0 / (lam + alpha)
            c = q @ (inv[:, None] * qt_y)
            return c, q2 @ inv - (q @ (inv * qt_1)) / n

        def loo_score(alpha: float) -> float:
            c, denominator = dual(alpha)
            return float(np.mean(-((c / denominator[:, None]) ** 2)))

        def coefficients(alpha: float) -> np.ndarray:
            return xc.T @ dual(alpha)[0]

    best_alpha, best_score = None, None
    for alpha in map(float, alphas):
        score = loo_score(alpha)
        if best_score is None or score > best_score:
            best_alpha, best_score = alpha, score
    coef = coefficients(best_alpha).T
    return coef, y_mean - x_mean @ coef.T, best_alpha


def choose_logistic_c(
    x: np.ndarray, y: np.ndarray, c_grid: Sequence[float], n_folds: int, seed: int
) -> float:
    """Pick C by stratified CV accuracy on the training data (ties -> stronger regularisation)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    if len(c_grid) == 1:
        return float(c_grid[0])
    folds = min(n_folds, int(np.bincount(y).min()))
    if folds < 2:  # a class with a single training example: CV impossible, use the middle value
        return float(sorted(c_grid)[len(c_grid) // 2])
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    best_c, best_score = None, -np.inf
    for c in sorted(c_grid):
        score = cross_val_score(_logistic(c, seed), x, y, cv=cv, scoring="accuracy").mean()
        if score > best_score + 1e-12:
            best_c, best_score = c, score
    return float(best_c)


def _logistic(c: float, seed: int) -> LogisticRegression:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, random_state=seed)


def fit_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    n_classes: int,
    *,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    ridge_alphas: Sequence[float] = DEFAULT_RIDGE_ALPHAS,
    cv_folds: int = 3,
    seed: int = 0,
    keep_head: bool = False,
) -> ProbeResult:
    """Fit both probes on train, score on held-out test (and in-sample on train).

    With ``keep_head`` the result also carries the logistic probe folded onto the raw features
    (:func:`folded_head`) and its test predictions.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    from ntps.analysis.uncertainty import mean_se

    train_y = np.asarray(train_y, dtype=np.int64)
    test_y = np.asarray(test_y, dtype=np.int64)
    scaler = StandardScaler().fit(train_x.astype(np.float64))
    xtr = scaler.transform(train_x.astype(np.float64))
    xte = scaler.transform(test_x.astype(np.float64))

    with warnings.catch_warnings():
        # A few lbfgs iterations short of tolerance at large C do not change accuracy materially.
        warnings.simplefilter("ignore", ConvergenceWarning)
        c = choose_logistic_c(xtr, train_y, c_grid, cv_folds, seed)
        clf = _logistic(c, seed).fit(xtr, train_y)
    test_pred = clf.predict(xte)
    train_pred = clf.predict(xtr)

    ridge_coef, ridge_intercept, ridge_alpha = ridge_gcv(
        xtr, one_hot(train_y, n_classes), ridge_alphas
    )
    counts = np.bincount(test_y, minlength=n_classes)
    accuracy, macro_f1 = classification_metrics(test_y, test_pred, n_classes)
    test_errors = squared_errors(one_hot(test_y, n_classes), xte @ ridge_coef.T + ridge_intercept)
    return ProbeResult(
        accuracy=accuracy,
        macro_f1=macro_f1,
        mse=float(np.mean(test_errors)),
        mse_se=mean_se(test_errors),
        train_accuracy=classification_metrics(train_y, train_pred, n_classes)[0],
        train_mse=squared_error(one_hot(train_y, n_classes), xtr @ ridge_coef.T + ridge_intercept),
        logistic_c=c,
        ridge_alpha=ridge_alpha,
        n_train=int(train_y.shape[0]),
        n_test=int(test_y.shape[0]),
        n_classes=int(n_classes),
        chance_accuracy=float(counts.max() / counts.sum()),
        **(_head_fields(clf, scaler, test_pred, n_classes) if keep_head else {}),
    )


def _head_fields(clf, scaler, test_pred, n_classes: int) -> dict[str, np.ndarray]:
    classes = np.asarray(clf.classes_)
    if not np.array_equal(classes, np.arange(n_classes)):
        # A class absent from the train split has no logit; a head needs one per class.
        raise ValueError(f"probe saw classes {classes.tolist()}, expected 0..{n_classes - 1}")
    weight, bias = folded_head(clf.coef_, clf.intercept_, scaler.mean_, scaler.scale_, n_classes)
    return {"head_weight": weight, "head_bias": bias, "test_predictions": np.asarray(test_pred)}
