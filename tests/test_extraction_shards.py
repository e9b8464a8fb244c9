"""Sharded extraction (extraction.shards): S jobs per (model, dataset), each a cost-balanced range of
the batches one job would run, merged into exactly the files one job writes.

Unit level: the merge maths against one direct accumulation, the partition and range checks. Stage
level (tiny random Llama, seconds): extract_pair against extract_part x 3 + merge_extract_parts,
with and without jackknife shards, and the merge's refusals. Workflow level: the DAG of a study
with one sharded dataset (dry run), and a sharded end-to-end run against the session's unsharded
tiny study, resumed after one shard file was lost.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from test_resources import parse_dry_run_jobs
from test_workflow import jobs_planned
from workflow_support import make_texts, read_json, run_snakemake, write_tiny_model

from ntps.datasets import prepare_dataset, write_prepared
from ntps.errors import NTPSError
from ntps.extract import balanced_ranges, batch_costs, plan_batches
from ntps.io import load_tensor_metadata, load_tensors
from ntps.layout import PART_RECORD_KEY
from ntps.stages.extract import extract_pair, extract_part, merge_extract_parts
from ntps.stages.score import score_pair
from ntps.stats import (
    StatisticsAccumulator,
    check_partition,
    merge_all,
    merge_parts,
    shard_assignment,
)
from ntps.text import length_batches
from ntps.workflow import extraction_shards, merge_extract_mb, statistics_mb

# --- the merge maths --------------------------------------------------------------------------


def random_texts(g: torch.Generator, n: int, n_layers: int, d: int, c: int):
    """(L, T_i, d) float64 hidden states of n texts of 1-7 tokens, and their labels."""
    texts = [
        torch.randn(n_layers, int(torch.randint(1, 8, (1,), generator=g)), d, generator=g,
                    dtype=torch.float64)
        for _ in range(n)
    ]  # fmt: skip
    labels = torch.randint(0, c, (n,), generator=g).tolist()
    return texts, labels


def accumulate(texts, labels, c, batch_size=3) -> StatisticsAccumulator:
    """One accumulator fed `texts` in padded batches of `batch_size`, float64 throughout."""
    n_layers, _, d = texts[0].shape
    acc = StatisticsAccumulator(n_layers, d, c, product_dtype=torch.float64)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        width = max(t.shape[1] for t in chunk)
        h = torch.zeros(n_layers, len(chunk), width, d, dtype=torch.float64)
        mask = torch.zeros(len(chunk), width, dtype=torch.int64)
        for i, t in enumerate(chunk):
            h[:, i, : t.shape[1]] = t
            mask[i, : t.shape[1]] = 1
        acc.update(h, mask, torch.tensor(labels[start : start + batch_size]))
    return acc


def assert_same_statistics(got: StatisticsAccumulator, want: StatisticsAccumulator) -> None:
    got_t, want_t = got.to_tensors(), want.to_tensors()
    assert got_t.keys() == want_t.keys()
    for key, value in want_t.items():
        if value.dtype == torch.int64:
            assert torch.equal(got_t[key], value), key
        else:  # float64 sums of the same products in another order
            scale = float(value.abs().max()) or 1.0
            torch.testing.assert_close(got_t[key], value, rtol=0, atol=1e-13 * scale)


@pytest.mark.parametrize("n_jackknife", [0, 4])
def test_merging_part_accumulators_equals_one_accumulation(n_jackknife: int) -> None:
    g = torch.Generator().manual_seed(0)
    n, c = 45, 3
    texts, labels = random_texts(g, n, 2, 5, c)
    jackknife = shard_assignment(n, n_jackknife, 1) if n_jackknife else [0] * n
    slots = max(n_jackknife, 1)
    # Three parts of an arbitrary partition of the texts; each part's texts of jackknife shard j
    # go to that part's accumulator j (a part may feed a shard partly, or not at all).
    owner = torch.randint(0, 3, (n,), generator=g).tolist()
    parts = []
    for p in range(3):
        part = {}
        for j in range(slots):
            idx = [i for i in range(n) if owner[i] == p and jackknife[i] == j]
            if idx:
                part[j] = accumulate([texts[i] for i in idx], [labels[i] for i in idx], c)
        parts.append(part)
    assert any(sum(j in part for part in parts) >= 2 for j in range(slots))  # shards do split
    total, shards = merge_parts(iter(parts), n_jackknife)

    # Direct: each jackknife shard's texts in one accumulator, the total as one job sums them.
    direct = [
        accumulate([texts[i] for i in range(n) if jackknife[i] == j],
                   [labels[i] for i in range(n) if jackknife[i] == j], c)
        for j in range(slots)
    ]  # fmt: skip
    assert len(shards) == n_jackknife
    for got, want in zip(shards, direct if n_jackknife else [], strict=True):
        assert_same_statistics(got, want)
    assert_same_statistics(total, merge_all(direct))
    # And against the closed form of the perception sums: sum_i x_i x_i^T with x_i the mean token.
    x = torch.stack([t[0].mean(0) for t in texts])
    torch.testing.assert_close(total.cxx_sum[0], x.T @ x, rtol=1e-13, atol=1e-13)
    assert total.n_examples == n
    assert total.label_counts.tolist() == torch.bincount(torch.tensor(labels), minlength=c).tolist()


def test_merge_parts_names_a_foreign_or_missing_jackknife_shard() -> None:
    acc = StatisticsAccumulator(1, 2, 2)
    with pytest.raises(NTPSError, match="jackknife shard 5"):
        merge_parts([{5: acc}], 4)
    with pytest.raises(NTPSError, match=r"jackknife shard\(s\) \[1, 2, 3\]"):
        merge_parts([{0: acc}], 4)


def test_check_partition_wants_every_text_exactly_once() -> None:
    check_partition([[0, 3], [1, 2], [4]], 5, "train texts")
    with pytest.raises(NTPSError, match=r"train texts.*1 missing, e.g. \[4\]"):
        check_partition([[0, 3], [1, 2]], 5, "train texts")
    with pytest.raises(NTPSError, match=r"1 repeated, e.g. \[2\]"):
        check_partition([[0, 2, 3], [1, 2], [4]], 5, "train texts")
    with pytest.raises(NTPSError, match=r"outside 0\.\.4"):
        check_partition([[0, 1, 2, 3, 4, 5]], 5, "train texts")


# --- the batch plan and its ranges -------------------------------------------------------------


def test_plan_batches_is_the_one_job_plan() -> None:
    lengths = [5, 1, 9, 3, 3, 7, 2, 8, 4, 6, 1, 2]
    batches, shard = plan_batches(lengths, 3)
    assert batches == length_batches(lengths, 3) and shard == [0] * len(batches)
    shard_of = shard_assignment(len(lengths), 3, seed=2)
    batches, shard = plan_batches(lengths, 2, shard_of)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(shard_of[i] == j for b, j in zip(batches, shard, strict=True) for i in b)
    assert shard == sorted(shard)  # shards in order, each batch in one shard


def test_balanced_ranges_are_contiguous_non_empty_and_balanced() -> None:
    g = torch.Generator().manual_seed(3)
    costs = torch.randint(1, 50, (40,), generator=g).tolist()
    for n_parts in (1, 2, 3, 7, 40):
        ranges = balanced_ranges(costs, n_parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(costs) and len(ranges) == n_parts
        assert all(a < b for a, b in ranges)
        assert all(ranges[i][1] == ranges[i + 1][0] for i in range(n_parts - 1))
        share = sum(costs) / n_parts
        for a, b in ranges:  # within one batch of the ideal share
            assert abs(sum(costs[a:b]) - share) <= 2 * max(costs), (n_parts, a, b)
    assert balanced_ranges(costs, 3) == balanced_ranges(list(costs), 3)
    with pytest.raises(ValueError, match="41 non-empty parts"):
        balanced_ranges(costs, 41)
    assert batch_costs([[0, 1], [2]], [3, 5, 4]) == [10, 4]


# --- stage level: tiny random Llama ------------------------------------------------------------

SETTINGS = {
    "batch_size": 4, "max_length": 32, "dtype": "float32", "device": "cpu",
    "prompt_format": "raw", "jackknife_seed": 0, "progress": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model folder with its record, and a prepared 3-class table of 90 texts."""
    root = tmp_path_factory.mktemp("shards")
    model = write_tiny_model(root / "model")
    (root / "model.json").write_text(json.dumps({"provenance": {"sha256": "abc"}}))
    pd.DataFrame(make_texts(0.4, 30, seed=1), columns=["text", "y"]).to_csv(
        root / "d.csv", index=False
    )
    spec = {"source": {"type": "files", "path": str(root / "d.csv")}, "text_columns": "text",
            "label_column": "y"}  # fmt: skip
    table, record = root / "out" / "data.parquet", root / "out" / "dataset.json"
    write_prepared(prepare_dataset("d", spec, root / "cache"), table, record)
    return {"root": root, "model": model, "model_record": root / "model.json", "table": table,
            "record": record}  # fmt: skip


