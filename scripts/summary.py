"""Write results/summary.md and the magnitude / paper-comparison tables."""

from pathlib import Path

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)
import pandas as pd

from ntps.evidence_tables import StudyEvidence, cost_per_pair, verdict_rst
from ntps.io import atomic_path, write_table
from ntps.reference import load_paper_reference, paper_correlations
from ntps.summary import bounds_table, magnitude_table, paper_comparison, summary_markdown
from ntps.workflow import job_logging


def optional_csv(name):
    path = snakemake.input.get(name)
    return pd.read_csv(path) if path else None


with job_logging(snakemake.log[0]):
    analysis = snakemake.params.analysis
    fixed_layers = snakemake.params.fixed_layers
    scores = pd.read_parquet(snakemake.input.scores)
    probes = pd.read_parquet(snakemake.input.probes)
    reference = load_paper_reference(snakemake.input.reference)
    lora = optional_csv("lora")
    paper = paper_correlations(reference)
    magnitudes = magnitude_table(scores, analysis, fixed_layers)
    bounds = bounds_table(scores, analysis, fixed_layers)
    comparison = paper_comparison(
        scores, probes, reference, snakemake.params.reference_names, analysis, fixed_layers, lora
    )
    costs = optional_csv("predictor_costs")
    evidence = StudyEvidence(
        {
            name.removeprefix("evidence_"): pd.read_csv(path)
            for name, path in snakemake.input.items()
            if name.startswith("evidence_")
        },
        cost_per_pair(costs) if costs is not None else {},
        snakemake.params.enabled if costs is not None else [],
        snakemake.params.useful_rho,
    )
    text = summary_markdown(
        snakemake.params.study,
        pd.read_csv(snakemake.input.correlations),
        scores,
        magnitudes,
        paper,
        comparison,
        optional_csv("lora_correlations"),
        optional_csv("paired"),
        optional_csv("prediction_summary"),
        lora,
        bounds,
        analysis["score"],
        optional_csv("predictors"),
        evidence,
    )
    write_table(
        snakemake.output.magnitudes,
        magnitudes.merge(bounds, on=["model", "dataset", "layer"], how="left"),
    )
    write_table(snakemake.output.paper_correlations, paper)
    write_table(snakemake.output.paper_comparison, comparison)
    with atomic_path(snakemake.output.summary) as tmp:
        Path(tmp).write_text(text + "\n", encoding="utf-8")
    with atomic_path(snakemake.output.verdict) as tmp:
        Path(tmp).write_text(verdict_rst(evidence.verdict()), encoding="utf-8")
