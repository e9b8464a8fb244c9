"""Evidence tables: target noise, per-model correlations with power and readings, pooled and
across-model views, incremental validity (results/tables/evidence_*.csv)."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)
import pandas as pd

from ntps.evidence_tables import EVIDENCE_TABLES, EvidenceSettings, evidence_tables
from ntps.io import write_table
from ntps.workflow import job_logging


def optional_csv(name):
    path = snakemake.input.get(name)
    return pd.read_csv(path) if path else None


with job_logging(snakemake.log[0]) as log:
    settings = EvidenceSettings.from_config(
        snakemake.params.analysis, {"useful_rho": snakemake.params.useful_rho}
    )
    values = optional_csv("predictor_values")
    tables = evidence_tables(
        pd.read_parquet(snakemake.input.scores),
        pd.read_parquet(snakemake.input.probes),
        [
            pd.read_csv(snakemake.input.correlations),
            optional_csv("lora_correlations"),
            optional_csv("predictors"),
        ],
        snakemake.params.fixed_layers,
        settings,
        lora=optional_csv("lora"),
        values=values,
        enabled=snakemake.params.enabled if values is not None else (),
    )
    for name in EVIDENCE_TABLES:
        write_table(snakemake.output[name], tables[name])
    pooled = tables["pooled"]
    log.info(
        "\n%s",
        pooled[pooled["predictor"] == "ntps"][["target", "mode", "view", "rho", "reading"]],
    )