def run_whole(p: dict[str, Path], settings: dict[str, Any], out: Path) -> dict[str, Any]:
    return extract_pair(
        p["model"], p["table"], p["record"], settings, out / "stats.safetensors",
        out / "features.safetensors", out / "extract.json", model_record_path=p["model_record"],
        out_shards=out / "stats_shards.safetensors",
    )  # fmt: skip


def run_parts(p: dict[str, Path], settings: dict[str, Any], out: Path, count: int) -> list[Path]:
    paths = [out / f"parts/{i}-of-{count}.safetensors" for i in range(count)]
    for i, path in enumerate(paths):
        extract_part(p["model"], p["table"], p["record"], settings, (i, count), path,
                     model_record_path=p["model_record"])  # fmt: skip
    return paths


def merge(p: dict[str, Path], settings: dict[str, Any], parts: list[Path], out: Path):
    return merge_extract_parts(
        parts, p["record"], settings, out / "stats.safetensors", out / "features.safetensors",
        out / "extract.json", model_record_path=p["model_record"],
        out_shards=out / "stats_shards.safetensors",
    )  # fmt: skip


def strip_timing(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in ("load_seconds", "provenance")}
    out["splits"] = {
        split: {k: v for k, v in summary.items() if k not in ("seconds", "tokens_per_second")}
        for split, summary in record["splits"].items()
    }
    return out


