"""Scoring on the job's device: CPU by default and without a GPU, CUDA when the job has one.

The CUDA comparison runs only where torch sees a GPU (never on the CI machine); everywhere else the
tests check the fallback, the early error for a missing GPU, and that the file-reading job body and
the in-memory per-layer function give the same records.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_uncertainty import sharded, synthetic_texts

from ntps.errors import ConfigError
from ntps.io import save_tensors
from ntps.layout import NTPS
from ntps.released import RoundingSpread
from ntps.stages.score import score_layer_with_se, score_pair, scoring_device
from ntps.stats import shards_to_tensors

K_GRID = [0.25, 0.5, 0.75, 1, 3]
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def statistics(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, dict]:
    """Two-layer statistics of 120 synthetic texts (d = 6, 3 classes) with 4 jackknife shards."""
    g = torch.Generator().manual_seed(5)
    texts, labels = synthetic_texts(g, 120, 6, 3)
    # Two "layers": the same texts, the second scaled and shifted.
    texts = [torch.cat([t, 2.0 * t + 1.0]) for t in texts]
    total, shards = sharded(texts, labels, 3, 4)
    tensors, shard_tensors = total.to_tensors(), shards_to_tensors(shards)
    root = tmp_path_factory.mktemp("stats")
    stats_path, shards_path = root / "stats.safetensors", root / "stats_shards.safetensors"
    save_tensors(stats_path, tensors, {"n_layers": "2"})
    save_tensors(shards_path, shard_tensors, {"n_layers": "2"})
    return stats_path, shards_path, tensors, shard_tensors


def score(statistics, device: str) -> dict:
    stats_path, shards_path, _, _ = statistics
    return score_pair(
        stats_path, K_GRID, ridge=0.0, centered=False, shards_path=shards_path, device=device
    )


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a GPU")
def test_auto_falls_back_to_the_cpu_and_cuda_fails_early_naming_the_key() -> None:
    assert scoring_device("auto") == torch.device("cpu")
    assert scoring_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"extraction\.device"):
        scoring_device("cuda")


def test_the_job_records_its_device_and_matches_the_per_layer_function(statistics) -> None:
    result = score(statistics, "auto")
    expected_device = "cpu" if NO_CUDA else "cuda"
    assert result["device"].startswith(expected_device)
    assert result["n_layers"] == 2 and len(result["records"]) == 2 * len(K_GRID)
    assert all(r["jackknife_shards"] == 4 and r["ntps_reg_se"] > 0 for r in result["records"])
    # The job body on open files and the per-layer function on in-memory dicts agree exactly.
    _, _, tensors, shard_tensors = statistics
    per_layer = [
        score_layer_with_se(
            tensors, shard_tensors, layer, K_GRID, ridge=0.0, centered=False, device="cpu"
        )
        for layer in range(2)
    ]
    direct = [record for records, _ in per_layer for record in records]
    cpu = score(statistics, "cpu")
    assert cpu["records"] == direct
    # The one timing field: the seconds of bare NTPS summed over the layers (not the whole job).
    assert list(cpu["seconds"]) == [NTPS] and cpu["seconds"][NTPS] > 0
    assert all(seconds > 0 for _, seconds in per_layer)


def test_timing_ntps_apart_leaves_the_records_as_score_layer_makes_them(statistics) -> None:
    """score_layer_with_se times score_layer(released=False) and then adds the released column
    (add_released): the same records, key order included, as score_layer with it."""
    from ntps.scores import score_layer
    from ntps.stats import LayerMoments

    _, _, tensors, _ = statistics
    spread = RoundingSpread(n_roundings=2, seed=0, k=(0.5,))
    for layer in range(2):
        records, _ = score_layer_with_se(
            tensors, None, layer, K_GRID, ridge=0.0, centered=False, rounding_spread=spread
        )
        whole = score_layer(
            LayerMoments.from_tensors(tensors, layer), K_GRID, rounding_spread=spread
        )
        added = ("layer", "ntps_paper_se", "ntps_reg_se", "jackknife_shards")
        mine = [{k: v for k, v in r.items() if k not in added} for r in records]
        assert json.dumps(mine) == json.dumps(whole)


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")
def test_cuda_scores_equal_cpu_scores_within_float64_rounding(statistics) -> None:
    cpu, cuda = score(statistics, "cpu"), score(statistics, "cuda")
    assert cuda["device"].startswith("cuda")
    for a, b in zip(cpu["records"], cuda["records"], strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if a["paper_degenerate"] and key in ("ntps_paper", "ntps_paper_se"):
                continue  # an arbitrary basis of a degenerate eigenspace (docs/method.md)
            if isinstance(value, float) and not math.isnan(value):
                assert b[key] == pytest.approx(value, rel=1e-8, abs=1e-10), key
            elif not isinstance(value, float):
                assert b[key] == value, key


def test_without_the_released_column_only_that_column_changes(statistics) -> None:
    stats_path, shards_path, _, _ = statistics
    full = score(statistics, "cpu")
    bare = score_pair(
        stats_path, K_GRID, ridge=0.0, centered=False, shards_path=shards_path, released=False
    )
    assert bare["settings"]["released_column"] is False and full["settings"]["released_column"]
    assert any(not math.isnan(r["ntps_released"]) for r in full["records"])
    for a, b in zip(full["records"], bare["records"], strict=True):
        assert math.isnan(b["ntps_released"])
        assert {k: v for k, v in a.items() if k != "ntps_released"} == {
            k: v for k, v in b.items() if k != "ntps_released"
        }


def test_replicates_read_one_at_a_time_from_open_files_are_exactly_the_jackknife_moments(
    statistics,
) -> None:
    # The score job reads each layer once (layer_tensors) and the shards lazily from the open
    # file, one replicate at a time; the in-memory dicts give every replicate at once.
    from safetensors import safe_open

    from ntps.stats import jackknife_moments, jackknife_replicates, layer_tensors

    stats_path, shards_path, tensors, shard_tensors = statistics
    with (
        safe_open(str(stats_path), framework="pt") as total,
        safe_open(str(shards_path), framework="pt") as shards,
    ):
        for layer in range(2):
            everything = jackknife_moments(tensors, shard_tensors, layer)
            assert len(everything) == 4
            one_layer = layer_tensors(total, layer)
            assert all(key.startswith(f"layer{layer}.") or "." not in key for key in one_layer)
            lazy = jackknife_replicates(one_layer, shards, layer)
            for got, expected in zip(lazy, everything, strict=True):
                for name in ("cxx", "cxy", "s0", "s1", "x_mean", "y_mean"):
                    assert torch.equal(getattr(got, name), getattr(expected, name)), name
                assert (got.n_examples, got.n_pairs) == (expected.n_examples, expected.n_pairs)


def test_the_released_spread_is_computed_at_the_asked_layer_and_k_only(statistics) -> None:
    stats_path, shards_path, _, _ = statistics
    full = score(statistics, "cpu")
    spread = RoundingSpread(n_roundings=3, seed=0, layer=1.0, k=(0.5,))  # 1.0: the last layer
    with_spread = score_pair(
        stats_path, K_GRID, ridge=0.0, centered=False, shards_path=shards_path,
        rounding_spread=spread,
    )  # fmt: skip
    assert full["settings"]["released_spread"] is None
    assert with_spread["settings"]["released_spread"] == {
        "roundings": 3, "seed": 0, "layers": [1], "k": [0.5]
    }  # fmt: skip
    spread_keys = ("ntps_released_min", "ntps_released_max", "ntps_released_sd")
    for a, b in zip(full["records"], with_spread["records"], strict=True):
        if (b["layer"], b["k_spec"]) == (1, 0.5):
            assert b["released_roundings"] == 3
            assert b["ntps_released_min"] <= b["ntps_released"] <= b["ntps_released_max"]
        else:
            assert b["released_roundings"] == 0
            assert all(math.isnan(b[key]) for key in spread_keys)
        # Everything else as without the spread.
        assert {k: v for k, v in a.items() if k not in (*spread_keys, "released_roundings")} == {
            k: v for k, v in b.items() if k not in (*spread_keys, "released_roundings")
        }
    # No released column, no spread.
    bare = score_pair(stats_path, K_GRID, ridge=0.0, centered=False, released=False,
                      rounding_spread=spread)  # fmt: skip
    assert bare["settings"]["released_spread"] is None
    assert all(r["released_roundings"] == 0 for r in bare["records"])
