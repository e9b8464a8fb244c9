"""LoRA gain table, gain correlations (three selection modes), NTPS before/after, gain prediction."""

import _ntps_path  # noqa: F401  (this workflow's src/ first on sys.path)
import pandas as pd

from ntps.io import write_table
from ntps.tables import lora_analysis, lora_table
from ntps.workflow import job_logging

with job_logging(snakemake.log[0]) as log:
    probes = pd.read_parquet(snakemake.input.probes)
    test_files = {
        (model, dataset): files
        for (model, dataset), files in zip(
            snakemake.params.pairs,
            zip(snakemake.input.features, snakemake.input.probe_heads, strict=True),
            strict=True,
        )
    }
    lora = lora_table(
        snakemake.input.metrics,
        probes,
        snakemake.input.models,
        test_files,
        gain_bootstrap=snakemake.params.gain_bootstrap,
        seed=snakemake.params.analysis["seed"],
    )
    results = lora_analysis(
        pd.read_parquet(snakemake.input.scores),
        lora,
        snakemake.params.analysis,
        snakemake.params.fixed_layers,
    )
    write_table(snakemake.output.lora, lora)
    for key in ("correlations", "before_after", "paired", "prediction", "prediction_summary"):
        write_table(snakemake.output[key], results[key])
    log.info("\n%s", results["correlations"][["model", "mode", "rho", "p_value"]])
    log.info("\n%s", results["paired"])
    log.info("%d of %d gains within 2 SE of 0", int(lora["gain_within_noise"].sum()), len(lora))
