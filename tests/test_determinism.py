"""Determinism and concurrency: the same config gives byte-identical tables whatever the core count,
every output records its seeds and provenance, and no two rules write the same file.

The reference run is the session's tiny study (the `tiny_study` fixture in conftest.py, two cores),
shared with tests/test_workflow.py and tests/test_interruptions.py; the one-core run is the
session's `interrupted_study`, whose LoRA dataset was redone on one core through the
interruption tests' stops: end-to-end runs cost minutes on a busy 2-core machine, so each one is made once per
session and serves every test that needs it.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from workflow_support import (
    LORA_DATASET,
    MODEL,
    REPO,
    SIGNAL,
    assert_same_json_but_released,
    read_json,
    run_snakemake,
    without_released,
)

# Keys whose values differ between identical runs: wall-clock timings, and the absolute folder the
# model was materialised in (each run has its own working folder). Nothing else may differ.
VOLATILE_KEYS = frozenset(
    {
        "seconds", "load_seconds", "tokens_per_second", "model_dir",  # extraction, scores, probes
        "seconds_per_step", "train_time_s_total", "wall_time_s",  # LoRA metrics
    }
)  # fmt: skip

# Across core counts only float rounding may differ (see test_tables_byte_identical_...): 1e-7
# in hidden states, up to ~1e-4 relative in ill-conditioned diagnostics (w_star_norm2) and in
# LoRA-derived differences of nearly equal numbers (ntps_before_after_summary.mean_change).
RTOL, ATOL = 1e-3, 1e-5


def strip_volatile(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: strip_volatile(v) for k, v in data.items() if k not in VOLATILE_KEYS}
    if isinstance(data, list):
        return [strip_volatile(v) for v in data]
    return data


def pair_jsons(root: Path) -> dict[str, Any]:
    """Every per-pair JSON output (scores, probes, LoRA metrics, extraction records)."""
    out = {}
    for kind in ("scores", "probes", "scores_post_lora", "lora", "extract"):
        for path in sorted((root / "results" / kind).rglob("*.json")):
            # peft writes adapter_config.json's target_modules from a set: its order follows
            # Python's per-process string hashing, so it is not compared.
            if path.name != "adapter_config.json":
                out[str(path.relative_to(root))] = read_json(path)
    return out


@pytest.fixture(scope="module")
def reference(tiny_study: Path) -> Path:
    return tiny_study


@pytest.fixture(scope="module")
def datasets(reference: Path) -> list[str]:
    """The datasets of the reference study, as its config names them."""
    config = yaml.safe_load((reference / "config.yaml").read_text())
    names = [entry["name"] for entry in config["datasets"]]
    assert sorted(names) == sorted(SIGNAL)  # the study workflow_support.write_study wrote
    return names


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)


def workflow_is_a_checkout() -> bool:
    """Whether the workflow the tests run is the top of a git checkout (CI runs in a clone)."""
    try:
        toplevel = git("rev-parse", "--show-toplevel")
    except OSError:  # no git on this machine
        return False
    return toplevel.returncode == 0 and Path(toplevel.stdout.strip()).resolve() == REPO


# The one-core run (tests/workflow_support.interruption_scenario) redoes one dataset through every
# rule of its chain (preparation, extraction, scoring, probes, LoRA with its post-LoRA statistics,
# post-LoRA scoring), interrupted twice on the way: the outputs must not depend on the core count.
SERIAL_TARGETS = (
    f"results/scores/{MODEL}/{LORA_DATASET}.json",
    f"results/probes/{MODEL}/{LORA_DATASET}.json",
    f"results/scores_post_lora/{MODEL}/{LORA_DATASET}.json",
    f"results/extract/{MODEL}/{LORA_DATASET}/stats.safetensors",
    f"results/extract/{MODEL}/{LORA_DATASET}/features.safetensors",
    f"results/extract/{MODEL}/{LORA_DATASET}/block_inputs.safetensors",
    f"results/lora/{MODEL}/{LORA_DATASET}/stats_post_lora.safetensors",
)
# Made on the way to the targets (the adapter folder is a directory output). The score JSONs are
# compared byte for byte except their timing and the released convention's fields (workflow_support.RELEASED_FIELDS:
# float32 eigenvectors picked by rounding), which must agree within their rounding spread.
BYTE_COMPARED = (
    *(target for target in SERIAL_TARGETS if not target.endswith(".json")),
    f"results/lora/{MODEL}/{LORA_DATASET}/adapter/adapter_model.safetensors",
)
JSON_COMPARED = tuple(target for target in SERIAL_TARGETS if target.endswith(".json"))


@pytest.fixture(scope="module")
def serial_run(interrupted_study: dict) -> Path:
    """The reference's LoRA dataset redone on one core (the session's `interrupted_study`)."""
    return interrupted_study["root"]


def assert_close_json(a: Any, b: Any, where: str = "") -> None:
    """Equal structure and non-float leaves; floats within float32 forward-pass rounding."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_close_json(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close_json(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=RTOL, abs=ATOL), where
    else:
        assert a == b, where


