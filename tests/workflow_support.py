"""Build a small but real study on disk (a tiny random Llama folder and generated datasets), and
run Snakemake on it: the one place the tests assemble a Snakemake command line.

Used by the end-to-end workflow tests. Datasets differ in how much class signal their texts carry,
so probe accuracy and NTPS vary across datasets and correlations are defined. The study run with
every target is made once per session (the ``tiny_study`` fixture in conftest.py) and shared.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"

CLASS_WORDS = {
    "sport": ["goal", "match", "team", "coach", "league", "score", "season", "striker"],
    "money": ["bank", "shares", "profit", "market", "rates", "stock", "trade", "fund"],
    "weather": ["rain", "storm", "wind", "cloud", "sunny", "cold", "snow", "forecast"],
}
FILLER = ["the", "a", "of", "and", "today", "said", "very", "after", "new", "big", "old", "it"]
# Share of class words per dataset: from nearly pure noise to nearly pure signal.
SIGNAL = {"noisy": 0.08, "weak": 0.2, "medium": 0.4, "strong": 0.75}
# Texts per class: the tiny model has d = 32, so "strong" (40 x 3 x 0.7 = 84 training texts)
# has N_train >= 2d and the others (63) do not: the regime flag must tell them apart.
TEXTS_PER_CLASS = {"noisy": 30, "weak": 30, "medium": 30, "strong": 40}
LORA_STEPS, LORA_CHECKPOINT_EVERY = 60, 20


def vocabulary() -> list[str]:
    return [w for words in CLASS_WORDS.values() for w in words] + FILLER


def make_texts(signal: float, n_per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label, words in CLASS_WORDS.items():
        for _ in range(n_per_class):
            length = rng.randint(3, 14)
            tokens = [
                rng.choice(words) if rng.random() < signal else rng.choice(FILLER)
                for _ in range(length)
            ]
            rows.append((" ".join(tokens), label))
    rng.shuffle(rows)
    return rows


def write_tiny_model(folder: Path, seed: int = 0) -> Path:
    from conftest import build_tiny_llama, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer([" ".join(vocabulary())])
    model = build_tiny_llama(len(tokenizer), seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_datasets(folder: Path) -> list[dict[str, Any]]:
    """One dataset per signal level, in different file formats and column layouts."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (name, signal_share) in enumerate(SIGNAL.items()):
        rows = make_texts(signal_share, TEXTS_PER_CLASS[name], seed=index)
        frame = pd.DataFrame(rows, columns=["sentence", "topic"])
        entry: dict[str, Any] = {
            "name": name,
            "text_columns": ["sentence"],
            "label_column": "topic",
            "split": {"test_fraction": 0.3, "seed": 42},
        }
        if index % 2 == 0:
            path = folder / f"{name}.csv"
            frame.to_csv(path, index=False)
            entry["source"] = {"type": "files", "path": str(path), "format": "csv"}
        else:
            # Two text columns joined back together exercise the column mapping.
            halves = frame["sentence"].str.split(" ", n=1, expand=True).fillna("")
            frame = frame.assign(head=halves[0], tail=halves[1]).drop(columns="sentence")
            path = folder / f"{name}.jsonl"
            frame.to_json(path, orient="records", lines=True)
            entry["source"] = {"type": "files", "path": str(path), "format": "jsonl"}
            entry["text_columns"] = ["head", "tail"]
        entries.append(entry)
    return entries


