"""config/paper.yaml: the paper's 8 x 12 study validates and plans on SLURM without the hub.

The hub is unreachable here, which makes the dry run a real check that nothing at DAG time
downloads anything: acquisition happens inside jobs only. The SLURM executor in a dry run needs
the plugin but no cluster (SLURM_CONF points nowhere below).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_resources import MODEL_RULES, parse_dry_run_jobs
from workflow_support import run_snakemake

from ntps.config import validate_config
from ntps.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper.yaml"
MODELS = {
    "qwen2-0.5b": "Qwen/Qwen2-0.5B", "qwen2-1.5b": "Qwen/Qwen2-1.5B", "qwen2-7b": "Qwen/Qwen2-7B",
    "openelm-270m": "apple/OpenELM-270M", "openelm-450m": "apple/OpenELM-450M",
    "openelm-1.1b": "apple/OpenELM-1_1B", "openelm-3b": "apple/OpenELM-3B",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
}  # fmt: skip
# dataset -> (text columns, label column, split) as in the method spec, section 6.
DATASETS = {
    "intent_classification": (["text"], "intent", None),
    "clickbait": (["title"], "clickbait", {"test_fraction": 0.3, "seed": 42}),
    "sst2": (["sentence"], "label", {"train": "train", "test": "validation"}),
    "banking77": (["text"], "label", {"train": "train", "test": "test"}),
    "bias_identification": (["context"], "bias_type", None),
    "emotion": (["text"], "label", {"train": "train", "test": "test"}),
    "sms_spam": (["sms"], "label", {"test_fraction": 0.3, "seed": 42}),
    "medical_questions_pairs": (
        ["question_1", "question_2"], "label", {"test_fraction": 0.3, "seed": 42},
    ),
    "commonsense_qa": (["question"], "answerKey", {"train": "train", "test": "validation"}),
    "climate_sentiment": (["text"], "label", {"train": "train", "test": "test"}),
    "rotten_tomatoes": (["text"], "label", {"train": "train", "test": "test"}),
    "imdb": (["text"], "label", {"train": "train", "test": "test"}),
}  # fmt: skip


@pytest.fixture(scope="module")
def paper() -> dict[str, Any]:
    config = yaml.safe_load(PAPER.read_text())
    validate_config(config)  # raises ConfigError listing every problem
    return config


def test_models_are_the_papers_eight(paper: dict[str, Any]) -> None:
    by_name = {m["name"]: m for m in paper["models"]}
    assert {name: m["source"]["id"] for name, m in by_name.items()} == MODELS
    for name, model in by_name.items():
        assert model["source"]["type"] == "hub"
        assert model["source"]["revision"] == "main"
        # Sized before download: the DAG must not need the hub to size jobs.
        assert model["n_params"] > 1e8, name
        is_openelm = name.startswith("openelm")
        assert model["source"].get("trust_remote_code", False) is is_openelm, name
        if is_openelm:
            assert model["source"]["tokenizer"] == "meta-llama/Llama-2-7b-hf"
            assert model["max_length"] == 2048
    sizes = [by_name[n]["n_params"] for n in ("qwen2-0.5b", "qwen2-1.5b", "qwen2-7b")]
    assert sizes == sorted(sizes)


def test_datasets_follow_the_spec(paper: dict[str, Any]) -> None:
    by_name = {d["name"]: d for d in paper["datasets"]}
    assert set(by_name) == set(DATASETS)
    for name, (text_columns, label_column, split) in DATASETS.items():
        entry = by_name[name]
        assert entry["source"]["type"] == "hub" and entry["source"]["revision"] == "main", name
        assert entry["text_columns"] == text_columns, name
        assert entry["label_column"] == label_column, name
        assert entry.get("split") == split, name
        assert "max_train" not in entry and "max_test" not in entry, name
    assert by_name["medical_questions_pairs"]["text_separator"] == " "
    assert by_name["commonsense_qa"]["label_values"] == ["A", "B", "C", "D", "E"]


def test_lora_and_analysis_settings(paper: dict[str, Any]) -> None:
    assert paper["lora"]["enabled"] is True
    settings = paper["lora"]["settings"]
    expected = {
        "r": 32, "alpha": 32, "dropout": 0.05, "target_modules": None, "optimizer": "adafactor",
        "learning_rate": 1e-4, "lr_schedule": "cosine", "warmup_ratio": 0.05, "max_steps": 5000,
        "batch_size": 1, "grad_accum_steps": 1,
    }  # fmt: skip
    assert {key: settings[key] for key in expected} == expected
    assert paper["analysis"]["fixed_layer"] == 0.5 and paper["analysis"]["fixed_k"] == 0.25
    # validate_config filled nothing that contradicts the file: the paper's values are explicit.
    raw = yaml.safe_load(PAPER.read_text())
    assert raw["lora"] == paper["lora"]


def test_validation_names_a_broken_entry(paper: dict[str, Any]) -> None:
    # The same file with one typo must fail validation (the test above is not vacuous).
    broken = copy.deepcopy(yaml.safe_load(PAPER.read_text()))
    broken["models"][3]["source"]["trust_remote_cod"] = True
    with pytest.raises(ConfigError, match="openelm-270m"):
        validate_config(broken)


@pytest.mark.slow  # 611 jobs to plan: 20-40 s on 2 shared cores
@pytest.mark.skipif(
    importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason="snakemake-executor-plugin-slurm is not installed",
)
def test_dry_run_on_slurm_without_hub_or_cluster(tmp_path: Path) -> None:
    env = {
        **os.environ,
        # Any hub or network access at DAG time fails at once instead of hanging.
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        # No cluster: a dry run must not need one.
        "SLURM_CONF": str(tmp_path / "no-cluster" / "slurm.conf"),
    }
    result = run_snakemake(
        tmp_path, "--profile", str(REPO / "profiles" / "slurm"), "--dry-run",
        configfile=PAPER, cores=None, env=env, check=False, timeout=600,
    )  # fmt: skip
    output = result.stdout + "\n" + result.stderr
    assert result.returncode == 0, output[-4000:]
    jobs = parse_dry_run_jobs(output)
    counts = Counter(job["rule"] for job in jobs)
    assert counts["acquire_model"] == 8 and counts["prepare_dataset"] == 12
    for rule in ("lora", "score", "probe"):
        assert counts[rule] == 8 * 12, rule
    # The large datasets are extracted in shards (extraction_shards), the others in one job.
    shards = {
        d["name"]: d.get("extraction_shards", 1)
        for d in yaml.safe_load(PAPER.read_text())["datasets"]
    }
    assert {name: n for name, n in shards.items() if n > 1} == {
        "clickbait": 4, "sst2": 8, "banking77": 2, "emotion": 2, "imdb": 8,
    }  # fmt: skip
    assert counts["extract"] == 8 * 7
    assert counts["extract_shard"] == 8 * sum(n for n in shards.values() if n > 1)
    assert counts["merge_extract"] == 8 * 5
    # Nothing was acquired: no model or dataset folder was created at DAG time.
    assert not (tmp_path / "resources").exists()
    # The largest model's jobs are sized from n_params: 2 GB + 12 bytes/param, 1 h per 1e9, plus
    # one float64 statistics accumulator (~2 bytes/param: 16 GB; the real one is 13.3 GB at 33
    # states x 3 x 4096^2 x 8 bytes); no jackknife shards in the paper config.
    llama = [
        job
        for job in jobs
        if job["rule"] in MODEL_RULES | {"extract_shard"}
        and re.search(r"\bmodel=llama3-8b\b", job["wildcards"])
    ]
    assert len(llama) == 12 + 7 + 24  # lora, extract, extract_shard
    for job in llama:
        assert job["resources"]["gpu"] == "1"
        assert job["resources"]["mem_mb"] == str(2048 + 96360 + 16060)
        assert job["resources"]["runtime"] == "482"
    # Score jobs: one GPU for the models of >= 2e9 parameters (scoring.gpu_min_params).
    scored = [job for job in jobs if job["rule"] == "score"]
    for job in scored:
        model = re.search(r"\bmodel=([\w.-]+)", job["wildcards"]).group(1)
        large = model in {"openelm-3b", "qwen2-7b", "llama3-8b"}
        assert job["resources"]["gpu"] == ("1" if large else "0"), job
