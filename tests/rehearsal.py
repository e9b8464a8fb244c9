"""Paper-scale dress rehearsal on CPU: config/paper.yaml's DAG with tiny models and small datasets.

Builds, under a working folder:

- ``inputs/models/<model>``: one tiny randomly initialised model per paper model, with that model's
  architecture: transformers' Qwen2 for qwen2-*, Llama for llama3-8b, and for openelm-* the
  OpenELM-like remote-code decoder of tests/model_factories.py (``auto_map``, its own modelling
  files, no tokenizer: ``trust_remote_code: true`` and a ``tokenizer:`` override, as in the paper
  config). Width 32, 2-4 blocks, 64 positions; the bigger paper models get more blocks.
- ``inputs/tokenizer``: the one tokenizer (a WordLevel vocabulary of the generated texts).
- ``inputs/data/<dataset>/``: the paper's 12 datasets under their names, with their class counts,
  text and label columns, label encodings (strings, letters, declared values) and split layout
  (source train/test, train/validation, or one table split 70/30), ``TRAIN``/``TEST`` texts
  (at least ``MIN_PER_CLASS`` per class in train, one in test, and one batch per extraction shard:
  the paper config's per-dataset ``extraction_shards`` are kept), as local Parquet files.
- ``config.yaml``: config/paper.yaml with every setting kept except the sources (local folders and
  files), the sizes (``n_params`` of the tiny models, ``max_length`` 64, LoRA steps) and, when the
  workflow has it, sharded extraction on.

then runs Snakemake on it with the given profile (default ``profiles/default``; ``profiles/slurm``
for the cluster) and records the wall time in ``rehearsal.json``. Command line (docs/slurm.md)::

    python tests/rehearsal.py [--workdir DIR] [--profile profiles/slurm] [--models NAME ...]
                              [-- SNAKEMAKE ARGS...]

``make rehearsal`` runs it with the local profile.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from model_factories import (  # noqa: E402
    build_tiny_llama,
    build_tiny_qwen2,
    write_model,
    write_remote_code_model,
    write_tokenizer,
)
from workflow_support import REPO, snakemake_command, snakemake_env  # noqa: E402

from ntps.models import _count_stored_parameters  # noqa: E402

PAPER_CONFIG = REPO / "config" / "paper.yaml"
# Texts per dataset and split (at least MIN_PER_CLASS per class in train and 1 in test).
TRAIN, TEST, MIN_PER_CLASS = 60, 30, 4
CONTEXT = 64
LORA_STEPS, LORA_CHECKPOINT_EVERY = 4, 2
SHARDS = 2  # extraction.shards of the rehearsal, when the workflow has sharded extraction

# Paper model -> (architecture, blocks). Remote code stands in for OpenELM.
ARCHITECTURES = {
    "qwen2-0.5b": ("qwen2", 2), "qwen2-1.5b": ("qwen2", 3), "qwen2-7b": ("qwen2", 4),
    "openelm-270m": ("remote", 2), "openelm-450m": ("remote", 3),
    "openelm-1.1b": ("remote", 3), "openelm-3b": ("remote", 4),
    "llama3-8b": ("llama", 4),
}  # fmt: skip
# Classes of the paper's datasets (their hub dataset cards; intent_classification has 12 intents,
# bias_identification the 9 CrowS-Pairs bias types) and how the source writes its labels.
CLASSES = {
    "intent_classification": 12, "clickbait": 2, "sst2": 2, "banking77": 77,
    "bias_identification": 9, "emotion": 6, "sms_spam": 2, "medical_questions_pairs": 2,
    "rotten_tomatoes": 2, "commonsense_qa": 5, "climate_sentiment": 3, "imdb": 2,
}  # fmt: skip
STRING_LABELS = {"intent_classification", "bias_identification"}
FILLER = ["the", "a", "of", "and", "to", "is", "it", "was", "in", "for", "with", "this", "that"]


def class_words(n_classes: int) -> list[list[str]]:
    """Three words per class (w<class>x<i>): the texts' class signal."""
    return [[f"w{c}x{i}" for i in range(3)] for c in range(n_classes)]


def vocabulary() -> list[str]:
    words = {w for n in CLASSES.values() for group in class_words(n) for w in group}
    return sorted(words) + FILLER


def label_value(dataset: dict[str, Any], code: int) -> Any:
    """How the source writes class ``code``: declared label_values, strings, or integers."""
    if "label_values" in dataset:
        return dataset["label_values"][code]
    if dataset["name"] in STRING_LABELS:
        return f"class_{code:02d}"
    return code