def write_study(root: Path, **overrides: Any) -> Path:
    """Write model, datasets and config.yaml under `root`; return the config path."""
    model_dir = write_tiny_model(root / "inputs" / "tiny-llama")
    config: dict[str, Any] = {
        "study": "tiny end-to-end study",
        "models": [
            {"name": "tiny-llama", "source": {"type": "local", "path": str(model_dir)},
             "batch_size": 8, "max_length": 32},
        ],
        "datasets": write_datasets(root / "inputs" / "data"),
        "scoring": {"k_grid": [0.25, 0.5, 0.75, 2]},
        "probes": {"c_grid": [0.1, 1.0], "cv_folds": 2},
        "analysis": {"fixed_layer": -1, "fixed_k": 0.5, "n_bootstrap": 200, "n_permutations": 200},
        "extraction": {"progress": False},
        # Long enough (a few seconds) that tests/test_interruptions.py can kill the LoRA job
        # between two checkpoints.
        "lora": {
            "enabled": True,
            "settings": {
                "r": 4, "alpha": 8, "optimizer": "adamw", "learning_rate": 0.005,
                "max_steps": LORA_STEPS, "batch_size": 8, "checkpoint_every": LORA_CHECKPOINT_EVERY,
                "top_blocks": 1, "warmup_ratio": 0.1, "seed": 0,
            },
        },
    }  # fmt: skip
    for key, value in overrides.items():
        config[key] = value
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# Every test run is offline; tokenizers' own thread pool only adds contention on 2 cores.
SNAKEMAKE_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def snakemake_command(
    workdir: Path,
    *args: str,
    configfile: Path | Literal[False] | None = None,
    cores: int | None = 2,
    snakefile: Path = SNAKEFILE,
    launcher: Sequence[str] = ("-m", "snakemake"),
) -> list[str]:
    """The Snakemake command line of every test: this interpreter, a Snakefile, a working folder,
    a config file (``<workdir>/config.yaml`` unless given; none with False, for a Snakefile with
    its own ``configfile:``), ``--cores`` unless None, then ``args``."""
    command = [
        sys.executable,
        *launcher,
        "--snakefile",
        str(snakefile),
        "--directory",
        str(workdir),
    ]
    if configfile is not False:
        command += ["--configfile", str(configfile or workdir / "config.yaml")]
    if cores is not None:
        command += ["--cores", str(cores)]
    return [*command, *args]


def snakemake_env(
    extra: Mapping[str, str] | None = None, drop: Sequence[str] = ()
) -> dict[str, str]:
    env = {**os.environ, **SNAKEMAKE_ENV, **(extra or {})}
    for name in drop:
        env.pop(name, None)
    return env


