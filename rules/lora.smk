# LoRA stage: fine-tune adapters + head per pair (head started from the last-layer probe), write
# the adapted model's statistics, re-score them, then relate pre-LoRA NTPS to the LoRA gain.


rule lora:
    input:
        model="resources/models/{model}/weights",
        model_record="resources/models/{model}/model.json",
        table="resources/datasets/{dataset}/data.parquet",
        dataset="resources/datasets/{dataset}/dataset.json",
        probe_head="results/probes/{model}/{dataset}.head.safetensors",
        stats="results/extract/{model}/{dataset}/stats.safetensors",
        # The extraction's copy of the inputs of the first adapted block, used when it fits.
        block_inputs="results/extract/{model}/{dataset}/block_inputs.safetensors",
    output:
        adapter=directory("results/lora/{model}/{dataset}/adapter"),
        metrics="results/lora/{model}/{dataset}/metrics.json",
        # Train-split statistics of the adapted model (post-LoRA NTPS): hidden states below the
        # first adapted block are copied from the pre-LoRA statistics, the rest recomputed.
        stats=statistics_output(
            "results/lora/{model}/{dataset}/stats_post_lora.safetensors"
        ),
    log:
        "results/logs/lora/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/lora/{model}/{dataset}.tsv"
    conda:
        conda_env
    threads: model_threads
    resources:
        gpu=model_gpu,
        mem_mb=lora_mem_mb,
        runtime=model_runtime,
    params:
        settings=lora_settings,
        threads=model_threads,
        max_length=lambda wildcards: model_spec(wildcards)["max_length"],
        prompt_format=lambda wildcards: model_spec(wildcards)["prompt_format"],
        # The frozen lower blocks run in the extraction's batches: their outputs are then the
        # extraction's bit for bit, whether read from input.block_inputs or computed here.
        extraction_batching=extraction_batching,
        device=config["extraction"]["device"],
        # Not an output: Snakemake must not delete it when a job dies, so a re-run resumes.
        checkpoints=lora_checkpoint_dir,
        # Toggling the progress bar retrains nothing.
        progress=no_rerun(config["extraction"]["progress"]),
    script:
        "../scripts/lora.py"


rule score_post_lora:
    input:
        stats="results/lora/{model}/{dataset}/stats_post_lora.safetensors",
        # The states below the first adapted block are the pre-LoRA statistics: their scores.
        lower_scores="results/scores/{model}/{dataset}.json",
    output:
        scores="results/scores_post_lora/{model}/{dataset}.json",
    log:
        "results/logs/score_post_lora/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/score_post_lora/{model}/{dataset}.tsv"
    conda:
        conda_env
    threads: score_threads
    resources:
        gpu=score_gpu,
        runtime=score_runtime,
    params:
        **scoring_params(),
        device=config["extraction"]["device"],
        released=config["scoring"]["released_column"],
        threads=score_threads,
    script:
        "../scripts/score.py"


rule lora_tables:
    input:
        metrics=lora_pair_outputs("results/lora/{model}/{dataset}/metrics.json"),
        scores="results/tables/scores.parquet",
        probes="results/tables/probes.parquet",
        models=per_model_outputs("resources/models/{model}/model.json"),
        # The per-text test predictions of the probe (its head file) and of LoRA (metrics.json),
        # scored against the test labels of the features file: the gain's paired-bootstrap SE.
        # Only the labels are read from the features.
        features=lora_pair_outputs(
            "results/extract/{model}/{dataset}/features.safetensors"
        ),
        probe_heads=lora_pair_outputs(
            "results/probes/{model}/{dataset}.head.safetensors"
        ),
    output:
        lora=report(
            "results/tables/lora.csv",
            caption="../report/lora.rst",
            category="5. LoRA",
            labels={"table": "LoRA results per pair"},
        ),
        correlations=report(
            "results/tables/lora_correlations.csv",
            caption="../report/lora_correlations.rst",
            category="5. LoRA",
            labels={"table": "NTPS vs LoRA gain correlations"},
        ),
        before_after="results/tables/ntps_before_after.csv",
        paired="results/tables/ntps_before_after_summary.csv",
        prediction="results/tables/gain_prediction.csv",
        prediction_summary="results/tables/gain_prediction_summary.csv",
    log:
        "results/logs/lora_tables.log",
    benchmark:
        "results/benchmarks/lora_tables.tsv"
    conda:
        conda_env
    params:
        analysis=canonical(config["analysis"]),
        fixed_layers=fixed_layers_by_model(),
        # The (model, dataset) of each entry of input.features and input.probe_heads, in order.
        pairs=lora_pairs(config),
        gain_bootstrap=config["evidence"]["gain_bootstrap"],
    script:
        "../scripts/lora_tables.py"


rule plot_lora:
    input:
        before_after="results/tables/ntps_before_after.csv",
    output:
        gain=report(
            "results/plots/lora/ntps_vs_gain.png",
            caption="../report/ntps_vs_gain.rst",
            category="5. LoRA",
            labels={"figure": "NTPS vs LoRA gain"},
        ),
        gain_pdf="results/plots/lora/ntps_vs_gain.pdf",
        before_after=report(
            "results/plots/lora/ntps_before_after.png",
            caption="../report/ntps_before_after.rst",
            category="5. LoRA",
            labels={"figure": "NTPS before and after LoRA"},
        ),
        before_after_pdf="results/plots/lora/ntps_before_after.pdf",
    log:
        "results/logs/plot_lora.log",
    benchmark:
        "results/benchmarks/plot_lora.tsv"
    conda:
        conda_env
    params:
        analysis=canonical(config["analysis"]),
        plots=canonical(config["plots"]),
    script:
        "../scripts/plot_lora.py"
