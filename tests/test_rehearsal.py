"""The paper-scale dress rehearsal (tests/rehearsal.py): config/paper.yaml's whole DAG on tiny
models of the paper's architectures and small datasets shaped like the paper's, end to end.

Marked ``rehearsal`` (deselected by default in pyproject.toml; run it with
``pytest -m rehearsal tests/test_rehearsal.py``) and ``slow``: hundreds of jobs, most of their time
Python and torch start-up. ``NTPS_REHEARSAL_PROFILE=profiles/slurm`` runs it through the SLURM
profile instead of the local one (plus ``NTPS_REHEARSAL_ARGS``, split on spaces, for site options);
``NTPS_REHEARSAL_MODELS`` (names split on spaces) keeps a subset of the paper's models.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from rehearsal import ARCHITECTURES, CLASSES, PAPER_CONFIG, run_rehearsal
from test_resources import parse_dry_run_jobs
from workflow_support import read_json, run_snakemake

pytestmark = [pytest.mark.rehearsal, pytest.mark.slow]

PROFILE = os.environ.get("NTPS_REHEARSAL_PROFILE", "profiles/default")
EXTRA = os.environ.get("NTPS_REHEARSAL_ARGS", "").split()
MODELS = os.environ.get("NTPS_REHEARSAL_MODELS", "").split() or None


def planned_rules(workdir: Path, config: Path) -> Counter:
    """Jobs per rule of a from-scratch dry run of ``config`` (nothing is read from the hub)."""
    result = run_snakemake(
        workdir, "--dry-run", "--forceall", configfile=config, cores=1,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    return Counter(job["rule"] for job in parse_dry_run_jobs(result.stdout))


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("rehearsal")
    cores = None if "slurm" in PROFILE else 2
    record = run_rehearsal(root, PROFILE, EXTRA, cores=cores, models_kept=MODELS)
    print(f"rehearsal: {record}")
    assert record["returncode"] == 0, "the rehearsal's Snakemake run failed (output above)"
    return root, record


def test_rehearsal_runs_the_paper_dag(rehearsal: tuple[Path, dict], tmp_path: Path) -> None:
    root, record = rehearsal
    config = yaml.safe_load((root / "config.yaml").read_text())
    # Same DAG as config/paper.yaml (with the rehearsal's sharding), rule by rule.
    paper = yaml.safe_load(PAPER_CONFIG.read_text())
    paper["models"] = [m for m in paper["models"] if m["name"] in record["models"]]
    if record["extraction_shards"]:
        paper["extraction"]["shards"] = record["extraction_shards"]
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(paper))
    assert planned_rules(root, root / "config.yaml") == planned_rules(
        tmp_path, tmp_path / "paper.yaml"
    )
    # ... and all of it ran: nothing left to do.
    rerun = run_snakemake(root, "--dry-run", configfile=root / "config.yaml", cores=1)
    assert "Nothing to be done" in rerun.stdout + rerun.stderr
    scores = pd.read_csv(root / "results/tables/scores.csv")
    pairs = scores.groupby(["stage", "model"])["dataset"].nunique()
    assert set(scores["model"]) == set(record["models"])
    assert (pairs == len(CLASSES)).all() and set(scores["stage"]) == {"pre_lora", "post_lora"}
    for model in record["models"]:
        architecture, blocks = ARCHITECTURES[model]
        acquired = read_json(root / f"resources/models/{model}/model.json")
        assert acquired["n_layers"] == blocks
        expected = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
        assert acquired["architecture"] == expected.get(architecture, "TinyElmForCausalLM")
        assert bool(acquired["source"].get("trust_remote_code")) == (architecture == "remote")
    for name, n_classes in CLASSES.items():
        prepared = read_json(root / f"resources/datasets/{name}/dataset.json")
        assert len(prepared["label_names"]) == n_classes, name
    lora = pd.read_csv(root / "results/tables/lora.csv")
    assert len(lora) == len(record["models"]) * len(CLASSES)
    assert (lora["steps"] == config["lora"]["settings"]["max_steps"]).all()
    assert (root / "results/summary.md").stat().st_size > 0
    # With 3 or more models the across-model view (which model to pick per dataset) exists.
    across = pd.read_csv(root / "results/tables/evidence_across_models.csv")
    ntps = across[(across["predictor"] == "ntps") & (across["mode"] == "fixed")]
    if len(record["models"]) >= 3:
        assert ntps["mean_tau"].notna().all() and (ntps["n_models"] >= 3).all()
    else:
        assert ntps["reason"].str.startswith("fewer than 3 models").all()
