"""Disk plan of a study: estimated bytes per stage from the config alone (issue #15).

``python -m ntps.storage CONFIG [--directory DIR] [--measure]`` prints, per stage (acquired models,
prepared datasets, statistics, jackknife shards, pooled features, LoRA's block inputs, LoRA
adapters, post-LoRA statistics, scores/tables/plots), the estimated disk of the whole study, which stages
``storage.statistics: temp`` or ``uncertainty.keep_shard_statistics: false`` delete after use,
and, with ``--measure``, the sizes of the files a finished run left in ``DIR`` beside the estimate.

The bytes of statistics, shards, features and adapters come from the size formulas of
:mod:`ntps.sizes` (which also size job memory). Inputs, in order of preference:

* model shape (transformer blocks L, hidden size d): the acquisition record
  (``resources/models/<model>/model.json``) or a local folder's ``config.json``
  (:func:`ntps.config.known_model_shape`); else :data:`HUB_MODEL_SHAPES` for the paper's hub
  models (from their published ``config.json``); else from ``n_params`` (L d^2 ~ n_params / 12 with
  L = 32 assumed), marked ``assumed``;
* texts per dataset: the prepared ``dataset.json``; else :data:`HUB_DATASET_SIZES` (the paper's
  datasets, sizes from their dataset cards, marked ``~`` where the card gives them rounded) capped
  by ``max_train`` / ``max_test``; else the caps; else 10,000 / 2,000 texts, marked ``assumed``;
* weights on disk: the record's ``size_bytes``; else 0 for a local folder (linked, not copied);
  else ``n_params`` x 4 bytes (GGUF is stored dequantised to float32) or x 2 (hub checkpoints as published in bf16; the
  hub cache under ``resources/cache`` holds a second copy);
* tokens per split (LoRA's block inputs): the extraction's record (``extract.json``); before the
  extraction ran, the upper bound of every text at the model's ``max_length``, marked in the notes.

Scores, probes, predictors, tables, plots and the report are counted as ~1.25 kB per (layer, k)
record and stage, 2 kB per layer and 0.8 MB per pair, measured on the default study (below 0.1% of
the total at paper scale).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ntps.config import known_model_shape, validate_config
from ntps.sizes import (
    block_inputs_bytes,
    features_bytes,
    has_frozen_lower_blocks,
    jackknife_replicates_bytes,
    lora_adapter_bytes,
    lora_recomputed_states,
    statistics_bytes,
)
from ntps.workflow import DEFAULT_N_PARAMS, extraction_shards, lora_pairs

# (transformer blocks, hidden size) of the paper's hub models, from each repository's config.json
# (num_hidden_layers / hidden_size; OpenELM: num_transformer_layers / model_dim).
HUB_MODEL_SHAPES: dict[str, tuple[int, int]] = {
    "Qwen/Qwen2-0.5B": (24, 896),
    "Qwen/Qwen2-1.5B": (28, 1536),
    "Qwen/Qwen2-7B": (28, 3584),
    "apple/OpenELM-270M": (16, 1280),
    "apple/OpenELM-450M": (20, 1536),
    "apple/OpenELM-1_1B": (28, 2048),
    "apple/OpenELM-3B": (36, 3072),
    "meta-llama/Meta-Llama-3-8B": (32, 4096),
}

# (train texts, test texts, classes) of the paper's hub datasets after the split config/paper.yaml
# applies (70/30 where the source has one split), from the dataset cards. None = not known here.
HUB_DATASET_SIZES: dict[str, tuple[int, int, int | None]] = {
    "stanfordnlp/sst2": (67_349, 872, 2),
    "stanfordnlp/imdb": (25_000, 25_000, 2),
    "cornell-movie-review-data/rotten_tomatoes": (8_530, 1_066, 2),
    "dair-ai/emotion": (16_000, 2_000, 6),
    "legacy-datasets/banking77": (10_003, 3_080, 77),
    "tau/commonsense_qa": (9_741, 1_221, 5),
    "climatebert/climate_sentiment": (1_000, 320, 3),
    "ucirvine/sms_spam": (3_902, 1_672, 2),  # 5,574 messages, 70/30
    "marksverdhei/clickbait_title_classification": (22_400, 9_600, 2),  # 32,000 titles, 70/30
    "curaihealth/medical_questions_pairs": (2_134, 914, 2),  # 3,048 pairs, 70/30
    "PriyaPatel/Bias_identification": (22_400, 2_800, None),  # card: ~22.4k train, ~2.8k test
}
APPROXIMATE_DATASETS = {"PriyaPatel/Bias_identification"}
ASSUMED_TEXTS = (10_000, 2_000)
ASSUMED_BLOCKS = 32
# Measured on the default study (2026-12-02 run): score JSON bytes per (layer, k) record, and the
# study tables per record (scores.csv + .parquet and the rest); probes/predictors per layer.
SCORE_RECORD_BYTES = 950
TABLE_RECORD_BYTES = 300
PER_LAYER_BYTES = 2_000
# Plots and their copies inside report.html, per (model, dataset) pair (default study).
PER_PAIR_REPORT_BYTES = 790_000
# Bytes of a prepared dataset (parquet) per text, when it is not prepared yet: a rough figure.
PREPARED_BYTES_PER_TEXT = 150
# The adapter folder's small files (peft README and config, head config) and metrics.json.
LORA_FILES_BYTES = 16_000

STAGES = (
    "models",
    "datasets",
    "statistics",
    "jackknife shards",
    "jackknife replicates",
    "pooled features",
    "LoRA block inputs",
    "LoRA adapters",
    "post-LoRA statistics",
    "scores, tables, plots",
)


# --- inputs from the config ----------------------------------------------------------------------


@dataclass
class ModelShape:
    n_blocks: int
    hidden_size: int
    weight_bytes: int
    basis: str  # where the shape came from


@dataclass
class DatasetSize:
    n_train: int
    n_test: int
    n_classes: int
    prepared_bytes: int
    basis: str


def model_shape(entry: Mapping[str, Any], workdir: Path) -> ModelShape:
    """Blocks, hidden size and weight bytes of one model entry (see the module docstring)."""
    records = workdir / "resources" / "models"
    source = entry.get("source") or {}
    record_path = records / entry["name"] / "model.json"
    record: dict[str, Any] = {}
    if record_path.exists():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = {}
    n_params = entry.get("n_params") or record.get("n_parameters")
    shape = known_model_shape(entry, records)
    basis = "acquisition record" if record else "config.json"
    if shape is None and source.get("type") == "hub" and source.get("id") in HUB_MODEL_SHAPES:
        shape, basis = HUB_MODEL_SHAPES[source["id"]], "published config"
    if shape is None:
        params = float(n_params or DEFAULT_N_PARAMS)
        d = int(math.sqrt(params / 12 / (ASSUMED_BLOCKS + 1)))
        shape, basis = (ASSUMED_BLOCKS, d), "assumed from n_params"
    if "size_bytes" in record:
        weights = int(record["size_bytes"])
    elif source.get("type") == "local":
        weights = 0  # linked into resources/models, not copied
    else:
        if n_params is None:
            n_blocks, d = shape
            n_params = 12 * n_blocks * d * d
        per_param = 2 if source.get("type") == "hub" else 4
        # Hub snapshots are copied out of the hub cache, which keeps its own copy.
        copies = 2 if source.get("type") == "hub" else 1
        weights = int(n_params) * per_param * copies
    return ModelShape(shape[0], shape[1], weights, basis)


def dataset_size(entry: Mapping[str, Any], workdir: Path) -> DatasetSize:
    """Texts per split, classes and prepared-table bytes of one dataset entry."""
    folder = workdir / "resources" / "datasets" / entry["name"]
    record_path = folder / "dataset.json"
    if record_path.exists():
        try:
            record = json.loads(record_path.read_text())
            table = folder / "data.parquet"
            return DatasetSize(
                int(record["n_train"]),
                int(record["n_test"]),
                int(record["n_classes"]),
                table.stat().st_size if table.exists() else 0,
                "prepared",
            )
        except (OSError, ValueError, KeyError):
            pass
    source = entry.get("source") or {}
    known = HUB_DATASET_SIZES.get(source.get("id", "")) if source.get("type") == "hub" else None
    if known is not None:
        n_train, n_test, n_classes = known
        basis = "~dataset card" if source["id"] in APPROXIMATE_DATASETS else "dataset card"
    else:
        n_train, n_test = ASSUMED_TEXTS
        n_classes, basis = None, "assumed"
    n_train = min(n_train, entry.get("max_train", n_train))
    n_test = min(n_test, entry.get("max_test", n_test))
    if known is None and "max_train" in entry:
        basis = "caps"
    if n_classes is None:
        n_classes = len(entry.get("label_values") or entry.get("label_names") or ()) or 2
    return DatasetSize(
        n_train, n_test, n_classes, PREPARED_BYTES_PER_TEXT * (n_train + n_test), basis
    )


# --- the plan --------------------------------------------------------------------------------------


@dataclass
class StageEstimate:
    stage: str
    bytes: int = 0
    files: int = 0
    deleted_after_use: bool = False
    largest: tuple[str, int] = ("", 0)  # the largest single item (name, bytes)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, size: int) -> None:
        self.bytes += size
        self.files += 1
        if size > self.largest[1]:
            self.largest = (name, size)


def plan(config: Mapping[str, Any], workdir: str | Path = ".") -> dict[str, StageEstimate]:
    """Estimated disk per stage of a validated config (defaults filled), run in ``workdir``."""
    workdir = Path(workdir)
    storage = config["storage"]
    compact = bool(storage["compact_statistics"])
    n_shards = int(config["uncertainty"]["jackknife_shards"])
    n_k = len(config["scoring"]["k_grid"])
    models = {m["name"]: model_shape(m, workdir) for m in config["models"]}
    datasets = {d["name"]: dataset_size(d, workdir) for d in config["datasets"]}
    out = {stage: StageEstimate(stage) for stage in STAGES}
    out["statistics"].deleted_after_use = storage["statistics"] == "temp"
    out["post-LoRA statistics"].deleted_after_use = storage["statistics"] == "temp"
    out["jackknife shards"].deleted_after_use = not config["uncertainty"]["keep_shard_statistics"]
    out["LoRA block inputs"].deleted_after_use = storage["statistics"] == "temp"
    lora = set(lora_pairs(config))
    for name, shape in models.items():
        out["models"].add(name, shape.weight_bytes)
        out["models"].notes.append(
            f"{name}: {shape.n_blocks} blocks, d={shape.hidden_size} ({shape.basis})"
        )
    for name, size in datasets.items():
        out["datasets"].add(name, size.prepared_bytes)
        out["datasets"].notes.append(
            f"{name}: {size.n_train} train / {size.n_test} test, {size.n_classes} classes "
            f"({size.basis})"
        )
    for model, shape in models.items():
        states, d = shape.n_blocks + 1, shape.hidden_size
        for dataset, size in datasets.items():
            pair = f"{model} x {dataset}"
            c = size.n_classes
            stats = statistics_bytes(states, d, c, compact=compact)
            out["statistics"].add(pair, stats)
            if n_shards >= 2:
                out["jackknife shards"].add(
                    pair,
                    n_shards * statistics_bytes(states, d, c, element_bytes=4, compact=compact),
                )
                out["jackknife replicates"].add(
                    pair, jackknife_replicates_bytes(states, d, n_shards)
                )
            out["pooled features"].add(pair, features_bytes(states, d, size.n_train + size.n_test))
            stages = 1
            if (model, dataset) in lora:
                out["LoRA adapters"].add(
                    pair,
                    lora_adapter_bytes(d, shape.n_blocks, c, config["lora"]["settings"])
                    + LORA_FILES_BYTES,
                )
                recomputed = lora_recomputed_states(shape.n_blocks, config["lora"]["settings"])
                out["post-LoRA statistics"].add(
                    pair, statistics_bytes(recomputed, d, c, compact=compact)
                )
                if block_inputs_kept(config, model, dataset, shape.n_blocks):
                    tokens, basis = split_tokens(config, model, dataset, size, workdir)
                    out["LoRA block inputs"].add(pair, block_inputs_bytes(d, tokens))
                    out["LoRA block inputs"].notes.append(f"{pair}: {tokens} tokens ({basis})")
                stages = 2
            records = states * n_k * stages
            out["scores, tables, plots"].add(
                pair,
                records * (SCORE_RECORD_BYTES + TABLE_RECORD_BYTES)
                + states * PER_LAYER_BYTES
                + PER_PAIR_REPORT_BYTES,
            )
    return out


def block_inputs_kept(config: Mapping[str, Any], model: str, dataset: str, n_blocks: int) -> bool:
    """Whether the extraction of a LoRA pair keeps LoRA's block inputs: adapters leave frozen
    blocks below, one extraction job, LoRA cuts texts where the extraction does (docs/outputs.md,
    "LoRA's block inputs"; the dtype, known only once the model is loaded, is not checked)."""
    settings = config["lora"]["settings"]
    entry = next(m for m in config["models"] if m["name"] == model)
    return (
        has_frozen_lower_blocks(settings, n_blocks)
        and extraction_shards(config, dataset) == 1
        and settings.get("max_length") in (None, entry["max_length"])
    )


def split_tokens(
    config: Mapping[str, Any], model: str, dataset: str, size: DatasetSize, workdir: Path
) -> tuple[dict[str, int], str]:
    """Tokens per split of a pair: from its extract.json, else every text at ``max_length``."""
    record = workdir / "results" / "extract" / model / dataset / "extract.json"
    try:
        splits = json.loads(record.read_text())["splits"]
        return {split: int(splits[split]["n_tokens"]) for split in ("train", "test")}, "extracted"
    except (OSError, ValueError, KeyError):
        limit = int(next(m for m in config["models"] if m["name"] == model)["max_length"])
        return {"train": size.n_train * limit, "test": size.n_test * limit}, "upper bound"


# --- what a finished run left on disk ---------------------------------------------------------------


def _size(path: Path) -> int:
    """Bytes a file or folder takes itself: symbolic links count as links (local models are
    linked into resources/models, not copied)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    if path.is_dir():
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_symlink() or p.is_file())
    return 0


