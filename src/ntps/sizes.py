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
