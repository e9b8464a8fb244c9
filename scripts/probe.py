"""Probe job: held-out logistic-regression and ridge probes per layer of one pair."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)

from ntps.io import read_json
from ntps.layout import write_pair_json
from ntps.stages.probe import probe_pair
from ntps.workflow import job_logging

with job_logging(snakemake.log[0], threads=snakemake.params.threads):
    n_classes = len(read_json(snakemake.input.dataset)["label_names"])
    result = probe_pair(
        snakemake.input.features,
        n_classes,
        snakemake.params.settings,
        out_head=snakemake.output.head,
    )
    write_pair_json(
        snakemake.output.probes, snakemake.wildcards.model, snakemake.wildcards.dataset, result
    )
