"""The study's quick-look summary (results/summary.md) and the comparison with the paper's numbers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ntps.analysis.checks import baseline_position, bound_check
from ntps.analysis.layer_k import k_label, rows_at_setting
from ntps.analysis.power import min_detectable_correlation
from ntps.analysis.uncertainty import NOISE_MULTIPLE
from ntps.evidence_tables import StudyEvidence, verdict_markdown
from ntps.reference import paper_lora_frame, short_model_name

MODE_LABELS = {
    "fixed": "fixed in config",
    "in_sample": "in-sample best (optimistic)",
    "lodo": "leave-one-dataset-out",
}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _ci(low: Any, high: Any) -> str:
    return f"[{_fmt(float(low), 2)}, {_fmt(float(high), 2)}]"


def correlation_view(
    correlations: pd.DataFrame, evidence: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Selection-mode table: one row per model, target and mode with rho, CI and p.

    With ``evidence`` (evidence_correlations.csv) also the CI carrying the target's SE, the
    smallest rho that reaches p < 0.05 with the row's n, and the reading.
    """
    extra = None
    if evidence is not None and not evidence.empty:
        own = evidence[evidence["predictor"] == "ntps"].set_index(["model", "target", "mode"])
        keys = list(
            zip(correlations["model"], correlations["target"], correlations["mode"], strict=True)
        )
        extra = own.reindex(keys)
    view = correlations.copy()
    view["setting"] = [
        "varies by dataset" if mode == "lodo" and layer == "varies" else f"layer {layer}, k {klab}"
        for mode, layer, klab in zip(view["mode"], view["layer"], view["k_label"], strict=True)
    ]
    view["mode"] = view["mode"].map(MODE_LABELS)
    view["95% CI"] = [
        f"[{_fmt(lo, 2)}, {_fmt(hi, 2)}]"
        for lo, hi in zip(view["ci_low"], view["ci_high"], strict=True)
    ]
    columns = ["model", "target", "mode", "setting", "n_datasets", "rho", "95% CI"]
    if "ci_low_se" in view.columns and np.isfinite(view["ci_low_se"].to_numpy(float)).any():
        view["95% CI with SE"] = [
            f"[{_fmt(lo, 2)}, {_fmt(hi, 2)}]"
            for lo, hi in zip(view["ci_low_se"], view["ci_high_se"], strict=True)
        ]
        columns.append("95% CI with SE")
    if extra is None:
        return view[[*columns, "tau", "p_value"]]
    view["95% CI with target SE"] = [
        _ci(lo, hi) for lo, hi in zip(extra["ci_low_noise"], extra["ci_high_noise"], strict=True)
    ]
    view["rho for p < 0.05"] = [_fmt(float(v), 2) for v in extra["min_detectable"]]
    view["reading"] = extra["reading"].fillna("").to_numpy()
    return view[
        [*columns, "95% CI with target SE", "tau", "p_value", "rho for p < 0.05", "reading"]
    ]


#: The released column and its rounding spread, as the summary's tables carry them.
RELEASED_COLUMNS = ("ntps_released", "ntps_released_min", "ntps_released_max", "ntps_released_sd")


def _released_fields(row: pd.Series) -> dict[str, float]:
    return {column: float(row.get(column, np.nan)) for column in RELEASED_COLUMNS}


def with_released_spread(frame: pd.DataFrame) -> pd.DataFrame:
    """The Markdown view of a table with :data:`RELEASED_COLUMNS`: ``ntps_released`` as "0.41
    (0.40-0.46)" (its min-max over the roundings) where a spread exists, the spread columns
    dropped."""
    if "ntps_released" not in frame.columns:
        return frame
    view = frame.copy()
    low = view.get("ntps_released_min", pd.Series(np.nan, index=view.index))
    high = view.get("ntps_released_max", pd.Series(np.nan, index=view.index))
    view["ntps_released"] = [
        _fmt(float(value))
        if not (np.isfinite(lo) and np.isfinite(hi))
        else f"{_fmt(float(value), 2)} ({lo:.2f}-{hi:.2f})"
        for value, lo, hi in zip(
            view["ntps_released"], low.to_numpy(float), high.to_numpy(float), strict=True
        )
    ]
    return view.drop(columns=[c for c in RELEASED_COLUMNS[1:] if c in view.columns])


