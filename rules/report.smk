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
        # The verdict alone, for the report's landing page (report/workflow.rst includes it).
        verdict=report(
            "results/verdict.rst",
            caption="../report/verdict.rst",
            category="1. Summary",
            labels={"document": "verdict"},
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
        useful_rho=config["evidence"]["useful_rho"],
        enabled=enabled_predictors(config),
    script:
        "../scripts/summary.py"
