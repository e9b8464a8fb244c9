"""Exact excess loss against its theoretical bounds, with the held-out probe MSE alongside."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)
import pandas as pd

from ntps.plots import plot_bounds, set_dpi
from ntps.tables import bounds_frame
from ntps.workflow import job_logging

with job_logging(snakemake.log[0]):
    set_dpi(snakemake.params.plots["dpi"])
    frame = bounds_frame(
        pd.read_parquet(snakemake.input.scores), pd.read_parquet(snakemake.input.probes)
    )
    plot_bounds(frame, [snakemake.output.png, snakemake.output.pdf])
