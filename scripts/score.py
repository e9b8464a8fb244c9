"""Scoring job: NTPS for every layer and k of one (model, dataset) pair."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)

from ntps.io import read_json
from ntps.layout import write_pair_json
from ntps.released import RoundingSpread
from ntps.stages.score import score_pair
from ntps.workflow import job_logging

# The released column's rounding spread: asked for by the score rule, not by score_post_lora.
spread = snakemake.params.get("released_spread")

with job_logging(snakemake.log[0], threads=snakemake.params.threads):
    # Post-LoRA: the states below the first adapted block are the pre-LoRA ones, and so are their
    # scores.
    lower = snakemake.input.get("lower_scores")
    result = score_pair(
        snakemake.input.stats,
        snakemake.params.k_grid,
        eigen_cutoff=snakemake.params.eigen_cutoff,
        ridge=snakemake.params.ridge,
        centered=snakemake.params.centered,
        jackknife_path=snakemake.input.get("replicates"),
        device=snakemake.params.device,
        released=snakemake.params.released,
        rounding_spread=RoundingSpread(**spread) if spread else None,
        lower_scores=read_json(lower) if lower else None,
    )
    write_pair_json(
        snakemake.output.scores, snakemake.wildcards.model, snakemake.wildcards.dataset, result
    )