def paper_comparison(
    scores: pd.DataFrame,
    probes: pd.DataFrame,
    reference: pd.DataFrame,
    reference_names: Mapping[str, str],
    analysis: Mapping[str, Any],
    fixed_layers: Mapping[str, int | float],
    lora: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Ours beside the paper's, for the datasets both studies use.

    The paper's rows give its Fig. 2 NTPS and in-sample probe accuracy and its Fig. 3 LoRA gain;
    ours give NTPS at the fixed setting, held-out and in-sample probe accuracy at that layer, and
    the LoRA gain where LoRA ran. Models differ between the studies, so this compares levels and
    orderings across datasets, not the same numbers.
    """
    rows = []
    fig2 = reference[reference["figure"] == "fig2_accuracy"]
    fig3 = paper_lora_frame(reference)
    for ours, theirs in reference_names.items():
        for _, ref in fig2[fig2["dataset"] == theirs].iterrows():
            gain = fig3[(fig3["model"] == ref["model"]) & (fig3["dataset"] == theirs)]["gain"]
            rows.append({
                "dataset": ours, "study": "paper", "model": short_model_name(ref["model"]),
                "setting": "paper's per-figure choice", "ntps": ref["ntps"],
                **dict.fromkeys(RELEASED_COLUMNS, np.nan),
                "probe_accuracy_test": np.nan, "probe_accuracy_train": ref["value"],
                "lora_gain": float(gain.iloc[0]) if len(gain) else np.nan,
            })  # fmt: skip
        for model, layer_spec in fixed_layers.items():
            at, layer = rows_at_setting(scores, model, layer_spec, analysis["fixed_k"])
            row = at[at["dataset"] == ours]
            if row.empty:
                continue
            probe = probes[
                (probes["model"] == model)
                & (probes["dataset"] == ours)
                & (probes["layer"] == layer)
            ]
            gain = np.nan
            if lora is not None and not lora.empty:
                match = lora[(lora["model"] == model) & (lora["dataset"] == ours)]["gain"]
                gain = float(match.iloc[0]) if len(match) else np.nan
            rows.append({
                "dataset": ours, "study": "ours", "model": model,
                "setting": f"layer {layer}, k {k_label(analysis['fixed_k'])}",
                "ntps": float(row[analysis["score"]].iloc[0]),
                **_released_fields(row.iloc[0]),
                "probe_accuracy_test": float(probe["accuracy"].iloc[0]),
                "probe_accuracy_train": float(probe["train_accuracy"].iloc[0]), "lora_gain": gain,
            })  # fmt: skip
    return pd.DataFrame(rows)


def _fixed_setting_rows(
    scores: pd.DataFrame, analysis: Mapping[str, Any], fixed_layers: Mapping[str, int | float]
) -> Iterator[tuple[str, int, pd.Series]]:
    """(model, layer, score row) per model and dataset at the model's fixed (layer, k)."""
    for model, layer_spec in fixed_layers.items():
        at, layer = rows_at_setting(scores, model, layer_spec, analysis["fixed_k"])
        for _, row in at.iterrows():
            yield model, layer, row


def magnitude_table(scores: pd.DataFrame, analysis: Mapping[str, Any],
                    fixed_layers: Mapping[str, int | float]) -> pd.DataFrame:  # fmt: skip
    """Per model and dataset at the fixed setting: NTPS with its jackknife SE, the released
    convention's value, the random-subspace baseline and where NTPS sits between them."""
    score_col = analysis["score"]
    return pd.DataFrame(
        {
            "model": model,
            "dataset": row["dataset"],
            "layer": layer,
            "ntps": row[score_col],
            "ntps_se": row.get(f"{score_col}_se", np.nan),
            **_released_fields(row),
            "baseline": row["baseline"],
            "position": float(baseline_position(row[score_col], row["baseline"])),
        }
        for model, layer, row in _fixed_setting_rows(scores, analysis, fixed_layers)
    )


def bounds_table(
    scores: pd.DataFrame, analysis: Mapping[str, Any], fixed_layers: Mapping[str, int | float]
) -> pd.DataFrame:
    """Per model and dataset at the fixed setting: exact excess loss, both bounds, their ratio and
    whether the lower bound is exactly 0 (rank-deficient Cxx)."""
    return pd.DataFrame(
        {
            "model": model,
            "dataset": row["dataset"],
            "layer": layer,
            "excess_loss": float(row["excess_loss"]),
            "bound_lower": row["bound_lower"],
            "bound_upper": row["bound_upper"],
            "upper_over_exact": (
                float(row["bound_upper"]) / float(row["excess_loss"])
                if float(row["excess_loss"]) > 0
                else np.nan
            ),
            "lower_bound_zero": bool(row.get("lower_bound_zero", False)),
        }
        for model, layer, row in _fixed_setting_rows(scores, analysis, fixed_layers)
    )


def bounds_lines(bounds: pd.DataFrame) -> list[str]:
    """The bounds in plain words: how loose the upper bound is, and where the lower one is 0."""
    if bounds.empty:
        return []
    zero = bounds[bounds["lower_bound_zero"]]
    ratio = bounds["upper_over_exact"].to_numpy(float)
    ratio = ratio[np.isfinite(ratio)]
    lines = [
        "## Excess-loss bounds at the fixed setting",
        "",
        markdown_table(bounds),
        "",
        "The theorem brackets the exact excess loss L(P_k) - L* of a probe restricted to the "
        "top-k next-token subspace between lambda_min(Cxx) and lambda_max(Cxx) times "
        "||W*||^2 (1 - NTPS_reg). "
        + (
            f"Here the upper bound is {np.min(ratio):.3g} to {np.max(ratio):.3g} times the exact "
            "value (`upper_over_exact`): the spread of Cxx's eigenvalues, not slack in NTPS. "
            if ratio.size
            else ""
        ),
    ]
    if zero.empty:
        lines[-1] += "Cxx has full rank in every pair, so the lower bound is informative."
    else:
        lines[-1] += (
            f"In {len(zero)} of {len(bounds)} pairs Cxx is rank-deficient (fewer training texts "
            "than dimensions, or dependent features), so lambda_min(Cxx) = 0 and the lower bound "
            "is exactly 0 (`lower_bound_zero`): it says nothing there."
        )
    return [*lines, ""]


RELEASED_EXPLANATION = (
    "`ntps` is this tool's score ({score}: the top-k generalized eigenvectors, float64, "
    "eigenvalue cut-off from the statistics' precision); `ntps_se` its delete-a-shard jackknife "
    "standard error over the training texts ({shards} shards; differences between datasets "
    "within about two SE are noise). `ntps_released` is the paper form computed exactly as the "
    "authors' released code does (float32, scipy's `eigh`, an absolute 1e-8 cut-off when "
    "whitening, k = int(f x columns) for U and V separately, and no reordering of scipy's "
    "ascending eigenvalues, so it uses the SMALLEST generalized eigenvectors). Those lie in the "
    "perception problem's null space (Cxy Cxy^T has rank <= c) and among the next-token "
    "problem's least-determined directions, where float32 rounding, not the statistics, picks "
    "the vectors: `ntps_released` moves with the BLAS thread count, the LAPACK driver and the "
    "last bit of its inputs, and at high fractions it approaches 1 for any model because both "
    "subspaces then cover most of R^d. {spread}This is where the paper's ~0.85-0.95 values come "
    "from; it is shown for comparison only, never used as the headline."
)

RELEASED_SPREAD = (
    "In parentheses: its range over rounding to nearest and {roundings} seeded random float32 "
    "roundings of the same statistics (`ntps_released_min`, `ntps_released_max`; the SD is in "
    "`magnitudes.csv`); its digits inside that range are rounding, and so are differences between "
    "datasets inside it. Other LAPACK drivers move it further (docs/method.md section 7). "
)


def _released_spread_text(scores: pd.DataFrame) -> str:
    """:data:`RELEASED_SPREAD` with the number of roundings behind it ("" without a spread)."""
    if "released_roundings" not in scores.columns:
        return ""
    roundings = int(pd.to_numeric(scores["released_roundings"]).fillna(0).max() or 0)
    return RELEASED_SPREAD.format(roundings=roundings) if roundings else ""


def regime_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, dataset) of the pre-LoRA scores: N_train, d, N_train / d and the regime."""
    pre = scores[scores["stage"] == "pre_lora"]
    table = (
        pre.groupby(["model", "dataset"], sort=True)[["n_train", "hidden_size", "regime"]]
        .first()
        .reset_index()
    )
    table["texts_per_dimension"] = table["n_train"] / table["hidden_size"]
    return table


def regime_lines(scores: pd.DataFrame) -> list[str]:
    """The summary's statement on the N_train vs d regime, in plain words."""
    from ntps.regime import MIN_TEXTS_PER_DIMENSION, REGIME_OK, regime_warning

    table = regime_table(scores)
    bad = table[table["regime"] != REGIME_OK]
    if bad.empty:
        low = table.loc[table["texts_per_dimension"].idxmin()]
        return [
            f"Every pair has at least {MIN_TEXTS_PER_DIMENSION} training texts per hidden dimension "
            f"(fewest: {int(low['n_train'])} texts for d = {int(low['hidden_size'])}, "
            f"{low['model']} x {low['dataset']}), the regime in which Cxx is estimated well "
            "enough for NTPS to describe the model rather than the sample size.",
            "",
        ]
    first = bad.iloc[0]
    return [
        "## WARNING: too few training texts for NTPS",
        "",
        f"{len(bad)} of {len(table)} (model, dataset) pairs have fewer than "
        f"{MIN_TEXTS_PER_DIMENSION} training texts per hidden dimension (column `regime` of "
        "scores.csv). In plain words: "
        + str(regime_warning(int(first["n_train"]), int(first["hidden_size"]))),
        "",
        markdown_table(bad[["model", "dataset", "n_train", "hidden_size", "regime"]]),
        "",
    ]


