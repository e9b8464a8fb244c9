"""Cluster resources: model jobs scale with model size and retries; CPU-only rules ask for no GPU.

The sizing function is tested directly, then through the real workflow: a dry run of a study with
two models prints the resources Snakemake will request for every job, which is what an executor
(local or SLURM) receives.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from workflow_support import run_snakemake

from ntps.workflow import (
    DEFAULT_N_PARAMS,
    lora_pairs,
    model_n_params,
    model_resources,
    model_torch_threads,
    score_resources,
    statistics_mb,
)

REPO = Path(__file__).resolve().parents[1]
# Rules that load a model and therefore get model-sized resources and a GPU request.
MODEL_RULES = {"extract", "lora"}
# Rules that request a GPU only for models above scoring.gpu_min_params.
SCORE_RULES = {"jackknife", "score", "score_post_lora"}
CPU_RULES = {
    "prepare_dataset", "probe", "tables", "correlations", "plot_model", "plot_bounds",
    "lora_tables", "plot_lora",
}  # fmt: skip


def study_config(**model_keys: Any) -> dict[str, Any]:
    return {
        "models": [{"name": "m", "source": {"type": "hub", "id": "org/m"}, **model_keys}],
        "datasets": [],
    }


# --- model_resources --------------------------------------------------------------------------


def test_resources_scale_with_parameter_count() -> None:
    small = model_resources(study_config(n_params=500_000_000), "m")
    large = model_resources(study_config(n_params=8_000_000_000), "m")
    # fp32 weights x3 + 2 GB: 0.5e9 * 12 bytes = 6000 MB; 8e9 * 12 = 96000 MB.
    assert small["mem_mb"] == 2048 + 6000
    assert large["mem_mb"] == 2048 + 96000
    # Plus one statistics accumulator (24 bytes per L d^2 ~ n_params / 12): 2 bytes per parameter.
    with_stats = model_resources(study_config(n_params=500_000_000), "m", 1, "single")
    assert with_stats["mem_mb"] == 2048 + 6000 + 1000
    # One hour per billion parameters, at least 30 minutes.
    assert small["runtime"] == 30
    assert large["runtime"] == 480
    assert small["gpu"] == large["gpu"] == 1


def test_resources_double_on_each_retry() -> None:
    config = study_config(n_params=3_000_000_000)
    first, second, third = (model_resources(config, "m", attempt) for attempt in (1, 2, 3))
    assert second["mem_mb"] == 2 * first["mem_mb"] and third["mem_mb"] == 4 * first["mem_mb"]
    assert second["runtime"] == 2 * first["runtime"] and third["runtime"] == 4 * first["runtime"]
    # A retry does not ask for more GPUs or cores, only more time and memory.
    assert second["gpu"] == first["gpu"]


def test_per_model_overrides_win_and_still_scale_with_attempt() -> None:
    config = study_config(
        n_params=8_000_000_000,
        resources={"mem_mb": 40_000, "runtime": 90, "gpu": 2, "threads": 8},
    )
    assert model_resources(config, "m", 1) == {"mem_mb": 40_000, "runtime": 90, "gpu": 2}
    assert model_resources(config, "m", 2) == {"mem_mb": 80_000, "runtime": 180, "gpu": 2}
    assert model_torch_threads(config, "m") == 8
    # A partial override keeps the computed values for the other keys.
    partial = model_resources(study_config(n_params=8_000_000_000, resources={"gpu": 0}), "m")
    assert partial["gpu"] == 0 and partial["mem_mb"] == 2048 + 96000


def test_statistics_memory_counts_the_jackknife_shards(tmp_path: Path) -> None:
    records = tmp_path / "resources" / "models"
    (records / "m").mkdir(parents=True)
    # SmolLM2-135M's shape: 30 blocks (31 hidden states), d = 576.
    (records / "m" / "model.json").write_text(json.dumps({"n_layers": 30, "hidden_size": 576}))
    one = 31 * (3 * 576**2 + 576) * 8 / 1e6  # 247 MB: Cxx, S0, S1, sum x; float64, per state
    config = study_config(n_params=135_000_000)
    assert statistics_mb(config, "m", str(records)) == pytest.approx(one, abs=1)
    config["uncertainty"] = {"jackknife_shards": 10}
    # Ten shards, their merged total and one intermediate merge.
    assert statistics_mb(config, "m", str(records)) == pytest.approx(12 * one, abs=1)


def test_parameter_count_from_config_then_record_then_default(tmp_path: Path) -> None:
    records = tmp_path / "resources" / "models"
    assert model_n_params(study_config(), "m", str(records)) == DEFAULT_N_PARAMS
    (records / "m").mkdir(parents=True)
    (records / "m" / "model.json").write_text(json.dumps({"n_parameters": 270_000_000}))
    assert model_n_params(study_config(), "m", str(records)) == 270_000_000
    # The config value wins over what acquisition measured.
    assert model_n_params(study_config(n_params=42), "m", str(records)) == 42
    # A broken record falls back to the default instead of failing the DAG.
    (records / "m" / "model.json").write_text("{not json")
    assert model_n_params(study_config(), "m", str(records)) == DEFAULT_N_PARAMS


def test_lora_pairs_leave_out_what_either_side_opts_out_of() -> None:
    config = {
        "lora": {"enabled": True},
        "models": [{"name": "a"}, {"name": "b", "lora": False}],
        "datasets": [{"name": "x"}, {"name": "y", "lora": False}, {"name": "z", "lora": True}],
    }
    assert lora_pairs(config) == [("a", "x"), ("a", "z")]
    config["lora"]["enabled"] = False
    assert lora_pairs(config) == []


# --- what the workflow actually requests ------------------------------------------------------


def parse_dry_run_jobs(output: str) -> list[dict[str, Any]]:
    """One dict per job block of `snakemake --dry-run`: rule, wildcards, resources, threads."""
    jobs = []
    for block in re.split(r"\n\s*\n", output):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.MULTILINE)
        if not rule:
            continue
        fields = dict(re.findall(r"^\s{4}(\w+): (.*)$", block, re.MULTILINE))
        resources = dict(
            item.split("=", 1) for item in fields.get("resources", "").split(", ") if "=" in item
        )
        jobs.append(
            {
                "rule": rule.group(1),
                "wildcards": fields.get("wildcards", ""),
                "resources": resources,
                "threads": int(fields.get("threads", 1)),
            }
        )
    return jobs


@pytest.fixture(scope="module")
def planned_jobs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Dry run of a two-model, two-dataset study with LoRA: nothing is loaded or downloaded."""
    root = tmp_path_factory.mktemp("resources")
    # A dry run never opens the model; validation only checks the folder has a config.json.
    model_dir = root / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    datasets = []
    for name in ("d1", "d2"):
        path = root / f"{name}.csv"
        path.write_text("text,label\na b,x\nc d,y\ne f,x\ng h,y\n")
        datasets.append(
            {"name": name, "source": {"type": "files", "path": str(path)},
             "text_columns": ["text"], "label_column": "label"}
        )  # fmt: skip
    config = {
        "models": [
            # Sized from its parameter count (no record exists at DAG time).
            {"name": "big", "source": {"type": "local", "path": str(model_dir)},
             "n_params": 7_000_000_000},
            # Sized by hand: a CPU-only model with a fixed memory budget.
            {"name": "pinned", "source": {"type": "local", "path": str(model_dir)},
             "n_params": 7_000_000_000, "resources": {"gpu": 0, "mem_mb": 3000, "threads": 4}},
        ],
        "datasets": datasets,
        "lora": {"enabled": True},
        "scoring": {"gpu_min_params": 5_000_000_000, "threads": 3},
    }  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(root, "--dry-run", cores=8, check=False, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = parse_dry_run_jobs(result.stdout + "\n" + result.stderr)
    assert jobs, result.stdout[-3000:]
    return jobs


def test_model_rules_request_model_sized_gpu_jobs(planned_jobs: list[dict[str, Any]]) -> None:
    model_jobs = [job for job in planned_jobs if job["rule"] in MODEL_RULES]
    # 2 models x 2 datasets for each of the three model rules.
    assert sorted({job["rule"] for job in model_jobs}) == sorted(MODEL_RULES)
    assert len(model_jobs) == 2 * 4
    for job in model_jobs:
        resources = job["resources"]
        if "model=big" in job["wildcards"]:
            # 2048 + 7e9 * 12 / 1e6 MB and 7 hours: from the parameter count, first attempt;
            # plus the statistics (2 bytes per parameter each): the LoRA job's post-LoRA
            # statistics, and for extraction 10 jackknife shards, their total and one merge.
            assert resources["gpu"] == "1", job
            copies = 12 if job["rule"] == "extract" else 1
            assert resources["mem_mb"] == str(2048 + 84000 + copies * 14000), job
            assert resources["runtime"] == "420", job
            assert job["threads"] == 2, job
        else:
            assert resources["gpu"] == "0", job
            assert resources["mem_mb"] == "3000", job
            assert job["threads"] == 4, job


def test_score_jobs_of_large_models_request_a_gpu(planned_jobs: list[dict[str, Any]]) -> None:
    score_jobs = [job for job in planned_jobs if job["rule"] in SCORE_RULES]
    # 2 models x 2 datasets: the jackknife replicates, the scores before and after LoRA.
    assert len(score_jobs) == 2 * 2 * 3
    for job in score_jobs:
        # big (7e9 >= 5e9 parameters): one GPU and 7 hours; pinned: kept off GPUs by gpu: 0.
        big = "model=big" in job["wildcards"]
        assert job["resources"]["gpu"] == ("1" if big else "0"), job
        assert job["resources"]["runtime"] == "420", job
        assert job["threads"] == 3, job


def test_cpu_rules_request_no_gpu(planned_jobs: list[dict[str, Any]]) -> None:
    planned_rules = {job["rule"] for job in planned_jobs}
    assert CPU_RULES <= planned_rules, CPU_RULES - planned_rules
    for job in planned_jobs:
        if job["rule"] not in MODEL_RULES | SCORE_RULES:
            assert "gpu" not in job["resources"], job
    # Acquisition is CPU work sized by the model (it holds the weights once in memory).
    acquire = [job for job in planned_jobs if job["rule"] == "acquire_model"]
    assert {job["resources"]["mem_mb"] for job in acquire} == {str(2048 + 84000), "3000"}


# --- profiles ---------------------------------------------------------------------------------


def load_profile(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())


def test_profiles_keep_cluster_specifics_out_of_the_rules() -> None:
    default, slurm = load_profile("default"), load_profile("slurm")
    assert "executor" not in default  # local executor
    assert slurm["executor"] == "slurm"
    resources = slurm["default-resources"]
    # Retries get more: the defaults scale with the attempt like the model rules do.
    assert "attempt" in str(resources["runtime"]) and "attempt" in str(resources["mem_mb"])
    assert slurm["retries"] >= 1
    # The plugin prefers cpus_per_task over a rule's threads: a default would cap model jobs.
    assert "cpus_per_task" not in resources
    # No rule names a partition, account or GPU type: those belong in the profile.
    rules_text = "\n".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    for key in ("slurm_partition", "slurm_account", "gpu_model", "slurm_extra", "partition"):
        assert key not in rules_text, key


# --- score jobs ---------------------------------------------------------------------------------


def test_score_jobs_get_a_gpu_from_the_parameter_threshold_or_the_model() -> None:
    config = study_config(n_params=8_000_000_000)
    # No threshold (the default): no score job asks for a GPU, whatever the model's size.
    assert score_resources(config, "m") == {"gpu": 0, "runtime": 480, "threads": 1}
    config["scoring"] = {"gpu_min_params": 8_000_000_000, "threads": 4}
    assert score_resources(config, "m") == {"gpu": 1, "runtime": 480, "threads": 4}
    assert score_resources(config, "m", 2)["runtime"] == 960
    config["scoring"]["gpu_min_params"] = 8_000_000_001
    assert score_resources(config, "m")["gpu"] == 0
    # Per model: score_gpu wins over the threshold; a model kept off GPUs is kept off for scoring.
    config["scoring"]["gpu_min_params"] = 1
    config["models"][0]["resources"] = {"gpu": 0}
    assert score_resources(config, "m")["gpu"] == 0
    config["models"][0]["resources"] = {"gpu": 0, "score_gpu": 2}
    assert score_resources(config, "m")["gpu"] == 2
    # Small models keep the profiles' 120-minute default.
    assert score_resources(study_config(n_params=135_000_000), "m")["runtime"] == 120


def test_paper_models_above_2e9_parameters_score_on_a_gpu_and_the_default_study_does_not() -> None:
    from ntps.config import validate_config

    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    validate_config(paper)
    on_gpu = {m["name"] for m in paper["models"] if score_resources(paper, m["name"])["gpu"]}
    assert on_gpu == {"openelm-3b", "qwen2-7b", "llama3-8b"}
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate_config(default)
    assert default["models"]
    assert not any(score_resources(default, m["name"])["gpu"] for m in default["models"])


@pytest.mark.parametrize("torch_first", [False, True])
def test_job_threads_reach_torch_whether_or_not_it_is_imported_yet(torch_first: bool) -> None:
    """set_threads gives torch the config's threads in a job that imported it and in one that
    imports it later, over the 1 that Snakemake puts into the environment under --cores 1, and
    does not import torch itself (a second of start-up for the jobs that never use it)."""
    import os
    import subprocess
    import sys

    from ntps.workflow import THREAD_VARIABLES

    code = "\n".join([
        "import sys",
        "import torch" if torch_first else "",
        "from ntps.workflow import set_threads",
        "set_threads(2)",
        "print('torch' in sys.modules)",
        "import torch",
        "from threadpoolctl import threadpool_info",
        "print(torch.get_num_threads())",
        "print(sorted({i['num_threads'] for i in threadpool_info()}))",
    ])  # fmt: skip
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, "1")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.splitlines()
    # torch's OpenMP pool and numpy's BLAS pool alike.
    assert out == [str(torch_first), "2", "[2]"]
