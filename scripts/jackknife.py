"""Jackknife job: every leave-one-shard-out replicate of one pair's statistics, scored at every k."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)

from ntps.stages.score import jackknife_pair
from ntps.workflow import job_logging

with job_logging(snakemake.log[0], threads=snakemake.params.threads):
    jackknife_pair(
        snakemake.input.stats,
        snakemake.input.shards,
        snakemake.output.replicates,
        eigen_cutoff=snakemake.params.eigen_cutoff,
        ridge=snakemake.params.ridge,
        centered=snakemake.params.centered,
        device=snakemake.params.device,
    )
