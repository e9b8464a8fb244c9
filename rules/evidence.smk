# What the study's numbers can show (docs/method.md, "Judging NTPS"): the targets' noise, every
# per-model correlation with the smallest rho its n can detect and a one-line reading, the models'
# rhos pooled, one rho over all (model, dataset) pairs, the across-model view (which model to
# pick for a dataset) and what NTPS adds beyond each baseline. The summary renders them and the
# verdict.


rule evidence:
    input:
        unpack(evidence_inputs),
    output:
        targets=report(
            "results/tables/evidence_targets.csv",
            caption="../report/evidence_targets.rst",
            category="8. Evidence",
            labels={"table": "target noise"},
        ),
        correlations=report(
            "results/tables/evidence_correlations.csv",
            caption="../report/evidence_correlations.rst",
            category="8. Evidence",
            labels={"table": "per-model correlations, power and readings"},
        ),
        pooled=report(
            "results/tables/evidence_pooled.csv",
            caption="../report/evidence_pooled.rst",
            category="8. Evidence",
            labels={"table": "pooled over models"},
        ),
        across_models=report(
            "results/tables/evidence_across_models.csv",
            caption="../report/evidence_across_models.rst",
            category="8. Evidence",
            labels={"table": "across models"},
        ),
        across_models_datasets="results/tables/evidence_across_models_datasets.csv",
        incremental=report(
            "results/tables/evidence_incremental.csv",
            caption="../report/evidence_incremental.rst",
            category="8. Evidence",
            labels={"table": "beyond the baselines"},
        ),
        incremental_lodo="results/tables/evidence_incremental_lodo.csv",
        pairs="results/tables/evidence_pairs.csv",
    log:
        "results/logs/evidence.log",
    benchmark:
        "results/benchmarks/evidence.tsv"
    conda:
        conda_env
    params:
        analysis=canonical(config["analysis"]),
        useful_rho=config["evidence"]["useful_rho"],
        fixed_layers=fixed_layers_by_model(),
        enabled=enabled_predictors(config),
    script:
        "../scripts/evidence.py"
