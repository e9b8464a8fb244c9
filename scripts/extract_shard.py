"""Extraction shard job: one part of the batches of a (model, dataset) pair, into one file."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)

from ntps.stages.extract import extract_part
from ntps.workflow import job_logging

with job_logging(snakemake.log[0], threads=snakemake.params.threads):
    extract_part(
        model_dir=snakemake.input.model,
        model_name=snakemake.wildcards.model,
        table_path=snakemake.input.table,
        dataset_record_path=snakemake.input.dataset,
        settings={**snakemake.params.settings, "progress": snakemake.params.progress},
        part=(int(snakemake.wildcards.shard), int(snakemake.wildcards.shards)),
        out_part=snakemake.output.part,
        model_record_path=snakemake.input.model_record,
        splits=snakemake.params.splits,
    )
