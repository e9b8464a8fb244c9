# ntps-workflow: Next Token Perception Score for (model, dataset) pairs.
# Stages: acquire -> extract -> score / probe / predictors -> LoRA -> post-LoRA extract/score -> tables -> plots. See README.md and docs/.
from snakemake.utils import min_version

min_version("9.0")


report: "report/workflow.rst"


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/acquire.smk"
include: "rules/extract.smk"
include: "rules/score.smk"
include: "rules/probe.smk"
include: "rules/aggregate.smk"
include: "rules/lora.smk"
include: "rules/report.smk"
include: "rules/plots.smk"
include: "rules/predictors.smk"
include: "rules/evidence.smk"


# Seconds of pandas/matplotlib each: run in the main Snakemake process, not as cluster jobs.
localrules:
    all,
    tables,
    correlations,
    lora_tables,
    plot_model,
    plot_bounds,
    plot_lora,
    plot_predictors,
    predictor_tables,
    evidence,
    summary,


rule all:
    default_target: True
    input:
        final_outputs(),
