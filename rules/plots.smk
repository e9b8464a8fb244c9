# Figures (PNG + PDF): NTPS vs probe accuracy, correlation heatmaps, layer profiles, bounds.


rule plot_model:
    input:
        scores="results/tables/scores.parquet",
        probes="results/tables/probes.parquet",
        correlations="results/tables/correlations.csv",
        grid="results/tables/correlation_grid.csv",
    output:
        multiext("results/plots/{model}/ntps_vs_accuracy", ".png", ".pdf"),
        multiext("results/plots/{model}/correlation_heatmap", ".png", ".pdf"),
        multiext("results/plots/{model}/layer_profile", ".png", ".pdf"),
    log:
        "results/logs/plots/{model}.log",
    benchmark:
        "results/benchmarks/plots/{model}.tsv"
    conda:
        conda_env
    params:
        analysis=canonical(config["analysis"]),
        fixed_layer=fixed_layer_of_model,
        plots=canonical(config["plots"]),
    script:
        "../scripts/plot_model.py"


rule plot_bounds:
    input:
        scores="results/tables/scores.parquet",
        probes="results/tables/probes.parquet",
    output:
        multiext("results/plots/bounds", ".png", ".pdf"),
    log:
        "results/logs/plots/bounds.log",
    benchmark:
        "results/benchmarks/plots/bounds.tsv"
    conda:
        conda_env
    params:
        analysis=canonical(config["analysis"]),
        plots=canonical(config["plots"]),
    script:
        "../scripts/plot_bounds.py"
