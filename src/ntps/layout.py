"""The on-disk layout of a study's per-pair files: tensor keys, metadata keys, per-pair JSONs.

Every writer and reader of these files names its keys here, so a key is spelled once:

- statistics (``stats.safetensors``, ``stats_post_lora.safetensors``): per hidden state
  ``layer{l}.{sum}`` (:func:`statistics_key`; a symmetric sum stored compactly under
  ``layer{l}.{sum}.triu``, :data:`PACKED_SUFFIX`) and study-wide counts without a dot;
- jackknife shards (``stats_shards.safetensors``): the same keys of shard ``j`` under
  :func:`shard_prefix` and their number under :data:`N_SHARDS_KEY`;
- jackknife replicates (``scores/{model}/{dataset}.jackknife.safetensors``): each
  leave-one-shard-out replicate of each hidden state reduced to its scores at every k
  (:func:`replicate_key`; ranks, ``reg``, ``pairs``, ``paper`` of
  :class:`ntps.scores.ReplicateCurves`), their number under :data:`N_SHARDS_KEY` and the scoring
  settings they were made with under :data:`JACKKNIFE_SETTINGS_KEY` (metadata);
- features (``features.safetensors``): :func:`feature_key` and :func:`labels_key` per split;
- extraction shards (``shards/{i}-of-{S}.safetensors``): the features and labels of the part's
  texts with their positions (:func:`index_key`), the statistics of each jackknife shard the
  part fed under :func:`part_statistics_prefix`, the train texts' jackknife shards
  (:data:`JACKKNIFE_KEY`) and the part's record in the metadata (:data:`PART_RECORD_KEY`);
- the inputs of LoRA's first adapted block kept by the extraction
  (``block_inputs.safetensors``): :func:`block_states_key`, :func:`block_offsets_key` per split and
  :func:`block_inputs_metadata`;
- the probe head (``probes/{model}/{dataset}.head.safetensors``): :data:`HEAD_WEIGHT_KEY`,
  :data:`HEAD_BIAS_KEY`, :data:`HEAD_TEST_PREDICTIONS_KEY`;
- the metadata extraction writes into its tensor files (:func:`tensor_metadata`) and the
  provenance every later job reads back from it (:func:`input_provenance`);
- per-pair JSONs name their model and dataset (:func:`write_pair_json`, :func:`pair_of`); a
  predictors JSON times NTPS under :data:`NTPS`.

The numbers stored under the keys are the business of :mod:`ntps.stats` (statistics, the one
reader of stored statistics) and of the job bodies in :mod:`ntps.stages`. Light: no torch, no
numpy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ntps.io import write_json

# --- features ---------------------------------------------------------------------------------


def feature_key(split: str, layer: int) -> str:
    """Pooled features (N, d) of hidden state ``layer`` of the texts of ``split``."""
    return f"{split}.layer{layer}"


def labels_key(split: str) -> str:
    """Labels (N,) int64 of the texts of ``split``, in the rows' order."""
    return f"{split}.labels"


def index_key(split: str) -> str:
    """In an extraction shard: positions (n,) int64 in ``split`` of the part's rows."""
    return f"{split}.index"


def n_feature_layers(keys: Iterable[str], split: str = "train") -> int:
    """Number of hidden states with features of ``split`` among ``keys``."""
    pattern = re.compile(re.escape(f"{split}.layer") + r"\d+")
    return sum(1 for key in keys if pattern.fullmatch(key))


#: In an extraction shard: the jackknife shard (n,) int64 of each of the part's train texts.
JACKKNIFE_KEY = "train.jackknife"

# --- statistics and their jackknife shards ----------------------------------------------------

#: ``layer{l}.{name}``: the sum ``name`` of hidden state ``l`` (groups: layer index, sum name).
STATISTICS_KEY_RE = re.compile(r"^layer(\d+)\.(\w+)$")
#: A symmetric sum stored compactly (its upper triangle) is stored under its key plus this.
PACKED_SUFFIX = ".triu"
#: Number of jackknife shards (a (1,) int64 tensor) in a shards file.
N_SHARDS_KEY = "n_shards"


def statistics_prefix(layer: int) -> str:
    """Prefix of every statistics key of hidden state ``layer``."""
    return f"layer{layer}."


def is_count_key(key: str) -> bool:
    """Whether a statistics key holds a count shared by all hidden states (``n_examples``,
    ``label_counts``, ...): those have no dot."""
    return "." not in key


def statistics_key(layer: int, name: str) -> str:
    """The sum ``name`` (``cxx_sum``, ...) of hidden state ``layer``."""
    return statistics_prefix(layer) + name


def shard_prefix(j: int) -> str:
    """Prefix of jackknife shard ``j``'s statistics keys in a shards file."""
    return f"shard{j}."


def replicate_key(layer: int, j: int, name: str) -> str:
    """Jackknife replicate ``j`` (all texts but shard ``j``) of hidden state ``layer``: field
    ``name`` (``ranks``, ``reg``, ``pairs``, ``paper``) of its :class:`ntps.scores.ReplicateCurves`."""
    return f"layer{layer}.jk{j}.{name}"


#: Metadata key of a jackknife replicates file: the scoring settings (JSON) it was made with.
JACKKNIFE_SETTINGS_KEY = "jackknife_settings"


