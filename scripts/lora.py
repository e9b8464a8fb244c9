"""LoRA job: fine-tune adapters + a linear head for one (model, dataset) pair."""

import shutil
from pathlib import Path

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)

from ntps.layout import write_pair_json
from ntps.stages.lora import train_lora_pair
from ntps.workflow import job_logging

with job_logging(snakemake.log[0], threads=snakemake.params.threads):
    checkpoints = Path(snakemake.params.checkpoints)
    metrics = train_lora_pair(
        model_dir=snakemake.input.model,
        model_record_path=snakemake.input.model_record,
        model_name=snakemake.wildcards.model,
        table_path=snakemake.input.table,
        dataset_record_path=snakemake.input.dataset,
        settings=snakemake.params.settings,
        device_spec=snakemake.params.device,
        max_length=snakemake.params.max_length,
        out_adapter_dir=snakemake.output.adapter,
        checkpoint_dir=checkpoints,
        stats_path=snakemake.input.stats,
        out_stats=snakemake.output.stats,
        probe_head_path=snakemake.input.probe_head,
        prompt_format=snakemake.params.prompt_format,
        progress=snakemake.params.progress,
        block_inputs_path=snakemake.input.block_inputs,
        extraction_batching=snakemake.params.extraction_batching,
    )
    write_pair_json(
        snakemake.output.metrics, snakemake.wildcards.model, snakemake.wildcards.dataset, metrics
    )
    # The adapter is saved: checkpoints only matter for resuming an interrupted run.
    shutil.rmtree(checkpoints, ignore_errors=True)