LORA_SUMMARY_COLUMNS = [
    "model", "dataset", "loss_first_quarter", "loss_last_quarter", "learned",
    "lora_accuracy_at_start", "lora_accuracy", "majority_rate", "probe_accuracy_last_layer", "gain",
    "gain_se", "gain_within_noise",
]  # fmt: skip


PREDICTOR_VIEW_MODES = (("fixed", "fixed"), ("lodo", "LODO"))


def predictor_view(predictors: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, predictor): seconds per pair, then rho [95% CI] per target and mode
    (fixed in config and leave-one-dataset-out; the in-sample best is in the CSV)."""
    rows = []
    for (model, name), group in predictors.groupby(["model", "predictor"], sort=False):
        first = group.iloc[0]
        row: dict[str, Any] = {
            "model": model,
            "predictor": name,
            "compute s / pair": _fmt(float(first["seconds_per_pair"]), 3),
            "job s / pair": f"{_fmt(float(first['job_seconds_per_pair']), 1)} ({first['job']})",
        }
        for target in ("accuracy", "-mse", "-gain"):
            for mode, label in PREDICTOR_VIEW_MODES:
                hit = group[(group["target"] == target) & (group["mode"] == mode)]
                if hit.empty:
                    continue
                r = hit.iloc[0]
                row[f"{target} {label}"] = (
                    f"{_fmt(float(r['rho']), 2)} [{_fmt(float(r['ci_low']), 2)}, {_fmt(float(r['ci_high']), 2)}]"
                )
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def predictor_lines(predictors: pd.DataFrame | None) -> list[str]:
    """The summary's section on NTPS beside the transferability baselines."""
    if predictors is None or predictors.empty:
        return []
    return [
        "## NTPS beside cheap pre-screens (transferability baselines)",
        "",
        markdown_table(predictor_view(predictors)),
        "",
        "Spearman rho across datasets [95% bootstrap CI] of each predictor against held-out probe "
        "accuracy, -MSE and -LoRA gain, with the layer (and for NTPS k) fixed in config or chosen "
        "leave-one-dataset-out; in-sample best and p-values are in `predictors.csv`. H-score, LogME, "
        "kNN and perception-only are computed from the cached train features of every layer; "
        "`probe_accuracy` (the held-out probe itself) is judged against the gain only. Cost per "
        "(model, dataset), all layers: `compute s / pair` timed with the inputs in memory, inside the "
        "predictors job for the feature predictors and inside the score job for NTPS (every layer "
        "and k of the grid, without the released column and standard errors; the probes are not "
        "timed apart from their job), `job s / pair` the wall time of the workflow jobs that "
        "produce the values (jackknife+score for NTPS, probe, or predictors, one job for all "
        "feature predictors), including start-up and reading inputs.",
        "",
    ]


