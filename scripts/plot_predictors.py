"""Predictors x targets: Spearman rho with bootstrap CIs per selection mode, one row per model."""

from pathlib import Path

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)
import pandas as pd

from ntps.plots import plot_predictors, set_dpi
from ntps.workflow import job_logging

with job_logging(snakemake.log[0]):
    set_dpi(snakemake.params.plots["dpi"])
    out = Path(snakemake.output.png)
    plot_predictors(pd.read_csv(snakemake.input.predictors), out.with_name(out.stem))
