"""Transferability baselines in the study's tables: tidy tables of the predictors' values and
costs, and their judgement beside NTPS with the same machinery
(:func:`ntps.analysis.select_layer_k`).

The estimators themselves are pure functions in :mod:`ntps.baselines`; the per-pair job that
computes and times them on the cached features is :mod:`ntps.stages.predictors`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ntps.analysis import select_layer_k
from ntps.baselines import PREDICTORS, SOURCE_FEATURES
from ntps.io import read_json
from ntps.layout import NTPS, pair_of
from ntps.tables import n_layers_by_model, pair_from_path

#: k label of a predictor without k: only the layer is chosen.
NO_K = "-"
#: The workflow job whose values each kind of predictor comes from (column ``job``).
JOB_OF = {NTPS: "score", "probes": "probe", SOURCE_FEATURES: "predictors"}
#: NTPS with its standard errors takes two jobs per pair: the jackknife replicates, then the score.
NTPS_JOBS = ("jackknife", "score")

# (target column, sign, table it comes from): as the NTPS correlations, a positive rho always
# means "the predictor agrees with the task being easy".
TARGETS: tuple[tuple[str, int, str], ...] = (
    ("accuracy", 1, "probes"),
    ("mse", -1, "probes"),
    ("gain", -1, "lora"),
)

PREDICTOR_COLUMNS = (
    "model", "predictor", "target", "mode", "optimistic", "layer", "k_label", "picks", "pairing",
    "n_datasets", "rho", "tau", "ci_low", "ci_high", "n_boot_used", "p_value", "seconds_per_pair",
    "job", "job_seconds_per_pair",
)  # fmt: skip


# --- tables ---------------------------------------------------------------------------------


def predictor_values_table(
    paths: Iterable[str | Path], probes: pd.DataFrame, enabled: Sequence[str]
) -> pd.DataFrame:
    """One row per (model, dataset, layer, predictor): the predictor's value.

    Predictors read from the probe stage (held-out probe accuracy) come from ``probes``.
    Columns: model, dataset, layer, predictor, value.
    """
    rows = []
    for path in paths:
        data = read_json(path)
        model, dataset = pair_of(data)
        for record in data["records"]:
            rows.append({"model": model, "dataset": dataset, **record})
    frame = pd.DataFrame(rows, columns=["model", "dataset", "layer", "predictor", "value"])
    parts = [frame[frame["predictor"].isin(enabled)]]
    for name in enabled:
        if PREDICTORS[name].source == "probes":
            part = probes[["model", "dataset", "layer", "accuracy"]].rename(
                columns={"accuracy": "value"}
            )
            parts.append(part.assign(predictor=name))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return frame.iloc[:0]
    out = pd.concat(parts, ignore_index=True)
    order = {name: i for i, name in enumerate(enabled)}
    out = out.assign(_order=out["predictor"].map(order)).sort_values(
        ["model", "_order", "dataset", "layer"], kind="stable"
    )
    return out.drop(columns="_order")[
        ["model", "dataset", "layer", "predictor", "value"]
    ].reset_index(drop=True)


def benchmark_seconds(path: str | Path) -> float:
    """Wall seconds of one job from its Snakemake benchmark file (column ``s``)."""
    return float(pd.read_csv(path, sep="\t")["s"].iloc[0])


def predictor_costs_table(
    predictor_paths: Iterable[str | Path],
    score_paths: Iterable[str | Path],
    enabled: Sequence[str],
    benchmarks: Mapping[str, Iterable[str | Path]],
) -> pd.DataFrame:
    """Cost of each predictor and of NTPS per (model, dataset), in two measures.

    ``seconds``: compute only, with the inputs in memory: each baseline's timed inside the
    predictors job (``predictor_paths``), NTPS's (every layer and k, without the released column
    and the jackknife SEs) inside the score job (``score_paths``, the pre-LoRA score JSONs); the
    probe accuracy is not timed apart from its job (NaN), nor is a pair without a score JSON or
    without its time in it. ``job_seconds``:
    wall time of the workflow job that produces the values in a study (``job``: score, probe or
    predictors, the last shared by all feature predictors; NTPS: jackknife+score, the sum of both
    jobs where the jackknife ran), from its Snakemake benchmark, so including start-up and reading
    inputs. ``benchmarks`` maps job name -> benchmark files.
    Columns: model, dataset, predictor, seconds, job, job_seconds.
    """
    walls = {
        (job, *pair_from_path(path)): benchmark_seconds(path)
        for job, paths in benchmarks.items()
        for path in paths
    }
    ntps_seconds = {}
    for path in score_paths:
        data = read_json(path)
        ntps_seconds[pair_of(data)] = data.get("seconds", {}).get(NTPS, np.nan)
    rows = []
    for path in predictor_paths:
        data = read_json(path)
        model, dataset = pair_of(data)
        timed = {**data["seconds"], NTPS: ntps_seconds.get((model, dataset), np.nan)}
        for name in [NTPS, *enabled]:
            jobs = [JOB_OF[PREDICTORS[name].source]] if name != NTPS else [
                job for job in NTPS_JOBS if (job, model, dataset) in walls
            ] or [JOB_OF[NTPS]]  # fmt: skip
            rows.append(
                {
                    "model": model,
                    "dataset": dataset,
                    "predictor": name,
                    "seconds": float(timed.get(name, np.nan)),
                    "job": "+".join(jobs),
                    "job_seconds": sum(walls.get((job, model, dataset), np.nan) for job in jobs),
                }
            )
    columns = ["model", "dataset", "predictor", "seconds", "job", "job_seconds"]
    return pd.DataFrame(rows, columns=columns)


def judge_predictors(
    values: pd.DataFrame,
    probes: pd.DataFrame,
    analysis: Mapping[str, Any],
    fixed_layers: Mapping[str, int | float],
    lora: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Spearman rho of every predictor with each target it applies to, in the three modes.

    Same machinery and settings as NTPS (``analysis``: bootstrap, permutations, seed); the fixed
    mode uses the model's fixed layer from the config, and with no k only the layer is selected.
    Targets: held-out probe ``accuracy`` and ``-mse`` (same layer), ``-gain`` (LoRA, per dataset)
    where LoRA ran.
    """
    tables = {"probes": probes, "lora": lora}
    fixed = {model: (layer, NO_K) for model, layer in fixed_layers.items()}
    parts = []
    for name, sub in values.groupby("predictor", sort=False):
        scores = sub.assign(k_label=NO_K).rename(columns={"value": name})
        for target, sign, table in TARGETS:
            targets = tables[table]
            if target not in PREDICTORS[name].targets or targets is None or targets.empty:
                continue
            models = sorted(set(scores["model"]) & set(targets["model"]))
            if not models:
                continue
            result = select_layer_k(
                scores[scores["model"].isin(models)], targets, score_col=name, target_col=target,
                sign=sign, fixed={m: fixed[m] for m in models}, n_layers=n_layers_by_model(scores),
                stage=None, n_boot=analysis["n_bootstrap"], n_perm=analysis["n_permutations"],
                seed=analysis["seed"],
            )  # fmt: skip
            parts.append(result.assign(predictor=name))
    if not parts:
        return pd.DataFrame(
            columns=[c for c in PREDICTOR_COLUMNS if not c.endswith("per_pair") and c != "job"]
        )
    return pd.concat(parts, ignore_index=True)