def make_rows(
    dataset: dict[str, Any], n_texts: int, rng: random.Random, signal: float, min_per_class: int
) -> list[dict[str, Any]]:
    """About ``n_texts`` rows, balanced, at least ``min_per_class`` per class (banking77's 77
    classes get more rows than asked), with the dataset's text columns and label column."""
    n_classes = CLASSES[dataset["name"]]
    words = class_words(n_classes)
    per_class = max(min_per_class, math.ceil(n_texts / n_classes))
    rows = []
    for code in range(n_classes):
        for _ in range(per_class):
            row: dict[str, Any] = {}
            for column in dataset["text_columns"]:
                length = rng.randint(3, 12)
                row[column] = " ".join(
                    rng.choice(words[code]) if rng.random() < signal else rng.choice(FILLER)
                    for _ in range(length)
                )
            row[dataset["label_column"]] = label_value(dataset, code)
            rows.append(row)
    rng.shuffle(rows)
    return rows


def write_dataset(
    folder: Path, dataset: dict[str, Any], index: int, shards: int, max_batch: int
) -> dict[str, Any]:
    """Write one paper dataset's local files; return its config entry with a `files` source.

    Each split gets at least one batch (of the largest ``batch_size``) per extraction shard of the
    dataset (its own ``extraction_shards``, as in config/paper.yaml, else ``shards``), so the
    paper's shard counts are kept."""
    import pandas as pd

    rng = random.Random(index)
    signal = 0.15 + 0.6 * index / (len(CLASSES) - 1)  # datasets from noisy to clean
    split = dataset.get("split")
    need = int(dataset.get("extraction_shards") or shards or 1) * max_batch
    folder.mkdir(parents=True, exist_ok=True)
    entry = {k: v for k, v in dataset.items() if k != "source"}
    if split and "test_fraction" in split:  # one table, split by the workflow
        fraction = float(split["test_fraction"])
        total = max(TRAIN + TEST, math.ceil(need / min(fraction, 1 - fraction)) + 10)
        path = folder / "all.parquet"
        rows = make_rows(dataset, total, rng, signal, MIN_PER_CLASS + 1)
        pd.DataFrame(rows).to_parquet(path)
        entry["source"] = {"type": "files", "path": str(path), "format": "parquet"}
        return entry
    names = {"train": "train", "test": "test"} if not split else split
    paths = {}
    for role, size, least in (("train", TRAIN, MIN_PER_CLASS), ("test", TEST, 1)):
        path = folder / f"{names[role]}.parquet"
        rows = make_rows(dataset, max(size, need), rng, signal, least)
        pd.DataFrame(rows).to_parquet(path)
        paths[names[role]] = str(path)
    entry["source"] = {"type": "files", "path": paths, "format": "parquet"}
    return entry


def write_models(folder: Path, tokenizer_dir: Path) -> dict[str, dict[str, Any]]:
    """One tiny model per paper model; returns name -> {source, n_params}."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab_size = len(tokenizer)
    out = {}
    for seed, (name, (architecture, blocks)) in enumerate(ARCHITECTURES.items()):
        path = folder / name
        if architecture == "remote":
            write_remote_code_model(
                path, vocab_size, seed=seed, layers=blocks, max_context_length=CONTEXT
            )
            source = {"type": "local", "path": str(path), "trust_remote_code": True,
                      "tokenizer": str(tokenizer_dir)}  # fmt: skip
        else:
            build = build_tiny_qwen2 if architecture == "qwen2" else build_tiny_llama
            model = build(vocab_size, max_position_embeddings=CONTEXT, seed=seed, layers=blocks)
            write_model(path, model, tokenizer)
            source = {"type": "local", "path": str(path)}
        out[name] = {"source": source, "n_params": _count_stored_parameters(path)}
    return out


def rehearsal_config(
    root: Path, shards: int = SHARDS, models_kept: Sequence[str] | None = None
) -> dict[str, Any]:
    """config/paper.yaml with local sources and small sizes; writes models and data under root.
    ``models_kept``: only these of the paper's models (default: all eight)."""
    config = yaml.safe_load(PAPER_CONFIG.read_text())
    inputs = root / "inputs"
    tokenizer_dir = write_tokenizer(inputs / "tokenizer", [" ".join(vocabulary())])
    models = write_models(inputs / "models", tokenizer_dir)
    if set(models) != {m["name"] for m in config["models"]}:
        raise SystemExit(f"config/paper.yaml's models changed; update ARCHITECTURES in {__file__}")
    if models_kept:
        unknown = sorted(set(models_kept) - set(models))
        if unknown:
            raise SystemExit(f"--models {unknown}: not in config/paper.yaml ({sorted(models)})")
        config["models"] = [m for m in config["models"] if m["name"] in models_kept]
    for model in config["models"]:
        model.update(models[model["name"]])
        model["max_length"] = CONTEXT
        # One torch thread per model job (the paper config leaves the default, 2): tiny models
        # gain nothing from more, and two model jobs then share a 2-core machine.
        model["resources"] = {"threads": 1}
    use_shards = shards or 1
    max_batch = max(int(m["batch_size"]) for m in config["models"])
    config["datasets"] = [
        write_dataset(inputs / "data" / d["name"], d, i, use_shards, max_batch)
        for i, d in enumerate(config["datasets"])
    ]
    if set(CLASSES) != {d["name"] for d in config["datasets"]}:
        raise SystemExit(f"config/paper.yaml's datasets changed; update CLASSES in {__file__}")
    config["study"] = f"dress rehearsal of: {config['study']}"
    settings = config["lora"]["settings"]
    settings.update(
        max_steps=LORA_STEPS, checkpoint_every=LORA_CHECKPOINT_EVERY, max_length=CONTEXT
    )
    # Sharded extraction (issue #15): every pair's extraction in `shards` extract_shard jobs and
    # a merge_extract.
    if shards:
        config["extraction"]["shards"] = shards
    return config