@pytest.mark.slow
def test_outputs_byte_identical_across_core_counts(reference: Path, serial_run: Path) -> None:
    """torch threads come from the config, not from --cores, so kernels round the same way."""
    differing = [
        target for target in BYTE_COMPARED
        if (serial_run / target).read_bytes() != (reference / target).read_bytes()
    ]  # fmt: skip
    assert not differing
    for target in JSON_COMPARED:  # the score JSONs' one timing field (`seconds`) left out
        assert_same_json_but_released(
            strip_volatile(read_json(reference / target)),
            strip_volatile(read_json(serial_run / target)),
            target,
        )


@pytest.mark.slow
def test_pair_outputs_agree_except_timings(reference: Path, serial_run: Path) -> None:
    """--cores 1 and --cores 2: same structure and discrete values, floats equal to rounding."""
    from ntps.io import load_tensors

    # Only the redone dataset's outputs: the others are copies of the reference's.
    redone = f"/{MODEL}/{LORA_DATASET}"
    expected = pair_jsons(reference)
    got = {path: data for path, data in pair_jsons(serial_run).items() if redone in path}
    assert len(got) >= 5 and set(got) <= set(expected)
    for path, data in got.items():
        mine = strip_volatile(data)
        if path.endswith("metrics.json"):
            # The one-core run's LoRA was killed and resumed (the interruption scenario), and its
            # metrics say from which step; the uninterrupted reference's say none.
            assert mine.pop("resumed_from_step") > 0
            expected[path].pop("resumed_from_step")
        # The released fields are compared within their spread by the test above.
        assert_close_json(
            without_released(strip_volatile(expected[path])), without_released(mine), path
        )
    for kind, pattern in (("extract", "*.safetensors"), ("lora", "stats_post_lora.safetensors")):
        for path in sorted((serial_run / "results" / kind / MODEL / LORA_DATASET).rglob(pattern)):
            relative = path.relative_to(serial_run)
            if not (reference / relative).exists():
                # The shard statistics are temporary (deleted once the jackknife rule scored
                # them); the interrupted run may still hold its copy. The SEs compared above
                # are what they were for.
                assert path.name == "stats_shards.safetensors", relative
                continue
            theirs, mine = load_tensors(path), load_tensors(reference / relative)
            assert mine.keys() == theirs.keys(), relative
            for key, tensor in mine.items():
                if tensor.is_floating_point():
                    scale = float(tensor.abs().max()) or 1.0
                    assert float((tensor - theirs[key]).abs().max()) <= RTOL * scale, (
                        relative,
                        key,
                    )
                else:
                    assert bool((tensor == theirs[key]).all()), (relative, key)
    for dataset in (LORA_DATASET,):  # prepared data, byte for byte
        relative = Path("resources/datasets", dataset, "data.parquet")
        assert (serial_run / relative).read_bytes() == (reference / relative).read_bytes()


