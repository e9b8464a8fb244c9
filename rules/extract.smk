# Extraction (the GPU rule): one forward pass over train and test, all layers at once; in one job
# per pair (extract), or in S jobs per pair merged into the same files (extract_shard,
# merge_extract) for datasets with extraction.shards / extraction_shards S > 1.


rule extract:
    input:
        model="resources/models/{model}/weights",
        model_record="resources/models/{model}/model.json",
        table="resources/datasets/{dataset}/data.parquet",
        dataset="resources/datasets/{dataset}/dataset.json",
    output:
        stats=statistics_output("results/extract/{model}/{dataset}/stats.safetensors"),
        shards=shard_statistics(
            "results/extract/{model}/{dataset}/stats_shards.safetensors"
        ),
        features="results/extract/{model}/{dataset}/features.safetensors",
        record="results/extract/{model}/{dataset}/extract.json",
        # The inputs of LoRA's first adapted block, for the lora job (no states for other pairs).
        block_inputs=statistics_output(
            "results/extract/{model}/{dataset}/block_inputs.safetensors"
        ),
    log:
        "results/logs/extract/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/extract/{model}/{dataset}.tsv"
    wildcard_constraints:
        dataset=names_regex(UNSHARDED_DATASETS),
    # The forward passes are most of a study's time: start them first (equal priority: the
    # largest inputs first), so no long extraction is left to run alone at the end. The
    # jackknife job has the same priority, so each pair's temporary shard statistics are
    # consumed (and deleted) soon after its extraction.
    priority: 1
    conda:
        conda_env
    threads: model_threads
    resources:
        gpu=model_gpu,
        mem_mb=extract_mem_mb,
        runtime=model_runtime,
    params:
        settings=extraction_params,
        threads=model_threads,
        splits=["train", "test"],
        # Toggling the progress bar re-extracts nothing.
        progress=no_rerun(config["extraction"]["progress"]),
        # Which hidden state to keep for LoRA: a cache, so changing the LoRA settings re-extracts
        # nothing (the lora job then computes the states itself).
        lora=no_rerun(lora_settings_of_pair),
    script:
        "../scripts/extract.py"


# One extraction shard: its cost-balanced range of the batches of every split (the same batches
# as one job), statistics per jackknife shard, pooled features with their positions. Deleted once
# merged; a killed shard leaves no file, so a re-run redoes only the missing shards.
rule extract_shard:
    input:
        model="resources/models/{model}/weights",
        model_record="resources/models/{model}/model.json",
        table="resources/datasets/{dataset}/data.parquet",
        dataset="resources/datasets/{dataset}/dataset.json",
    output:
        part=temp(
            "results/extract/{model}/{dataset}/shards/{shard}-of-{shards}.safetensors"
        ),
    log:
        "results/logs/extract_shard/{model}/{dataset}/{shard}-of-{shards}.log",
    benchmark:
        "results/benchmarks/extract_shard/{model}/{dataset}/{shard}-of-{shards}.tsv"
    wildcard_constraints:
        dataset=names_regex(SHARDED_DATASETS),
        shard=r"\d+",
        shards=r"\d+",
    # As rule extract: forward passes first.
    priority: 1
    conda:
        conda_env
    threads: model_threads
    resources:
        gpu=model_gpu,
        mem_mb=extract_mem_mb,
        runtime=model_runtime,
    params:
        settings=extraction_params,
        threads=model_threads,
        splits=["train", "test"],
        # Toggling the progress bar re-extracts nothing.
        progress=no_rerun(config["extraction"]["progress"]),
    script:
        "../scripts/extract_shard.py"


# The outputs of `extract`, from a pair's extraction shards (checked: same model, data and
# settings, every text exactly once). No model and no GPU: memory for the statistics and features.
rule merge_extract:
    input:
        parts=extract_shard_files,
        model_record="resources/models/{model}/model.json",
        dataset="resources/datasets/{dataset}/dataset.json",
    output:
        stats=statistics_output("results/extract/{model}/{dataset}/stats.safetensors"),
        shards=shard_statistics(
            "results/extract/{model}/{dataset}/stats_shards.safetensors"
        ),
        features="results/extract/{model}/{dataset}/features.safetensors",
        record="results/extract/{model}/{dataset}/extract.json",
        # No states: extraction shards keep none (the lora job computes them).
        block_inputs=statistics_output(
            "results/extract/{model}/{dataset}/block_inputs.safetensors"
        ),
    log:
        "results/logs/merge_extract/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/merge_extract/{model}/{dataset}.tsv"
    wildcard_constraints:
        dataset=names_regex(SHARDED_DATASETS),
    conda:
        conda_env
    threads: 1
    resources:
        mem_mb=merge_extract_mem_mb,
    params:
        settings=extraction_params,
        threads=1,
    script:
        "../scripts/merge_extract.py"