def write_rehearsal(
    root: Path, shards: int = SHARDS, models_kept: Sequence[str] | None = None
) -> Path:
    """Models, datasets and config.yaml under ``root``; returns the config path."""
    root.mkdir(parents=True, exist_ok=True)
    config = rehearsal_config(root, shards, models_kept)
    path = root / "config.yaml"
    header = "# Written by tests/rehearsal.py from config/paper.yaml: local tiny models and data.\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def profile_args(profile: str) -> list[str]:
    path = Path(profile)
    return ["--profile", str(path if path.is_absolute() else REPO / path)]


def run_rehearsal(
    root: Path,
    profile: str = "profiles/default",
    extra: Sequence[str] = (),
    *,
    cores: int | None = 2,
    shards: int = SHARDS,
    models_kept: Sequence[str] | None = None,
    timeout: int = 4 * 3600,
) -> dict[str, Any]:
    """Write the rehearsal under ``root`` and run the whole paper DAG (Snakemake's output goes to
    this process's stdout/stderr); return the run record, also written to rehearsal.json."""
    started = time.perf_counter()
    config = write_rehearsal(root, shards, models_kept)
    prepared = time.perf_counter() - started
    command = snakemake_command(
        root, *profile_args(profile), *extra, configfile=config, cores=cores
    )
    print("running:", " ".join(command), flush=True)
    run_started = time.perf_counter()
    result = subprocess.run(command, env=snakemake_env(), timeout=timeout, check=False)
    record = {
        "returncode": result.returncode,
        "profile": profile,
        "models": [m["name"] for m in yaml.safe_load(config.read_text())["models"]],
        "extra_args": list(extra),
        "extraction_shards": yaml.safe_load(config.read_text())["extraction"].get("shards"),
        "inputs_seconds": round(prepared, 1),
        "snakemake_seconds": round(time.perf_counter() - run_started, 1),
        "command": command,
    }
    (root / "rehearsal.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", default="rehearsal", help="working folder (default: %(default)s)"
    )
    parser.add_argument("--profile", default="profiles/default", help="Snakemake profile")
    parser.add_argument(
        "--cores", type=int, default=None,
        help="Snakemake --cores (default: 2 with a local profile, unset with the SLURM one)",
    )  # fmt: skip
    parser.add_argument("--shards", type=int, default=SHARDS, help="extraction.shards (0: off)")
    parser.add_argument(
        "--models", nargs="+", metavar="NAME",
        help="only these paper models (default: all 8), e.g. one per architecture: "
        "qwen2-0.5b openelm-270m llama3-8b",
    )  # fmt: skip
    parser.add_argument("snakemake_args", nargs="*", help="after --: passed to Snakemake")
    args = parser.parse_args(argv)
    cores = args.cores if args.cores is not None else (None if "slurm" in args.profile else 2)
    record = run_rehearsal(
        Path(args.workdir).resolve(), args.profile, args.snakemake_args, cores=cores,
        shards=args.shards, models_kept=args.models,
    )  # fmt: skip
    print(json.dumps(record, indent=2))
    return record["returncode"]


if __name__ == "__main__":
    sys.exit(main())