def measure(config: Mapping[str, Any], workdir: str | Path = ".") -> dict[str, int]:
    """Bytes per stage that a run of ``config`` left in ``workdir`` (missing files count 0)."""
    root = Path(workdir)
    models = [m["name"] for m in config["models"]]
    datasets = [d["name"] for d in config["datasets"]]
    pairs = [(m, d) for m in models for d in datasets]
    out = dict.fromkeys(STAGES, 0)
    for m in models:
        out["models"] += _size(root / "resources" / "models" / m)
    for d in datasets:
        out["datasets"] += _size(root / "resources" / "datasets" / d)
    for m, d in pairs:
        extract = root / "results" / "extract" / m / d
        out["statistics"] += _size(extract / "stats.safetensors")
        out["jackknife shards"] += _size(extract / "stats_shards.safetensors")
        out["jackknife replicates"] += _size(
            root / "results" / "jackknife" / m / f"{d}.safetensors"
        )
        out["pooled features"] += _size(extract / "features.safetensors")
        out["LoRA block inputs"] += _size(extract / "block_inputs.safetensors")
        lora = root / "results" / "lora" / m / d
        out["LoRA adapters"] += _size(lora / "adapter") + _size(lora / "metrics.json")
        out["post-LoRA statistics"] += _size(lora / "stats_post_lora.safetensors")
    results = root / "results"
    for part in ("scores", "scores_post_lora", "probes", "predictors", "tables", "plots"):
        out["scores, tables, plots"] += _size(results / part)
    for part in ("report.html", "summary.md"):
        out["scores, tables, plots"] += _size(results / part)
    return out


