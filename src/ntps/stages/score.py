"""Job body of the scoring (rules/score.smk, and the post-LoRA scoring in rules/lora.smk): NTPS for
every layer and k of one pair, with jackknife standard errors, from the stored statistics.

Statistics are read through :mod:`ntps.stats` (the one reader of stored statistics), one layer at
a time; the scores are :mod:`ntps.scores`'.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ntps.analysis.layer_k import resolve_layer
from ntps.errors import ConfigError, NTPSError
from ntps.io import provenance, save_tensors
from ntps.layout import (
    JACKKNIFE_SETTINGS_KEY,
    N_LAYERS_KEY,
    N_SHARDS_KEY,
    NTPS,
    input_provenance,
    replicate_key,
)
from ntps.models import resolve_device
from ntps.regime import REGIME_OK, regime_warning
from ntps.released import RoundingSpread
from ntps.scores import (
    ReplicateCurves,
    add_released,
    jackknife_se,
    replicate_curves,
    score_layer,
)
from ntps.stats import (
    LayerMoments,
    jackknife_replicates,
    layer_tensors,
    shard_count,
    stored_layers,
)

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


def layer_replicates(
    tensors: Any,
    shards: Any,
    layer: int,
    *,
    ridge: float,
    centered: bool,
    eigen_cutoff: float | str = "auto",
    device: Any = "cpu",
) -> list[ReplicateCurves]:
    """The K leave-one-shard-out replicates of one layer, each reduced to its scores at every k.

    ``tensors`` / ``shards``: :meth:`ntps.stats.StatisticsAccumulator.to_tensors` and
    :func:`ntps.stats.shards_to_tensors` keys (dicts or open safetensors handles). One replicate's
    moments are held at a time.
    """
    return [
        replicate_curves(rep.to(device), tol=eigen_cutoff, ridge=ridge, centered=centered)
        for rep in jackknife_replicates(tensors, shards, layer)
    ]


def replicates_to_tensors(replicates: Sequence[Sequence[ReplicateCurves]]) -> dict[str, Any]:
    """``replicates[layer][j]`` as safetensors-ready tensors (:func:`ntps.layout.replicate_key`)."""
    out: dict[str, Any] = {}
    for layer, curves in enumerate(replicates):
        for j, c in enumerate(curves):
            out[replicate_key(layer, j, "ranks")] = torch.tensor(
                [c.rank_perception, c.rank_ar], dtype=torch.int64
            )
            out[replicate_key(layer, j, "reg")] = c.reg.contiguous()
            out[replicate_key(layer, j, "pairs")] = c.pairs.contiguous()
            out[replicate_key(layer, j, "paper")] = c.paper.contiguous()
    return out


def replicates_from_tensors(handle: Any, layer: int, n_shards: int) -> list[ReplicateCurves]:
    """The K stored replicates of one layer (inverse of :func:`replicates_to_tensors`)."""
    get = handle.get_tensor if hasattr(handle, "get_tensor") else handle.__getitem__
    out = []
    for j in range(n_shards):
        rank_p, rank_ar = get(replicate_key(layer, j, "ranks")).tolist()
        out.append(
            ReplicateCurves(
                int(rank_p),
                int(rank_ar),
                get(replicate_key(layer, j, "reg")),
                get(replicate_key(layer, j, "pairs")),
                get(replicate_key(layer, j, "paper")),
            )
        )
    return out


def _jackknife_settings(ridge: float, centered: bool, eigen_cutoff: float | str) -> dict[str, Any]:
    return {"ridge": ridge, "centered": centered, "eigen_cutoff": eigen_cutoff}


def jackknife_pair(
    stats_path: str | Path,
    shards_path: str | Path,
    out_path: str | Path,
    *,
    ridge: float,
    centered: bool,
    eigen_cutoff: float | str = "auto",
    device: str = "cpu",
) -> int:
    """Reduce every jackknife replicate of every layer to its scores at every k, into ``out_path``.

    The expensive half of the standard errors (one leave-one-shard-out scoring per shard and
    layer) depends on the statistics and the scoring settings, not on the k grid: a new grid is
    scored from this file (:func:`score_pair` with ``jackknife_path``) without the shard
    statistics, which can then be deleted. Without shards (``jackknife_shards`` 0) the file holds
    no replicate. Returns K.
    """
    torch_device = scoring_device(device)
    started = time.perf_counter()
    with ExitStack() as stack:
        handle = stack.enter_context(safe_open(str(stats_path), framework="pt"))
        shards = stack.enter_context(safe_open(str(shards_path), framework="pt"))
        n_shards = shard_count(shards)
        meta = handle.metadata()
        n_layers = int(meta[N_LAYERS_KEY])
        replicates: list[list[ReplicateCurves]] = []
        for layer in range(n_layers):
            replicates.append(
                layer_replicates(
                    layer_tensors(handle, layer),
                    shards,
                    layer,
                    ridge=ridge,
                    centered=centered,
                    eigen_cutoff=eigen_cutoff,
                    device=torch_device,
                )
                if n_shards >= 2
                else []
            )
    tensors = replicates_to_tensors(replicates)
    tensors[N_SHARDS_KEY] = torch.tensor([n_shards if n_shards >= 2 else 0], dtype=torch.int64)
    settings = _jackknife_settings(ridge, centered, eigen_cutoff)
    save_tensors(
        out_path, tensors, {**meta, JACKKNIFE_SETTINGS_KEY: json.dumps(settings, sort_keys=True)}
    )
    LOG.info(
        "jackknife: %d layers x %d replicates on %s in %.2f s",
        n_layers, n_shards, torch_device, time.perf_counter() - started,
    )  # fmt: skip
    return n_shards


#: What a record copied from the pre-LoRA scores (:func:`_lower_records`) does not carry over.
_NOT_COPIED = {
    "ntps_paper_se": math.nan,
    "ntps_reg_se": math.nan,
    "jackknife_shards": 0,
    "ntps_released_min": math.nan,
    "ntps_released_max": math.nan,
    "ntps_released_sd": math.nan,
    "released_roundings": 0,
}


def _lower_records(
    lower_scores: Mapping[str, Any] | None,
    first: int,
    k_grid: Sequence[int | float],
    settings: Mapping[str, Any],
    stats_path: str | Path,
) -> list[dict[str, Any]]:
    """The records of states ``0..first-1`` from the scores of the statistics they equal."""
    if lower_scores is None:
        raise NTPSError(
            f"{stats_path} holds hidden states {first}.. only (post-LoRA statistics); the scores "
            "of the states below come from the pre-LoRA scores, which were not given"
        )
    theirs = {key: lower_scores["settings"].get(key) for key in settings}
    if list(lower_scores["k_grid"]) != list(k_grid) or theirs != dict(settings):
        raise NTPSError(
            f"{stats_path}: the pre-LoRA scores were made with k grid {lower_scores['k_grid']} "
            f"and settings {theirs}, this scoring uses {list(k_grid)} and {dict(settings)}"
        )
    return [
        {**record, **_NOT_COPIED} for record in lower_scores["records"] if record["layer"] < first
    ]


def _check_jackknife_settings(
    meta: dict[str, str], expected: dict[str, Any], path: str | Path
) -> None:
    """Raise NTPSError unless the replicates at ``path`` were made with the ``expected`` settings."""
    found = json.loads(meta.get(JACKKNIFE_SETTINGS_KEY, "null"))
    if found != json.loads(json.dumps(expected, sort_keys=True)):
        raise NTPSError(
            f"{path}: jackknife replicates made with scoring settings {found}, but this scoring "
            f"uses {expected}; delete the file and re-run"
        )


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
) -> tuple[list[dict[str, Any]], float]:
    """One layer's score records with their jackknife SEs (the body of :func:`score_pair`), and
    the seconds the bare NTPS scoring took.

    ``tensors`` holds the layer's :meth:`ntps.stats.StatisticsAccumulator.to_tensors` keys;
    ``shards`` the layer's jackknife replicates (a list of :class:`ntps.scores.ReplicateCurves`),
    or the :func:`ntps.stats.shards_to_tensors` keys to compute them from, or None (no SE); the
    mappings may be dicts or open safetensors handles. The eigendecompositions run in float64 on ``device``; the released
    column (``released``, else NaN) always on the CPU, with scipy, as the authors ran it, and its
    spread over random float32 roundings where ``rounding_spread`` asks for it (this layer is
    meant: its ``layer`` is not looked at here).

    The seconds are those of :func:`ntps.scores.score_layer` without the released column, the
    statistics already in memory on ``device``: NTPS as a pre-screen costs that, while reading the
    statistics, the released column and the jackknife replicates only qualify its numbers (the
    cost compared with the baselines', :func:`ntps.predictors.predictor_costs_table`).
    """
    if shards is None or isinstance(shards, list):
        replicates = shards or []
    elif shard_count(shards) >= 2:
        replicates = layer_replicates(
            tensors, shards, layer, ridge=ridge, centered=centered, eigen_cutoff=eigen_cutoff,
            device=device,
        )  # fmt: skip
    else:
        replicates = []
    moments = LayerMoments.from_tensors(tensors, layer, device=device)
    started = time.perf_counter()
    layer_records = score_layer(
        moments, k_grid, tol=eigen_cutoff, ridge=ridge, centered=centered, released=False
    )
    seconds = time.perf_counter() - started
    if released:
        add_released(layer_records, moments, k_grid, rounding_spread)
    forms = [rep.forms(k_grid) for rep in replicates]
    n_shards = len(replicates)
    records = []
    for i, record in enumerate(layer_records):
        paper = [rep[i][0] for rep in forms]
        reg = [rep[i][1] for rep in forms]
        records.append(
            {
                "layer": layer,
                **record,
                "ntps_paper_se": jackknife_se(paper),
                "ntps_reg_se": jackknife_se(reg),
                "jackknife_shards": n_shards,
            }
        )
    return records, seconds


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
    jackknife_path: str | Path | None = None,
    device: str = "cpu",
    released: bool = True,
    rounding_spread: RoundingSpread | None = None,
    lower_scores: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """NTPS records for every layer and k, loading one layer's statistics at a time.

    Post-LoRA statistics hold only the states from their ``first_recomputed_state`` on (the rest
    are the pre-LoRA statistics); the records of the states below are then those of
    ``lower_scores`` (the pre-LoRA :func:`score_pair` result with the same settings and grid), as
    scoring the same statistics would give them, less what this call does not compute: their
    standard errors and rounding spread (NaN, as for the recomputed states).

    With jackknife replicates (``jackknife_path``, made by :func:`jackknife_pair` with the same
    settings; or computed here from ``shards_path`` holding K >= 2 shards, see
    :func:`ntps.stats.shards_to_tensors`) every record gets ``ntps_paper_se`` and ``ntps_reg_se``,
    the leave-one-shard-out jackknife standard errors over the train texts (NaN without them).
    ``device`` ("auto", "cpu", "cuda"; see :func:`scoring_device`) is where the float64
    eigendecompositions run; the device used is recorded as ``device``. ``released`` False leaves
    ``ntps_released`` NaN (``scoring.released_column``). ``rounding_spread`` adds the released
    column's spread over random float32 roundings of the statistics at its layer (a config layer
    spec, resolved against this pair's depth; None: every layer) and k: ``ntps_released_min``,
    ``ntps_released_max``, ``ntps_released_sd`` (docs/method.md section 7).

    ``seconds["ntps"]``: the compute time of NTPS itself over the layers scored here and the whole
    grid (:func:`score_layer_with_se`; post-LoRA: the recomputed states only), the one value that
    differs between runs.
    """
    torch_device = scoring_device(device)
    records: list[dict[str, Any]] = []
    ntps_seconds = 0.0
    started = time.perf_counter()
    with ExitStack() as stack:
        handle = stack.enter_context(safe_open(str(stats_path), framework="pt"))
        shards = (
            stack.enter_context(safe_open(str(shards_path), framework="pt"))
            if shards_path is not None
            else None
        )
        n_shards = shard_count(shards) if shards else 0
        stored = None
        if jackknife_path is not None:
            stored = stack.enter_context(safe_open(str(jackknife_path), framework="pt"))
            _check_jackknife_settings(
                stored.metadata(), _jackknife_settings(ridge, centered, eigen_cutoff),
                jackknife_path,
            )  # fmt: skip
            n_shards = shard_count(stored)
        meta = handle.metadata()
        n_layers = int(meta[N_LAYERS_KEY])
        spread_layers = _spread_layers(rounding_spread if released else None, n_layers)
        first = stored_layers(handle.keys())[0]
        if first > 0:
            settings = {"eigen_cutoff": eigen_cutoff, "ridge": ridge, "centered": centered}
            records += _lower_records(
                lower_scores, first, k_grid, {**settings, "released_column": released}, stats_path
            )
        for layer in range(first, n_layers):
            layer_records, seconds = score_layer_with_se(
                layer_tensors(handle, layer),
                replicates_from_tensors(stored, layer, n_shards) if stored else shards,
                layer,
                k_grid,
                ridge=ridge,
                centered=centered,
                eigen_cutoff=eigen_cutoff,
                device=torch_device,
                released=released,
                rounding_spread=rounding_spread if layer in spread_layers else None,
            )
            records += layer_records
            ntps_seconds += seconds
    if records and records[0]["regime"] != REGIME_OK:
        LOG.warning("REGIME: %s", regime_warning(records[0]["n_train"], records[0]["hidden_size"]))
    LOG.info(
        "scored %d layers (%d jackknife replicates each) on %s in %.2f s (bare NTPS: %.3f s)",
        n_layers, n_shards, torch_device, time.perf_counter() - started, ntps_seconds,
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
        # The one timing field (the only value that differs between runs): the cost of NTPS as a
        # pre-screen, beside the baselines' in the predictors job's JSON (same name and layout).
        "seconds": {NTPS: ntps_seconds},
        "records": records,
        "provenance": provenance(**input_provenance(meta)),
    }
