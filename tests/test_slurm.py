"""The tiny end-to-end study on a real SLURM cluster (`--executor slurm`), interrupted and resumed.

Needs the single-node cluster of .ci/slurm-up.sh (`eval "$(.ci/slurm-up.sh)"`, see docs/slurm.md);
skipped when `sinfo` shows no idle or mixed node. One module-scoped scenario, shared by the tests:

1. a SLURM run of three datasets of the tiny study starts and is killed (SIGTERM, then SIGKILL) as
   soon as its first `extract` job has finished; its leftover jobs are cancelled with scancel;
2. the same command is run again and must complete without resubmitting finished jobs;
3. its scores and probes are compared with the session's tiny study (the `tiny_study` fixture: the
   same model and datasets, run by the local executor).

Every job id the plugin prints is looked up with `scontrol show job` at submission time (SLURM
forgets finished jobs after MinJobAge), so the GPU request of every rule can be checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_support import read_json, snakemake_command, snakemake_env, write_study

REPO = Path(__file__).resolve().parents[1]
MODEL_RULES = {"extract", "lora"}
# Seconds between the SIGTERM to the interrupted run and its SIGKILL (ClusterRun.interrupt).
GRACE_SECONDS = 5
DEFAULT_CONF = Path("/tmp/ntps-slurm/slurm.conf")  # where .ci/slurm-up.sh writes it

SUBMITTED = re.compile(
    r"Job (\d+) has been submitted with SLURM jobid (\d+) "
    r"\(log: \S*?/slurm_logs/rule_([^/\s]+)/(?:([^/\s]+)/)?\d+\.log\)"
)
FINISHED = re.compile(r"Finished jobid: (\d+) \(Rule: (\w+)\)")
SBATCH_CALL = re.compile(r"sbatch call: (sbatch .*?) --wrap=")


def slurm_env() -> dict[str, str]:
    # Jobs inherit this environment (sbatch --export=ALL): keep the venv first on PATH.
    env = snakemake_env(
        {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    )
    if "SLURM_CONF" not in env and DEFAULT_CONF.is_file():
        env["SLURM_CONF"] = str(DEFAULT_CONF)
    return env


def cluster_unavailable() -> str | None:
    """Why the test cannot run, or None when a node is idle or mixed."""
    for tool in ("sbatch", "sinfo", "squeue", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            return f"{tool} not found (no SLURM client)"
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], env=slurm_env(), capture_output=True, text=True,
            timeout=15,
        ).stdout.split()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if not {"idle", "mixed"} & set(states):
        return f'no idle/mixed SLURM node (sinfo: {states}); run: eval "$(.ci/slurm-up.sh)"'
    return None


SKIP_REASON = cluster_unavailable()
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON)),
]


def scontrol_record(job_id: str) -> str:
    return subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], env=slurm_env(), capture_output=True,
        text=True, timeout=30,
    ).stdout  # fmt: skip


def scancel(job_ids: list[str]) -> None:
    if job_ids:
        # Already finished jobs make scancel complain; that is fine.
        subprocess.run(["scancel", *job_ids], env=slurm_env(), capture_output=True, timeout=60)


@dataclass
class Submission:
    rule: str
    wildcards: str  # the log folder: wildcard values joined by "_", "" for rules without any
    snakemake_job: str
    slurm_job: str
    record: str  # `scontrol show job -o` right after submission


@dataclass
class ClusterRun:
    """One `snakemake --executor slurm` process; its output is parsed while it runs."""

    workdir: Path
    command: list[str]
    stop_after_rule: str | None = None
    lines: list[str] = field(default_factory=list)
    submissions: list[Submission] = field(default_factory=list)
    finished: list[tuple[str, str]] = field(default_factory=list)  # (snakemake job, rule)
    stop_now: threading.Event = field(default_factory=threading.Event)
    killed_with: str | None = None
    returncode: int | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command, cwd=self.workdir, env=slurm_env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if match := SUBMITTED.search(line):
                job, slurm_job, rule, wildcards = match.groups()
                self.submissions.append(
                    Submission(rule, wildcards or "", job, slurm_job, scontrol_record(slurm_job))
                )
            elif match := FINISHED.search(line):
                self.finished.append((match[1], match[2]))
                if match[2] == self.stop_after_rule:
                    self.stop_now.set()
        self.stop_now.set()  # process ended

    def wait(self, timeout: float) -> int:
        self.returncode = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=30)
        (self.workdir / f"snakemake-{int(time.time())}.out").write_text(self.output)
        return self.returncode

    def interrupt(self, timeout: float) -> None:
        """Wait for the stop condition, then SIGTERM the main process, SIGKILL if it lingers.

        On SIGTERM Snakemake stops submitting but waits for its running jobs ("Will exit after
        finishing currently running jobs"); the SIGKILL after a grace period is a crash. The
        grace is shorter than the queued extraction jobs take here, so the crash is what is
        tested (a 30 s grace ended in SIGKILL in every CI run measured, 30 s of waiting).
        """
        assert self.stop_now.wait(timeout), f"no {self.stop_after_rule} job finished in {timeout}s"
        if self.proc.poll() is None:
            self.killed_with = "SIGTERM"
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.killed_with = "SIGKILL"
                self.proc.kill()
        self.wait(timeout=60)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def finished_jobs(self) -> set[tuple[str, str]]:
        """(rule, wildcards) of every job this run saw finish."""
        done = {job for job, _ in self.finished}
        return {(s.rule, s.wildcards) for s in self.submissions if s.snakemake_job in done}

    def sbatch_calls(self) -> dict[str, list[str]]:
        """Rule -> the sbatch command lines it was submitted with (printed with --verbose)."""
        calls: dict[str, list[str]] = {}
        for call in SBATCH_CALL.findall(self.output):
            comment = re.search(r"--comment (\S+)", call)
            assert comment, call
            rule = comment[1].strip("'\"").removeprefix("rule_").split("_wildcards_")[0]
            calls.setdefault(rule, []).append(call)
        return calls


CLUSTER_DATASETS = ("noisy", "medium", "strong")

# The SLURM plugin waits 10 s longer after every status check that finds no job finished (1, 11,
# 21, ... s; not configurable), so on a test cluster whose jobs take seconds each wave of jobs is
# noticed ~30 s after it ended. This launcher caps the wait at POLL_SECONDS, as a site with a quick
# scheduler would want; everything else is the plugin as users run it.
POLL_SECONDS = 2
SLURM_POLLING_LAUNCHER = f"""
import sys
import snakemake_executor_plugin_slurm as slurm
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
wait = RemoteExecutor.next_seconds_between_status_checks
slurm.Executor.next_seconds_between_status_checks = wait.setter(
    lambda self, seconds: wait.fset(self, min(seconds, {POLL_SECONDS}))
)
from snakemake.cli import main
sys.argv[0] = "snakemake"
sys.exit(main())
"""


def cluster_command(workdir: Path, config: Path) -> list[str]:
    return snakemake_command(
        workdir, "--profile", str(REPO / "profiles" / "slurm"),
        "--jobs", "4",
        # The CI cluster has no accounting database, so sacct cannot report job states.
        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
        "--slurm-no-account",
        # Replaces the profile's whole block, so every key is given (8 GB would not fit twice).
        # CPUs per job come from each rule's threads.
        "--default-resources", "mem_mb=2000", "runtime=30",
        # Same machine, no shared-filesystem delay; a failing test job should fail at once.
        "--latency-wait", "5", "--retries", "0",
        "--verbose",  # prints each sbatch call
        configfile=config, cores=None, launcher=("-c", SLURM_POLLING_LAUNCHER),
    )  # fmt: skip


@dataclass
class Scenario:
    cluster: Path
    interrupted: ClusterRun
    resumed: ClusterRun
    seconds: dict[str, float]

    @property
    def submissions(self) -> list[Submission]:
        return self.interrupted.submissions + self.resumed.submissions


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("slurm-study")
    config_path = write_study(root)
    config = yaml.safe_load(config_path.read_text())
    # Small jobs for a 2-CPU node: a known size (2 GB, 30 min) instead of the 1e9-parameter
    # fallback. The model's threads stay the tiny study's (2): its results are the reference.
    config["models"][0]["n_params"] = 1_000_000
    # Three datasets (correlations need three points) and LoRA on one keep the job count, and so
    # the time spent starting Python and Snakemake inside each SLURM job, small.
    config["datasets"] = [d for d in config["datasets"] if d["name"] in CLUSTER_DATASETS]
    for dataset in config["datasets"]:
        dataset["lora"] = dataset["name"] == "strong"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cluster = root / "cluster"
    cluster.mkdir()
    started = time.monotonic()
    seconds: dict[str, float] = {}
    runs: list[ClusterRun] = []
    try:
        first = ClusterRun(
            cluster, cluster_command(cluster, config_path), stop_after_rule="extract"
        )
        runs.append(first)
        first.start()
        first.interrupt(timeout=900)
        seconds["interrupted"] = time.monotonic() - started
        # A killed Snakemake may leave jobs queued or running: cancel ours (never anyone else's).
        scancel([s.slurm_job for s in first.submissions])
        if first.killed_with == "SIGKILL":
            # A killed Snakemake cannot release its lock; this is what a user would run.
            subprocess.run(
                [*cluster_command(cluster, config_path), "--unlock"], env=slurm_env(),
                capture_output=True, timeout=300, check=True,
            )  # fmt: skip

        second = ClusterRun(cluster, cluster_command(cluster, config_path))
        runs.append(second)
        second.start()
        second.wait(timeout=1500)
        seconds["resumed"] = time.monotonic() - started
        # For whoever tunes this test: how long each phase took and how the first run ended.
        summary = {"seconds": seconds, "interrupted_with": first.killed_with}
        (root / "summary.json").write_text(json.dumps(summary, indent=1))
        yield Scenario(cluster, first, second, seconds)
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.proc.kill()
            scancel([s.slurm_job for s in run.submissions])


def test_interrupted_run_was_stopped_midway(scenario: Scenario) -> None:
    first = scenario.interrupted
    assert first.killed_with is not None, "the first run ended before it could be interrupted"
    assert first.returncode != 0
    finished_rules = {rule for _, rule in first.finished}
    assert "extract" in finished_rules
    # Stopped before the end: the aggregate jobs (localrules, started by the main process) had
    # not run yet.
    assert "localrule tables:" not in first.output


def test_resumed_run_completes(scenario: Scenario) -> None:
    second = scenario.resumed
    assert second.returncode == 0, second.output[-6000:]
    results = scenario.cluster / "results"
    for path in ("tables/scores.csv", "tables/probes.csv", "tables/correlations.csv",
                 "tables/lora.csv", "plots/bounds.png", "plots/tiny-llama/layer_profile.pdf"):  # fmt: skip
        assert (results / path).stat().st_size > 0, path
    assert not list(results.rglob("*.tmp"))
    # The model jobs ran inside GPU allocations but fell back to the CPU: no GPU here.
    for record in (results / "extract").glob("*/*/extract.json"):
        assert read_json(record)["device"] == "cpu"


def test_resumed_run_does_not_redo_finished_jobs(scenario: Scenario) -> None:
    done_before = scenario.interrupted.finished_jobs()
    assert ("acquire_model", "tiny-llama") in done_before
    assert any(rule == "extract" for rule, _ in done_before)
    resubmitted = {(s.rule, s.wildcards) for s in scenario.resumed.submissions}
    assert not done_before & resubmitted, done_before & resubmitted
    # ... and everything else was submitted by one of the two runs.
    all_submitted = {(s.rule, s.wildcards) for s in scenario.submissions}
    assert {("extract", f"tiny-llama_{d}") for d in CLUSTER_DATASETS} <= (all_submitted)


def test_cluster_results_equal_local_results(scenario: Scenario, tiny_study: Path) -> None:
    """The cluster's tables hold the local run's rows for the same pairs (the tiny study adapts
    every dataset with LoRA, the cluster study only "strong": compared where both have a row)."""
    for table in ("scores", "probes"):
        cluster = pd.read_csv(scenario.cluster / "results" / "tables" / f"{table}.csv")
        local = pd.read_csv(tiny_study / "results" / "tables" / f"{table}.csv")
        keys = [c for c in ("stage", "model", "dataset") if c in cluster.columns]
        assert set(cluster["dataset"]) == set(CLUSTER_DATASETS)
        local = local.merge(cluster[keys].drop_duplicates(), on=keys)
        assert len(local) == len(cluster) > 0
        pd.testing.assert_frame_equal(
            cluster.reset_index(drop=True), local.reset_index(drop=True), check_exact=False,
            rtol=1e-6, atol=1e-6,
        )  # fmt: skip


def test_only_model_rules_request_a_gpu(scenario: Scenario) -> None:
    submitted_rules = {s.rule for s in scenario.submissions}
    assert MODEL_RULES | {"acquire_model", "prepare_dataset", "score", "probe"} <= submitted_rules
    # The light rules are localrules: run by the main Snakemake process, never an sbatch job each.
    light = {"tables", "correlations", "lora_tables", "plot_model", "plot_bounds", "plot_lora",
             "evidence", "summary"}  # fmt: skip
    assert not submitted_rules & light, submitted_rules & light
    for submission in scenario.submissions:
        record = submission.record
        # The record belongs to this rule's job (the plugin puts the rule into the comment).
        assert re.search(rf"\bComment=rule_{submission.rule}(_wildcards_\S+)?\s", record), record
        if submission.rule in MODEL_RULES:
            assert re.search(r"\bTresPerJob=gres:gpu:1\b", record), (submission.rule, record)
        else:
            assert "gres:gpu" not in record, (submission.rule, record)
    # The same from the sbatch command lines (--verbose).
    calls: dict[str, list[str]] = {}
    for run in (scenario.interrupted, scenario.resumed):
        for rule, lines in run.sbatch_calls().items():
            calls.setdefault(rule, []).extend(lines)
    assert calls.keys() >= MODEL_RULES
    for rule, lines in calls.items():
        for line in lines:
            assert ("--gpus=1" in line) is (rule in MODEL_RULES), line
            # CPUs follow the rule's threads (the model's 2 for model jobs, else 1), memory its
            # mem_mb.
            assert f"--cpus-per-task={2 if rule in MODEL_RULES else 1} " in line, line
            found = re.search(r"--mem (\d+) ", line)
            mem = int(found.group(1)) if found else None
            if rule == "acquire_model":
                assert mem == 2060, line  # 2 GB + 12 bytes per parameter of the tiny model
            elif rule in MODEL_RULES:
                # ... plus its statistics (and for extraction the jackknife shards): a few MB here.
                assert mem is not None and 2060 < mem < 2100, line
            else:
                assert mem is None or mem < 2060, line  # not model-sized
