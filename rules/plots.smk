# Figures (PNG + PDF): NTPS vs probe accuracy, correlation heatmaps, layer profiles, bounds.


rule plot_model:
    input:
        scores="results/tables/scores.parquet",
        probes="results/tables/probes.parquet",
        correlations="results/tables/correlations.csv",
        grid="results/tables/correlation_grid.csv",
    output:
        scatter=report(
            "results/plots/{model}/ntps_vs_accuracy.png",
            caption="../report/ntps_vs_accuracy.rst",
            category="2. NTPS vs probes",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "NTPS vs probe accuracy"},
        ),
        scatter_pdf="results/plots/{model}/ntps_vs_accuracy.pdf",
        heatmap=report(
            "results/plots/{model}/correlation_heatmap.png",
            caption="../report/correlation_heatmap.rst",
            category="2. NTPS vs probes",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "correlation heatmap"},
        ),
        heatmap_pdf="results/plots/{model}/correlation_heatmap.pdf",
        profile=report(
            "results/plots/{model}/layer_profile.png",
            caption="../report/layer_profile.rst",
            category="4. Magnitudes and bounds",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "layer profile"},
        ),
        profile_pdf="results/plots/{model}/layer_profile.pdf",
    log:
        "results/logs/plot_model/{model}.log",
    benchmark:
        "results/benchmarks/plot_model/{model}.tsv"
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
        png=report(
            "results/plots/bounds.png",
            caption="../report/bounds.rst",
            category="4. Magnitudes and bounds",
            labels={"figure": "NTPS bounds"},
        ),
        pdf="results/plots/bounds.pdf",
    log:
        "results/logs/plot_bounds.log",
    benchmark:
        "results/benchmarks/plot_bounds.tsv"
    conda:
        conda_env
    params:
        analysis=canonical(config["analysis"]),
        plots=canonical(config["plots"]),
    script:
        "../scripts/plot_bounds.py"
