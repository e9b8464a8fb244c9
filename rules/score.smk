# Scoring: NTPS (paper and regression forms), baseline, exact excess loss and bounds per layer and k,
# with jackknife standard errors.


# The expensive half of the standard errors: every leave-one-shard-out replicate of every layer
# scored once, at every k any grid can ask for. It depends on the statistics and the scoring
# settings, not on the k grid, so a new grid re-runs only `score`, and the shard statistics can be
# deleted once this ran (uncertainty.keep_shard_statistics: false).
rule jackknife:
    input:
        stats="results/extract/{model}/{dataset}/stats.safetensors",
        shards="results/extract/{model}/{dataset}/stats_shards.safetensors",
    output:
        replicates="results/jackknife/{model}/{dataset}.safetensors",
    log:
        "results/logs/jackknife/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/jackknife/{model}/{dataset}.tsv"
    # As the extraction (rules/extract.smk): the shards it deletes are the largest temp files.
    priority: 1
    conda:
        conda_env
    threads: score_threads
    resources:
        gpu=score_gpu,
        runtime=score_runtime,
    params:
        **jackknife_params(),
        device=config["extraction"]["device"],
        threads=score_threads,
    script:
        "../scripts/jackknife.py"


rule score:
    input:
        stats="results/extract/{model}/{dataset}/stats.safetensors",
        replicates="results/jackknife/{model}/{dataset}.safetensors",
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
