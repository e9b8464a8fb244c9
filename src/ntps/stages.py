"""Job bodies of the per-pair stages: extraction, scoring, probes, LoRA.

Each function reads one (model, dataset) pair's inputs, calls the maths and writes or returns what
the job's script writes, so every stage can also be run (and tested) from Python without Snakemake.
Study-level tables (across pairs) are in :mod:`ntps.tables`; the predictors stage is in
:mod:`ntps.predictors`.
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

from ntps.io import (
    load_tensor_metadata,
    load_tensors,
    provenance,
    read_json,
    save_tensors,
    write_json,
)

LOG = logging.getLogger("ntps")


# --- extraction -----------------------------------------------------------------------------


def feature_key(split: str, layer: int) -> str:
    return f"{split}.layer{layer}"


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
) -> dict[str, Any]:
    """Forward pass over train (statistics + pooled features) and test (pooled features).

    ``settings["jackknife_shards"]`` >= 2 also writes the statistics of that many disjoint random
    shards of the train texts to ``out_shards`` (an empty set of shards otherwise). ``model_name``
    names the model in messages (default: the folder's name).
    """
    run = _run_extraction(
        model_dir, table_path, dataset_record_path, settings, splits, model_name, (0, 1),
        model_record_path,
    )  # fmt: skip
    train = run.results["train"]
    assert train.statistics is not None
    return _write_extraction(
        train.statistics,
        train.shards or [],
        run.features,
        n_classes=run.n_classes,
        fingerprint=run.fingerprint,
        model_record=read_json(model_record_path) if model_record_path else None,
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
    features: dict[str, Any]  # feature_key(split, layer) and "{split}.labels" -> tensors
    n_classes: int
    fingerprint: str
    device: Any
    dtype: Any
    load_seconds: float


def _run_extraction(
    model_dir: str | Path,
    table_path: str | Path,
    dataset_record_path: str | Path,
    settings: Mapping[str, Any],
    splits: Sequence[str],
    model_name: str | None,
    part: tuple[int, int],
    model_record_path: str | Path | None = None,
) -> _Extraction:
    """Load the prepared table and the model, and extract ``splits`` (all of each, or one part).
    The acquisition record (``model_record_path``) gives the model's load options."""
    import torch

    from ntps.datasets import load_prepared
    from ntps.errors import DatasetError
    from ntps.extract import extract_features
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
        )
        for layer in range(result.pooled.shape[0]):
            features[feature_key(split, layer)] = result.pooled[layer]
        if result.indices is not None:
            labels = labels[result.indices]
            features[f"{split}.index"] = torch.tensor(result.indices, dtype=torch.int64)
        features[f"{split}.labels"] = torch.from_numpy(labels.copy())
        results[split] = result
        LOG.info("%s: %s", split, result.summary())
    return _Extraction(
        results, features, n_classes, prepared.fingerprint, device, dtype, load_seconds
    )


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
    n_layers = sum(1 for key in features if key.startswith("train.layer"))
    hidden_size = int(features[feature_key("train", 0)].shape[1])
    diagnostics = regime_diagnostics(accumulator, hidden_size)
    if diagnostics["warning"]:
        LOG.warning("REGIME: %s", diagnostics["warning"])
    # Carried in the tensors' metadata, so score and probe outputs name the data and model they
    # came from without another input file.
    meta = {
        "n_layers": str(n_layers),
        "n_classes": str(n_classes),
        "dataset_fingerprint": fingerprint,
        "model_provenance": json.dumps(
            model_record.get("provenance") if model_record else None, sort_keys=True
        ),
    }
    # storage.compact_statistics (in the job's settings): Cxx and S0 as upper triangles, read back
    # transparently.
    compact = bool(record["settings"].get("compact_statistics", False))
    save_tensors(out_stats, accumulator.to_tensors(compact=compact), meta)
    if out_shards is not None:
        from ntps.stats import shards_to_tensors

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

