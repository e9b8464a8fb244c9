"""Deploying the workflow the way Snakemake users do: as a `module` from another folder (also through
`snakedeploy deploy-workflow`), and jobs that import `ntps` without PYTHONPATH (`--sdm conda`).

The shared test environment has `ntps` installed (editable) from some checkout, so "the job could
import ntps" proves nothing. Every job logs where its `ntps` came from (ntps.workflow.job_logging);
these tests copy the workflow to a fresh folder and assert that its jobs ran the copy's code.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_support import REPO, run_snakemake, snakemake_env, write_study

# What a deployed copy of the workflow consists of (a clone has the same, plus docs and tests).
WORKFLOW_ENTRIES = ("Snakefile", "rules", "scripts", "src", "schemas", "data", "envs", "report",
                    "config", "profiles", "LICENSE", "CITATION.cff")  # fmt: skip

# Snakemake's conda mode deletes these from a conda job's environment (snakemake/shell.py, unless
# --conda-not-block-search-path-envvars). There is no conda here, so this launcher removes them
# at the same point: around every job command Snakemake starts, after the Snakefile was parsed.
CONDA_MODE_LAUNCHER = """
import os, sys
from snakemake.shell import shell
BLOCKED = ("R_LIBS", "PYTHONPATH", "PERLLIB", "PERL5LIB")
original = shell.__new__
def without_search_paths(cls, cmd, *args, **kwargs):
    saved = {v: os.environ.pop(v) for v in BLOCKED if v in os.environ}
    try:
        return original(cls, cmd, *args, **kwargs)
    finally:
        os.environ.update(saved)
shell.__new__ = without_search_paths
from snakemake.cli import main
sys.argv[0] = "snakemake"
sys.exit(main())
"""


def copy_workflow(dest: Path) -> Path:
    """A copy of this workflow in a folder of its own (like a clone on another disk)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".snakemake")
    for entry in WORKFLOW_ENTRIES:
        source = REPO / entry
        if source.is_dir():
            shutil.copytree(source, dest / entry, ignore=ignore)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / entry)
    return dest


def snakemake(
    snakefile: Path,
    workdir: Path,
    *args: str,
    configfile: Path | None = None,
    conda_mode: bool = False,
    timeout: int = 1200,
) -> subprocess.CompletedProcess:
    """Snakemake on a deployed copy; without ``configfile`` the Snakefile's own ``configfile:``."""
    return run_snakemake(
        workdir, *args, configfile=configfile or False, snakefile=snakefile, timeout=timeout,
        launcher=["-c", CONDA_MODE_LAUNCHER] if conda_mode else ["-m", "snakemake"],
        # The outer PYTHONPATH (this checkout's src/, set for the test run) is not what jobs use.
        env=snakemake_env(drop=["PYTHONPATH"]),
    )  # fmt: skip


def ntps_folders_in_logs(logs: Path) -> dict[str, str]:
    """Log file -> the folder its job imported `ntps` from."""
    found = {}
    for log in logs.rglob("*.log"):
        # "ntps <version> [at commit <hash> [(with uncommitted changes)]] from <folder>"
        match = re.search(
            r"ntps \S+(?: at commit .*?)? from (\S+)", log.read_text(errors="replace")
        )
        # An `ntps` that does not log its folder is not this workflow's.
        found[str(log.relative_to(logs))] = match.group(1) if match else "<not logged>"
    return found


def small_study(root: Path) -> Path:
    """The tiny study cut to one dataset and no LoRA: every stage up to the summary, cheaply. (A
    one-dataset study has no correlation across datasets; it must still reach the summary.)"""
    config_path = write_study(root)
    config = yaml.safe_load(config_path.read_text())
    config["datasets"] = [d for d in config["datasets"] if d["name"] == "strong"]
    config["lora"]["enabled"] = False
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path


def test_job_imports_the_workflow_package_without_pythonpath(tmp_path: Path) -> None:
    """One real job with PYTHONPATH removed from its environment, as `--sdm conda` does."""
    workflow = copy_workflow(tmp_path / "ntps-workflow")
    study = tmp_path / "study"
    config = write_study(study)
    snakemake(workflow / "Snakefile", study, "resources/datasets/strong/dataset.json",
              configfile=config, conda_mode=True)  # fmt: skip
    folders = ntps_folders_in_logs(study / "results" / "logs")
    assert folders == {"prepare_dataset/strong.log": str(workflow / "src" / "ntps")}