# --- printing ------------------------------------------------------------------------------------------


def human(n: float) -> str:
    """Bytes in decimal units (kB, MB, GB, TB), three significant digits."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def format_plan(
    estimates: Mapping[str, StageEstimate],
    measured: Mapping[str, int] | None = None,
    *,
    verbose: bool = False,
) -> str:
    header = f"{'stage':<24}{'estimate':>11}{'items':>7}  {'largest item':<44}"
    if measured is not None:
        header += f"{'on disk':>11}{'ratio':>7}"
    lines = [header, "-" * len(header)]
    kept = transient = 0
    for stage, est in estimates.items():
        flag = " (deleted after use)" if est.deleted_after_use else ""
        largest = f"{human(est.largest[1])} {est.largest[0]}" if est.files else "-"
        line = f"{stage:<24}{human(est.bytes):>11}{est.files:>7}  {largest[:44]:<44}"
        if measured is not None:
            actual = measured.get(stage, 0)
            ratio = f"{est.bytes / actual:.2f}" if actual else "-"
            line += f"{human(actual):>11}{ratio:>7}"
        lines.append(line + flag)
        if est.deleted_after_use:
            transient += est.bytes
        else:
            kept += est.bytes
    lines.append("-" * len(header))
    lines.append(f"{'kept after the run':<24}{human(kept):>11}")
    if transient:
        lines.append(
            f"{'+ deleted after use':<24}{human(transient):>11}  (at most this much more while "
            "running; less when pairs finish one after another)"
        )
    if measured is not None:
        lines.append(f"{'on disk now':<24}{human(sum(measured.values())):>11}")
    guessed = [
        note.split(":")[0]
        for stage in ("models", "datasets")
        for note in estimates[stage].notes
        if note.endswith("(assumed)") or note.endswith("(assumed from n_params)")
    ]
    if guessed:
        lines.append(
            f"\nshape or size assumed (not acquired/prepared, not in ntps.storage's tables) for: "
            f"{', '.join(guessed)}; give models `n_params`, or acquire/prepare them first "
            "(snakemake --until acquire_model prepare_dataset)"
        )
    if verbose:
        for stage in ("models", "datasets"):
            lines.append(f"\n{stage}:")
            lines += [f"  {note}" for note in estimates[stage].notes]
    return "\n".join(lines)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read and validate a config file (defaults filled in); ``key.sub=value`` YAML overrides."""
    config = yaml.safe_load(Path(path).read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        target = config
        *parents, last = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = yaml.safe_load(value)
    return validate_config(config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ntps.storage",
        description="Estimated disk per stage of a study, from its config (docs/cluster.md).",
    )
    parser.add_argument("config", help="the study's config file (e.g. config/paper.yaml)")
    parser.add_argument(
        "--directory", default=".", help="the run's working folder (acquired models, results)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. storage.compact_statistics=true (repeatable)",
    )
    parser.add_argument(
        "--measure", action="store_true", help="also list what a run left in --directory"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-v", "--verbose", action="store_true", help="shapes and sizes used")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    estimates = plan(config, args.directory)
    measured = measure(config, args.directory) if args.measure else None
    if args.json:
        payload = {
            stage: {
                "bytes": est.bytes,
                "items": est.files,
                "deleted_after_use": est.deleted_after_use,
                "largest": list(est.largest),
                "notes": est.notes,
                **({"measured_bytes": measured[stage]} if measured else {}),
            }
            for stage, est in estimates.items()
        }
        print(json.dumps(payload, indent=1))
    else:
        print(f"{config['study']}: estimated disk per stage")
        print(format_plan(estimates, measured, verbose=args.verbose))
    return 0


if __name__ == "__main__":
    sys.exit(main())
