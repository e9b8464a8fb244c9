# Held-out linear probes per layer on the pooled features.


rule probe:
    input:
        features="results/extract/{model}/{dataset}/features.safetensors",
        dataset="resources/datasets/{dataset}/dataset.json",
    output:
        probes="results/probes/{model}/{dataset}.json",
        # The last layer's logistic probe on the raw features: where the LoRA head starts.
        head="results/probes/{model}/{dataset}.head.safetensors",
    log:
        "results/logs/probe/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/probe/{model}/{dataset}.tsv"
    conda:
        conda_env
    threads: 1
    params:
        settings=canonical(config["probes"]),
        threads=1,
    script:
        "../scripts/probe.py"