def test_log_and_benchmark_paths_never_collide(tmp_path: Path) -> None:
    """Models named like the fixed plot outputs (`bounds`, `lora`): every job its own log and
    benchmark, under a folder or file named after its rule."""
    config_path = write_study(tmp_path)
    config = yaml.safe_load(config_path.read_text())
    tiny = config["models"][0]
    config["models"] = [dict(tiny, name=name) for name in ("bounds", "lora", "plot_lora")]
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(REPO / "Snakefile", tmp_path, "--dry-run", configfile=config_path)
    rule, seen = None, {"log": [], "benchmark": []}
    for line in result.stdout.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):", line):
            rule = match.group(1)
        elif match := re.match(r"^\s+(log|benchmark): (\S+)", line):
            kind, path = match.groups()
            seen[kind].append(path)
            top = "logs" if kind == "log" else "benchmarks"
            head = path.removeprefix(f"results/{top}/").split("/")[0]
            assert head in (rule, f"{rule}.log", f"{rule}.tsv"), (rule, path)
    n_jobs = len(re.findall(r"^(?:local)?rule (?!all:)\w+:", result.stdout, re.M))
    for kind, paths in seen.items():
        assert len(paths) == n_jobs and len(set(paths)) == len(paths), kind
    assert "results/logs/plot_model/bounds.log" in seen["log"]
    assert "results/logs/plot_bounds.log" in seen["log"]


@pytest.mark.slow
def test_module_from_another_folder_end_to_end(tmp_path: Path) -> None:
    """The workflow as a Snakemake module with the user's own config, every stage up to the
    summary (reference data from the module), jobs without PYTHONPATH."""
    workflow = copy_workflow(tmp_path / "ntps-workflow")
    deployment = tmp_path / "my-study"
    config = small_study(deployment)
    (deployment / "workflow").mkdir()
    (deployment / "workflow" / "Snakefile").write_text(
        f'configfile: "{config.name}"\n\n\n'
        f'module ntps:\n    snakefile:\n        "{workflow / "Snakefile"}"\n'
        "    config:\n        config\n\n\n"
        "use rule * from ntps\n"
    )
    snakemake(deployment / "workflow" / "Snakefile", deployment, conda_mode=True)
    results = deployment / "results"
    summary = (results / "summary.md").read_text()
    assert "1 model(s) x 1 dataset(s)" in summary
    assert "Qwen2-0.5B" in summary  # the paper's reference numbers, read from the module's data/
    assert (results / "plots" / "tiny-llama" / "layer_profile.png").stat().st_size > 1000
    folders = ntps_folders_in_logs(results / "logs")
    assert {"acquire_model/tiny-llama.log", "extract/tiny-llama/strong.log", "summary.log"} <= set(
        folders
    )
    assert set(folders.values()) == {str(workflow / "src" / "ntps")}
    # Nothing of the module is written into the user's folder but results and resources.
    assert not (deployment / "src").exists() and not (deployment / "data").exists()


def test_snakedeploy_from_a_local_git_clone(tmp_path: Path) -> None:
    """`snakedeploy deploy-workflow <clone> <dest> --branch main` writes a module Snakefile and
    copies config/, profiles/ and the LICENSE; with the clone's Snakefile path in `snakefile:`
    (snakedeploy writes a path relative to the clone for local sources) the deployment plans."""
    clone = copy_workflow(tmp_path / "ntps-workflow")
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "snapshot"], check=True)
    dest = tmp_path / "deployed"
    snakedeploy = Path(sys.executable).with_name("snakedeploy")
    subprocess.run([str(snakedeploy), "deploy-workflow", str(clone), str(dest), "--branch", "main"],
                   check=True, capture_output=True, text=True)  # fmt: skip
    for copied in ("config/config.yaml", "config/README.md", "profiles/default/config.yaml",
                   "LICENSE"):  # fmt: skip
        assert (dest / copied).is_file(), copied
    snakefile = dest / "workflow" / "Snakefile"
    text = snakefile.read_text()
    assert 'configfile: "config/config.yaml"' in text and "use rule * from ntps_workflow" in text
    snakefile.write_text(text.replace('"Snakefile"', f'"{clone / "Snakefile"}"'))
    # The user's own study in place of the shipped default.
    small_study(tmp_path / "inputs").replace(dest / "config" / "config.yaml")
    result = snakemake(snakefile, dest, "--dry-run")
    assert re.search(r"^extract\s+1$", result.stdout, re.M), result.stdout[-2000:]