# --- evidence ----------------------------------------------------------------------------------

TARGET_LABELS = {"accuracy": "accuracy", "-mse": "-MSE", "-gain": "-gain"}
VIEW_LABELS = {"within_model": "within model, pooled", "all_pairs": "all pairs"}


def _count(value: Any) -> str:
    return "" if value is None or not np.isfinite(float(value)) else str(int(value))


def _rho_ci(value: Any, low: Any, high: Any) -> str:
    return f"{_fmt(float(value), 2)} {_ci(low, high)}"


POWER_NOTE = (
    " `95% CI with target SE`: the dataset bootstrap with each score perturbed by its jackknife "
    "SE and each target by its own SE (counts the noise twice: a sensitivity check). "
    "`rho for p < 0.05`: the smallest |rho| a permutation test over this many datasets can call "
    "significant. `reading`: what the CI shows against a useful pre-screen (rho >= {useful:.2g})."
)


def verdict_lines(evidence: StudyEvidence | None) -> list[str]:
    """The summary's verdict section, generated from the evidence tables."""
    if evidence is None:
        return []
    return ["## Verdict", "", *verdict_markdown(evidence.verdict()), ""]


def _noise_lines(targets: pd.DataFrame) -> list[str]:
    if targets.empty:
        return []
    view = pd.DataFrame(
        {
            "target": targets["target"].map(TARGET_LABELS),
            "model": targets["model"],
            "datasets": targets["n_datasets"].map(_count),
            "min": targets["value_min"],
            "max": targets["value_max"],
            "SD across datasets": targets["sd_across_datasets"],
            "mean SE": targets["mean_se"],
            "SD / SE": targets["sd_over_mean_se"],
            f"within {NOISE_MULTIPLE:g} SE of 0": targets["n_within_noise"].map(_count),
        }
    )
    lines = [
        "### How noisy the targets are",
        "",
        markdown_table(view),
        "",
        "At the fixed setting, values unsigned. SE: binomial for the held-out accuracy, of the "
        "mean over test texts for the MSE, paired bootstrap over the same test texts for the "
        "LoRA gain (probe and LoRA model on the same texts). A target whose spread across "
        "datasets is not well above its own SE (`SD / SE` near 1) cannot be ranked by any "
        "predictor.",
    ]
    gains = targets[targets["target"] == "-gain"]
    within = gains["n_within_noise"].to_numpy(float)
    if len(gains) and np.isfinite(within).all():
        k, n = int(within.sum()), int(gains["n_datasets"].sum())
        lines[-1] += (
            f" {k} of {n} LoRA gains are within {NOISE_MULTIPLE:g} SE of 0 "
            "(`gain_within_noise` in lora.csv)."
        )
    return [*lines, ""]