def predictors_table(
    judged: pd.DataFrame,
    ntps_correlations: Sequence[pd.DataFrame],
    costs: pd.DataFrame,
    enabled: Sequence[str],
) -> pd.DataFrame:
    """The tidy comparison: NTPS's rows (from the correlation tables) and every predictor's, with
    the mean seconds per pair beside each. One row per (model, predictor, target, mode)."""
    ntps_rows = [
        c.assign(predictor=NTPS) for c in ntps_correlations if c is not None and not c.empty
    ]
    table = pd.concat([*ntps_rows, judged], ignore_index=True)
    mean_cost = (
        costs.groupby(["model", "predictor"], sort=False)
        .agg(
            seconds_per_pair=("seconds", "mean"),
            job=("job", "first"),
            job_seconds_per_pair=("job_seconds", "mean"),
        )
        .reset_index()
    )
    table = table.merge(mean_cost, on=["model", "predictor"], how="left")
    order = {name: i for i, name in enumerate([NTPS, *enabled])}
    targets = {"accuracy": 0, "-mse": 1, "-gain": 2}
    modes = {"fixed": 0, "in_sample": 1, "lodo": 2}
    table = table.assign(
        _p=table["predictor"].map(order),
        _t=table["target"].map(targets),
        _m=table["mode"].map(modes),
    ).sort_values(["model", "_p", "_t", "_m"], kind="stable")
    table["layer"] = table["layer"].astype(str)
    return table[list(PREDICTOR_COLUMNS)].reset_index(drop=True)