@pytest.mark.parametrize("n_jackknife", [0, 4])
def test_sharded_extraction_writes_what_one_job_writes(
    prepared: dict[str, Path], tmp_path: Path, n_jackknife: int
) -> None:
    settings = {**SETTINGS, "jackknife_shards": n_jackknife}
    whole = run_whole(prepared, settings, tmp_path / "whole")
    parts = run_parts(prepared, settings, tmp_path / "sharded", 3)
    records = [json.loads(load_tensor_metadata(p)[PART_RECORD_KEY]) for p in parts]
    # Each part records where it came from and which batches it ran.
    assert [(r["part"], r["parts"]) for r in records] == [(0, 3), (1, 3), (2, 3)]
    assert {r["model_provenance"]["sha256"] for r in records} == {"abc"}
    train_ranges = [r["splits"]["train"]["batch_range"] for r in records]
    assert train_ranges[0][0] == 0 and train_ranges[-1][1] == whole["splits"]["train"]["n_batches"]
    if n_jackknife:  # at least one jackknife shard is split between two extraction shards
        fed = [set(r["jackknife_shards_fed"]) for r in records]
        assert any(fed[i] & fed[i + 1] for i in range(2)), fed
    merged = merge(prepared, settings, parts, tmp_path / "sharded")

    a, b = tmp_path / "whole", tmp_path / "sharded"
    # The same batches, so the same pooled features, bit for bit, in the same file.
    assert (a / "features.safetensors").read_bytes() == (b / "features.safetensors").read_bytes()
    for name in ("stats.safetensors", "stats_shards.safetensors"):
        want, got = load_tensors(a / name), load_tensors(b / name)
        assert got.keys() == want.keys()
        assert load_tensor_metadata(a / name) == load_tensor_metadata(b / name)
        for key, value in want.items():
            if not value.dtype.is_floating_point:
                assert torch.equal(got[key], value), key
            else:  # float64 summation order (float32 shard sums: the same rounding of those)
                tol = 1e-13 if value.dtype == torch.float64 else 2e-7
                scale = float(value.abs().max()) or 1.0
                torch.testing.assert_close(got[key], value, rtol=0, atol=tol * scale)
    assert load_tensors(b / "stats_shards.safetensors")["n_shards"].item() == n_jackknife
    # Scores and their jackknife SEs: the same up to float64 summation order.
    scores = [
        score_pair(root / "stats.safetensors", [0.25, 0.5, 2], ridge=0.0, centered=False,
                   shards_path=root / "stats_shards.safetensors")["records"]
        for root in (a, b)
    ]  # fmt: skip
    for want, got in zip(*scores, strict=True):
        for key in ("ntps_paper", "ntps_reg", "excess_loss", "ntps_paper_se", "ntps_reg_se"):
            if math.isnan(want[key]):
                assert math.isnan(got[key]) and not n_jackknife and key.endswith("_se")
            else:
                assert got[key] == pytest.approx(want[key], rel=1e-10, abs=1e-15), key
    sharding = merged.pop("extraction_shards")
    assert sharding["count"] == 3 and [p["part"] for p in sharding["parts"]] == [0, 1, 2]
    assert strip_timing(merged) == strip_timing(whole)


