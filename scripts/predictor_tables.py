"""Predictor values, costs, and their correlations with the targets beside NTPS's."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)
import pandas as pd

from ntps.io import write_table
from ntps.predictors import (
    judge_predictors,
    predictor_costs_table,
    predictor_values_table,
    predictors_table,
)
from ntps.workflow import job_logging


def optional_csv(name):
    path = snakemake.input.get(name)
    return pd.read_csv(path) if path else None


with job_logging(snakemake.log[0]) as log:
    enabled = snakemake.params.enabled
    probes = pd.read_parquet(snakemake.input.probes)
    values = predictor_values_table(snakemake.input.predictors, probes, enabled)
    benchmarks = {
        job: snakemake.input.get(f"{job}_benchmarks", [])
        for job in ("jackknife", "score", "probe", "predictors")
    }
    costs = predictor_costs_table(
        snakemake.input.predictors, snakemake.input.scores, enabled, benchmarks
    )
    judged = judge_predictors(
        values,
        probes,
        snakemake.params.analysis,
        snakemake.params.fixed_layers,
        optional_csv("lora"),
    )
    table = predictors_table(
        judged,
        [pd.read_csv(snakemake.input.correlations), optional_csv("lora_correlations")],
        costs,
        enabled,
    )
    write_table(snakemake.output.values, values)
    write_table(snakemake.output.costs, costs)
    write_table(snakemake.output.predictors, table)
    log.info("\n%s", table[["model", "predictor", "target", "mode", "rho", "seconds_per_pair"]])
