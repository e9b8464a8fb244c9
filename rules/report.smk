# Summary (results/summary.md), magnitudes, the paper's reference numbers beside ours.


rule summary:
    input:
        unpack(summary_inputs),
    output:
        summary=report(
            "results/summary.md",
            caption="../report/summary.rst",
            category="1. Summary",
            labels={"document": "summary"},
        ),
        magnitudes=report(
            "results/tables/magnitudes.csv",
            caption="../report/magnitudes.rst",
            category="4. Magnitudes and bounds",
            labels={"table": "magnitudes"},
        ),
        paper_correlations=report(
            "results/tables/paper_correlations.csv",
            caption="../report/paper_correlations.rst",
            category="6. The paper beside us",
            labels={"table": "the paper's correlations"},
        ),
        paper_comparison=report(
            "results/tables/paper_comparison.csv",
            caption="../report/paper_comparison.rst",
            category="6. The paper beside us",
            labels={"table": "the paper beside us"},
        ),
    log:
        "results/logs/summary.log",
    benchmark:
        "results/benchmarks/summary.tsv"
    conda:
        conda_env
    params:
        study=config["study"],
        analysis=canonical(config["analysis"]),
        fixed_layers=fixed_layers_by_model(),
        reference_names=reference_names(),
    script:
        "../scripts/summary.py"
