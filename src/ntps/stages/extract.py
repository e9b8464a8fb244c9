"""Job body of the extraction (rules/extract.smk): one forward pass over a pair's texts, in one
job (:func:`extract_pair`) or in S extraction shards (:func:`extract_part`) merged into the same
files (:func:`merge_extract_parts`).

The outputs (statistics, their jackknife shards, pooled features, extract.json, and for the LoRA
job the inputs of its first adapted block) are laid out as :mod:`ntps.layout` says; the statistics
are :mod:`ntps.stats` accumulators.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from ntps.errors import DatasetError, NTPSError
from ntps.io import load_tensor_metadata, provenance, read_json, save_tensors, write_json
from ntps.layout import (
    DATASET_FINGERPRINT_KEY,
    JACKKNIFE_KEY,
    N_CLASSES_KEY,
    N_LAYERS_KEY,
    PART_RECORD_KEY,
    block_inputs_metadata,
    block_offsets_key,
    block_states_key,
    feature_key,
    index_key,
    labels_key,
    n_feature_layers,
    part_statistics_prefix,
    tensor_metadata,
)
from ntps.regime import regime, regime_warning
from ntps.stats import (
    StatisticsAccumulator,
    check_partition,
    merge_parts,
    shard_assignment,
    shards_to_tensors,
)

LOG = logging.getLogger("ntps")


def extract_pair(
    model_dir: str | Path,
    table_path: str | Path,
    dataset_record_path: str | Path,
    settings: Mapping[str, Any],
    out_stats: str | Path,
    out_features: str | Path,
    out_record: str | Path,
    model_record_path: str | Path | None = None,
    splits: Sequence[str] = ("train", "test"),
    out_shards: str | Path | None = None,
    model_name: str | None = None,
    lora: Mapping[str, Any] | None = None,
    out_block_inputs: str | Path | None = None,
) -> dict[str, Any]:
    """Forward pass over train (statistics + pooled features) and test (pooled features).

    ``settings["jackknife_shards"]`` >= 2 also writes the statistics of that many disjoint random
    shards of the train texts to ``out_shards`` (an empty set of shards otherwise). ``model_name``
    names the model in messages (default: the folder's name).

    ``out_block_inputs`` receives, when ``lora`` (the pair's LoRA settings; None when it gets no
    LoRA) leaves frozen blocks below the first adapted one, every token's hidden state entering
    that block, which the LoRA job then reads instead of running the lower blocks again; else a
    file with no states that says why.
    """
    run = _run_extraction(
        model_dir, table_path, dataset_record_path, settings, splits, model_name, (0, 1),
        model_record_path, lora=lora,
    )  # fmt: skip
    train = run.results["train"]
    assert train.statistics is not None
    model_record = read_json(model_record_path) if model_record_path else None
    if out_block_inputs is not None:
        _write_block_inputs(out_block_inputs, run, settings, model_record)
    return _write_extraction(
        train.statistics,
        train.shards or [],
        run.features,
        n_classes=run.n_classes,
        fingerprint=run.fingerprint,
        model_record=model_record,
        record={
            "device": str(run.device),
            "dtype": str(run.dtype).replace("torch.", ""),
            "settings": {k: v for k, v in settings.items() if k != "progress"},
            "load_seconds": run.load_seconds,
            "splits": {split: result.summary() for split, result in run.results.items()},
        },
        out_stats=out_stats,
        out_shards=out_shards,
        out_features=out_features,
        out_record=out_record,
    )


@dataclass
class _Extraction:
    """What one extraction job (the whole pair or one extraction shard) computed."""

    results: dict[str, Any]  # split -> ntps.extract.ExtractionResult
    features: dict[str, Any]  # feature_key(split, layer), labels_key(split) -> tensors
    n_classes: int
    fingerprint: str
    device: Any
    dtype: Any
    load_seconds: float
    #: The hidden state kept for LoRA (None: none, ``block_reason`` says why).
    block_state: int | None = None
    block_reason: str = ""


def _run_extraction(
    model_dir: str | Path,
    table_path: str | Path,
    dataset_record_path: str | Path,
    settings: Mapping[str, Any],
    splits: Sequence[str],
    model_name: str | None,
    part: tuple[int, int],
    model_record_path: str | Path | None = None,
    *,
    lora: Mapping[str, Any] | None = None,
) -> _Extraction:
    """Load the prepared table and the model, and extract ``splits`` (all of each, or one part).
    The acquisition record (``model_record_path``) gives the model's load options; ``lora`` (the
    pair's LoRA settings) which hidden state to keep for the LoRA job."""
    # Only the jobs that run the model need these (pandas and the model loaders, ~0.7 s of
    # imports): the merge job of the same rule file imports this module without them.
    from ntps.datasets import load_prepared
    from ntps.extract import extract_features
    from ntps.lora.inputs import STATE_CACHE_MAX_BYTES
    from ntps.models import load_for_inference, resolve_device, resolve_dtype
    from ntps.text import check_prompt_format

    # Checked against dataset.json's fingerprint: a table changed after preparation fails here.
    prepared = load_prepared(table_path, dataset_record_path)
    table = prepared.frame
    n_classes = len(prepared.label_names)
    n_shards = int(settings.get("jackknife_shards", 0))
    n_train = int((table["split"] == "train").sum())
    if n_shards >= 2 and n_train < 2 * n_shards:
        # Before the model is loaded: nothing expensive has run yet.
        raise DatasetError(
            f"dataset {prepared.name!r} has {n_train} training texts, "
            f"too few for uncertainty.jackknife_shards = {n_shards} (at least two texts per "
            "shard); lower it, or set it to 0 to skip the standard errors"
        )
    n_parts = part[1]
    batch_size = int(settings["batch_size"])
    for split in splits if n_parts > 1 else ():
        n_split = int((table["split"] == split).sum())
        # Each split makes at least ceil(n / batch_size) batches: enough for one per part.
        if -(-n_split // batch_size) < n_parts:
            raise DatasetError(
                f"dataset {prepared.name!r}: {n_split} {split} texts in batches of {batch_size} "
                f"(model {model_name or Path(model_dir).name!r}) are too few for "
                f"{n_parts} extraction shards (extraction.shards or the dataset's "
                "extraction_shards); lower it"
            )
    device = resolve_device(settings.get("device", "auto"))
    dtype = resolve_dtype(settings.get("dtype", "auto"), device)
    model_name = model_name or Path(model_dir).name
    # The acquisition record carries the model's source, hence its load options (remote code).
    model_record = read_json(model_record_path) if model_record_path else None
    started = time.perf_counter()
    base_model, tokenizer = load_for_inference(
        model_dir, dtype=dtype, device=device, source=model_record, name=model_name
    )
    load_seconds = time.perf_counter() - started
    LOG.info("loaded model from %s on %s (%s) in %.1f s", model_dir, device, dtype, load_seconds)
    prompt_format = str(settings.get("prompt_format", "raw"))
    check_prompt_format(tokenizer, prompt_format, model_name)
    block_state, block_reason = block_input_state(lora, settings, base_model, dtype)

    features: dict[str, torch.Tensor] = {}
    results: dict[str, Any] = {}
    for split in splits:
        rows = table[table["split"] == split]
        labels = rows["label"].to_numpy(dtype=np.int64)
        result = extract_features(
            base_model,
            tokenizer,
            rows["text"].tolist(),
            labels.tolist(),
            n_classes,
            batch_size=batch_size,
            max_length=int(settings["max_length"]),
            accumulate_statistics=(split == "train"),
            device=device,
            progress=bool(settings.get("progress", True)),
            prompt_format=prompt_format,
            n_shards=n_shards if split == "train" else 0,
            shard_seed=int(settings.get("jackknife_seed", 0)),
            name=model_name,
            part=part,
            keep_state=block_state,
            keep_state_max_bytes=STATE_CACHE_MAX_BYTES,
        )
        for layer in range(result.pooled.shape[0]):
            features[feature_key(split, layer)] = result.pooled[layer]
        if result.indices is not None:
            labels = labels[result.indices]
            features[index_key(split)] = torch.tensor(result.indices, dtype=torch.int64)
        features[labels_key(split)] = torch.from_numpy(labels.copy())
        results[split] = result
        LOG.info("%s: %s", split, result.summary())
    return _Extraction(
        results, features, n_classes, prepared.fingerprint, device, dtype, load_seconds,
        block_state, block_reason,
    )  # fmt: skip


def extraction_batching(settings: Mapping[str, Any]) -> dict[str, int]:
    """What decides the extraction's batches (:func:`ntps.extract.plan_batches`): the LoRA job
    runs its frozen lower blocks in the same batches (:func:`ntps.lora.inputs.extraction_batches`),
    so their outputs are the extraction's bit for bit."""
    return {
        "batch_size": int(settings["batch_size"]),
        "jackknife_shards": int(settings.get("jackknife_shards", 0)),
        "jackknife_seed": int(settings.get("jackknife_seed", 0)),
    }


def block_input_state(
    lora: Mapping[str, Any] | None, settings: Mapping[str, Any], model: Any, dtype: Any
) -> tuple[int | None, str]:
    """The hidden state entering LoRA's first adapted block, as the LoRA job will compute it
    (:func:`ntps.lora.settings.first_adapted_block` on the model's block count), or None and why
    the LoRA job could not use it."""
    from ntps.blocks import block_count
    from ntps.lora.settings import LoRASettings, first_adapted_block

    if lora is None:
        return None, "the pair gets no LoRA"
    if dtype != torch.float32:
        return None, f"extracted in {dtype}, LoRA runs the model in float32"
    lora_settings = LoRASettings.from_dict(dict(lora))
    if lora_settings.max_length not in (None, int(settings["max_length"])):
        return None, (
            f"LoRA cuts texts at {lora_settings.max_length} tokens, the extraction at "
            f"{settings['max_length']}"
        )
    start = first_adapted_block(lora_settings, block_count(model))
    if start is None:
        return None, "LoRA adapts block 0 (or every block): no frozen lower blocks"
    return start, ""


def _write_block_inputs(
    path: str | Path, run: _Extraction, settings: Mapping[str, Any], model_record: Any
) -> None:
    """block_inputs.safetensors: the kept hidden state of every split, or no states and why."""
    from ntps.lora.inputs import STATE_CACHE_MAX_BYTES, batching_metadata

    state, reason = run.block_state, run.block_reason
    tensors: dict[str, torch.Tensor] = {}
    for split, result in run.results.items():
        if state is not None and result.block_states is None:
            state = None
            reason = (
                f"the {split} split's states exceed {STATE_CACHE_MAX_BYTES} bytes, above which "
                "LoRA recomputes them for every batch"
            )
        if state is not None:
            tensors[block_states_key(split)] = result.block_states
            tensors[block_offsets_key(split)] = result.block_offsets
    if state is None:
        tensors = {}
    meta = block_inputs_metadata(
        state,
        reason,
        limit=run.results["train"].max_length,
        prompt_format=str(settings.get("prompt_format", "raw")),
        batching=batching_metadata(extraction_batching(settings)),
        dtype=str(run.dtype).replace("torch.", ""),
        device_type=torch.device(run.device).type,
        fingerprint=run.fingerprint,
        model_provenance=model_record.get("provenance") if model_record else None,
    )
    save_tensors(path, tensors, meta)
    n_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    for result in run.results.values():  # written: not held while the statistics are written
        result.block_states = result.block_offsets = None
    del tensors
    if state is None:
        LOG.info("no hidden states kept for LoRA: %s", reason)
    else:
        LOG.info("kept hidden state %d of every token for LoRA (%.1f MB)", state, n_bytes / 1e6)


def _write_extraction(
    accumulator: Any,
    shards: Sequence[Any],
    features: Mapping[str, Any],
    *,
    n_classes: int,
    fingerprint: str,
    model_record: Mapping[str, Any] | None,
    record: Mapping[str, Any],
    out_stats: str | Path,
    out_shards: str | Path | None,
    out_features: str | Path,
    out_record: str | Path,
) -> dict[str, Any]:
    """Write the four outputs of a pair's extraction (one job, or the merge of its shards)."""
    n_layers = n_feature_layers(features, "train")
    hidden_size = int(features[feature_key("train", 0)].shape[1])
    diagnostics = regime_diagnostics(accumulator, hidden_size)
    if diagnostics["warning"]:
        LOG.warning("REGIME: %s", diagnostics["warning"])
    meta = tensor_metadata(
        n_layers, n_classes, fingerprint, model_record.get("provenance") if model_record else None
    )
    # storage.compact_statistics (in the job's settings): Cxx and S0 as upper triangles, read back
    # transparently.
    compact = bool(record["settings"].get("compact_statistics", False))
    save_tensors(out_stats, accumulator.to_tensors(compact=compact), meta)
    if out_shards is not None:
        save_tensors(out_shards, shards_to_tensors(shards, compact=compact), meta)
    save_tensors(out_features, features, meta)
    full_record = {
        "n_layers": n_layers,
        "hidden_size": hidden_size,
        "n_classes": n_classes,
        **diagnostics,
        **record,
        "dataset_fingerprint": fingerprint,
        "model": model_record,
        "provenance": provenance(),
    }
    write_json(out_record, full_record)
    return full_record


# --- extraction in shards: one job per part of the batch plan, then a merge ------------------


def extract_part(
    model_dir: str | Path,
    table_path: str | Path,
    dataset_record_path: str | Path,
    settings: Mapping[str, Any],
    part: tuple[int, int],
    out_part: str | Path,
    model_record_path: str | Path | None = None,
    splits: Sequence[str] = ("train", "test"),
    model_name: str | None = None,
) -> dict[str, Any]:
    """One extraction shard: part ``part = (index, count)`` of every split, into one file.

    Every part plans the same batches as :func:`extract_pair` (the plan depends only on token
    lengths and the jackknife assignment of the whole train split) and runs its own cost-balanced
    range of them (:func:`ntps.extract.extract_features`). ``out_part`` (safetensors, written
    atomically: a killed job leaves no file) holds the part's pooled features and labels with
    their positions in the split (``{split}.index``), the float64 statistics of each jackknife
    shard it fed (``jk{j}.layer{l}.*``; ``jk0`` without jackknife), the jackknife shard of each
    train text (``train.jackknife``), and in its metadata the provenance record: model,
    dataset fingerprint, settings, part index/count and batch ranges. Returns that record.
    """
    index, count = part
    if not 0 <= index < count or count < 2:
        raise ValueError(
            f"extraction shard {index} of {count} does not exist (at least 2 shards; "
            "extract_pair extracts a pair in one job)"
        )
    run = _run_extraction(
        model_dir, table_path, dataset_record_path, settings, splits, model_name, part,
        model_record_path,
    )  # fmt: skip
    tensors = dict(run.features)
    train = run.results["train"]
    n_jackknife = int(settings.get("jackknife_shards", 0))
    fed = [j for j, acc in enumerate(train.shards or []) if acc.n_texts > 0]
    for j in fed:
        for key, value in train.shards[j].to_tensors().items():
            tensors[part_statistics_prefix(j) + key] = value
    if n_jackknife >= 2:
        n_train = train.n_texts_split
        assignment = torch.tensor(
            shard_assignment(n_train, n_jackknife, int(settings.get("jackknife_seed", 0)))
        )
        tensors[JACKKNIFE_KEY] = assignment[tensors[index_key("train")]]
    model_record = read_json(model_record_path) if model_record_path else None
    record = {
        "part": index,
        "parts": count,
        "jackknife_shards_fed": fed,
        "device": str(run.device),
        "dtype": str(run.dtype).replace("torch.", ""),
        "settings": {k: v for k, v in settings.items() if k != "progress"},
        "load_seconds": run.load_seconds,
        "splits": {
            split: {
                **result.summary(),
                "n_texts_split": result.n_texts_split,
                "batch_range": list(result.batch_range),
                "n_batches_split": result.n_batches_total,
            }
            for split, result in run.results.items()
        },
        "dataset_fingerprint": run.fingerprint,
        "model_provenance": model_record.get("provenance") if model_record else None,
        "provenance": provenance(),
    }
    meta = {
        N_LAYERS_KEY: str(train.pooled.shape[0]),
        N_CLASSES_KEY: str(run.n_classes),
        DATASET_FINGERPRINT_KEY: run.fingerprint,
        PART_RECORD_KEY: json.dumps(record, sort_keys=True),
    }
    save_tensors(out_part, tensors, meta)
    LOG.info(
        "extraction shard %d of %d: %s",
        index, count, {s: r["batch_range"] for s, r in record["splits"].items()},
    )  # fmt: skip
    return record


class _PrefixedTensors(Mapping[str, Any]):
    """The tensors of a safetensors handle under ``prefix``, without it, read on access."""

    def __init__(self, handle: Any, prefix: str) -> None:
        self._handle, self._prefix = handle, prefix
        self._keys = [k[len(prefix) :] for k in handle.keys() if k.startswith(prefix)]
        self._known = set(self._keys)

    def __getitem__(self, key: str) -> Any:
        if key not in self._known:
            raise KeyError(key)
        return self._handle.get_tensor(self._prefix + key)

    def __iter__(self) -> Any:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def merge_extract_parts(
    part_paths: Sequence[str | Path],
    dataset_record_path: str | Path,
    settings: Mapping[str, Any],
    out_stats: str | Path,
    out_features: str | Path,
    out_record: str | Path,
    model_record_path: str | Path | None = None,
    out_shards: str | Path | None = None,
    pair: str = "this pair",
    out_block_inputs: str | Path | None = None,
) -> dict[str, Any]:
    """Combine a pair's extraction shards into the outputs of :func:`extract_pair`.

    Checks first that the parts are the ``0..S-1`` of S, made from the current dataset
    (fingerprint in ``dataset_record_path``), the current model (provenance in
    ``model_record_path``) and the current ``settings``, with one dtype, and that they cover every
    text of every split exactly once with the global jackknife assignment (NTPSError naming
    ``pair`` and the offending part otherwise). Then features are put back in table order
    (identical to one job's) and statistics summed per jackknife shard
    (:func:`ntps.stats.merge_parts`). ``extract.json`` adds ``extraction_shards``: each part's
    device, batch ranges, times and provenance. ``out_block_inputs`` gets a file with no states:
    extraction shards keep none, and the LoRA job computes them itself.
    """
    settings = {k: v for k, v in settings.items() if k != "progress"}
    records = []
    for path in part_paths:
        meta = load_tensor_metadata(path)
        if PART_RECORD_KEY not in meta:
            raise NTPSError(f"{pair}: {str(path)!r} is not an extraction shard (no record)")
        records.append(json.loads(meta[PART_RECORD_KEY]))
    count = len(part_paths)
    found = [(r["part"], r["parts"]) for r in records]
    if found != [(i, count) for i in range(count)]:
        raise NTPSError(
            f"{pair}: expected extraction shards 0..{count - 1} of {count} in order, got "
            f"(index, count) {found}"
        )
    dataset_record = read_json(dataset_record_path)
    model_record = read_json(model_record_path) if model_record_path else None
    expected = {
        "dataset_fingerprint": dataset_record["fingerprint"],
        "settings": settings,
        "dtype": records[0]["dtype"],
    }
    if model_record_path:
        expected["model_provenance"] = model_record.get("provenance") if model_record else None
    for record in records:
        for key, want in expected.items():
            if record.get(key) != want:
                raise NTPSError(
                    f"{pair}: extraction shard {record['part']} of {count} has {key} "
                    f"{record.get(key)!r}, expected {want!r} (from "
                    f"{'the first shard' if key == 'dtype' else 'the current inputs'}); "
                    "delete the stale shard files and re-run"
                )
    splits = list(records[0]["splits"])
    for split in splits:
        for name in ("n_texts_split", "n_batches_split", "max_length", "n_truncated"):
            values = {r["splits"][split][name] for r in records}
            if len(values) != 1:
                raise NTPSError(f"{pair}: extraction shards disagree on {split} {name}: {values}")

    n_layers = int(load_tensor_metadata(part_paths[0])[N_LAYERS_KEY])
    n_jackknife = int(settings.get("jackknife_shards", 0))
    features: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(p), framework="pt")) for p in part_paths]
        for split in splits:
            n = records[0]["splits"][split]["n_texts_split"]
            indices = [h.get_tensor(index_key(split)) for h in handles]
            check_partition([i.tolist() for i in indices], n, f"{pair}: {split} texts")
            if split == "train" and n_jackknife >= 2:
                want = torch.tensor(
                    shard_assignment(n, n_jackknife, int(settings.get("jackknife_seed", 0)))
                )
                for number, (h, idx) in enumerate(zip(handles, indices, strict=True)):
                    if not torch.equal(h.get_tensor(JACKKNIFE_KEY), want[idx]):
                        raise NTPSError(
                            f"{pair}: extraction shard {number} assigned its train texts to "
                            "other jackknife shards than the whole split's assignment"
                        )
            for layer in range(n_layers):
                key = feature_key(split, layer)
                rows = [h.get_tensor(key) for h in handles]
                out = torch.empty(n, rows[0].shape[1], dtype=rows[0].dtype)
                for idx, part_rows in zip(indices, rows, strict=True):
                    out[idx] = part_rows
                features[key] = out
            labels = torch.empty(n, dtype=torch.int64)
            for h, idx in zip(handles, indices, strict=True):
                labels[idx] = h.get_tensor(labels_key(split))
            features[labels_key(split)] = labels

        def parts():  # one accumulator read at a time, layer by layer, beside the running sums
            for h, record in zip(handles, records, strict=True):
                for j in record["jackknife_shards_fed"]:
                    lazy = _PrefixedTensors(h, part_statistics_prefix(j))
                    yield {j: StatisticsAccumulator.from_tensors(lazy)}

        total, shards = merge_parts(parts(), n_jackknife)
    if n_jackknife >= 2:
        sizes = torch.bincount(want, minlength=n_jackknife).tolist()
        got = [shard.n_texts for shard in shards]
        if got != sizes:
            raise NTPSError(
                f"{pair}: jackknife shard sizes {got} after the merge, expected {sizes}"
            )

    split_records = {}
    for split in splits:
        parts_of_split = [r["splits"][split] for r in records]
        first = parts_of_split[0]
        seconds = sum(p["seconds"] for p in parts_of_split)
        n_tokens = sum(p["n_tokens"] for p in parts_of_split)
        split_records[split] = {
            "n_texts": sum(p["n_texts"] for p in parts_of_split),
            "n_tokens": n_tokens,
            "n_truncated": first["n_truncated"],
            "n_batches": sum(p["n_batches"] for p in parts_of_split),
            "max_length": first["max_length"],
            "n_layers": first["n_layers"],
            "hidden_size": first["hidden_size"],
            "seconds": round(seconds, 3),
            "tokens_per_second": round(n_tokens / seconds, 1) if seconds > 0 else None,
        }
    devices = sorted({r["device"] for r in records})
    if out_block_inputs is not None:
        meta = block_inputs_metadata(
            None,
            f"extracted in {count} extraction shards, which keep no hidden states",
            limit=int(records[0]["splits"]["train"]["max_length"]),
            prompt_format=str(settings.get("prompt_format", "raw")),
            batching=json.dumps(extraction_batching(settings), sort_keys=True),
            dtype=records[0]["dtype"],
            device_type=",".join(sorted({torch.device(d).type for d in devices})),
            fingerprint=dataset_record["fingerprint"],
            model_provenance=model_record.get("provenance") if model_record else None,
        )
        save_tensors(out_block_inputs, {}, meta)
    return _write_extraction(
        total,
        shards,
        features,
        n_classes=int(load_tensor_metadata(part_paths[0])[N_CLASSES_KEY]),
        fingerprint=dataset_record["fingerprint"],
        model_record=model_record,
        record={
            "device": ",".join(devices),
            "dtype": records[0]["dtype"],
            "settings": settings,
            "load_seconds": sum(r["load_seconds"] for r in records),
            "splits": split_records,
            "extraction_shards": {
                "count": count,
                "parts": [
                    {
                        key: r[key]
                        for key in ("part", "device", "load_seconds", "splits", "provenance")
                    }
                    for r in records
                ],
            },
        },
        out_stats=out_stats,
        out_shards=out_shards,
        out_features=out_features,
        out_record=out_record,
    )


def regime_diagnostics(accumulator: Any, hidden_size: int) -> dict[str, Any]:
    """N_train, d, the numerical rank of Cxx per hidden state, the regime and its warning."""
    n_train = int(accumulator.n_examples)
    ranks = [
        int(torch.linalg.matrix_rank(accumulator.cxx_sum[layer], hermitian=True))
        for layer in range(accumulator.n_layers)
    ]
    return {
        "n_train": n_train,
        "cxx_rank": ranks,
        "regime": regime(n_train, hidden_size),
        "warning": regime_warning(n_train, hidden_size),
    }