#: Safetensors metadata key of an extraction shard's record (JSON).
PART_RECORD_KEY = "extraction_shard"
_JACKKNIFE_PREFIX = "jk{}."


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
    import torch

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
            tensors[_JACKKNIFE_PREFIX.format(j) + key] = value
    if n_jackknife >= 2:
        from ntps.stats import shard_assignment

        n_train = train.n_texts_split
        assignment = torch.tensor(
            shard_assignment(n_train, n_jackknife, int(settings.get("jackknife_seed", 0)))
        )
        tensors["train.jackknife"] = assignment[tensors["train.index"]]
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
        "n_layers": str(train.pooled.shape[0]),
        "n_classes": str(run.n_classes),
        "dataset_fingerprint": run.fingerprint,
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
) -> dict[str, Any]:
    """Combine a pair's extraction shards into the outputs of :func:`extract_pair`.

    Checks first that the parts are the ``0..S-1`` of S, made from the current dataset
    (fingerprint in ``dataset_record_path``), the current model (provenance in
    ``model_record_path``) and the current ``settings``, with one dtype, and that they cover every
    text of every split exactly once with the global jackknife assignment (NTPSError naming
    ``pair`` and the offending part otherwise). Then features are put back in table order
    (identical to one job's) and statistics summed per jackknife shard
    (:func:`ntps.stats.merge_parts`). ``extract.json`` adds ``extraction_shards``: each part's
    device, batch ranges, times and provenance.
    """
    import torch
    from safetensors import safe_open

    from ntps.errors import NTPSError
    from ntps.stats import StatisticsAccumulator, check_partition, merge_parts, shard_assignment

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

    n_layers = int(load_tensor_metadata(part_paths[0])["n_layers"])
    n_jackknife = int(settings.get("jackknife_shards", 0))
    features: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(p), framework="pt")) for p in part_paths]
        for split in splits:
            n = records[0]["splits"][split]["n_texts_split"]
            indices = [h.get_tensor(f"{split}.index") for h in handles]
            check_partition([i.tolist() for i in indices], n, f"{pair}: {split} texts")
            if split == "train" and n_jackknife >= 2:
                want = torch.tensor(
                    shard_assignment(n, n_jackknife, int(settings.get("jackknife_seed", 0)))
                )
                for number, (h, idx) in enumerate(zip(handles, indices, strict=True)):
                    if not torch.equal(h.get_tensor("train.jackknife"), want[idx]):
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
                labels[idx] = h.get_tensor(f"{split}.labels")
            features[f"{split}.labels"] = labels

        def parts():  # one accumulator read at a time, layer by layer, beside the running sums
            for h, record in zip(handles, records, strict=True):
                for j in record["jackknife_shards_fed"]:
                    lazy = _PrefixedTensors(h, _JACKKNIFE_PREFIX.format(j))
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
    return _write_extraction(
        total,
        shards,
        features,
        n_classes=int(load_tensor_metadata(part_paths[0])["n_classes"]),
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
    import torch

    from ntps.regime import regime, regime_warning

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


def input_provenance(meta: Mapping[str, str]) -> dict[str, Any]:
    """Dataset fingerprint and model provenance recorded by extract_pair in the tensors' metadata."""
    out: dict[str, Any] = {}
    if "dataset_fingerprint" in meta:
        out["dataset_fingerprint"] = meta["dataset_fingerprint"]
    if "model_provenance" in meta:
        out["model_provenance"] = json.loads(meta["model_provenance"])
    return out


# --- scoring --------------------------------------------------------------------------------


class OneShard:
    """Shard ``j`` of a set of jackknife shards, seen as a set of one shard.

    ``jackknife_moments(total, OneShard(shards, j), layer)`` is ``[total - shard_j]``: the same
    arithmetic as the j-th element of ``jackknife_moments(total, shards, layer)``, without holding
    the other K - 1 replicates. ``shards`` is a dict or an open safetensors handle.
    """

    def __init__(self, shards: Any, j: int) -> None:
        self._get = shards.get_tensor if hasattr(shards, "get_tensor") else shards.__getitem__
        self._prefix = f"shard{j}."
        self._keys = {"n_shards"} | {
            "shard0." + key[len(self._prefix) :]
            for key in shards.keys()
            if key.startswith(self._prefix)
        }

    def keys(self) -> set[str]:
        return self._keys

    def get_tensor(self, key: str) -> Any:
        import torch

        if key == "n_shards":
            return torch.tensor([1], dtype=torch.int64)
        if key not in self._keys:
            raise KeyError(key)
        return self._get(self._prefix + key.removeprefix("shard0."))


#: The tensor fields of :class:`ntps.stats.LayerMoments`, moved to the scoring device.
_MOMENT_TENSORS = ("cxx", "cxy", "s0", "s1", "x_mean", "y_mean")


def scoring_device(spec: str | None = "auto") -> Any:
    """The torch device a scoring job runs on: ``auto`` = CUDA when the job sees a GPU, else CPU.

    ``spec`` is the config's ``extraction.device`` (one setting for every job that can use a GPU).
    ``cuda`` without a usable GPU raises :class:`ntps.errors.ConfigError` before any work.
    """
    import torch

    from ntps.errors import ConfigError
    from ntps.models import resolve_device

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
) -> list[dict[str, Any]]:
    """One layer's score records with their jackknife SEs (the body of :func:`score_pair`).

    ``tensors`` holds the layer's :meth:`ntps.stats.StatisticsAccumulator.to_tensors` keys and
    ``shards`` the :func:`ntps.stats.shards_to_tensors` keys (or None); either may be a dict or an
    open safetensors handle. The eigendecompositions run in float64 on ``device``; the released
    column (``released``, else NaN) always on the CPU, with scipy, as the authors ran it.
    """
    import dataclasses

    from ntps.scores import jackknife_se, ntps_forms, score_layer
    from ntps.stats import LayerMoments, jackknife_moments

    n_shards = 0
    if shards is not None:
        get = shards.get_tensor if hasattr(shards, "get_tensor") else shards.__getitem__
        n_shards = int(get("n_shards").reshape(-1)[0])
    moments = LayerMoments.from_tensors(tensors, layer, device=device)
    layer_records = score_layer(
        moments, k_grid, tol=eigen_cutoff, ridge=ridge, centered=centered, released=released
    )
    replicates = []
    if n_shards >= 2:
        for j in range(n_shards):
            # One replicate in memory at a time (K of them are K x the layer's statistics).
            (rep,) = jackknife_moments(tensors, OneShard(shards, j), layer)
            on_device = dataclasses.replace(
                rep, **{name: getattr(rep, name).to(device) for name in _MOMENT_TENSORS}
            )
            replicates.append(
                ntps_forms(on_device, k_grid, tol=eigen_cutoff, ridge=ridge, centered=centered)
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
) -> dict[str, Any]:
    """NTPS records for every layer and k, loading one layer's statistics at a time.

    With jackknife shards (``shards_path`` holding K >= 2 shards, see
    :func:`ntps.stats.shards_to_tensors`) every record gets ``ntps_paper_se`` and ``ntps_reg_se``,
    the leave-one-shard-out jackknife standard errors over the train texts (NaN without shards).
    ``device`` ("auto", "cpu", "cuda"; see :func:`scoring_device`) is where the float64
    eigendecompositions run; the device used is recorded as ``device``. ``released`` False leaves
    ``ntps_released`` NaN (``scoring.released_column``).
    """
    from contextlib import ExitStack

    from safetensors import safe_open

    from ntps.regime import REGIME_OK, regime_warning

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
        n_shards = int(shards.get_tensor("n_shards").reshape(-1)[0]) if shards else 0
        meta = handle.metadata()
        n_layers = int(meta["n_layers"])
        keys = list(handle.keys())
        for layer in range(n_layers):
            prefix = f"layer{layer}."
            tensors = {
                k: handle.get_tensor(k) for k in keys if k.startswith(prefix) or "." not in k
            }
            records += score_layer_with_se(
                tensors,
                shards,
                layer,
                k_grid,
                ridge=ridge,
                centered=centered,
                eigen_cutoff=eigen_cutoff,
                device=torch_device,
                released=released,
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
        },
        "device": str(torch_device),
        "records": records,
        "provenance": provenance(**input_provenance(meta)),
    }