def test_merge_refuses_parts_that_do_not_belong_together(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    settings = {**SETTINGS, "jackknife_shards": 0}
    parts = run_parts(prepared, settings, tmp_path, 3)
    out = tmp_path / "merged"

    def refused(match: str, paths: list[Path], **changes: Any) -> None:
        with pytest.raises(NTPSError, match=match):
            merge(prepared, {**settings, **changes}, paths, out)
        assert not out.exists() or not any(out.iterdir())  # nothing written

    refused(
        r"expected extraction shards 0..1 of 2 in order, got \(index, count\) \[\(0, 3\)", parts[:2]
    )
    refused(r"\[\(0, 3\), \(0, 3\), \(2, 3\)\]", [parts[0], parts[0], parts[2]])
    refused(r"shard 0 of 3 has settings .*current inputs", parts, max_length=16)
    # A part from a two-way split of the same pair is not part of a three-way split.
    other = run_parts(prepared, settings, tmp_path / "two", 2)
    refused(r"\(index, count\) \[\(0, 3\), \(1, 2\), \(2, 3\)\]", [parts[0], other[1], parts[2]])
    # The dataset was re-prepared since: its fingerprint no longer matches the parts'.
    changed = tmp_path / "dataset.json"
    changed.write_text(json.dumps({**read_json(prepared["record"]), "fingerprint": "0" * 64}))
    with pytest.raises(NTPSError, match="dataset_fingerprint"):
        merge({**prepared, "record": changed}, settings, parts, out)
    # The model was re-acquired since.
    model_record = tmp_path / "model.json"
    model_record.write_text(json.dumps({"provenance": {"sha256": "def"}}))
    with pytest.raises(NTPSError, match="model_provenance"):
        merge({**prepared, "model_record": model_record}, settings, parts, out)
    # Not a shard at all.
    with pytest.raises(NTPSError, match="not an extraction shard"):
        merge(prepared, settings, [prepared["root"] / "model" / "model.safetensors"], out)


def test_more_shards_than_batches_fail_before_the_model_loads(
    prepared: dict[str, Path], tmp_path: Path
) -> None:
    from ntps.errors import DatasetError

    settings = {**SETTINGS, "jackknife_shards": 0, "batch_size": 16}
    # 27 test texts in batches of 16: 2 batches, too few for 3 shards.
    with pytest.raises(
        DatasetError, match=r"27 test texts in batches of 16 .* 3 extraction shards"
    ):
        extract_part(tmp_path / "no-model", prepared["table"], prepared["record"], settings,
                     (0, 3), tmp_path / "p.safetensors")  # fmt: skip


# --- configuration and sizing ------------------------------------------------------------------


def test_shard_count_per_dataset_and_merge_memory(tmp_path: Path) -> None:
    config = {
        "models": [{"name": "m"}],
        "datasets": [{"name": "a"}, {"name": "b", "extraction_shards": 4}],
        "extraction": {"shards": 2},
    }
    assert extraction_shards(config, "a") == 2 and extraction_shards(config, "b") == 4
    assert extraction_shards({**config, "extraction": {}}, "a") == 1
    dataset, model = tmp_path / "dataset.json", tmp_path / "model.json"
    with pytest.raises(FileNotFoundError):  # Snakemake decides the value once the inputs exist
        merge_extract_mb(config, "m", dataset, model)
    dataset.write_text(json.dumps({"n_rows": 10_000}))
    model.write_text(json.dumps({"n_layers": 23, "hidden_size": 1000}))
    features = 10_000 * 24 * 1000 * 4 / 1e6
    held = statistics_mb(config, "m") + statistics_mb(config, "m", sharded=False)
    assert merge_extract_mb(config, "m", dataset, model) == 1024 + held + math.ceil(features)


def test_dag_of_a_study_with_one_sharded_dataset(tmp_path: Path) -> None:
    """One dataset in 3 shards, one in one job: the shard jobs are GPU jobs sized like `extract`,
    the merge asks for no GPU, and nothing else in the DAG changes."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    datasets = []
    for name in ("d1", "d2"):
        path = tmp_path / f"{name}.csv"
        path.write_text("text,label\na b,x\nc d,y\ne f,x\ng h,y\n")
        datasets.append({"name": name, "source": {"type": "files", "path": str(path)},
                         "text_columns": ["text"], "label_column": "label"})  # fmt: skip
    datasets[0]["extraction_shards"] = 3
    config = {
        "models": [{"name": "big", "source": {"type": "local", "path": str(model_dir)},
                    "n_params": 7_000_000_000}],
        "datasets": datasets,
        "lora": {"enabled": False},
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "--dry-run", cores=8, check=False, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = parse_dry_run_jobs(result.stdout + "\n" + result.stderr)
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    assert [j["wildcards"] for j in by_rule["extract"]] == ["model=big, dataset=d2"]
    shard_jobs = sorted(j["wildcards"] for j in by_rule["extract_shard"])
    assert shard_jobs == [f"model=big, dataset=d1, shard={i}, shards=3" for i in range(3)]
    for job in by_rule["extract_shard"]:
        assert job["resources"] == by_rule["extract"][0]["resources"], job
        assert job["resources"]["gpu"] == "1"
    (merge_job,) = by_rule["merge_extract"]
    assert merge_job["wildcards"] == "model=big, dataset=d1"
    assert "gpu" not in merge_job["resources"]
    assert merge_job["resources"]["mem_mb"] == "<TBD>"  # from the records, once they exist
    for rule in ("score", "probe", "predictors"):
        assert len(by_rule[rule]) == 2, rule


# --- workflow level: sharded vs one job, and resuming -----------------------------------------

MODEL = "tiny-llama"
# One of the tiny study's datasets is enough to compare with it and to lose one of its shards.
SHARDED = ("medium",)


def shard_file(dataset: str, index: int, count: int = 3) -> str:
    return f"results/extract/{MODEL}/{dataset}/shards/{index}-of-{count}.safetensors"


def pair_targets() -> list[str]:
    return [
        f"results/{kind}/{MODEL}/{dataset}.json"
        for kind in ("scores", "probes")
        for dataset in SHARDED
    ]


@pytest.mark.slow
def test_sharded_workflow_equals_unsharded_and_resumes(tiny_study: Path, tmp_path: Path) -> None:
    """A dataset of the tiny study (10 jackknife shards) with extraction.shards = 3: scores within
    1e-10 relative, SEs too, identical pooled features and probes. A shard file lost before the
    merge (a killed job leaves none) costs exactly one shard job on the re-run."""
    config = yaml.safe_load((tiny_study / "config.yaml").read_text())
    config["extraction"] = {**config.get("extraction", {}), "shards": 3}
    config["lora"]["enabled"] = False  # not needed for the comparison
    config["datasets"] = [d for d in config["datasets"] if d["name"] in SHARDED]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    # 1. The shard jobs only (targets: temporary files are kept), then one shard is lost.
    shards = [shard_file(d, i) for d in SHARDED for i in range(3)]
    run_snakemake(tmp_path, *shards)
    assert all((tmp_path / s).is_file() for s in shards)
    lost = tmp_path / shard_file("medium", 1)
    lost.unlink()
    # What a SIGKILL during the atomic write leaves: a hidden temporary name, never the output.
    (lost.parent / f".{lost.name}.x1y2z3.tmp").write_bytes(b"partial")

    # 2. The re-run plans the lost shard, the two merges and the pairs' jobs, nothing else.
    dry = run_snakemake(tmp_path, "--dry-run", *pair_targets())
    planned = jobs_planned(dry.stdout)
    assert planned.get("extract_shard") == 1, planned
    assert re.search(r"shard=1, shards=3", dry.stdout) and "dataset=medium" in dry.stdout
    assert planned.get("merge_extract") == len(SHARDED) and "acquire_model" not in planned, planned
    run_snakemake(tmp_path, *pair_targets())
    # Merged: the shard files were temporary, and their absence re-runs nothing.
    assert not list((tmp_path / "results/extract").rglob("shards/*.safetensors"))
    again = run_snakemake(tmp_path, "--dry-run", *pair_targets())
    assert "Nothing to be done" in again.stdout + again.stderr

    for dataset in SHARDED:
        a = tiny_study / "results/extract" / MODEL / dataset
        b = tmp_path / "results/extract" / MODEL / dataset
        assert (a / "features.safetensors").read_bytes() == (
            b / "features.safetensors"
        ).read_bytes()
        # The shard statistics were deleted once their replicates were scored (the default); the
        # scores' standard errors below compare what they held.
        assert not (b / "stats_shards.safetensors").exists()
        for name in ("stats.safetensors",):
            want, got = load_tensors(a / name), load_tensors(b / name)
            for key, value in want.items():
                scale = float(value.double().abs().max()) or 1.0
                tol = 1e-12 if value.dtype == torch.float64 else 2e-7
                torch.testing.assert_close(got[key].double(), value.double(), rtol=0,
                                           atol=tol * scale)  # fmt: skip
        record = read_json(b / "extract.json")
        assert record["extraction_shards"]["count"] == 3
        # Extraction shards keep no hidden states for LoRA: the merge writes a file without them.
        assert load_tensor_metadata(b / "block_inputs.safetensors")["state"] == ""
        assert (
            record["splits"]["train"]["n_texts"]
            == read_json(a / "extract.json")["splits"]["train"]["n_texts"]
        )

        want_scores = read_json(tiny_study / "results/scores" / MODEL / f"{dataset}.json")
        got_scores = read_json(tmp_path / "results/scores" / MODEL / f"{dataset}.json")
        assert len(got_scores["records"]) == len(want_scores["records"])
        for want, got in zip(want_scores["records"], got_scores["records"], strict=True):
            assert want["jackknife_shards"] == got["jackknife_shards"] == 10
            for key, value in want.items():
                if isinstance(value, float) and not isinstance(value, bool):
                    assert got[key] == pytest.approx(value, rel=1e-10, abs=1e-14), (dataset, key)
                else:
                    assert got[key] == value, (dataset, key)
        probes = [
            read_json(root / "results/probes" / MODEL / f"{dataset}.json")
            for root in (tiny_study, tmp_path)
        ]
        assert probes[0]["records"] == probes[1]["records"]
    shutil.rmtree(tmp_path / "results", ignore_errors=True)  # 100+ MB of statistics
