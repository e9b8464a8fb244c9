"""NTPS vs held-out probe metrics: three layer/k selection modes and the full correlation grid."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)
import pandas as pd

from ntps.io import write_table
from ntps.tables import correlation_tables
from ntps.workflow import job_logging

with job_logging(snakemake.log[0]) as log:
    selections, grid = correlation_tables(
        pd.read_parquet(snakemake.input.scores),
        pd.read_parquet(snakemake.input.probes),
        snakemake.params.analysis,
        snakemake.params.fixed_layers,
    )
    write_table(snakemake.output.correlations, selections)
    write_table(snakemake.output.grid, grid)
    log.info("\n%s", selections[["model", "target", "mode", "layer", "k_label", "rho", "p_value"]])
