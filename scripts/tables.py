"""Aggregate per-pair score and probe JSONs into tidy tables (CSV + Parquet)."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)

from ntps.io import write_table
from ntps.tables import probes_table, scores_table
from ntps.workflow import job_logging

with job_logging(snakemake.log[0]) as log:
    scores = scores_table(snakemake.input.scores, snakemake.input.scores_post_lora)
    probes = probes_table(snakemake.input.probes)
    write_table(snakemake.output.scores_csv, scores)
    write_table(snakemake.output.scores_parquet, scores)
    write_table(snakemake.output.probes_csv, probes)
    write_table(snakemake.output.probes_parquet, probes)
    log.info("scores: %d rows, probes: %d rows", len(scores), len(probes))
