"""Job body of the scoring (rules/score.smk, and the post-LoRA scoring in rules/lora.smk): NTPS for
every layer and k of one pair, with jackknife standard errors, from the stored statistics.

Statistics are read through :mod:`ntps.stats` (the one reader of stored statistics), one layer at
a time; the scores are :mod:`ntps.scores`'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ntps.analysis.layer_k import resolve_layer
from ntps.errors import ConfigError
from ntps.io import provenance
from ntps.layout import N_LAYERS_KEY, input_provenance
from ntps.models import resolve_device
from ntps.regime import REGIME_OK, regime_warning
from ntps.released import RoundingSpread
from ntps.scores import jackknife_se, ntps_forms, score_layer
from ntps.stats import LayerMoments, jackknife_replicates, layer_tensors, shard_count

LOG = logging.getLogger("ntps")


def scoring_device(spec: str | None = "auto") -> torch.device:
    """The torch device a scoring job runs on: ``auto`` = CUDA when the job sees a GPU, else CPU.

    ``spec`` is the config's ``extraction.device`` (one setting for every job that can use a GPU).
    ``cuda`` without a usable GPU raises :class:`ntps.errors.ConfigError` before any work.
    """
    device = resolve_device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "extraction.device is 'cuda' but this scoring job sees no CUDA device "
            "(set it to 'auto' to fall back to the CPU)"
        )
    return device


def score_layer_with_se(
    tensors: Any,
    shards: Any,
    layer: int,
    k_grid: Sequence[int | float],
    *,
    ridge: float,
    centered: bool,
    eigen_cutoff: float | str = "auto",
    device: Any = "cpu",
    released: bool = True,
    rounding_spread: RoundingSpread | None = None,
) -> list[dict[str, Any]]:
    """One layer's score records with their jackknife SEs (the body of :func:`score_pair`).

    ``tensors`` holds the layer's :meth:`ntps.stats.StatisticsAccumulator.to_tensors` keys and
    ``shards`` the :func:`ntps.stats.shards_to_tensors` keys (or None); either may be a dict or an
    open safetensors handle. The eigendecompositions run in float64 on ``device``; the released
    column (``released``, else NaN) always on the CPU, with scipy, as the authors ran it, and its
    spread over random float32 roundings where ``rounding_spread`` asks for it (this layer is
    meant: its ``layer`` is not looked at here).
    """
    n_shards = shard_count(shards) if shards is not None else 0
    moments = LayerMoments.from_tensors(tensors, layer, device=device)
    layer_records = score_layer(
        moments,
        k_grid,
        tol=eigen_cutoff,
        ridge=ridge,
        centered=centered,
        released=released,
        rounding_spread=rounding_spread,
    )
    replicates = []
    if n_shards >= 2:
        # One replicate in memory at a time (K of them are K x the layer's statistics).
        for rep in jackknife_replicates(tensors, shards, layer):
            replicates.append(
                ntps_forms(rep.to(device), k_grid, tol=eigen_cutoff, ridge=ridge, centered=centered)
            )
    records = []
    for i, record in enumerate(layer_records):
        paper = [rep[i][0] for rep in replicates]
        reg = [rep[i][1] for rep in replicates]
        records.append(
            {
                "layer": layer,
                **record,
                "ntps_paper_se": jackknife_se(paper),
                "ntps_reg_se": jackknife_se(reg),
                "jackknife_shards": n_shards,
            }
        )
    return records


def _spread_layers(spread: RoundingSpread | None, n_layers: int) -> frozenset[int]:
    """The layers (indices) at which ``spread`` asks for the released rounding spread."""
    if spread is None or spread.n_roundings == 0:
        return frozenset()
    if spread.layer is None:
        return frozenset(range(n_layers))
    return frozenset({resolve_layer(spread.layer, n_layers)})


def _spread_settings(
    spread: RoundingSpread | None, layers: frozenset[int]
) -> dict[str, Any] | None:
    """The rounding-spread settings a score JSON records (None: no spread)."""
    if not layers or spread is None:
        return None
    return {
        "roundings": spread.n_roundings,
        "seed": spread.seed,
        "layers": sorted(layers),
        "k": None if spread.k is None else list(spread.k),
    }


def score_pair(
    stats_path: str | Path,
    k_grid: Sequence[int | float],
    *,
    ridge: float,
    centered: bool,
    eigen_cutoff: float | str = "auto",
    shards_path: str | Path | None = None,
    device: str = "cpu",
    released: bool = True,
    rounding_spread: RoundingSpread | None = None,
) -> dict[str, Any]:
    """NTPS records for every layer and k, loading one layer's statistics at a time.

    With jackknife shards (``shards_path`` holding K >= 2 shards, see
    :func:`ntps.stats.shards_to_tensors`) every record gets ``ntps_paper_se`` and ``ntps_reg_se``,
    the leave-one-shard-out jackknife standard errors over the train texts (NaN without shards).
    ``device`` ("auto", "cpu", "cuda"; see :func:`scoring_device`) is where the float64
    eigendecompositions run; the device used is recorded as ``device``. ``released`` False leaves
    ``ntps_released`` NaN (``scoring.released_column``). ``rounding_spread`` adds the released
    column's spread over random float32 roundings of the statistics at its layer (a config layer
    spec, resolved against this pair's depth; None: every layer) and k: ``ntps_released_min``,
    ``ntps_released_max``, ``ntps_released_sd`` (docs/method.md section 7).
    """
    torch_device = scoring_device(device)
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    with ExitStack() as stack:
        handle = stack.enter_context(safe_open(str(stats_path), framework="pt"))
        shards = (
            stack.enter_context(safe_open(str(shards_path), framework="pt"))
            if shards_path is not None
            else None
        )
        n_shards = shard_count(shards) if shards else 0
        meta = handle.metadata()
        n_layers = int(meta[N_LAYERS_KEY])
        spread_layers = _spread_layers(rounding_spread if released else None, n_layers)
        for layer in range(n_layers):
            records += score_layer_with_se(
                layer_tensors(handle, layer),
                shards,
                layer,
                k_grid,
                ridge=ridge,
                centered=centered,
                eigen_cutoff=eigen_cutoff,
                device=torch_device,
                released=released,
                rounding_spread=rounding_spread if layer in spread_layers else None,
            )
    if records and records[0]["regime"] != REGIME_OK:
        LOG.warning("REGIME: %s", regime_warning(records[0]["n_train"], records[0]["hidden_size"]))
    # Timings go to the log, not the output: score JSONs are byte-identical across runs.
    LOG.info(
        "scored %d layers (%d jackknife replicates each) on %s in %.2f s",
        n_layers, n_shards, torch_device, time.perf_counter() - started,
    )  # fmt: skip
    return {
        "n_layers": n_layers,
        "k_grid": list(k_grid),
        "settings": {
            "eigen_cutoff": eigen_cutoff,
            "ridge": ridge,
            "centered": centered,
            "jackknife_shards": n_shards,
            "released_column": released,
            "released_spread": _spread_settings(rounding_spread, spread_layers),
        },
        "device": str(torch_device),
        "records": records,
        "provenance": provenance(**input_provenance(meta)),
    }