def part_statistics_prefix(j: int) -> str:
    """Prefix of the statistics of jackknife shard ``j`` (0 without jackknife) that an extraction
    shard fed."""
    return f"jk{j}."


#: Safetensors metadata key of an extraction shard's record (JSON).
PART_RECORD_KEY = "extraction_shard"

# --- the inputs of LoRA's first adapted block (block_inputs.safetensors) ----------------------


def block_states_key(split: str) -> str:
    """Hidden states (n_tokens, d) entering LoRA's first adapted block of every real token of
    ``split``, texts in table order, each text's tokens in order."""
    return f"{split}.states"


def block_offsets_key(split: str) -> str:
    """Offsets (N + 1,) int64 into :func:`block_states_key`: text i is rows ``o[i]:o[i+1]``."""
    return f"{split}.offsets"


#: Metadata of block_inputs.safetensors: the hidden-state index kept ("" when none is kept), why
#: none is kept, and what the states depend on besides the dataset and the model: the token
#: limit, the prompt format, the batches (JSON: batch size, jackknife shards and seed), the dtype
#: and the device type they were computed in.
BLOCK_STATE_KEY = "state"
BLOCK_REASON_KEY = "no_states_because"
BLOCK_LIMIT_KEY = "max_length"
BLOCK_PROMPT_FORMAT_KEY = "prompt_format"
BLOCK_DTYPE_KEY = "dtype"
BLOCK_DEVICE_KEY = "device_type"
BLOCK_BATCHING_KEY = "batching"


def block_inputs_metadata(
    state: int | None,
    reason: str,
    *,
    limit: int,
    prompt_format: str,
    batching: str,
    dtype: str,
    device_type: str,
    fingerprint: str,
    model_provenance: Any,
) -> dict[str, str]:
    """The metadata of block_inputs.safetensors: hidden state ``state`` (None: the file holds no
    states, ``reason`` says why) and everything a reader must match to use them."""
    return {
        BLOCK_STATE_KEY: "" if state is None else str(state),
        BLOCK_REASON_KEY: "" if state is not None else reason,
        BLOCK_LIMIT_KEY: str(limit),
        BLOCK_PROMPT_FORMAT_KEY: prompt_format,
        BLOCK_BATCHING_KEY: batching,
        BLOCK_DTYPE_KEY: dtype,
        BLOCK_DEVICE_KEY: device_type,
        DATASET_FINGERPRINT_KEY: fingerprint,
        MODEL_PROVENANCE_KEY: json.dumps(model_provenance, sort_keys=True),
    }


# --- the probe head ---------------------------------------------------------------------------

#: The last layer's logistic probe folded onto the raw pooled features: weight (c, d) float32,
#: bias (c,) float32, and its predictions on the test split (n_test,) int64.
HEAD_WEIGHT_KEY = "weight"
HEAD_BIAS_KEY = "bias"
HEAD_TEST_PREDICTIONS_KEY = "test_predictions"

# --- tensor metadata --------------------------------------------------------------------------

N_LAYERS_KEY = "n_layers"
#: Post-LoRA statistics: the first hidden state they hold (the states below are the pre-LoRA ones).
FIRST_RECOMPUTED_STATE_KEY = "first_recomputed_state"
N_CLASSES_KEY = "n_classes"
DATASET_FINGERPRINT_KEY = "dataset_fingerprint"
MODEL_PROVENANCE_KEY = "model_provenance"


def tensor_metadata(
    n_layers: int, n_classes: int, fingerprint: str, model_provenance: Any
) -> dict[str, str]:
    """The metadata of extraction's tensor files: shape, and the data and model they came from,
    so that score and probe outputs name their inputs without another input file."""
    return {
        N_LAYERS_KEY: str(n_layers),
        N_CLASSES_KEY: str(n_classes),
        DATASET_FINGERPRINT_KEY: fingerprint,
        MODEL_PROVENANCE_KEY: json.dumps(model_provenance, sort_keys=True),
    }


def input_provenance(meta: Mapping[str, str]) -> dict[str, Any]:
    """Dataset fingerprint and model provenance recorded by extraction in the tensors' metadata."""
    out: dict[str, Any] = {}
    if DATASET_FINGERPRINT_KEY in meta:
        out[DATASET_FINGERPRINT_KEY] = meta[DATASET_FINGERPRINT_KEY]
    if MODEL_PROVENANCE_KEY in meta:
        out[MODEL_PROVENANCE_KEY] = json.loads(meta[MODEL_PROVENANCE_KEY])
    return out


# --- per-pair JSONs ---------------------------------------------------------------------------


def write_pair_json(path: str | Path, model: str, dataset: str, payload: dict[str, Any]) -> None:
    """A per-pair JSON (scores, probes, predictors, LoRA metrics): ``payload`` with its pair."""
    write_json(path, {"model": model, "dataset": dataset, **payload})


#: NTPS's name beside the predictors' names: the key of its compute time in a predictors JSON's
#: ``seconds`` (the predictors job times it), and its rows in the predictors tables.
NTPS = "ntps"


def pair_of(record: Mapping[str, Any]) -> tuple[str, str]:
    """(model, dataset) of a per-pair JSON written by :func:`write_pair_json`."""
    return str(record["model"]), str(record["dataset"])
