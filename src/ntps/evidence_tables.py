"""The study's evidence tables (``results/tables/evidence_*.csv``) and its generated verdict.

Built from the tables a study already writes (scores, probes, LoRA, predictor values and costs,
the per-model correlation tables); the maths (the selection of layer and k, the evidence
analyses) is in :mod:`ntps.analysis`. Pure functions of data frames: the rule ``evidence``
(rules/evidence.smk) reads and writes the files, the summary renders the text.

One frame feeds every view: :func:`evidence_pairs`, the (predictor value, target) point of every
(predictor, target, selection mode, model, dataset), with both sides' standard errors. From it:

* :func:`correlation_rows`: the per-model correlations (the study's correlation tables) with a CI
  that also carries the target's SE, the smallest detectable rho for their n and a reading;
* :func:`pooled_rows`: within-model rhos pooled over models, and one rho over all pairs;
* :func:`across_model_rows`: Kendall tau and weighted tau across models, per dataset;
* :func:`incremental_rows`: what NTPS adds beyond each baseline (fixed setting);
* :func:`target_noise_rows`: the targets' spread across datasets beside their own noise.

:func:`verdict` turns the headline rows into plain sentences (the summary's and the report's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ntps.analysis.across import across_models
from ntps.analysis.incremental import incremental_validity, lodo_incremental_prediction
from ntps.analysis.pooled import pooled_all_pairs, pooled_within_model
from ntps.analysis.power import (
    evidence_line,
    min_detectable_correlation,
    read_correlation,
    useful_tau,
)
from ntps.analysis.selection import selected_pairs
from ntps.analysis.uncertainty import NOISE_MULTIPLE, error_bootstrap_ci
from ntps.baselines import PREDICTORS
from ntps.errors import DatasetError
from ntps.layout import NTPS
from ntps.tables import n_layers_by_model

#: k label of a predictor without k (as in :mod:`ntps.predictors`).
NO_K = "-"


@dataclass(frozen=True)
class Target:
    """A target as the correlations see it: ``sign * column`` of ``table``, with its SE column."""

    column: str
    sign: int
    table: str  # "probes" or "lora"
    se_column: str
    words: str

    @property
    def name(self) -> str:
        return f"-{self.column}" if self.sign < 0 else self.column


TARGETS: tuple[Target, ...] = (
    Target("accuracy", 1, "probes", "accuracy_se", "probe accuracy"),
    Target("mse", -1, "probes", "mse_se", "probe MSE (sign flipped)"),
    Target("gain", -1, "lora", "gain_se", "LoRA gain (sign flipped)"),
)
TARGET_ORDER = {t.name: i for i, t in enumerate(TARGETS)}
MODE_ORDER = {"fixed": 0, "in_sample": 1, "lodo": 2}

#: Which end of each (signed) target weighted tau emphasises: the models a user would pick for a
#: dataset, i.e. the highest accuracy, the lowest MSE (top of -mse), the LARGEST LoRA gain (the
#: bottom of -gain). ``ntps.analysis.weighted_tau``'s "high" weights the largest values of both
#: predictor and target, "low" the smallest.
WEIGHTED_TAU_TOP = {"accuracy": "high", "-mse": "high", "-gain": "low"}


@dataclass(frozen=True)
class EvidenceSettings:
    """What the evidence tables take from the config (``analysis`` and ``evidence``)."""

    score: str = "ntps_reg"
    fixed_k: int | float = 0.25
    n_boot: int = 2000
    n_perm: int = 10000
    seed: int = 0
    useful: float = 0.5

    @classmethod
    def from_config(
        cls, analysis: Mapping[str, Any], evidence: Mapping[str, Any]
    ) -> EvidenceSettings:
        return cls(
            score=analysis["score"],
            fixed_k=analysis["fixed_k"],
            n_boot=int(analysis["n_bootstrap"]),
            n_perm=int(analysis["n_permutations"]),
            seed=int(analysis["seed"]),
            useful=float(evidence["useful_rho"]),
        )


def _sorted(frame: pd.DataFrame, predictors: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    """Rows in the study's order: predictors as listed (NTPS first), targets, then ``keys``."""
    if frame.empty:
        return frame.reset_index(drop=True)
    order = {name: i for i, name in enumerate(predictors)}
    helpers: dict[str, Any] = {}
    by: list[str] = []
    if "predictor" in frame.columns:
        helpers["_p"] = frame["predictor"].map(order)
        by.append("_p")
    if "target" in frame.columns:
        helpers["_t"] = frame["target"].map(TARGET_ORDER)
        by.append("_t")
    for key in keys:
        if key == "mode":
            helpers["_m"] = frame["mode"].map(MODE_ORDER)
            by.append("_m")
        else:
            by.append(key)
    out = frame.assign(**helpers).sort_values(by, kind="stable")
    return out.drop(columns=list(helpers)).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# The points every view correlates
# --------------------------------------------------------------------------------------------

PAIR_COLUMNS = (
    "predictor", "target", "mode", "model", "dataset", "layer", "k_label", "score", "score_se",
    "target_value", "target_se",
)  # fmt: skip