@pytest.mark.slow
def test_outputs_record_seeds_and_provenance(reference: Path, datasets: list[str]) -> None:
    config = yaml.safe_load((reference / "config.yaml").read_text())
    in_checkout = workflow_is_a_checkout()
    for dataset in datasets:
        record = read_json(reference / "resources/datasets" / dataset / "dataset.json")
        assert re.fullmatch(r"[0-9a-f]{64}", record["fingerprint"])
        assert record["spec"]["split"]["seed"] == 42 and record["spec"]["seed"] == 0
        assert record["provenance"]["packages"]["pandas"] != "not installed"

        extract = read_json(reference / "results/extract" / MODEL / dataset / "extract.json")
        assert extract["dataset_fingerprint"] == record["fingerprint"]
        assert extract["provenance"]["packages"]["torch"].startswith("2.")
        model_provenance = extract["model"]["provenance"]
        assert model_provenance["path"] == config["models"][0]["source"]["path"]
        assert re.fullmatch(r"[0-9a-f]{64}", model_provenance["sha256"]["model.safetensors"])

        probes = read_json(reference / "results/probes" / MODEL / f"{dataset}.json")
        assert probes["provenance"]["seed"] == config.get("probes", {}).get("seed", 0)
        assert probes["provenance"]["packages"]["scikit-learn"] != "not installed"

        scores = read_json(reference / "results/scores" / MODEL / f"{dataset}.json")
        assert scores["provenance"]["packages"]["ntps"]
        # The code that ran: the package version, and the commit when run from a git checkout
        # (a commit of this checkout; not necessarily HEAD, which may move during a test run).
        code = scores["provenance"]["code"]
        assert code["version"] == scores["provenance"]["packages"]["ntps"]
        if in_checkout:
            revision = code["git_revision"]
            assert re.fullmatch(r"[0-9a-f]{40}", revision or ""), code
            assert git("cat-file", "-e", f"{revision}^{{commit}}").returncode == 0, code
            assert isinstance(code["git_dirty"], bool), code
        else:
            assert code["git_revision"] is None and code["git_dirty"] is None, code
    lora = read_json(reference / "results/lora" / MODEL / LORA_DATASET / "metrics.json")
    text = json.dumps(lora)
    assert '"seed": 0' in text  # the LoRA seed travels with its metrics


@pytest.mark.slow
def test_score_and_probe_jsons_name_their_inputs(reference: Path) -> None:
    for kind in ("scores", "probes"):
        record = read_json(reference / "results" / kind / MODEL / "strong.json")
        assert record["provenance"].get("dataset_fingerprint"), kind
        assert record["provenance"].get("model_provenance"), kind


@pytest.mark.slow
def test_no_two_jobs_write_the_same_file(reference: Path, datasets: list[str]) -> None:
    """Every output of every planned job is unique (forced full dry run of the whole workflow)."""
    result = run_snakemake(reference, "--dry-run", "--forceall", "--printshellcmds")
    outputs: dict[str, str] = {}
    rule = None
    for line in result.stdout.splitlines():
        stripped = line.strip()
        match = re.match(r"^(?:local)?rule (\w+):$", stripped)
        if match:
            rule = match.group(1)
        elif stripped.startswith("output:") and rule is not None:
            for path in stripped.removeprefix("output:").split(","):
                path = path.strip()
                assert path not in outputs, f"{path} is written by {outputs[path]} and {rule}"
                outputs[path] = rule
    # All rules of the full workflow (plots and LoRA included) were seen.
    assert {"extract", "score", "probe", "lora", "tables", "correlations"} <= set(outputs.values())
    assert len(outputs) > 20
    # ... for every dataset of the study: each one's extraction, scores and probes were planned.
    for dataset in datasets:
        for path, rule in (
            (f"results/extract/{MODEL}/{dataset}/stats.safetensors", "extract"),
            (f"results/scores/{MODEL}/{dataset}.json", "score"),
            (f"results/probes/{MODEL}/{dataset}.json", "probe"),
        ):
            assert outputs.get(path) == rule, (path, outputs.get(path))