def _pooled_view(pooled: pd.DataFrame) -> pd.DataFrame:
    """NTPS's pooled rows; the all-pairs rows only where one is defined."""
    rows = pooled[pooled["predictor"] == "ntps"]
    every = rows["view"] == "all_pairs"
    if not np.isfinite(rows.loc[every, "rho"].to_numpy(float)).any():
        rows = rows[~every]
    return pd.DataFrame(
        {
            "target": rows["target"].map(TARGET_LABELS),
            "mode": rows["mode"].map(MODE_LABELS),
            "view": rows["view"].map(VIEW_LABELS),
            "models": rows["n_models"].map(_count),
            "datasets": rows["n_datasets"].map(_count),
            "rho": rows["rho"],
            "95% CI": [_ci(lo, hi) for lo, hi in zip(rows["ci_low"], rows["ci_high"], strict=True)],
            "p": rows["p_value"],
            "rho for p < 0.05": rows["min_detectable"],
            "reading": [
                str(reason) if isinstance(reason, str) and reason else reading
                for reading, reason in zip(rows["reading"], rows["reason"], strict=True)
            ],
        }
    )


def _all_pairs_absent(pooled: pd.DataFrame) -> list[str]:
    """Why the all-pairs view is absent, when it is (fewer than 2 models)."""
    every = pooled[pooled["view"] == "all_pairs"]
    if every.empty or np.isfinite(every["rho"].to_numpy(float)).any():
        return []
    reasons = [r for r in every["reason"] if isinstance(r, str) and r]
    return [f"All pairs in one correlation: not computed: {reasons[0] if reasons else 'n/a'}.", ""]