# --- probes ---------------------------------------------------------------------------------


def probe_pair(
    features_path: str | Path,
    n_classes: int,
    settings: Mapping[str, Any],
    out_head: str | Path | None = None,
) -> dict[str, Any]:
    """Held-out linear probes for every layer.

    With ``out_head`` the last layer's logistic probe, folded onto the raw pooled features, is saved
    there (``weight`` (c, d), ``bias`` (c,), ``test_predictions``): the LoRA head starts from it.
    """
    from safetensors import safe_open

    from ntps.probes import fit_probe

    records = []
    started = time.perf_counter()
    # numpy, not torch: the features are float32 and the probes are scikit-learn's.
    with safe_open(str(features_path), framework="numpy") as handle:
        meta = handle.metadata()
        n_layers = int(meta["n_layers"])
        train_y = handle.get_tensor("train.labels")
        test_y = handle.get_tensor("test.labels")
        for layer in range(n_layers):
            result = fit_probe(
                handle.get_tensor(feature_key("train", layer)),
                train_y,
                handle.get_tensor(feature_key("test", layer)),
                test_y,
                n_classes,
                c_grid=settings["c_grid"],
                cv_folds=settings["cv_folds"],
                seed=settings["seed"],
                keep_head=out_head is not None and layer == n_layers - 1,
            )
            if result.head_weight is not None:
                save_tensors(
                    out_head,
                    {
                        "weight": result.head_weight.astype("float32"),
                        "bias": result.head_bias.astype("float32"),
                        "test_predictions": result.test_predictions.astype("int64"),
                    },
                    {"layer": str(layer), "logistic_c": str(result.logistic_c), **meta},
                )
            records.append({"layer": layer, **result.to_dict()})
            LOG.info("layer %d: accuracy %.3f mse %.3f", layer, result.accuracy, result.mse)
    LOG.info("probed %d layers in %.1f s", n_layers, time.perf_counter() - started)
    return {
        "n_layers": n_layers,
        "settings": dict(settings),
        "records": records,
        "provenance": provenance(seed=settings["seed"], **input_provenance(meta)),
    }


