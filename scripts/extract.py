"""Extraction job: statistics and pooled features for one (model, dataset) pair."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)

from ntps.stages.extract import extract_pair
from ntps.workflow import job_logging

with job_logging(snakemake.log[0], threads=snakemake.params.threads):
    extract_pair(
        model_dir=snakemake.input.model,
        model_name=snakemake.wildcards.model,
        table_path=snakemake.input.table,
        dataset_record_path=snakemake.input.dataset,
        settings={**snakemake.params.settings, "progress": snakemake.params.progress},
        out_stats=snakemake.output.stats,
        out_shards=snakemake.output.shards,
        out_features=snakemake.output.features,
        out_record=snakemake.output.record,
        model_record_path=snakemake.input.model_record,
        splits=snakemake.params.splits,
        lora=snakemake.params.lora,
        out_block_inputs=snakemake.output.block_inputs,
    )
