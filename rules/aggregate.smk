# Tidy tables across all (model, dataset) pairs and the correlation analysis.


rule tables:
    input:
        scores=pair_outputs("results/scores/{model}/{dataset}.json"),
        scores_post_lora=lora_pair_outputs(
            "results/scores_post_lora/{model}/{dataset}.json"
        ),
        probes=pair_outputs("results/probes/{model}/{dataset}.json"),
    output:
        scores_csv=report(
            "results/tables/scores.csv",
            caption="../report/tables.rst",
            category="3. Tables",
            labels={"table": "NTPS scores"},
        ),
        scores_parquet="results/tables/scores.parquet",
        probes_csv=report(
            "results/tables/probes.csv",
            caption="../report/tables.rst",
            category="3. Tables",
            labels={"table": "probe accuracies"},
        ),
        probes_parquet="results/tables/probes.parquet",
    log:
        "results/logs/tables.log",
    benchmark:
        "results/benchmarks/tables.tsv"
    conda:
        conda_env
    script:
        "../scripts/tables.py"


rule correlations:
    input:
        scores="results/tables/scores.parquet",
        probes="results/tables/probes.parquet",
    output:
        correlations=report(
            "results/tables/correlations.csv",
            caption="../report/correlations.rst",
            category="2. NTPS vs probes",
            labels={"table": "NTPS vs probe correlations"},
        ),
        grid="results/tables/correlation_grid.csv",
    log:
        "results/logs/correlations.log",
    benchmark:
        "results/benchmarks/correlations.tsv"
    conda:
        conda_env
    params:
        analysis=canonical(config["analysis"]),
        fixed_layers=fixed_layers_by_model(),
    script:
        "../scripts/correlations.py"
