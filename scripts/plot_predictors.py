"""Predictors x targets: Spearman rho with bootstrap CIs per selection mode, one row per model."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)
import pandas as pd

from ntps.plots import plot_predictors, set_dpi
from ntps.workflow import job_logging

with job_logging(snakemake.log[0]):
    set_dpi(snakemake.params.plots["dpi"])
    plot_predictors(
        pd.read_csv(snakemake.input.predictors), [snakemake.output.png, snakemake.output.pdf]
    )
