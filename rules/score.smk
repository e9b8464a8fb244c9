# Scoring: NTPS (paper and regression forms), baseline, exact excess loss and bounds per layer and k.


rule score:
    input:
        stats="results/extract/{model}/{dataset}/stats.safetensors",
        shards="results/extract/{model}/{dataset}/stats_shards.safetensors",
    output:
        scores="results/scores/{model}/{dataset}.json",
    log:
        "results/logs/score/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/score/{model}/{dataset}.tsv"
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
        released_spread=released_spread,
        threads=score_threads,
    script:
        "../scripts/score.py"
