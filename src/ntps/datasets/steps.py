"""The pure steps of preparation, one table at a time: check columns, filter, join text columns,
clean, encode labels, stratified split and caps. No I/O."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ntps.datasets.readers import SURROGATE_RE
from ntps.errors import ConfigError, DatasetError

INT_RE = re.compile(r"^[+-]?\d+$")


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def canonical_value(value: Any) -> str | None:
    """Label/filter value as a comparable string: ``1``, ``"1"``, ``1.0`` -> ``"1"``; missing -> None."""
    if _is_missing(value):
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # numpy scalar
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def check_columns(
    frame: pd.DataFrame, required: Sequence[str], *, dataset: str, where: str = "source table"
) -> None:
    """Raise DatasetError naming the missing columns and listing those that exist."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"dataset {dataset!r}: column(s) {missing} not found in the {where}; "
            f"available columns: {[str(c) for c in frame.columns]}"
        )


def join_text_columns(
    frame: pd.DataFrame, columns: Sequence[str], separator: str = " ", *, dataset: str = "?"
) -> pd.Series:
    """One text per row: the non-missing, non-empty values of ``columns`` joined by ``separator``."""
    check_columns(frame, columns, dataset=dataset)
    parts = [frame[c].tolist() for c in columns]
    texts = []
    for row in zip(*parts, strict=True):
        pieces = [str(v) for v in row if not _is_missing(v) and str(v) != ""]
        texts.append(separator.join(pieces))
    # object dtype: texts may still hold undecodable bytes (surrogates) that pandas' str dtype rejects.
    return pd.Series(texts, index=frame.index, dtype=object)


def filter_mask(frame: pd.DataFrame, spec: Mapping[str, Any], *, dataset: str = "?") -> np.ndarray:
    """Boolean keep-mask for ``{column, include|exclude: [values]}`` (values compared canonically).

    The spec's shape (a column, exactly one of include/exclude) is the config schema's to check.
    """
    column = spec["column"]
    has_inc = "include" in spec
    check_columns(frame, [column], dataset=dataset, where="source table (filter column)")
    values = {canonical_value(v) for v in spec["include" if has_inc else "exclude"]}
    hits = np.array([canonical_value(v) in values for v in frame[column]], dtype=bool)
    return hits if has_inc else ~hits


def clean_texts(texts: Sequence[Any] | pd.Series) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """Strip texts; flag missing/empty/whitespace-only and undecodable ones.

    Returns (stripped texts, keep mask, counts ``{"empty": n, "undecodable": n}``).
    """
    cleaned: list[str] = []
    keep = np.ones(len(texts), dtype=bool)
    counts = {"empty": 0, "undecodable": 0}
    for i, value in enumerate(texts):
        text = "" if _is_missing(value) else str(value).strip()
        if not text:
            keep[i] = False
            counts["empty"] += 1
        elif SURROGATE_RE.search(text):
            keep[i] = False
            counts["undecodable"] += 1
        cleaned.append(text)
    return cleaned, keep, counts


def _label_sort_key(values: Sequence[str]) -> list[str]:
    if all(INT_RE.match(v) for v in values):
        return sorted(values, key=int)
    return sorted(values)


def encode_labels(
    values: Sequence[Any] | pd.Series,
    label_values: Sequence[Any] | None = None,
    *,
    dataset: str = "?",
) -> tuple[np.ndarray, list[str]]:
    """Map labels to int64 codes 0..c-1; return (codes, label names).

    Without ``label_values`` the distinct labels are sorted (numerically if all are integers);
    with it, its order defines the codes and any label outside it raises DatasetError.
    """
    canon = [canonical_value(v) for v in values]
    if any(v is None for v in canon):
        raise DatasetError(f"dataset {dataset!r}: missing label values; drop them before encoding")
    if label_values is None:
        names = _label_sort_key(sorted(set(canon)))  # type: ignore[arg-type]
    else:
        names = [canonical_value(v) for v in label_values]  # type: ignore[misc]
        if len(set(names)) != len(names) or any(n is None for n in names):
            raise ConfigError(
                f"dataset {dataset!r}: label_values must be distinct and non-empty, got {list(label_values)}"
            )
        unknown = pd.Series([v for v in canon if v not in set(names)], dtype=object)
        if len(unknown):
            top = unknown.value_counts().head(10)
            found = ", ".join(f"{k!r} ({n} rows)" for k, n in top.items())
            raise DatasetError(
                f"dataset {dataset!r}: labels outside the declared label_values {names}: {found}. "
                "Add them to label_values or remove those rows with a filter."
            )
    index = {name: i for i, name in enumerate(names)}
    codes = np.array([index[v] for v in canon], dtype=np.int64)
    return codes, list(names)  # type: ignore[arg-type]


def _allocate(quota: np.ndarray, total: int, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Integers within [lower, upper] summing to ``total``, each as close to ``quota`` as possible.

    Largest-remainder rounding: every class ends within one of its quota unless a bound forces it.
    """
    if lower.sum() > total or upper.sum() < total:
        raise DatasetError(f"cannot allocate {total} examples within bounds {lower} .. {upper}")
    alloc = np.clip(np.floor(quota).astype(np.int64), lower, upper)
    while alloc.sum() < total:  # at most n_classes rounds of +1
        gap = np.where(alloc < upper, quota - alloc, -np.inf)
        alloc[int(np.argmax(gap))] += 1
    while alloc.sum() > total:
        gap = np.where(alloc > lower, alloc - quota, -np.inf)
        alloc[int(np.argmax(gap))] -= 1
    return alloc


def stratified_split(
    labels: Sequence[int] | np.ndarray, test_fraction: float, seed: int
) -> np.ndarray:
    """Boolean test mask: per class ~``test_fraction`` (within 1 example), >= 1 in each split.

    Every class needs >= 2 examples (DatasetError otherwise). Deterministic for a given seed.
    """
    labels = np.asarray(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    small = [(int(c), int(n)) for c, n in zip(classes, counts, strict=True) if n < 2]
    if small:
        raise DatasetError(
            f"classes with fewer than 2 examples cannot be split into train and test: {small} "
            "(class, count)"
        )
    n_total = len(labels)
    n_test = int(
        np.clip(math.floor(test_fraction * n_total + 0.5), len(classes), n_total - len(classes))
    )
    alloc = _allocate(n_test * counts / n_total, n_test, np.ones_like(counts), counts - 1)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(n_total, dtype=bool)
    for k in range(len(classes)):
        members = np.flatnonzero(inverse == k)
        is_test[rng.permutation(members)[: alloc[k]]] = True
    return is_test


def stratified_subsample(labels: Sequence[int] | np.ndarray, max_n: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_n`` examples keeping class proportions (within 1 example).

    Every class keeps >= 1 example, so ``max_n`` must be >= the number of classes present.
    """
    labels = np.asarray(labels)
    if max_n >= len(labels):
        return np.arange(len(labels))
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if max_n < len(classes):
        raise DatasetError(
            f"a cap of {max_n} examples cannot keep each of the {len(classes)} classes; "
            f"raise the cap to at least {len(classes)}"
        )
    alloc = _allocate(max_n * counts / len(labels), max_n, np.ones_like(counts), counts)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(inverse == k), size=int(alloc[k]), replace=False)
        for k in range(len(classes))
    ]
    return np.sort(np.concatenate(chosen))
