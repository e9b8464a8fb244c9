"""Per-model figures: NTPS vs probe accuracy at the fixed setting, rho heatmap, layer profile."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)
import pandas as pd

from ntps.analysis import k_label
from ntps.plots import plot_correlation_heatmap, plot_layer_profile, plot_ntps_vs_metric, set_dpi
from ntps.tables import fixed_correlation, fixed_setting_frame, layer_profile_frame
from ntps.workflow import job_logging

with job_logging(snakemake.log[0]):
    set_dpi(snakemake.params.plots["dpi"])
    model = snakemake.wildcards.model
    analysis = snakemake.params.analysis
    score_col = analysis["score"]
    output = snakemake.output
    scores = pd.read_parquet(snakemake.input.scores)
    probes = pd.read_parquet(snakemake.input.probes)
    correlations = pd.read_csv(snakemake.input.correlations)
    grid = pd.read_csv(snakemake.input.grid)

    fixed = fixed_correlation(correlations, model, "accuracy")
    frame, layer = fixed_setting_frame(
        scores, probes, model, snakemake.params.fixed_layer, analysis["fixed_k"], score_col
    )
    plot_ntps_vs_metric(
        frame,
        model,
        "accuracy",
        fixed["rho"],
        (fixed["ci_low"], fixed["ci_high"]),
        [output.scatter, output.scatter_pdf],
        score_col=score_col,
        setting=f"fixed in config: layer {layer}, k = {k_label(analysis['fixed_k'])}",
    )
    plot_correlation_heatmap(
        grid[grid["target"] == "accuracy"], model, [output.heatmap, output.heatmap_pdf]
    )
    profile = layer_profile_frame(scores, model, analysis["fixed_k"])
    plot_layer_profile(profile, [output.profile, output.profile_pdf], score_col=score_col)