def _with_target_se(pairs: pd.DataFrame, table: pd.DataFrame, target: Target) -> pd.Series:
    """Each pair's target SE: the probe's at the pair's layer, or the pair's LoRA gain SE."""
    if target.se_column not in table.columns:
        return pd.Series(np.nan, index=pairs.index)
    keys = ["model", "dataset", "layer"] if "layer" in table.columns else ["model", "dataset"]

    def key_frame(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[keys].astype({"model": str, "dataset": str})
        return out.astype({"layer": float}) if "layer" in keys else out

    se = key_frame(table).assign(_se=table[target.se_column].astype(float).to_numpy())
    merged = key_frame(pairs).merge(se, on=keys, how="left", validate="many_to_one")
    return pd.Series(merged["_se"].to_numpy(float), index=pairs.index)


def evidence_pairs(
    scores: pd.DataFrame,
    probes: pd.DataFrame,
    lora: pd.DataFrame | None,
    values: pd.DataFrame | None,
    enabled: Sequence[str],
    fixed_layers: Mapping[str, int | float],
    settings: EvidenceSettings,
) -> pd.DataFrame:
    """The (predictor, target) point of every predictor, target, mode, model and dataset.

    NTPS (the headline score ``settings.score``, pre-LoRA) and every enabled baseline in
    ``values`` (the predictor values table: model, dataset, layer, predictor, value) against each
    target it applies to, in the three selection modes as the correlation tables select them
    (:func:`ntps.analysis.selected_pairs`): fixed (the model's ``fixed_layers`` entry and, for
    NTPS, ``settings.fixed_k``), in-sample best, leave-one-dataset-out.

    Returns
    -------
    DataFrame with columns ``PAIR_COLUMNS``: ``score`` and its SE (NTPS's jackknife SE; NaN for
    the baselines), ``target_value`` (signed: accuracy, -mse, -gain) and ``target_se`` (the
    probe's binomial accuracy SE or its MSE SE at the pair's layer, the gain's paired-bootstrap
    SE; NaN where the tables have none).
    """
    tables = {"probes": probes, "lora": lora}
    pre = scores[scores["stage"] == "pre_lora"] if "stage" in scores.columns else scores
    n_layers = n_layers_by_model(scores)
    parts = []
    for target in TARGETS:
        table = tables[target.table]
        if table is None or table.empty or target.column not in table.columns:
            continue
        # (name, its values, their column, the fixed k, the stage the values are filtered by)
        sources: list[tuple[str, pd.DataFrame, str, int | float | str, str | None]] = [
            (NTPS, pre, settings.score, settings.fixed_k, "pre_lora")
        ]
        for name in enabled:
            if values is None or target.column not in PREDICTORS[name].targets:
                continue
            own = values[values["predictor"] == name]
            if own.empty:
                continue
            frame = own.drop(columns="predictor").rename(columns={"value": name})
            sources.append((name, frame.assign(k_label=NO_K), name, NO_K, None))
        for name, frame, column, k, stage in sources:
            models = sorted(set(frame["model"]) & set(table["model"]))
            if not models:
                continue
            pairs = selected_pairs(
                frame[frame["model"].isin(models)],
                table,
                score_col=column,
                target_col=target.column,
                sign=target.sign,
                fixed={m: (fixed_layers[m], k) for m in models},
                n_layers=n_layers if name == NTPS else n_layers_by_model(frame),
                stage=stage,
            )
            pairs = pairs.rename(columns={"target": "target_value"})
            pairs = pairs.assign(predictor=name, target=target.name)
            pairs["target_se"] = _with_target_se(pairs, table, target)
            parts.append(pairs)
    if not parts:
        return pd.DataFrame(columns=list(PAIR_COLUMNS))
    out = pd.concat(parts, ignore_index=True)
    out["layer"] = out["layer"].astype(float)
    return _sorted(out[list(PAIR_COLUMNS)], [NTPS, *enabled], ["model", "mode", "dataset"])


# --------------------------------------------------------------------------------------------
# Per-model correlations: CI with the target's noise, power, reading
# --------------------------------------------------------------------------------------------

CORRELATION_COLUMNS = (
    "predictor", "model", "target", "mode", "layer", "k_label", "n_datasets", "rho", "tau",
    "ci_low", "ci_high", "ci_low_se", "ci_high_se", "ci_low_noise", "ci_high_noise", "p_value",
    "min_detectable", "reading",
)  # fmt: skip


def noise_ci(sub: pd.DataFrame, settings: EvidenceSettings) -> tuple[float, float]:
    """CI of one model's Spearman rho carrying the score's SE (where it has one) and the target's
    (:func:`ntps.analysis.error_bootstrap_ci`, same resamples as the plain dataset bootstrap)."""
    x_se = sub["score_se"].to_numpy(float)
    ci = error_bootstrap_ci(
        sub["score"],
        sub["target_value"],
        x_se if np.isfinite(x_se).any() else None,
        sub["target_se"],
        n_boot=settings.n_boot,
        seed=settings.seed,
    )
    return ci.low, ci.high


def correlation_rows(
    correlations: Sequence[pd.DataFrame | None],
    pairs: pd.DataFrame,
    predictors: Sequence[str],
    settings: EvidenceSettings,
) -> pd.DataFrame:
    """Every per-model correlation of the study, with what it takes to read it.

    ``correlations``: the study's per-model tables (correlations.csv and lora_correlations.csv
    for NTPS, predictors.csv for the baselines; a table without a ``predictor`` column is NTPS's;
    NTPS rows of predictors.csv are skipped, being copies). Adds ``ci_low_noise``,
    ``ci_high_noise`` (:func:`noise_ci` over the same points, from ``pairs``), ``min_detectable``
    (:func:`ntps.analysis.min_detectable_correlation` of n_datasets) and ``reading``
    (:func:`ntps.analysis.read_correlation` of the plain CI).

    Returns
    -------
    DataFrame with columns ``CORRELATION_COLUMNS``, one row per predictor, model, target, mode.
    """
    parts = []
    for table in correlations:
        if table is None or table.empty:
            continue
        if "predictor" in table.columns:
            table = table[table["predictor"] != NTPS]
        else:
            table = table.assign(predictor=NTPS)
        parts.append(table)
    if not parts:
        return pd.DataFrame(columns=list(CORRELATION_COLUMNS))
    rows = pd.concat(parts, ignore_index=True)
    for column in ("ci_low_se", "ci_high_se"):
        if column not in rows.columns:
            rows[column] = np.nan
    noise = {
        key: noise_ci(sub, settings)
        for key, sub in pairs.groupby(["predictor", "model", "target", "mode"], sort=False)
    }
    keys = zip(rows["predictor"], rows["model"], rows["target"], rows["mode"], strict=True)
    bounds = [noise.get(key, (math.nan, math.nan)) for key in keys]
    rows["ci_low_noise"] = [b[0] for b in bounds]
    rows["ci_high_noise"] = [b[1] for b in bounds]
    rows["min_detectable"] = [min_detectable_correlation(int(n)) for n in rows["n_datasets"]]
    rows["reading"] = [
        read_correlation(lo, hi, settings.useful)
        for lo, hi in zip(rows["ci_low"], rows["ci_high"], strict=True)
    ]
    rows["layer"] = rows["layer"].astype(str)
    return _sorted(rows[list(CORRELATION_COLUMNS)], predictors, ["model", "mode"])


# --------------------------------------------------------------------------------------------
# Pooled over models
# --------------------------------------------------------------------------------------------

POOLED_COLUMNS = (
    "predictor", "target", "mode", "view", "n_models", "n_datasets", "n_pairs", "rho", "ci_low",
    "ci_high", "n_boot_used", "p_value", "p_exact", "min_detectable", "reading", "rho_min",
    "rho_max", "rho_per_model", "models_dropped", "datasets_dropped", "reason",
)  # fmt: skip


def pooled_rows(
    pairs: pd.DataFrame, predictors: Sequence[str], settings: EvidenceSettings
) -> pd.DataFrame:
    """Per predictor, target and mode: the models' Spearman rhos pooled (view ``within_model``,
    :func:`ntps.analysis.pooled_within_model`) and one rho over all (model, dataset) pairs (view
    ``all_pairs``, :func:`ntps.analysis.pooled_all_pairs`; with fewer than 2 models only its
    ``reason``). ``min_detectable`` is each test's own (from its permutation distribution).

    Returns
    -------
    DataFrame with columns ``POOLED_COLUMNS``.
    """
    common = {"n_boot": settings.n_boot, "n_perm": settings.n_perm, "seed": settings.seed}
    records = []
    for (name, target, mode), sub in pairs.groupby(["predictor", "target", "mode"], sort=False):
        keys = {"predictor": name, "target": target, "mode": mode}
        within = pooled_within_model(sub, "score", "target_value", **common)
        reason = "" if within["n_models"] else "no model has a defined rho"
        records.append(
            {
                **keys,
                **within,
                "view": "within_model",
                "rho": within["rho_pooled"],
                "n_pairs": within["n_models"] * within["n_datasets"],
                "reason": reason,
            }
        )
        every = pooled_all_pairs(sub, "score", "target_value", **common)
        records.append(
            {
                **keys,
                **every,
                "view": "all_pairs",
                "rho_min": math.nan,
                "rho_max": math.nan,
                "rho_per_model": "",
                "models_dropped": "",
                "datasets_dropped": "",
            }
        )
    if not records:
        return pd.DataFrame(columns=list(POOLED_COLUMNS))
    table = pd.DataFrame(records)
    table["reading"] = [
        read_correlation(lo, hi, settings.useful)
        for lo, hi in zip(table["ci_low"], table["ci_high"], strict=True)
    ]
    views = {"within_model": 0, "all_pairs": 1}
    table = table.assign(_v=table["view"].map(views))
    return _sorted(table, predictors, ["mode", "_v"])[list(POOLED_COLUMNS)]


# --------------------------------------------------------------------------------------------
# Across models, per dataset
# --------------------------------------------------------------------------------------------

ACROSS_COLUMNS = (
    "predictor", "target", "mode", "top", "n_models", "n_datasets", "mean_tau", "tau_ci_low",
    "tau_ci_high", "mean_tau_w", "tau_w_ci_low", "tau_w_ci_high", "n_boot_used",
    "min_detectable", "reading", "reason",
)  # fmt: skip
ACROSS_DATASET_COLUMNS = (
    "predictor", "target", "mode", "dataset", "n_models", "tau", "tau_w", "reason",
)  # fmt: skip


def across_model_rows(
    pairs: pd.DataFrame, predictors: Sequence[str], settings: EvidenceSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Which model should I pick for a dataset? Per predictor, target and mode: Kendall tau and
    weighted tau across models per dataset (:func:`ntps.analysis.across_models`, top-weighted at
    ``WEIGHTED_TAU_TOP`` of the target), and their means over datasets with bootstrap CIs.

    With fewer than 3 models every row is empty and its ``reason`` says why. ``min_detectable``:
    the smallest |tau| one dataset's tau over n_models models can reach p < 0.05 with (NaN up to
    4 models); ``reading``: the mean tau's CI against the tau that goes with the useful rho
    (:func:`ntps.analysis.useful_tau`).

    Returns
    -------
    (summary, per_dataset): DataFrames with columns ``ACROSS_COLUMNS`` and
    ``ACROSS_DATASET_COLUMNS``.
    """
    bar = useful_tau(settings.useful)
    summaries, details = [], []
    for (name, target, mode), sub in pairs.groupby(["predictor", "target", "mode"], sort=False):
        keys = {"predictor": name, "target": target, "mode": mode}
        result = across_models(
            sub,
            "score",
            "target_value",
            top=WEIGHTED_TAU_TOP[target],
            n_boot=settings.n_boot,
            seed=settings.seed,
        )
        summary = result.summary
        summaries.append(
            {
                **keys,
                **summary,
                "min_detectable": min_detectable_correlation(
                    summary["n_models"], statistic="kendall"
                ),
                "reading": read_correlation(
                    summary["tau_ci_low"], summary["tau_ci_high"], bar, "tau"
                ),
            }
        )
        details.append(result.per_dataset.assign(**keys))
    if not summaries:
        return (
            pd.DataFrame(columns=list(ACROSS_COLUMNS)),
            pd.DataFrame(columns=list(ACROSS_DATASET_COLUMNS)),
        )
    summary_table = _sorted(pd.DataFrame(summaries), predictors, ["mode"])
    per_dataset = _sorted(pd.concat(details, ignore_index=True), predictors, ["mode", "dataset"])
    return summary_table[list(ACROSS_COLUMNS)], per_dataset[list(ACROSS_DATASET_COLUMNS)]


# --------------------------------------------------------------------------------------------
# Incremental validity
# --------------------------------------------------------------------------------------------

INCREMENTAL_COLUMNS = (
    "target", "baseline", "n_models", "n_datasets", "partial_rho", "ci_low", "ci_high",
    "n_boot_used", "p_value", "p_exact", "min_detectable", "reading", "rho_predictor_target",
    "rho_baseline_target", "rho_predictor_baseline", "scope", "mae_mean", "mae_baseline",
    "mae_baseline_predictor", "predictor_lowers_mae", "partial_per_model", "models_dropped",
)  # fmt: skip
INCREMENTAL_LODO_COLUMNS = (
    "target", "baseline", "scope", "n_rows", "n_datasets", "mae_mean", "mae_baseline",
    "mae_baseline_predictor", "predictor_lowers_mae",
)  # fmt: skip


def _with_baseline(pairs: pd.DataFrame, target: str, baseline: str) -> pd.DataFrame:
    """NTPS's fixed-setting points of ``target`` with ``baseline``'s value beside them."""
    fixed = pairs[(pairs["mode"] == "fixed") & (pairs["target"] == target)]
    ntps = fixed[fixed["predictor"] == NTPS][["model", "dataset", "score", "target_value"]]
    other = fixed[fixed["predictor"] == baseline][["model", "dataset", "score", "target_value"]]
    frame = ntps.merge(
        other.rename(columns={"score": "baseline", "target_value": "baseline_target"}),
        on=["model", "dataset"],
    )
    # At the fixed setting both sit at the same layer, so a probe target is the same number.
    a, b = frame["target_value"].to_numpy(float), frame["baseline_target"].to_numpy(float)
    if not np.allclose(a, b, rtol=0, atol=1e-12, equal_nan=True):
        raise DatasetError(
            f"target {target!r}: NTPS and {baseline} are not paired with the same target values "
            f"at the fixed setting (their fixed layers differ?)"
        )
    return frame.drop(columns="baseline_target")


def incremental_rows(
    pairs: pd.DataFrame, baselines: Sequence[str], settings: EvidenceSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Does NTPS carry information beyond each baseline? At the fixed setting, per target and
    baseline: the partial Spearman of NTPS with the target given the baseline, pooled over models
    (:func:`ntps.analysis.incremental_validity`), and leave-one-dataset-out MAE of the target
    from the baseline alone vs the baseline and NTPS
    (:func:`ntps.analysis.lodo_incremental_prediction`). The summary row carries the MAEs of the
    scope over all models (``pooled`` with several models, else the model's own).

    Returns
    -------
    (summary, lodo): DataFrames with columns ``INCREMENTAL_COLUMNS`` and
    ``INCREMENTAL_LODO_COLUMNS`` (every scope).
    """
    summaries, lodo_parts = [], []
    present = set(zip(pairs["predictor"], pairs["target"], strict=True))
    for target in TARGETS:
        for baseline in baselines:
            if (NTPS, target.name) not in present or (baseline, target.name) not in present:
                continue
            frame = _with_baseline(pairs, target.name, baseline)
            if frame.empty:
                continue
            keys = {"target": target.name, "baseline": baseline}
            record = incremental_validity(
                frame,
                "score",
                "target_value",
                "baseline",
                n_boot=settings.n_boot,
                n_perm=settings.n_perm,
                seed=settings.seed,
            )
            lodo = lodo_incremental_prediction(frame, "score", "target_value", "baseline")
            headline = lodo.iloc[-1].to_dict() if len(lodo) else {"scope": ""}
            summaries.append(
                {
                    **keys,
                    **record,
                    "reading": read_correlation(
                        record["ci_low"], record["ci_high"], settings.useful
                    ),
                    **{k: v for k, v in headline.items() if k in INCREMENTAL_COLUMNS},
                }
            )
            lodo_parts.append(lodo.assign(**keys))
    if not summaries:
        return (
            pd.DataFrame(columns=list(INCREMENTAL_COLUMNS)),
            pd.DataFrame(columns=list(INCREMENTAL_LODO_COLUMNS)),
        )
    summary = pd.DataFrame(summaries).reindex(columns=list(INCREMENTAL_COLUMNS))
    return summary, pd.concat(lodo_parts, ignore_index=True)[list(INCREMENTAL_LODO_COLUMNS)]


# --------------------------------------------------------------------------------------------
# Target noise
# --------------------------------------------------------------------------------------------

TARGET_NOISE_COLUMNS = (
    "target", "model", "n_datasets", "value_min", "value_max", "sd_across_datasets", "mean_se",
    "sd_over_mean_se", "n_within_noise",
)  # fmt: skip


def target_noise_rows(pairs: pd.DataFrame, lora: pd.DataFrame | None) -> pd.DataFrame:
    """How much each target varies across datasets beside its own measurement noise.

    Per target and model at the fixed setting (NTPS's points: the probe metrics at the fixed
    layer, the LoRA gain per dataset), values unsigned (accuracy, MSE, gain): their range and SD
    across datasets, the mean of their SEs, and the ratio. A target whose spread is within its
    noise (ratio near 1 or below) cannot be ranked by any predictor. ``n_within_noise``: LoRA
    gains within ``NOISE_MULTIPLE`` SE of 0 (lora.csv's ``gain_within_noise``); NaN for the probe
    metrics.

    Returns
    -------
    DataFrame with columns ``TARGET_NOISE_COLUMNS``.
    """
    fixed = pairs[(pairs["predictor"] == NTPS) & (pairs["mode"] == "fixed")]
    signs = {t.name: t.sign for t in TARGETS}
    rows = []
    for (target, model), sub in fixed.groupby(["target", "model"], sort=False):
        values = signs[target] * sub["target_value"].to_numpy(float)
        se = sub["target_se"].to_numpy(float)
        sd = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
        mean_se = float(np.mean(se)) if np.isfinite(se).all() and se.size else math.nan
        within = math.nan
        if target == "-gain" and lora is not None and "gain_within_noise" in lora.columns:
            within = int(lora.loc[lora["model"] == model, "gain_within_noise"].astype(bool).sum())
        rows.append(
            {
                "target": target,
                "model": model,
                "n_datasets": int(values.size),
                "value_min": float(values.min()) if values.size else math.nan,
                "value_max": float(values.max()) if values.size else math.nan,
                "sd_across_datasets": sd,
                "mean_se": mean_se,
                "sd_over_mean_se": sd / mean_se if mean_se > 0 else math.nan,
                "n_within_noise": within,
            }
        )
    if not rows:
        return pd.DataFrame(columns=list(TARGET_NOISE_COLUMNS))
    return _sorted(pd.DataFrame(rows), [NTPS], ["model"])[list(TARGET_NOISE_COLUMNS)]


# --------------------------------------------------------------------------------------------
# All tables at once
# --------------------------------------------------------------------------------------------

#: The evidence tables by name (the rule's output keys; ``results/tables/evidence_<name>.csv``).
EVIDENCE_TABLES = (
    "targets", "correlations", "pooled", "across_models", "across_models_datasets", "incremental",
    "incremental_lodo", "pairs",
)  # fmt: skip


def evidence_tables(
    scores: pd.DataFrame,
    probes: pd.DataFrame,
    correlations: Sequence[pd.DataFrame | None],
    fixed_layers: Mapping[str, int | float],
    settings: EvidenceSettings,
    *,
    lora: pd.DataFrame | None = None,
    values: pd.DataFrame | None = None,
    enabled: Sequence[str] = (),
) -> dict[str, pd.DataFrame]:
    """Every evidence table of a study, by the names in ``EVIDENCE_TABLES``.

    ``scores``, ``probes``, ``lora`` (None without LoRA) and ``values`` (the predictor values
    table; None with the predictors off) as the study's tables; ``correlations`` its per-model
    correlation tables (see :func:`correlation_rows`); ``enabled`` the baselines
    (``predictors.enabled``). Deterministic for a given ``settings.seed``.
    """
    baselines = list(enabled) if values is not None else []
    predictors = [NTPS, *baselines]
    pairs = evidence_pairs(scores, probes, lora, values, baselines, fixed_layers, settings)
    across, across_datasets = across_model_rows(pairs, predictors, settings)
    incremental, incremental_lodo = incremental_rows(pairs, baselines, settings)
    return {
        "targets": target_noise_rows(pairs, lora),
        "correlations": correlation_rows(correlations, pairs, predictors, settings),
        "pooled": pooled_rows(pairs, predictors, settings),
        "across_models": across,
        "across_models_datasets": across_datasets,
        "incremental": incremental,
        "incremental_lodo": incremental_lodo,
        "pairs": pairs,
    }


# --------------------------------------------------------------------------------------------
# Costs: the cheapest baseline that tracks a target
# --------------------------------------------------------------------------------------------


def cost_per_pair(costs: pd.DataFrame) -> dict[str, float]:
    """Mean seconds per (model, dataset) of each predictor: its compute time where the
    predictors job timed it (``seconds``), else the wall time of the job that makes it
    (``job_seconds``: the probe job for the probe accuracy)."""
    out = {}
    for name, sub in costs.groupby("predictor", sort=False):
        compute = sub["seconds"].to_numpy(float)
        job = sub["job_seconds"].to_numpy(float)
        if np.isfinite(compute).any():
            out[str(name)] = float(np.nanmean(compute))
        elif np.isfinite(job).any():
            out[str(name)] = float(np.nanmean(job))
    return out


#: Costs within this factor of the cheapest count as equal: sub-second compute times vary between
#: runs by more than their differences, and the choice must not follow that noise.
COST_TOLERANCE = 2.0


def cheapest_tracking_baseline(
    pooled: pd.DataFrame,
    baselines: Sequence[str],
    costs: Mapping[str, float],
    target: str,
    useful: float,
) -> tuple[str, float, float] | None:
    """The cheapest baseline whose pooled within-model rho with ``target`` at the fixed setting
    reaches ``useful`` (the bar a pre-screen must pass): (name, rho, seconds per pair), or None.

    Costs within ``COST_TOLERANCE`` of the cheapest tracking baseline's count as equal; among
    those the one with the highest rho, then the first in ``baselines``. A baseline without a
    cost comes last."""
    rows = pooled[
        (pooled["target"] == target)
        & (pooled["mode"] == "fixed")
        & (pooled["view"] == "within_model")
    ].set_index("predictor")
    tracking = []
    for index, name in enumerate(baselines):
        if name not in rows.index:
            continue
        rho = float(rows.loc[name, "rho"])
        if math.isfinite(rho) and rho >= useful:
            cost = float(costs.get(name, math.inf))
            tracking.append((cost if math.isfinite(cost) else math.inf, index, name, rho))
    if not tracking:
        return None
    cheapest = min(cost for cost, *_ in tracking)
    near = [t for t in tracking if t[0] <= COST_TOLERANCE * cheapest or t[0] == cheapest]
    cost, _, name, rho = min(near, key=lambda t: (-t[3], t[1]))
    return name, rho, cost


# --------------------------------------------------------------------------------------------
# Plain words
# --------------------------------------------------------------------------------------------


def _target_words(name: str) -> str:
    return next(t.words for t in TARGETS if t.name == name)


def plain_reading(reading: str, what: str, useful: float) -> str:
    """What a reading means for NTPS as a pre-screen of ``what``, in one clause."""
    u = f"{useful:.2g}"
    if reading.startswith("positive evidence: CI excludes rho <"):
        return f"NTPS tracks {what} well enough to pre-screen it"
    if reading.startswith("positive evidence"):
        return f"NTPS tracks {what}, but whether well enough to pre-screen it (rho >= {u}) is open"
    if reading.startswith("weak positive"):
        return f"NTPS tracks {what}, but too weakly to pre-screen it"
    if reading.startswith("negative evidence") and "reversed" in reading:
        return f"NTPS runs against {what}: not a usable pre-screen of it"
    if reading.startswith("negative evidence"):
        return f"NTPS is not a usable pre-screen of {what} (rho >= {u} is excluded)"
    if reading.startswith("inconclusive"):
        return f"this study cannot tell whether NTPS pre-screens {what}"
    return f"no reading for {what}: the correlation is undefined"


def incremental_sentence(
    incremental: pd.DataFrame,
    pooled: pd.DataFrame,
    costs: Mapping[str, float],
    baselines: Sequence[str],
    target: str,
    useful: float,
) -> str | None:
    """Whether NTPS adds information about ``target`` beyond the cheapest baseline that tracks
    it, from the incremental-validity numbers; None when no baseline applies to the target."""
    candidates = [
        b
        for b in baselines
        if ((incremental["target"] == target) & (incremental["baseline"] == b)).any()
    ]
    if not candidates:
        return None
    what = _target_words(target)
    chosen = cheapest_tracking_baseline(pooled, candidates, costs, target, useful)
    if chosen is None:
        return (
            f"No baseline tracks {what}: none reaches a pooled rho >= {useful:.2g} at the fixed "
            "setting, so there is no cheaper pre-screen for NTPS to add to."
        )
    name, rho, cost = chosen
    row = incremental[(incremental["target"] == target) & (incremental["baseline"] == name)].iloc[0]
    spent = f"{cost:.2g} s per pair" if math.isfinite(cost) else "cost not measured"
    head = f"The cheapest baseline that tracks {what} is {name} (pooled rho {rho:.2f}, {spent})"
    mae = (
        f"leave-one-dataset-out MAE from {name} alone {row['mae_baseline']:.3g}, from {name} and "
        f"NTPS {row['mae_baseline_predictor']:.3g}"
    )
    low, high = float(row["ci_low"]), float(row["ci_high"])
    if not (math.isfinite(float(row["partial_rho"])) and math.isfinite(low)):
        why = (
            f"{name} orders the datasets exactly as {what} does, so nothing is left to explain"
            if rho >= 1 - 1e-9
            else "too few datasets, or ranks that leave no residual"
        )
        return f"{head}: the partial rho of NTPS given {name} is undefined ({why}); {mae}."
    partial = (
        f"given {name}, NTPS's partial rho with {what} is {row['partial_rho']:.2f} "
        f"[{low:.2f}, {high:.2f}], p = {row['p_value']:.2g}"
    )
    lowers = bool(row["predictor_lowers_mae"])
    if low > 0 and lowers:
        conclusion = f"NTPS adds information beyond {name}"
    elif low > 0:
        conclusion = (
            f"the partial correlation is positive but does not improve out-of-sample prediction: "
            f"weak evidence that NTPS adds information beyond {name}"
        )
    elif high < 0:
        conclusion = f"given {name}, NTPS runs against the target: it adds nothing useful"
    else:
        conclusion = (
            f"no evidence that NTPS adds information beyond {name} (the partial CI spans 0)"
        )
    return f"{head}: {partial}; {mae}. So {conclusion}."


@dataclass(frozen=True)
class Verdict:
    """The verdict in plain sentences: an introduction, one bullet per piece of evidence, and the
    overall conclusion. :func:`verdict_markdown` and :func:`verdict_rst` render it."""

    intro: str
    bullets: tuple[str, ...]
    overall: str


def _pooled_row(pooled: pd.DataFrame, target: str, view: str) -> pd.Series | None:
    rows = pooled[
        (pooled["predictor"] == NTPS)
        & (pooled["target"] == target)
        & (pooled["mode"] == "fixed")
        & (pooled["view"] == view)
    ]
    return rows.iloc[0] if len(rows) else None


def _pooled_line(row: pd.Series, useful: float) -> str:
    """A pooled row's evidence line: value, CI, what its test can detect, its reading."""
    models = int(row["n_models"])
    if row["view"] == "within_model":
        n = int(row["n_datasets"])
        unit = "datasets, 1 model" if models == 1 else f"datasets, mean of {models} models"
    else:
        n = int(row["n_pairs"])
        unit = f"(model, dataset) pairs of {int(row['n_datasets'])} datasets"
    return evidence_line(
        n,
        float(row["rho"]),
        float(row["ci_low"]),
        float(row["ci_high"]),
        unit=unit,
        useful=useful,
        threshold=float(row["min_detectable"]),
    )


def _reason(row: pd.Series) -> str:
    """A row's ``reason``, or "" where there is none (NaN once the table went through CSV)."""
    value = row.get("reason")
    return value if isinstance(value, str) else ""


def verdict(
    pooled: pd.DataFrame,
    across: pd.DataFrame,
    noise: pd.DataFrame,
    incremental: pd.DataFrame,
    costs: Mapping[str, float],
    baselines: Sequence[str],
    useful: float,
) -> Verdict:
    """The study's verdict on NTPS, generated from its evidence tables.

    The evidence is NTPS at the setting fixed in the config before any result was seen (the
    selection that is neither optimistic nor re-chosen per dataset), within model across
    datasets, pooled over models (:func:`pooled_rows`): one bullet per target with its evidence
    line (rho, CI, the smallest rho this n can show, the reading). For the first target present
    (probe accuracy): the all-pairs rho, the across-model view (:func:`across_model_rows`) or why
    it is absent, and what NTPS adds beyond the cheapest baseline that tracks the target
    (:func:`incremental_sentence`). For the LoRA gain: how many gains are within their noise. The
    overall sentence is the first target's reading in plain words (:func:`plain_reading`).
    """
    bullets = []
    targets = [t.name for t in TARGETS if _pooled_row(pooled, t.name, "within_model") is not None]
    if not targets:
        return Verdict("No verdict: NTPS has no correlation at the fixed setting.", (), "")
    first = _pooled_row(pooled, targets[0], "within_model")
    intro = (
        f"Generated from the numbers below: NTPS at the setting fixed in the config, "
        f"{int(first['n_models'])} model(s) x {int(first['n_datasets'])} datasets; a pre-screen "
        f"counts as useful from rho >= {useful:.2g}."
    )
    for target in targets:
        row = _pooled_row(pooled, target, "within_model")
        text = f"{_target_words(target)}: {_pooled_line(row, useful)}."
        if target == "-gain":
            gains = noise[noise["target"] == "-gain"]
            within = gains["n_within_noise"].to_numpy(float)
            if len(gains) and np.isfinite(within).all():
                k, n = int(within.sum()), int(gains["n_datasets"].sum())
                text += (
                    f" {k} of {n} gains are within {NOISE_MULTIPLE:g} SE of 0 (paired bootstrap "
                    "over the test texts)"
                    + (
                        ": most gains are not measured well enough to be predicted."
                        if 2 * k > n
                        else "."
                    )
                )
        bullets.append(text)
    primary = targets[0]
    words = _target_words(primary)
    every = _pooled_row(pooled, primary, "all_pairs")
    if every is not None:
        if _reason(every):
            bullets.append(
                f"All (model, dataset) pairs in one correlation, {words}: not judged: {_reason(every)}."
            )
        else:
            bullets.append(
                f"All (model, dataset) pairs in one correlation, {words}: "
                f"{_pooled_line(every, useful)}."
            )
    rows = across[
        (across["predictor"] == NTPS) & (across["target"] == primary) & (across["mode"] == "fixed")
    ]
    if len(rows):
        row = rows.iloc[0]
        if np.isfinite(float(row["mean_tau"])):
            bullets.append(
                f"Across models, per dataset (which model to pick), {words}: mean tau = "
                f"{row['mean_tau']:.2f} [{row['tau_ci_low']:.2f}, {row['tau_ci_high']:.2f}], "
                f"weighted tau {row['mean_tau_w']:.2f}, over {int(row['n_datasets'])} datasets of "
                f"{int(row['n_models'])} models: {row['reading']}"
                + (f" ({_reason(row)})" if _reason(row) else "")
                + "."
            )
        else:
            bullets.append(
                f"Across models, per dataset (which model to pick), {words}: not judged: {row['reason']}."
            )
    beyond = incremental_sentence(incremental, pooled, costs, baselines, primary, useful)
    if beyond is not None:
        bullets.append(beyond)
    overall = (
        f"Overall, at the fixed setting: {plain_reading(str(first['reading']), words, useful)}"
    )
    if str(first["reading"]).startswith("inconclusive"):
        overall += (
            f" (the pooled rho's 95% CI [{float(first['ci_low']):.2f}, "
            f"{float(first['ci_high']):.2f}] spans both signs and reaches {useful:.2g})"
        )
    return Verdict(intro, tuple(bullets), overall + ".")


def verdict_markdown(v: Verdict) -> list[str]:
    """The verdict as Markdown lines: intro, bullets, overall."""
    return [v.intro, "", *(f"- {b}" for b in v.bullets), "", f"**{v.overall}**"]


_RST_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\*`|_"})


def verdict_rst(v: Verdict) -> str:
    """The verdict as reStructuredText, characters docutils would read as markup escaped (the
    report's landing page includes it)."""

    def esc(text: str) -> str:
        return text.translate(_RST_SPECIAL)

    lines = [f"**Verdict.** {esc(v.intro)}", ""]
    lines += [f"- {esc(b)}" for b in v.bullets]
    lines += ["", f"**{esc(v.overall)}**", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class StudyEvidence:
    """What the summary renders of the evidence: the tables (by the names in
    ``EVIDENCE_TABLES``; at least targets, correlations, pooled, across_models, incremental),
    the baselines' cost per pair (:func:`cost_per_pair`), the baselines in config order and the
    useful rho."""

    tables: Mapping[str, pd.DataFrame]
    costs: Mapping[str, float]
    baselines: Sequence[str]
    useful: float

    def verdict(self) -> Verdict:
        return verdict(
            self.tables["pooled"],
            self.tables["across_models"],
            self.tables["targets"],
            self.tables["incremental"],
            self.costs,
            self.baselines,
            self.useful,
        )

    def incremental_sentences(self) -> list[str]:
        """:func:`incremental_sentence` for every target with a baseline."""
        out = []
        for target in TARGETS:
            sentence = incremental_sentence(
                self.tables["incremental"],
                self.tables["pooled"],
                self.costs,
                self.baselines,
                target.name,
                self.useful,
            )
            if sentence is not None:
                out.append(sentence)
        return out
