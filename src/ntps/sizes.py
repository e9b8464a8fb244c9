"""Bytes of what a study stores and holds in memory: the size formulas, here and nowhere else.

The disk plan (:mod:`ntps.storage`) and the jobs' memory requests
(:func:`ntps.workflow.statistics_mb`) both size with these. What they count (bytes; ``S = L + 1``
hidden states, ``d`` the hidden size, ``c`` classes, ``K`` jackknife shards, ``N`` texts of both
splits):

* statistics (float64): ``8 S (3 d^2 + d c + d)``; compact (``storage.compact_statistics``):
  ``8 S (d^2 + d(d+1) + d c + d)``, plus the safetensors header (~90 bytes per tensor);
* jackknife shards (float32 sums): ``4 K S (3 d^2 + d c + d)`` (compact as above);
* jackknife replicates (each replicate of each state reduced to its scores at every k): about
  ``K S (8 d + 24 n_k)`` with ``n_k ~ 4 d`` (k_ar, k_perception) pairs, plus headers;
* post-LoRA statistics: the statistics of the states LoRA can change only (its top blocks' outputs);
* pooled features (float32): ``4 S d N`` plus the labels;
* LoRA's block inputs (the extraction's ``block_inputs.safetensors``, LoRA pairs whose adapters
  leave frozen blocks below): ``4 d T`` for the ``T`` tokens of both splits, none above 4 GiB per
  split (where LoRA recomputes them per batch);
* LoRA adapter: fp32 ``r (d_in + d_out)`` per adapted module, counted as 3 modules (q, k, v) of
  ``d -> d`` per adapted block (an upper bound: grouped-query k/v are narrower), plus the head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

HEADER_BYTES_PER_TENSOR = 90
LORA_MODULES_PER_BLOCK = 3


def statistics_values(hidden_size: int, n_classes: int, *, compact: bool = False) -> int:
    """Values stored per hidden state: Cxx, S0, S1 (d^2 each; Cxx and S0 as d(d+1)/2 when
    ``compact``), Cxy (d c) and the feature sum (d)."""
    d = hidden_size
    symmetric = d * (d + 1) // 2 if compact else d * d
    return 2 * symmetric + d * d + d * n_classes + d


def statistics_bytes(
    n_states: int,
    hidden_size: int,
    n_classes: int,
    *,
    element_bytes: int = 8,
    compact: bool = False,
    header: bool = True,
) -> int:
    """Bytes of one ``StatisticsAccumulator`` over ``n_states`` hidden states: on disk (with the
    safetensors header) or in memory (``header=False``). ``element_bytes`` 8 for the float64
    statistics, 4 for the float32 jackknife shards."""
    payload = n_states * statistics_values(hidden_size, n_classes, compact=compact) * element_bytes
    tensors = 5 * n_states + 4
    return payload + (HEADER_BYTES_PER_TENSOR * tensors if header else 0)


def statistics_bytes_from_params(n_params: float) -> float:
    """Memory of one accumulator when only the parameter count is known: a transformer block has
    ~12 d^2 weights, so S d^2 ~ n_params / 12 and 3 d^2 float64 values per state give 2 n_params
    bytes (an overestimate for models with large embedding tables)."""
    return 3 * 8 * n_params / 12


def features_bytes(n_states: int, hidden_size: int, n_texts: int) -> int:
    """Pooled float32 features of every hidden state for ``n_texts`` texts, plus int64 labels."""
    return 4 * n_states * hidden_size * n_texts + 8 * n_texts


def lora_adapter_bytes(
    hidden_size: int, n_blocks: int, n_classes: int, settings: Mapping[str, Any]
) -> int:
    """fp32 adapter (r x (d_in + d_out) per module; q, k, v taken as d -> d) and head (c d + c)."""
    r = int(settings.get("r", 32))
    if settings.get("layers_to_transform"):
        blocks = len(settings["layers_to_transform"])
    elif settings.get("top_blocks"):
        blocks = min(int(settings["top_blocks"]), n_blocks)
    else:
        blocks = n_blocks
    modules = len(settings.get("target_modules") or ()) or LORA_MODULES_PER_BLOCK
    adapter = blocks * modules * r * 2 * hidden_size
    return 4 * (adapter + n_classes * hidden_size + n_classes)


#: (k_ar, k_perception) pairs a replicate keeps per unit of rank (ntps.scores.reachable_k_pairs:
#: 2556 at rank 640, measured).
K_PAIRS_PER_RANK = 4


def jackknife_replicates_bytes(n_states: int, hidden_size: int, n_shards: int) -> int:
    """The jackknife rule's file: per shard and state, ranks (2 int64), the regression curve
    (d float64) and ~4 d (k_ar, k_perception) pairs (2 int64) with their paper score (float64);
    full-rank problems assumed (an upper bound)."""
    n_pairs = K_PAIRS_PER_RANK * hidden_size
    per_replicate = 16 + 8 * hidden_size + 24 * n_pairs + 4 * HEADER_BYTES_PER_TENSOR
    return n_shards * n_states * per_replicate


def lora_recomputed_states(n_blocks: int, settings: Mapping[str, Any]) -> int:
    """Hidden states the post-LoRA statistics hold: the outputs of the adapted blocks from the
    first one on (every state when all blocks are adapted)."""
    if settings.get("layers_to_transform"):
        return n_blocks - min(int(b) for b in settings["layers_to_transform"])
    if settings.get("top_blocks"):
        return min(int(settings["top_blocks"]), n_blocks)
    return n_blocks + 1


#: Above this many bytes (float32) per split LoRA recomputes the inputs of its first adapted block
#: per batch instead of keeping them (ntps.lora.inputs.STATE_CACHE_MAX_BYTES), and the extraction
#: keeps none.
BLOCK_INPUTS_MAX_BYTES = 4 * 2**30


def has_frozen_lower_blocks(settings: Mapping[str, Any], n_blocks: int) -> bool:
    """Whether LoRA ``settings`` (a config mapping) adapt no block below some block s > 0: then the
    inputs of block s are computed once per text (ntps.lora.settings.first_adapted_block)."""
    if settings.get("top_blocks"):
        return int(settings["top_blocks"]) < n_blocks
    layers = settings.get("layers_to_transform")
    return bool(layers) and min(layers) > 0


def block_inputs_bytes(hidden_size: int, split_tokens: Mapping[str, int]) -> int:
    """float32 states (4 d bytes per token) of the splits' tokens (``split_tokens``: split -> tokens;
    the offsets, 8 bytes per text, are left out); 0 when a split is above
    :data:`BLOCK_INPUTS_MAX_BYTES` (then none are kept)."""
    states = {split: 4 * hidden_size * int(n) for split, n in split_tokens.items()}
    if any(size > BLOCK_INPUTS_MAX_BYTES for size in states.values()):
        return 0
    return sum(states.values())