def _fixed_overview(pooled: pd.DataFrame, across: pd.DataFrame) -> pd.DataFrame:
    """One row per predictor and target at the fixed setting: the three views side by side."""
    fixed = pooled[pooled["mode"] == "fixed"]
    across_fixed = across[across["mode"] == "fixed"].set_index(["predictor", "target"])
    show_across = np.isfinite(across_fixed["mean_tau"].to_numpy(float)).any()
    every_rows = fixed[fixed["view"] == "all_pairs"]
    show_all_pairs = np.isfinite(every_rows["rho"].to_numpy(float)).any()
    rows = []
    for (name, target), group in fixed.groupby(["predictor", "target"], sort=False):
        within = group[group["view"] == "within_model"].iloc[0]
        row = {
            "predictor": name,
            "target": TARGET_LABELS.get(target, target),
            "within model: rho [CI]": _rho_ci(within["rho"], within["ci_low"], within["ci_high"]),
            "reading": within["reading"],
        }
        if show_all_pairs:
            every = group[group["view"] == "all_pairs"].iloc[0]
            row["all pairs: rho [CI]"] = _rho_ci(every["rho"], every["ci_low"], every["ci_high"])
        if show_across and (name, target) in across_fixed.index:
            a = across_fixed.loc[(name, target)]
            row["across models: tau [CI]"] = _rho_ci(
                a["mean_tau"], a["tau_ci_low"], a["tau_ci_high"]
            )
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def _across_lines(across: pd.DataFrame) -> list[str]:
    lines = ["### Across models: which model to pick for a dataset", ""]
    defined = across[np.isfinite(across["mean_tau"].to_numpy(float))]
    if defined.empty:
        reasons = [r for r in across["reason"] if isinstance(r, str) and r]
        why = reasons[0] if reasons else "no dataset has a defined tau"
        return [*lines, f"Not computed: {why}.", ""]
    fixed = defined[defined["mode"] == "fixed"]
    view = pd.DataFrame(
        {
            "predictor": fixed["predictor"],
            "target": fixed["target"].map(TARGET_LABELS),
            "top": fixed["top"],
            "models": fixed["n_models"].map(_count),
            "datasets": fixed["n_datasets"].map(_count),
            "mean tau [CI]": [
                _rho_ci(v, lo, hi)
                for v, lo, hi in zip(
                    fixed["mean_tau"], fixed["tau_ci_low"], fixed["tau_ci_high"], strict=True
                )
            ],
            "mean weighted tau [CI]": [
                _rho_ci(v, lo, hi)
                for v, lo, hi in zip(
                    fixed["mean_tau_w"], fixed["tau_w_ci_low"], fixed["tau_w_ci_high"], strict=True
                )
            ],
            "reading": fixed["reading"],
        }
    )
    return [
        *lines,
        markdown_table(view),
        "",
        "Per dataset, Kendall tau and weighted tau (top-weighted, `scipy.stats.weightedtau`) "
        "between the predictor and the target across models, at the fixed setting; their mean "
        "over datasets with a bootstrap CI over datasets. `top`: the end weighted tau emphasises, "
        "the models a user would pick (highest accuracy, lowest MSE: `high`; largest LoRA gain: "
        "`low` of -gain). The reading holds tau against the tau that goes with the useful rho. "
        "Every mode and the per-dataset values: `evidence_across_models*.csv`.",
        "",
    ]


