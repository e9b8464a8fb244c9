"""Merge job: a (model, dataset) pair's extraction shards into the extraction's outputs."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)

from ntps.stages.extract import merge_extract_parts
from ntps.workflow import job_logging

with job_logging(snakemake.log[0], threads=snakemake.params.threads):
    merge_extract_parts(
        part_paths=list(snakemake.input.parts),
        dataset_record_path=snakemake.input.dataset,
        settings=snakemake.params.settings,
        out_stats=snakemake.output.stats,
        out_features=snakemake.output.features,
        out_record=snakemake.output.record,
        model_record_path=snakemake.input.model_record,
        out_shards=snakemake.output.shards,
        out_block_inputs=snakemake.output.block_inputs,
        pair=f"model {snakemake.wildcards.model!r}, dataset {snakemake.wildcards.dataset!r}",
    )
