"""NTPS scores paired with a target metric, and one model's pairs as (layer, k) x dataset matrices.

Pairing rule (:func:`pair_with_target`): a target table with a ``layer`` column (linear probes) is
matched to NTPS of the SAME layer, as the paper correlates NTPS at layer l with the probe fitted on
layer l; a target table without ``layer`` (LoRA gain, one number per model/dataset) is matched to
every layer's NTPS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ntps.analysis._inputs import require_columns
from ntps.analysis.layer_k import k_label
from ntps.errors import ConfigError, DatasetError


def signed_target_name(target_col: str, sign: int) -> str:
    """The target's name as correlated: "-mse" for ``target_col`` "mse" with ``sign`` -1."""
    return f"-{target_col}" if sign < 0 else target_col


def pair_with_target(
    scores: pd.DataFrame,
    targets: pd.DataFrame,
    score_col: str,
    target_col: str,
    sign: int = 1,
    stage: str | None = "pre_lora",
) -> pd.DataFrame:
    """Join NTPS scores with a target metric, one row per (model, dataset, layer, k_label).

    Pairing rule: if ``targets`` has a ``layer`` column (probe metrics) the target of layer l is
    paired with NTPS of layer l ("same_layer"); otherwise (LoRA gain) the single per-dataset target
    is paired with every layer ("per_dataset"). ``stage`` filters the scores' ``stage`` column
    (None keeps all; the table must then hold one stage). Columns out: model, dataset, layer,
    k_label, k_order, score, score_se (the ``<score_col>_se`` column if the table has one, else NaN),
    target, pairing.
    """
    if sign not in (1, -1):
        raise ConfigError(f"sign must be +1 or -1, got {sign}")
    require_columns(scores, ["model", "dataset", "layer", score_col], "scores")
    require_columns(targets, ["model", "dataset", target_col], "targets")
    s = scores
    if stage is not None and "stage" in s.columns:
        s = s[s["stage"] == stage]
        if s.empty:
            raise DatasetError(
                f"scores table has no rows with stage == {stage!r}; "
                f"stages present: {sorted(scores['stage'].unique())}"
            )
    s = s.copy()
    if "k_label" not in s.columns:
        require_columns(s, ["k_spec"], "scores")
        s["k_label"] = [k_label(k) for k in s["k_spec"]]
    # Order k settings numerically where k_spec is known (fractions < 1 before counts >= 1).
    s["k_order"] = s["k_spec"].astype(float) if "k_spec" in s.columns else np.nan
    keys = ["model", "dataset", "layer", "k_label"]
    dup = s.duplicated(keys, keep=False)
    if dup.any():
        first = s.loc[dup, keys].iloc[0].to_dict()
        raise DatasetError(
            f"scores table has duplicate rows for {first} (column 'stage' may be mixed; "
            f"pass stage=...)"
        )
    same_layer = "layer" in targets.columns
    t_keys = ["model", "dataset", "layer"] if same_layer else ["model", "dataset"]
    t = targets[[*t_keys, target_col]].copy()
    if t.duplicated(t_keys).any():
        first = t.loc[t.duplicated(t_keys, keep=False), t_keys].iloc[0].to_dict()
        raise DatasetError(f"targets table has duplicate rows for {first} (column {target_col!r})")
    t["target"] = sign * t[target_col].astype(float)
    se_col = f"{score_col}_se"
    s["score_se"] = s[se_col].astype(float) if se_col in s.columns else np.nan
    merged = s[[*keys, "k_order", score_col, "score_se"]].merge(
        t[[*t_keys, "target"]], on=t_keys, how="inner"
    )
    if merged.empty:
        raise DatasetError(
            f"no (model, dataset{', layer' if same_layer else ''}) rows are shared by the scores "
            f"and targets tables (target column {target_col!r}); check model and dataset names"
        )
    merged = merged.rename(columns={score_col: "score"})
    merged["score"] = merged["score"].astype(float)
    merged["pairing"] = "same_layer" if same_layer else "per_dataset"
    return merged.reset_index(drop=True)


@dataclass(frozen=True)
class Grid:
    """One model's paired data as settings x datasets matrices (complete settings only)."""

    settings: list[tuple[int, str]]
    datasets: list[str]
    score: np.ndarray
    target: np.ndarray
    score_se: np.ndarray


def model_grid(paired: pd.DataFrame) -> Grid:
    """One model's rows of :func:`pair_with_target` as a :class:`Grid`: settings in layer, then k
    order; datasets sorted by name; settings missing a dataset left out."""
    settings_frame = (
        paired[["layer", "k_label", "k_order"]]
        .drop_duplicates(["layer", "k_label"])
        .sort_values(["layer", "k_order", "k_label"], na_position="last")
    )
    settings = [(int(r.layer), str(r.k_label)) for r in settings_frame.itertuples()]
    datasets = sorted(paired["dataset"].unique())
    index = pd.MultiIndex.from_tuples(settings, names=["layer", "k_label"])
    score = paired.pivot_table(
        index=["layer", "k_label"], columns="dataset", values="score", aggfunc="first"
    ).reindex(index=index, columns=datasets)
    target = paired.pivot_table(
        index=["layer", "k_label"], columns="dataset", values="target", aggfunc="first"
    ).reindex(index=index, columns=datasets)
    score_se = paired.pivot_table(
        index=["layer", "k_label"], columns="dataset", values="score_se", aggfunc="first",
        dropna=False,
    ).reindex(index=index, columns=datasets)  # fmt: skip
    s = score.to_numpy(dtype=float)
    t = target.to_numpy(dtype=float)
    # A setting missing any dataset cannot be compared fairly with the others: drop it.
    complete = np.isfinite(s).all(axis=1) & np.isfinite(t).all(axis=1)
    return Grid(
        [st for st, ok in zip(settings, complete, strict=True) if ok],
        datasets,
        s[complete],
        t[complete],
        score_se.to_numpy(dtype=float)[complete],
    )
