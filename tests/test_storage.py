"""Storage (issue #15): the disk estimate against real files, compact statistics, temp statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ntps.io import save_tensors
from ntps.sizes import features_bytes, statistics_bytes, statistics_values
from ntps.stages.score import score_pair
from ntps.stats import (
    LayerMoments,
    StatisticsAccumulator,
    jackknife_moments,
    pack_statistics,
    pack_symmetric,
    shards_to_tensors,
    splice_statistics,
    unpack_symmetric,
)
from ntps.storage import load_config, main, measure, plan

SUMS = ("x_sum", "cxx_sum", "cxy_sum", "s0_sum", "s1_sum", "label_counts")
META = {"n_layers": "3", "n_classes": "3", "dataset_fingerprint": "f" * 64}


def filled_accumulator(n_states: int, d: int, c: int, n_texts: int, seed: int):
    """An accumulator fed random ragged batches (float32 hidden states, as from a model)."""
    g = torch.Generator().manual_seed(seed)
    acc = StatisticsAccumulator(n_states, d, c)
    for start in range(0, n_texts, 8):
        batch = min(8, n_texts - start)
        hidden = torch.randn(n_states, batch, 12, d, generator=g) * torch.linspace(0.1, 30, d)
        mask = torch.ones(batch, 12, dtype=torch.int64)
        mask[:, : int(torch.randint(0, 6, (1,), generator=g))] = 0  # left padding
        labels = torch.randint(0, c, (batch,), generator=g)
        labels[: min(batch, c)] = torch.arange(min(batch, c))
        acc.update(hidden, mask, labels)
    return acc


def test_pack_unpack_symmetric_is_exact() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 7, generator=g, dtype=torch.float64)
    sym = (a + a.T) * 0.5  # exactly symmetric (a @ a.T need not be, bit for bit)
    packed = pack_symmetric(sym)
    assert packed.shape == (7 * 8 // 2,)
    assert torch.equal(unpack_symmetric(packed), sym)
    # A non-symmetric input is stored as its symmetric part, which is what scoring uses.
    assert torch.equal(unpack_symmetric(pack_symmetric(a)), (a + a.T) * 0.5)
    with pytest.raises(Exception, match="d\\(d\\+1\\)/2"):
        unpack_symmetric(torch.zeros(5, dtype=torch.float64))


def test_compact_statistics_round_trip_exactly(tmp_path: Path) -> None:
    acc = filled_accumulator(3, 10, 3, 40, seed=1)
    # float32 GEMMs leave S0 symmetric only up to rounding here (as Gemma-3's Cxx in a real run);
    # writing stores the symmetric part, the same matrix in the full and the compact form.
    raw_s0 = acc.s0_sum.clone()
    assert not torch.equal(raw_s0, raw_s0.mT)  # the case worth testing
    acc.to_tensors()
    assert torch.equal(acc.s0_sum, (raw_s0 + raw_s0.mT) * 0.5)
    for name in ("cxx_sum", "s0_sum"):
        assert torch.equal(getattr(acc, name), getattr(acc, name).mT)
    full, compact = tmp_path / "full.safetensors", tmp_path / "compact.safetensors"
    save_tensors(full, acc.to_tensors(), META)
    save_tensors(compact, acc.to_tensors(compact=True), META)
    from ntps.io import load_tensors

    loaded = load_tensors(compact)
    assert "layer0.cxx_sum.triu" in loaded and "layer0.cxx_sum" not in loaded
    back = StatisticsAccumulator.from_tensors(loaded)
    for name in SUMS:
        assert torch.equal(getattr(back, name), getattr(acc, name)), name
    # One layer through the handle reader (what scoring and the predictors use).
    from safetensors import safe_open

    with safe_open(str(compact), "pt") as handle:
        m = LayerMoments.from_tensors(handle, 2)
    ref = acc.layer_moments(2)
    assert torch.equal(m.cxx, ref.cxx) and torch.equal(m.s0, ref.s0) and torch.equal(m.s1, ref.s1)
    # Sizes: the formula against the files, and the saving.
    d, c = 10, 3
    assert full.stat().st_size == pytest.approx(statistics_bytes(3, d, c), rel=0.03)
    assert compact.stat().st_size == pytest.approx(
        statistics_bytes(3, d, c, compact=True), rel=0.03
    )
    assert statistics_values(d, c, compact=True) == statistics_values(d, c) - d * (d - 1)


def test_compact_scores_are_identical(tmp_path: Path) -> None:
    """Statistics and jackknife shards stored compactly give the very same score records."""
    shards = [filled_accumulator(3, 12, 3, 24, seed=s) for s in range(4)]
    total = shards[0]
    for other in shards[1:]:
        total = total.merge(other)
    paths = {}
    for compact in (False, True):
        stats = tmp_path / f"stats_{compact}.safetensors"
        shard_file = tmp_path / f"shards_{compact}.safetensors"
        save_tensors(stats, total.to_tensors(compact=compact), META)
        save_tensors(shard_file, shards_to_tensors(shards, compact=compact), META)
        paths[compact] = (stats, shard_file)
    k_grid = [0.25, 0.5, 2]
    full, compact = (
        score_pair(s, k_grid, ridge=0.0, centered=False, shards_path=sh)
        for s, sh in (paths[False], paths[True])
    )
    assert full["records"][0]["jackknife_shards"] == 4
    assert json.dumps(full["records"]) == json.dumps(compact["records"])
    # The jackknife replicates through the packed shards equal the full ones bit for bit.
    reps_full = jackknife_moments(total.to_tensors(), shards_to_tensors(shards), 1)
    reps_compact = jackknife_moments(
        pack_statistics(total.to_tensors()), shards_to_tensors(shards, compact=True), 1
    )
    for a, b in zip(reps_full, reps_compact, strict=True):
        assert torch.equal(a.cxx, b.cxx) and torch.equal(a.s0, b.s0)


def test_splice_reads_compact_statistics() -> None:
    base = filled_accumulator(4, 8, 2, 16, seed=3)
    upper = StatisticsAccumulator(2, 8, 2)
    for name in SUMS:
        value = getattr(base, name)
        setattr(upper, name, (value[2:] * 1.5) if value.ndim == 3 or name == "x_sum" else value)
    for name in ("n_examples", "n_pairs", "n_texts"):
        setattr(upper, name, getattr(base, name))
    full = splice_statistics(base.to_tensors(), upper, 2)
    compact = splice_statistics(base.to_tensors(compact=True), upper, 2)
    assert full.keys() == compact.keys()
    assert all(torch.equal(full[k], compact[k]) for k in full)


def test_estimate_formula_for_the_paper_models() -> None:
    """The issue's figure: ~13 GB of float64 statistics per pair at d = 4096 x 33 hidden states."""
    assert statistics_bytes(33, 4096, 2) / 1e9 == pytest.approx(13.29, abs=0.01)
    compact = statistics_bytes(33, 4096, 2, compact=True)
    assert compact / statistics_bytes(33, 4096, 2) == pytest.approx(2 / 3, abs=0.001)
    assert features_bytes(33, 4096, 1000) == 4 * 33 * 4096 * 1000 + 8000


