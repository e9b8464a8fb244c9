"""The (model, dataset) frames of the study-level analyses: checked, as matrices, grouped."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ntps.errors import DatasetError


@dataclass(frozen=True)
class Matrices:
    """Value columns of a (model, dataset) frame as (n_models, n_datasets) matrices.

    Only datasets where every model has a finite value in every column are kept.
    """

    models: list[str]
    datasets: list[str]
    values: dict[str, np.ndarray]
    dropped_datasets: list[str]


def require_pairs(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """The frame has model, dataset and ``columns``, and one row per (model, dataset)."""
    missing = [c for c in ["model", "dataset", *columns] if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{what} frame lacks column(s) {missing}; it has {sorted(map(str, frame.columns))}"
        )
    dup = frame.duplicated(["model", "dataset"], keep=False)
    if dup.any():
        first = frame.loc[dup, ["model", "dataset"]].iloc[0].to_dict()
        raise DatasetError(
            f"{what} frame has several rows for {first}: one row per (model, dataset) is expected "
            f"(filter by target, mode, layer or predictor first)"
        )


def matrices(frame: pd.DataFrame, columns: Sequence[str], what: str) -> Matrices:
    require_pairs(frame, columns, what)
    frame = frame.assign(model=frame["model"].astype(str), dataset=frame["dataset"].astype(str))
    models = sorted(frame["model"].unique())
    datasets = sorted(frame["dataset"].unique())
    mats = {}
    for col in columns:
        wide = frame.pivot(index="model", columns="dataset", values=col)
        mats[col] = wide.reindex(index=models, columns=datasets).to_numpy(dtype=float)
    complete = np.ones(len(datasets), dtype=bool)
    for mat in mats.values():
        complete &= np.isfinite(mat).all(axis=0)
    return Matrices(
        models,
        [d for d, ok in zip(datasets, complete, strict=True) if ok],
        {col: mat[:, complete] for col, mat in mats.items()},
        [d for d, ok in zip(datasets, complete, strict=True) if not ok],
    )


def grouped(
    frame: pd.DataFrame, by: Sequence[str], func: Callable[[pd.DataFrame], dict[str, Any]]
) -> pd.DataFrame:
    """One record per group of ``by`` (all rows when ``by`` is empty), keys first."""
    by = list(by)
    missing = [c for c in by if c not in frame.columns]
    if missing:
        raise DatasetError(f"cannot group by {missing}: the frame has {sorted(frame.columns)}")
    if not by:
        return pd.DataFrame([func(frame)])
    records = []
    for keys, sub in frame.groupby(by, sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        records.append({**dict(zip(by, keys, strict=True)), **func(sub)})
    return pd.DataFrame(records)