def _incremental_lines(evidence: StudyEvidence) -> list[str]:
    table = evidence.tables["incremental"]
    if table.empty:
        return []
    view = pd.DataFrame(
        {
            "target": table["target"].map(TARGET_LABELS),
            "baseline": table["baseline"],
            "models": table["n_models"].map(_count),
            "datasets": table["n_datasets"].map(_count),
            "partial rho [CI]": [
                _rho_ci(v, lo, hi)
                for v, lo, hi in zip(
                    table["partial_rho"], table["ci_low"], table["ci_high"], strict=True
                )
            ],
            "p": table["p_value"],
            "MAE, mean only": table["mae_mean"],
            "MAE, baseline": table["mae_baseline"],
            "MAE, baseline + NTPS": table["mae_baseline_predictor"],
        }
    )
    return [
        "### Does NTPS add information beyond the baselines?",
        "",
        markdown_table(view),
        "",
        "At the fixed setting. Partial rho: Spearman of NTPS with the target given the baseline "
        "(ranks within each model, the residuals of NTPS's and the target's ranks after "
        "regressing each on the baseline's), the mean over models; CI from resampling datasets, "
        "p from permuting NTPS's residuals within model. MAE: leave-one-dataset-out linear "
        "prediction of the target from the baseline alone and from the baseline and NTPS "
        "(all models, one intercept per model), beside the mean alone.",
        "",
        *(f"{sentence}\n" for sentence in evidence.incremental_sentences()),
    ]


def _power_lines(evidence: StudyEvidence) -> list[str]:
    pooled = evidence.tables["pooled"]
    rows = pooled[
        (pooled["predictor"] == "ntps")
        & (pooled["mode"] == "fixed")
        & (pooled["view"] == "within_model")
    ]
    if rows.empty:
        return []
    row = rows.iloc[0]
    n, models = int(row["n_datasets"]), int(row["n_models"])
    single = min_detectable_correlation(n)
    if np.isfinite(single):
        one = f"one model's Spearman rho reaches p < 0.05 only from |rho| >= {single:.2f}"
    else:
        one = "no Spearman rho of one model can reach p < 0.05"
    text = f"With {n} datasets {one}"
    pooled_threshold = float(row["min_detectable"])
    if models > 1 and np.isfinite(pooled_threshold):
        text += f"; the mean over {models} models from {pooled_threshold:.2f}"
    text += (
        f" (permutation distributions; column `min_detectable` of the evidence tables). A CI "
        f"that spans both signs and reaches rho = {evidence.useful:.2g} is inconclusive, not "
        "evidence of no relation."
    )
    return ["### Power", "", text, ""]


def evidence_lines(evidence: StudyEvidence | None) -> list[str]:
    """The summary's section on what the evidence can show (rule evidence's tables)."""
    if evidence is None:
        return []
    tables = evidence.tables
    return [
        "## What the evidence can show",
        "",
        "How noisy the targets are, the models pooled, the across-model view the "
        "transferability literature uses, and what NTPS adds beyond the baselines; all in "
        "`results/tables/evidence_*.csv` (docs/outputs.md).",
        "",
        *_power_lines(evidence),
        *_noise_lines(tables["targets"]),
        "### NTPS pooled over models",
        "",
        markdown_table(_pooled_view(tables["pooled"])),
        "",
        *_all_pairs_absent(tables["pooled"]),
        "Within model, pooled: the mean of the models' Spearman rhos across datasets (a plain "
        "mean, not Fisher z), CI from a bootstrap that resamples datasets jointly for every "
        "model, p from permuting the target within each model. All pairs: one Spearman rho over "
        "every (model, dataset) pair, CI resampling datasets with all their models, p permuting "
        "datasets. `rho for p < 0.05`: the smallest |rho| the row's own test can call "
        "significant.",
        "",
        "### Every predictor at the fixed setting",
        "",
        markdown_table(_fixed_overview(tables["pooled"], tables["across_models"])),
        "",
        *_across_lines(tables["across_models"]),
        *_incremental_lines(evidence),
    ]


