"""Interruptions: a killed job leaves nothing Snakemake or the next rule would accept, and a re-run
completes with tables byte-identical to an uninterrupted run.

End-to-end cases start from a copy of the session's tiny study (the `tiny_study` fixture in
conftest.py) with one dataset's outputs removed, so only its jobs run again: an extraction stopped
with SIGTERM to Snakemake, a scoring job stopped with SIGTERM to its process group, and a LoRA job
killed with SIGKILL to the whole process group after its first checkpoint (the re-run must resume
from it): the session's `interrupted_study`, also used by tests/test_determinism.py.
The re-runs build the tables of `TARGETS`; every table they rebuild must equal the uninterrupted
run's byte for byte.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_support import (
    LORA_CHECKPOINT_EVERY,
    LORA_STEPS,
    TARGETS,
    assert_same_table_but_released,
    table_files,
)

from ntps.io import atomic_path, read_json, write_json

# --- unit level: atomic writes -----------------------------------------------------------------


def test_atomic_path_leaves_nothing_when_the_block_raises(tmp_path: Path) -> None:
    final = tmp_path / "out" / "scores.json"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("{partial")
        assert tmp.parent == final.parent and tmp.exists()
        raise RuntimeError("job killed")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []  # the temporary file is gone too


def test_atomic_path_keeps_the_old_file_when_the_block_raises(tmp_path: Path) -> None:
    final = tmp_path / "scores.json"
    write_json(final, {"version": 1})
    with pytest.raises(KeyboardInterrupt), atomic_path(final) as tmp:
        tmp.write_text("{partial")
        raise KeyboardInterrupt
    assert read_json(final) == {"version": 1}


def test_killed_writer_leaves_no_final_file(tmp_path: Path) -> None:
    """SIGKILL runs no cleanup at all: the final name still never holds a partial file."""
    final = tmp_path / "stats.safetensors"
    code = (
        "import sys, time\n"
        "from ntps.io import atomic_path\n"
        f"with atomic_path({str(final)!r}) as tmp:\n"
        "    tmp.write_bytes(b'x' * 1000)\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not final.exists()
    # Only a hidden temporary file may remain, which no rule declares as an output.
    assert all(p.name.startswith(".stats.safetensors.") for p in tmp_path.iterdir())


# --- end to end ---------------------------------------------------------------------------------


def assert_rebuilt_tables_match(reference: Path, root: Path) -> None:
    """Every table the re-run built (TARGETS and the tables made with them) equals the
    uninterrupted run's, byte for byte, except the released convention's columns, which must agree
    within their rounding spread (workflow_support.RELEASED_FIELDS says why)."""
    expected, got = table_files(reference), table_files(root)
    assert {Path(t).name for t in TARGETS} <= got.keys() <= expected.keys()
    for name in got:
        assert_same_table_but_released(
            expected[name], got[name], f"results/tables/{name} differs after the re-run"
        )


@pytest.fixture(scope="module")
def sigterm_runs(interrupted_study: dict) -> dict:
    """The session's interruption scenario (workflow_support.interruption_scenario, shared with
    tests/test_determinism.py): its two SIGTERM stops."""
    return interrupted_study


@pytest.fixture(scope="module")
def lora_sigkill(interrupted_study: dict) -> dict:
    """The same scenario's SIGKILL to the whole process group once the LoRA job had written a
    checkpoint, the locked re-run, `--unlock` and the run to the end."""
    keys = ("reference", "root", "pair")
    return {**{key: interrupted_study[key] for key in keys}, **interrupted_study["sigkill"]}


@pytest.mark.slow
def test_sigterm_to_snakemake_finishes_running_job_and_starts_no_other(sigterm_runs: dict) -> None:
    assert sigterm_runs["main_returncode"] != 0
    assert sigterm_runs["main_ended_alone"]  # no job process outlives Snakemake
    # Snakemake lets the running extraction finish (whole, atomic outputs) and starts nothing new.
    assert "Will exit after finishing currently running jobs" in sigterm_runs["main_log"]
    assert all(sigterm_runs["extract_outputs_exist"])
    assert not sigterm_runs["score_ran"]


@pytest.mark.slow
def test_sigterm_to_process_group_leaves_no_accepted_score(sigterm_runs: dict) -> None:
    pair = sigterm_runs["pair"]
    assert sigterm_runs["group_returncode"] != 0
    assert sigterm_runs["group_ended_alone"]
    # The killed scoring job is planned again, and the extraction before it is not.
    planned = sigterm_runs["planned_after_group"]
    assert f"results/scores/{pair}.json" in planned
    assert f"results/extract/{pair}/stats.safetensors" not in planned


@pytest.mark.slow
def test_sigterm_rerun_matches_uninterrupted_run(sigterm_runs: dict) -> None:
    assert_rebuilt_tables_match(sigterm_runs["reference"], sigterm_runs["root"])


@pytest.mark.slow
def test_sigkill_leaves_no_accepted_lora_output(lora_sigkill: dict) -> None:
    pair = lora_sigkill["pair"]
    assert lora_sigkill["returncode"] == -signal.SIGKILL
    assert lora_sigkill["checkpoints"]  # it was killed after a checkpoint, before finishing
    assert f"results/lora/{pair}/metrics.json" in lora_sigkill["planned"]
    assert f"results/lora/{pair}/stats_post_lora.safetensors" in lora_sigkill["planned"]


@pytest.mark.slow
def test_sigkill_leaves_a_stale_lock_with_a_clear_message(lora_sigkill: dict) -> None:
    assert lora_sigkill["locked_returncode"] != 0
    assert "cannot be locked" in lora_sigkill["locked_output"]
    assert "--unlock" in lora_sigkill["locked_output"]


@pytest.mark.slow
def test_sigkill_rerun_resumes_lora_and_matches_uninterrupted_run(lora_sigkill: dict) -> None:
    # The re-run resumed from the newest checkpoint the killed run left.
    last = max(int(re.sub(r"\D", "", name)) for name in lora_sigkill["checkpoints"])
    assert last % LORA_CHECKPOINT_EVERY == 0 and 0 < last < LORA_STEPS
    assert "resumed from" in lora_sigkill["rerun_log"]
    assert f"at step {last}/{LORA_STEPS}" in lora_sigkill["rerun_log"]
    assert not (lora_sigkill["root"] / f"results/lora/{lora_sigkill['pair']}/checkpoints").exists()
    assert_rebuilt_tables_match(lora_sigkill["reference"], lora_sigkill["root"])
