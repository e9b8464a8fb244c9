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
    threads: 1
    params:
        **scoring_params(),
        threads=1,
    script:
        "../scripts/score.py"