def summary_markdown(
    study: str,
    correlations: pd.DataFrame,
    scores: pd.DataFrame,
    magnitudes: pd.DataFrame,
    paper: pd.DataFrame,
    comparison: pd.DataFrame,
    lora_correlations: pd.DataFrame | None = None,
    paired: pd.DataFrame | None = None,
    prediction_summary: pd.DataFrame | None = None,
    lora: pd.DataFrame | None = None,
    bounds: pd.DataFrame | None = None,
    score_name: str = "ntps_reg",
    predictors: pd.DataFrame | None = None,
    evidence: StudyEvidence | None = None,
) -> str:
    """Everything a reader needs first, in one Markdown page.

    ``paper`` is :func:`ntps.reference.paper_correlations` of the released figures (the summary
    rule also writes it as a table, so it is computed once there). ``evidence`` adds the verdict
    (after the regime statement), the power and readings of the correlations, and the section on
    what the evidence can show.
    """
    evidence_correlations = evidence.tables["correlations"] if evidence is not None else None
    checked = bound_check(scores)
    shards = int(scores["jackknife_shards"].max()) if "jackknife_shards" in scores.columns else 0
    lines = [
        f"# {study}",
        "",
        f"{scores['model'].nunique()} model(s) x {scores['dataset'].nunique()} dataset(s); "
        f"NTPS over {scores['layer'].nunique()} layer indices x {scores['k_label'].nunique()} k settings.",
        "",
        *regime_lines(scores),
        *verdict_lines(evidence),
        "## NTPS vs held-out linear-probe metrics (Spearman across datasets)",
        "",
        markdown_table(correlation_view(correlations, evidence_correlations)),
        "",
        "Targets: `accuracy` = held-out probe accuracy; `-mse` = held-out probe MSE with the sign "
        "flipped, so a positive rho always means NTPS agrees with the task being easy for a linear "
        "read-out. CIs: percentile bootstrap over datasets; p: permutation test. The in-sample row "
        "picks the best of the whole layer x k grid on the same datasets and is optimistic."
        + (POWER_NOTE.format(useful=evidence.useful) if evidence is not None else ""),
        "",
        "## Magnitudes at the fixed setting",
        "",
        markdown_table(with_released_spread(magnitudes)),
        "",
        "`position` = (NTPS - baseline) / (1 - baseline): 0 = no better than a random subspace of the "
        f"same size, 1 = perfect. Excess-loss bounds hold in {int(checked['bound_holds'].sum())} of "
        f"{len(checked)} (model, dataset, stage, layer, k) rows.",
        "",
        RELEASED_EXPLANATION.format(
            score=score_name, shards=shards or "no", spread=_released_spread_text(scores)
        ),
        "",
        *bounds_lines(bounds if bounds is not None else pd.DataFrame()),
    ]
    if lora is not None and not lora.empty:
        learned = int(lora["learned"].sum())
        above = int(lora["above_majority"].sum())
        lines += [
            "## LoRA",
            "",
            f"LoRA learned (mean training loss of the last quarter of steps below the first "
            f"quarter) on {learned} of {len(lora)} pairs; its test accuracy is at or above the "
            f"majority-class rate on {above} of {len(lora)}. `lora_accuracy_at_start` is the "
            "classifier before the first step (with the head started from the last-layer probe it "
            "reproduces the probe's predictions).",
            "",
            markdown_table(lora[[c for c in LORA_SUMMARY_COLUMNS if c in lora.columns]]),
            "",
        ]
    if lora_correlations is not None and not lora_correlations.empty:
        lines += [
            "## LoRA gain",
            "",
            markdown_table(correlation_view(lora_correlations, evidence_correlations)),
            "",
            "Gain = LoRA test accuracy - held-out probe accuracy on the last layer; target `-gain`, "
            "so a positive rho means low NTPS goes with a large gain (the paper's claim).",
            "",
        ]
    if paired is not None and not paired.empty:
        lines += [
            "NTPS before vs after LoRA (last layer, fixed k; the layer the LoRA head reads):",
            "",
            markdown_table(paired),
            "",
        ]
    if prediction_summary is not None and not prediction_summary.empty:
        lines += [
            "Predicting the gain (leave-one-dataset-out; baseline = mean gain of the other datasets):",
            "",
            markdown_table(prediction_summary),
            "",
        ]
    lines += predictor_lines(predictors)
    lines += evidence_lines(evidence)
    wide = paper.pivot(index="model", columns="target", values="rho").reset_index()
    lines += [
        "## The paper's released numbers",
        "",
        "Per-model Spearman correlations recomputed from the paper's released per-pair values "
        "(in-sample probes, layer and k chosen per figure):",
        "",
        markdown_table(wide),
        "",
    ]
    if not comparison.empty:
        lines += [
            "Datasets both studies use (the paper's `ntps` is its released-code value):",
            "",
            markdown_table(with_released_spread(comparison)),
            "",
        ]
    return "\n".join(lines)
