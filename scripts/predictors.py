"""Predictors job: every enabled transferability baseline on every layer of one pair, timed."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)

from ntps.io import read_json
from ntps.layout import write_pair_json
from ntps.stages.predictors import predictors_pair
from ntps.workflow import job_logging

with job_logging(snakemake.log[0], threads=snakemake.params.threads):
    model, dataset = snakemake.wildcards.model, snakemake.wildcards.dataset
    result = predictors_pair(
        snakemake.input.features,
        len(read_json(snakemake.input.dataset)["label_names"]),
        snakemake.params.settings,
        where=f"model {model!r} x dataset {dataset!r}",
    )
    write_pair_json(snakemake.output.predictors, model, dataset, result)
