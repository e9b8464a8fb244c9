# Transferability baselines (H-score, LogME, kNN, perception-only; probe accuracy for the LoRA gain)
# from the cached pooled train features, judged beside NTPS. See docs/predictors.md. NTPS's cost
# comes from the score JSONs: the predictors jobs do not depend on the k grid or scoring settings.


rule predictors:
    input:
        features="results/extract/{model}/{dataset}/features.safetensors",
        dataset="resources/datasets/{dataset}/dataset.json",
    output:
        predictors="results/predictors/{model}/{dataset}.json",
    log:
        "results/logs/predictors/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/predictors/{model}/{dataset}.tsv"
    conda:
        conda_env
    threads: 1
    params:
        settings=canonical(predictor_settings(config)),
        threads=1,
    script:
        "../scripts/predictors.py"


rule predictor_tables:
    input:
        unpack(predictor_table_inputs),
    output:
        values="results/tables/predictor_values.csv",
        costs="results/tables/predictor_costs.csv",
        predictors=report(
            "results/tables/predictors.csv",
            caption="../report/predictors.rst",
            category="7. Cheap pre-screens",
            labels={"table": "predictors"},
        ),
    log:
        "results/logs/predictor_tables.log",
    benchmark:
        "results/benchmarks/predictor_tables.tsv"
    conda:
        conda_env
    params:
        enabled=enabled_predictors(config),
        analysis=canonical(config["analysis"]),
        fixed_layers=fixed_layers_by_model(),
    script:
        "../scripts/predictor_tables.py"


rule plot_predictors:
    input:
        predictors="results/tables/predictors.csv",
    output:
        png=report(
            "results/plots/predictors.png",
            caption="../report/predictors_plot.rst",
            category="7. Cheap pre-screens",
            labels={"figure": "predictors"},
        ),
        pdf="results/plots/predictors.pdf",
    # Not under results/logs/plots/: a model may be named "predictors".
    log:
        "results/logs/plot_predictors.log",
    benchmark:
        "results/benchmarks/plot_predictors.tsv"
    conda:
        conda_env
    params:
        plots=canonical(config["plots"]),
    script:
        "../scripts/plot_predictors.py"