def run_snakemake(
    workdir: Path,
    *args: str,
    configfile: Path | Literal[False] | None = None,
    check: bool = True,
    timeout: int = 1800,
    cores: int | None = 2,
    snakefile: Path = SNAKEFILE,
    launcher: Sequence[str] = ("-m", "snakemake"),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run :func:`snakemake_command`; with ``check`` a failure shows Snakemake's output."""
    command = snakemake_command(
        workdir, *args, configfile=configfile, cores=cores, snakefile=snakefile, launcher=launcher
    )
    result = subprocess.run(
        command, capture_output=True, text=True, env=dict(env or snakemake_env()), timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


# --- re-runs and interruptions of the session's tiny study -------------------------------------
# The tiny study's one model, and the dataset whose jobs the interrupted runs redo at --cores 1
# (its LoRA is the one the SIGKILL test kills); TARGETS are the tables those re-runs rebuild. The
# plots are not compared (PDF/PNG embed creation dates).
MODEL = "tiny-llama"
LORA_DATASET = "strong"
TARGETS = (
    "results/tables/scores.csv",
    "results/tables/correlations.csv",
    "results/tables/lora.csv",
)


def run_targets(root: Path, *args: str, configfile: Path | None = None, cores: int = 2) -> None:
    run_snakemake(root, *args, *TARGETS, configfile=configfile, cores=cores)


def copy_study(source: Path, dest: Path) -> Path:
    """A copy of a finished study (outputs, Snakemake metadata, config) in a new folder."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


def table_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "results/tables").glob("*.csv"))}


# The released convention's columns (docs/method.md section 7) are float32 eigenvectors that
# rounding picks: they move when BLAS rounds differently (another thread count or library), so the
# identity checks leave them out; every other value must match byte for byte. Where a run has
# their rounding spread, each run's value must lie inside the other's spread.
RELEASED_FIELDS = ("ntps_released", "ntps_released_min", "ntps_released_max", "ntps_released_sd")


def without_released(data: Any) -> Any:
    """A parsed JSON with every :data:`RELEASED_FIELDS` key removed, at any depth."""
    if isinstance(data, dict):
        return {k: without_released(v) for k, v in data.items() if k not in RELEASED_FIELDS}
    if isinstance(data, list):
        return [without_released(v) for v in data]
    return data


def _released_rows(rows: Sequence[Mapping[str, Any]]) -> list[tuple[float, float, float]]:
    out = []
    for row in rows:
        if all(row.get(key) not in (None, "") for key in RELEASED_FIELDS[:3]):
            out.append(tuple(float(row[key]) for key in RELEASED_FIELDS[:3]))
        else:
            out.append((math.nan, math.nan, math.nan))
    return out


def assert_released_within_spread(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], where: str
) -> None:
    """Rows (JSON records or CSV rows) with a rounding spread: each run's ntps_released inside the
    other's [min, max]."""
    assert len(a) == len(b), where
    for i, (x, y) in enumerate(zip(_released_rows(a), _released_rows(b), strict=True)):
        for (value, _, _), (_, low, high) in ((x, y), (y, x)):
            if math.isfinite(low) and math.isfinite(high) and math.isfinite(value):
                assert low <= value <= high, f"{where} row {i}: {value} outside [{low}, {high}]"


def assert_same_json_but_released(a: Any, b: Any, where: str) -> None:
    """Two per-pair JSONs: identical (byte for byte once serialised) except the released fields,
    which agree within their spread."""
    assert json.dumps(without_released(a)) == json.dumps(without_released(b)), where
    if isinstance(a, dict) and "records" in a:
        assert_released_within_spread(a["records"], b["records"], where)


def assert_same_table_but_released(a: bytes, b: bytes, where: str) -> None:
    """Two CSV tables: every cell outside the released columns equal byte for byte, the released
    columns within their spread."""
    rows_a = list(csv.reader(io.StringIO(a.decode())))
    rows_b = list(csv.reader(io.StringIO(b.decode())))
    assert rows_a[:1] == rows_b[:1], where
    if not rows_a:
        return
    header = rows_a[0]
    keep = [i for i, name in enumerate(header) if name not in RELEASED_FIELDS]
    assert [[row[i] for i in keep] for row in rows_a] == [
        [row[i] for i in keep] for row in rows_b
    ], where
    assert_released_within_spread(
        [dict(zip(header, row, strict=True)) for row in rows_a[1:]],
        [dict(zip(header, row, strict=True)) for row in rows_b[1:]],
        where,
    )


def start_snakemake(
    root: Path, cores: int = 2, targets: Sequence[str] = TARGETS
) -> subprocess.Popen:
    """Snakemake in its own session (process group), so the whole tree can be signalled."""
    log = open(root / "interrupted-run.log", "w")
    return subprocess.Popen(
        snakemake_command(root, *targets, cores=cores), stdout=log, stderr=subprocess.STDOUT,
        env=snakemake_env(), start_new_session=True,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, root: Path) -> None:
    """Poll until `condition` holds; fail with Snakemake's output if the run ends first."""
    deadline = time.monotonic() + 600
    while not condition():
        if proc.poll() is not None:
            output = (root / "interrupted-run.log").read_text()[-4000:]
            raise AssertionError(
                f"snakemake ended ({proc.returncode}) before the job to kill:\n{output}"
            )
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the job to interrupt never started")
        time.sleep(0.02)


def session_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until_gone(proc: subprocess.Popen, seconds: float = 120) -> bool:
    """Wait for Snakemake and every job it started; True if they all ended on their own."""
    proc.wait(timeout=seconds)
    deadline = time.monotonic() + seconds
    while session_alive(proc.pid):
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            return False
        time.sleep(0.1)
    return True


def planned_outputs(root: Path) -> str:
    """Dry run as the default profile runs it (rerun-incomplete): outputs of every planned job."""
    result = run_snakemake(root, "--dry-run", *TARGETS, timeout=300)
    return "\n".join(line for line in result.stdout.splitlines() if "output:" in line)


def assert_complete_or_absent(paths: list[Path]) -> None:
    """Whatever exists under a final name is whole (atomic writes): it parses."""
    from safetensors import safe_open

    for path in paths:
        if not path.exists():
            continue
        if path.suffix == ".json":
            read_json(path)
        elif path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                assert list(handle.keys())


def interrupted_copy(reference: Path, dest: Path, remove: list[str]) -> Path:
    """A copy of the finished study at `dest` with the `remove` paths (files or folders) gone."""
    root = copy_study(reference, dest)
    for relative in remove:
        path = root / relative
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return root


def job_started(root: Path, rule: str, pair: str) -> Callable[[], bool]:
    log = root / f"results/logs/{rule}/{pair}.log"
    return log.exists


def interruption_scenario(reference: Path, dest: Path) -> dict[str, Any]:
    """Three stops, then a run to the end, all with ``--cores 1``.

    One dataset's prepared table and every model output are removed from a copy of the finished
    study, so the runs redo that dataset's whole chain (preparation, extraction, scoring, probes,
    LoRA, post-LoRA scoring) on one core:

    1. SIGTERM to Snakemake alone (Ctrl-C-like, or `kill <pid>`) while the extraction runs;
    2. SIGTERM to the whole process group (what `scancel`, a SLURM walltime or `timeout` send)
       while the scoring job of that pair runs;
    3. SIGKILL to the whole process group once the LoRA job has written a checkpoint; the next
       run finds the folder locked, is unlocked (`--unlock`) and runs to the end, resuming LoRA.

    The interruption tests check the stops (``state["sigkill"]`` for the third); the determinism
    tests compare the pair's outputs, made on one core, with the reference made on two.
    """
    pair = f"{MODEL}/{LORA_DATASET}"
    root = interrupted_copy(
        reference,
        dest,
        [
            f"resources/datasets/{LORA_DATASET}",
            f"results/extract/{pair}",
            f"results/logs/extract/{pair}.log",
            f"results/scores/{pair}.json",
            f"results/logs/score/{pair}.log",
            f"results/probes/{pair}.json",
            f"results/probes/{pair}.head.safetensors",
            f"results/logs/probe/{pair}.log",
            f"results/lora/{pair}",
            f"results/logs/lora/{pair}.log",
            f"results/scores_post_lora/{pair}.json",
            "results/tables",  # so that Snakemake needs the removed files again
        ],
    )
    state: dict[str, Any] = {"reference": reference, "root": root, "pair": pair}
    extract_outputs = [
        root / f"results/extract/{pair}/{name}"
        for name in (
            "stats.safetensors",
            "features.safetensors",
            "extract.json",
            "block_inputs.safetensors",
        )
    ]
    proc = start_snakemake(root, cores=1)
    wait_for(job_started(root, "extract", pair), proc, root)
    proc.send_signal(signal.SIGTERM)
    state["main_ended_alone"] = wait_until_gone(proc)
    state["main_returncode"] = proc.returncode
    state["main_log"] = (root / "interrupted-run.log").read_text()
    state["extract_outputs_exist"] = [p.exists() for p in extract_outputs]
    assert_complete_or_absent(extract_outputs)
    state["score_ran"] = (root / f"results/scores/{pair}.json").exists()

    # Only the scoring job as target: on one core Snakemake may otherwise run probes and LoRA
    # first, and the SIGKILL below needs LoRA still to do.
    proc = start_snakemake(root, cores=1, targets=[f"results/scores/{pair}.json"])
    wait_for(job_started(root, "score", pair), proc, root)
    os.killpg(proc.pid, signal.SIGTERM)
    state["group_ended_alone"] = wait_until_gone(proc)
    state["group_returncode"] = proc.returncode
    state["planned_after_group"] = planned_outputs(root)
    assert_complete_or_absent([root / f"results/scores/{pair}.json"])

    checkpoints = root / f"results/lora/{pair}/checkpoints"
    proc = start_snakemake(root, cores=1)
    # A finished checkpoint (not the temporary folder it is written in first).
    wait_for(lambda: any(checkpoints.glob("step-*/state.pt")), proc, root)
    os.killpg(proc.pid, signal.SIGKILL)
    wait_until_gone(proc)
    outputs = [root / f"results/lora/{pair}/metrics.json", root / f"results/lora/{pair}/adapter"]
    sigkill: dict[str, Any] = {
        "returncode": proc.returncode,
        "outputs": outputs,
        # Finished checkpoints only: a kill can land while one is still a temporary folder.
        "checkpoints": sorted(
            p.name for p in checkpoints.iterdir() if re.fullmatch(r"step-\d+", p.name)
        ),
        "planned": planned_outputs(root),
    }
    assert_complete_or_absent(outputs[:1])
    # A killed Snakemake cannot release its lock on the folder: the next run refuses to start and
    # says how to release it (`--unlock`), then runs (the default profile sets rerun-incomplete).
    locked = run_snakemake(root, *TARGETS, check=False, timeout=300, cores=1)
    sigkill["locked_returncode"] = locked.returncode
    sigkill["locked_output"] = locked.stdout + locked.stderr
    run_snakemake(root, "--unlock", *TARGETS, timeout=300, cores=1)

    run_targets(root, cores=1)
    sigkill["rerun_log"] = (root / f"results/logs/lora/{pair}.log").read_text()
    state["sigkill"] = sigkill
    return state