def test_paper_config_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    config = load_config(repo / "config" / "paper.yaml")
    estimates = plan(config, tmp_path)  # nothing acquired: shapes from the published configs
    assert estimates["statistics"].files == 96 and estimates["post-LoRA statistics"].files == 96
    llama = [n for n in estimates["models"].notes if n.startswith("llama3-8b")]
    assert llama == ["llama3-8b: 32 blocks, d=4096 (published config)"]
    assert estimates["statistics"].largest[0].startswith("llama3-8b")
    assert not estimates["statistics"].deleted_after_use
    full = plan(
        load_config(repo / "config" / "paper.yaml", ["storage.compact_statistics=false"]),
        tmp_path,
    )
    temp = plan(
        load_config(
            repo / "config" / "paper.yaml",
            ["storage.statistics=temp", "storage.compact_statistics=true"],
        ),
        tmp_path,
    )
    assert temp["statistics"].deleted_after_use and temp["post-LoRA statistics"].deleted_after_use
    assert temp["statistics"].bytes == estimates["statistics"].bytes  # paper.yaml: compact
    ratio = temp["statistics"].bytes / full["statistics"].bytes
    assert 0.66 < ratio < 0.68
    assert main([str(repo / "config" / "paper.yaml"), "--directory", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "statistics" in out and "kept after the run" in out and "TB" in out


@pytest.mark.slow
def test_estimate_matches_the_tiny_study(tiny_study: Path) -> None:
    """The plan, from the config and the acquisition record, against what the tiny study wrote."""
    config = load_config(tiny_study / "config.yaml")
    estimates = plan(config, tiny_study)
    measured = measure(config, tiny_study)
    # The large stages: within 3% (headers and metadata are the difference).
    for stage in ("statistics", "pooled features", "LoRA block inputs", "post-LoRA statistics"):
        assert measured[stage] > 0, stage
        assert estimates[stage].bytes == pytest.approx(measured[stage], rel=0.03), stage
    # The shard statistics were deleted once their replicates were scored (the default); the
    # replicates' estimate assumes full-rank problems and ~4 (k_ar, k_perception) pairs per rank.
    assert measured["jackknife shards"] == 0 and estimates["jackknife shards"].deleted_after_use
    replicates = measured["jackknife replicates"]
    assert replicates > 0
    assert estimates["jackknife replicates"].bytes == pytest.approx(replicates, rel=0.10)
    # The local model is linked, not copied: only its record and the links take space.
    assert estimates["models"].bytes == 0 and 0 < measured["models"] < 10_000
    # The adapter formula is an upper bound (q, k, v counted as d -> d), at most 2x here.
    assert measured["LoRA adapters"] <= estimates["LoRA adapters"].bytes
    assert estimates["LoRA adapters"].bytes <= 2 * measured["LoRA adapters"] + 20_000


@pytest.mark.slow
def test_temp_and_compact_statistics_in_the_workflow(tiny_study: Path, tmp_path: Path) -> None:
    """storage.statistics: temp deletes the statistics once every job reading them ran (score,
    predictors, LoRA; score_post_lora), and compact statistics give the same scores as full."""
    from workflow_support import read_json, run_snakemake, write_study

    write_study(
        tmp_path,
        storage={"statistics": "temp", "compact_statistics": True},
        uncertainty={"keep_shard_statistics": True},
    )
    pair = "tiny-llama/strong"
    targets = [
        f"results/scores/{pair}.json",
        f"results/predictors/{pair}.json",
        f"results/scores_post_lora/{pair}.json",
    ]
    run_snakemake(tmp_path, *targets)
    for target in targets:
        assert (tmp_path / target).exists(), target
    assert (tmp_path / f"results/lora/{pair}/adapter").is_dir()
    assert not (tmp_path / f"results/extract/{pair}/stats.safetensors").exists()
    assert not (tmp_path / f"results/lora/{pair}/stats_post_lora.safetensors").exists()
    # Compact shards were read too (kept: keep_shard_statistics).
    from ntps.io import load_tensors

    shard_keys = load_tensors(tmp_path / f"results/extract/{pair}/stats_shards.safetensors").keys()
    assert any(k.endswith(".cxx_sum.triu") for k in shard_keys)
    for stage in ("scores", "scores_post_lora"):
        mine = read_json(tmp_path / f"results/{stage}/{pair}.json")["records"]
        reference = read_json(tiny_study / f"results/{stage}/{pair}.json")["records"]
        assert json.dumps(mine) == json.dumps(reference), stage
    # Nothing re-runs: Snakemake knows the deleted statistics were temporary.
    dry = run_snakemake(tmp_path, "-n", *targets)
    assert "Nothing to be done" in dry.stdout + dry.stderr
