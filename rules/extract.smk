# Extraction (the GPU rule): one forward pass over train and test, all layers at once.


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
    log:
        "results/logs/extract/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/extract/{model}/{dataset}.tsv"
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
    script:
        "../scripts/extract.py"