# --- LoRA -----------------------------------------------------------------------------------


def train_lora_pair(
    model_dir: str | Path,
    table_path: str | Path,
    dataset_record_path: str | Path,
    settings: Mapping[str, Any],
    device_spec: str,
    max_length: int,
    out_adapter_dir: str | Path,
    checkpoint_dir: str | Path | None,
    stats_path: str | Path,
    out_stats: str | Path,
    probe_head_path: str | Path | None = None,
    progress: bool = True,
    prompt_format: str = "raw",
    model_name: str | None = None,
    model_record_path: str | Path | None = None,
) -> dict[str, Any]:
    """Fine-tune LoRA adapters + a linear head on one dataset, save them, and write the adapted
    model's train-split statistics (post-LoRA NTPS); return the metrics.

    ``stats_path`` holds the pre-LoRA statistics: hidden states below the first adapted block are
    unchanged by LoRA and are copied from there; the others are accumulated from the adapted model.
    ``probe_head_path`` (the probe stage's last-layer head) starts the head when
    ``settings.head_init`` is "probe". ``max_length`` is the extraction's, used unless the LoRA
    settings give their own. ``model_record_path`` (the acquisition record) gives the model's load
    options (remote code), as for the extraction.
    """
    from ntps.datasets import load_prepared
    from ntps.lora import LoRASettings, post_lora_statistics, save_lora, train_lora_classifier
    from ntps.models import load_for_inference, resolve_device
    from ntps.stats import is_packed, pack_statistics, splice_statistics
    from ntps.text import check_prompt_format

    lora_settings = LoRASettings.from_dict(dict(settings))
    # The same fingerprint check as the extraction: LoRA must train on the texts that were scored.
    prepared = load_prepared(table_path, dataset_record_path)
    table = prepared.frame
    n_classes = len(prepared.label_names)
    initial_head, probe_predictions = None, None
    if lora_settings.head_init == "probe":
        if probe_head_path is None:
            raise ValueError("lora.head_init is 'probe' but no probe head was given")
        head = load_tensors(probe_head_path)
        initial_head = (head["weight"], head["bias"])
        probe_predictions = head["test_predictions"].tolist()
    device = resolve_device(device_spec)
    # Training always runs in fp32 weights; on CUDA the LoRA code uses bf16 autocast.
    model_name = model_name or Path(model_dir).name
    base_model, tokenizer = load_for_inference(
        model_dir,
        dtype="float32",
        device=device,
        source=read_json(model_record_path) if model_record_path else None,
        name=model_name,
    )
    check_prompt_format(tokenizer, prompt_format, model_name)
    train = table[table["split"] == "train"]
    test = table[table["split"] == "test"]
    train_labels = train["label"].astype(int).tolist()
    result = train_lora_classifier(
        base_model,
        tokenizer,
        train["text"].tolist(),
        train_labels,
        n_classes,
        lora_settings,
        max_length=max_length,
        initial_head=initial_head,
        device=device,
        test_texts=test["text"].tolist(),
        test_labels=test["label"].astype(int).tolist(),
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        log=LOG.info,
        prompt_format=prompt_format,
    )
    started = time.perf_counter()
    first_state, upper = post_lora_statistics(
        result.classifier, result.train_inputs, train_labels, lora_settings.eval_batch_size
    )
    # Read only now: the pre-LoRA sums (0.25 GB for SmolLM2) need not sit in memory during training.
    base = load_tensors(stats_path)
    stats = splice_statistics(base, upper, first_state)
    save_tensors(
        out_stats,
        # The pre-LoRA statistics' storage form (storage.compact_statistics) carries over.
        pack_statistics(stats) if is_packed(base) else stats,
        {**load_tensor_metadata(stats_path), "first_recomputed_state": str(first_state)},
    )
    LOG.info(
        "post-LoRA statistics: hidden states %d.. recomputed, 0..%d copied from %s (%.1f s)",
        first_state, first_state - 1, stats_path, time.perf_counter() - started,
    )  # fmt: skip
    save_lora(result, out_adapter_dir)
    summary = result.to_dict()
    if probe_predictions is not None:
        agree = [
            a == b
            for a, b in zip(summary["initial_test_predictions"], probe_predictions, strict=True)
        ]
        summary["initial_agreement_with_probe"] = sum(agree) / len(agree) if agree else None
    LOG.info(
        "LoRA: %d steps, test accuracy %.4f (start %s), loss first/last quarter %s / %s, %.1f s",
        summary["steps_done"], summary["test_accuracy"], summary["initial_test_accuracy"],
        summary["loss_first_quarter"], summary["loss_last_quarter"], summary["wall_time_s"],
    )  # fmt: skip
    return {
        **summary,
        "first_recomputed_state": first_state,
        "prompt_format": prompt_format,
        "device": str(device),
        "provenance": provenance(seed=lora_settings.seed),
    }


def write_pair_json(path: str | Path, model: str, dataset: str, payload: dict[str, Any]) -> None:
    write_json(path, {"model": model, "dataset": dataset, **payload})


__all__ = [
    "extract_pair",
    "extract_part",
    "feature_key",
    "input_provenance",
    "merge_extract_parts",
    "probe_pair",
    "score_layer_with_se",
    "score_pair",
    "scoring_device",
    "train_lora_pair",
    "write_pair_json",
]
