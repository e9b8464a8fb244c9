"""Preparation: a dataset entry of the config -> the clean, encoded, split and capped table
(``data.parquet``) and its record (``dataset.json``); and the one reader of a prepared table,
which checks it against the record's fingerprint (:func:`load_prepared`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ntps.datasets.sources import ALL, acquire_tables
from ntps.datasets.steps import (
    INT_RE,
    canonical_value,
    check_columns,
    clean_texts,
    encode_labels,
    filter_mask,
    join_text_columns,
    stratified_split,
    stratified_subsample,
)
from ntps.errors import ConfigError, DatasetError
from ntps.io import provenance, write_json, write_table
from ntps.workflow import WORKFLOW_ONLY_KEYS

LOG = logging.getLogger("ntps.datasets")

SPLITS = ("train", "test")
DEFAULT_SPLIT_SEED = 42
DEFAULT_TEST_FRACTION = 0.3
DROP_KEYS = ("filtered", "empty", "undecodable", "excluded_pattern", "missing_label", "duplicate")


@dataclass
class PreparedDataset:
    """A prepared dataset: ``frame`` has columns text (str), label (int64), split ("train"/"test")."""

    name: str
    frame: pd.DataFrame
    label_names: list[str]
    drops: dict[str, int]
    fingerprint: str
    n_raw: int = 0
    n_available: dict[str, int] = field(default_factory=dict)  # per split, before caps
    source: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """Examples per split and class name."""
        out: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            labels = self.frame.loc[self.frame["split"] == split, "label"].to_numpy()
            binc = np.bincount(labels, minlength=len(self.label_names))
            out[split] = {name: int(n) for name, n in zip(self.label_names, binc, strict=True)}
        return out

    def metadata(self) -> dict[str, Any]:
        """The ``dataset.json`` record."""
        lengths = {
            split: text_length_summary(self.frame.loc[self.frame["split"] == split, "text"])
            for split in SPLITS
        }
        return {
            "name": self.name,
            "label_names": list(self.label_names),
            "n_classes": len(self.label_names),
            "n_rows": len(self.frame),
            "n_train": int((self.frame["split"] == "train").sum()),
            "n_test": int((self.frame["split"] == "test").sum()),
            "counts": self.counts(),
            "n_raw": self.n_raw,
            "n_available": dict(self.n_available),
            "drops": dict(self.drops),
            "text_chars": lengths,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "spec": self.spec,
            "provenance": provenance(),
        }


def text_length_summary(texts: Sequence[str] | pd.Series) -> dict[str, float]:
    """Character lengths: median, 95th percentile and maximum (0 for an empty sequence)."""
    lengths = np.array([len(t) for t in texts], dtype=np.float64)
    if lengths.size == 0:
        return {"median": 0.0, "p95": 0.0, "max": 0.0}
    return {
        "median": float(np.median(lengths)),
        "p95": float(np.percentile(lengths, 95)),
        "max": float(lengths.max()),
    }


def fingerprint_table(frame: pd.DataFrame, label_names: Sequence[str]) -> str:
    """sha256 of the canonical table (label names, then one JSON line [split, label, text] per row)."""
    digest = hashlib.sha256()
    digest.update(b"ntps-dataset-v1\n")
    digest.update(json.dumps(list(label_names), ensure_ascii=False).encode("utf-8") + b"\n")
    for split, label, text in zip(frame["split"], frame["label"], frame["text"], strict=True):
        line = json.dumps([str(split), int(label), str(text)], ensure_ascii=False)
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


def normalise_spec(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Validate against the config schema's dataset definition (keys, types, ranges, defaults) and
    normalise; ConfigError names the dataset and the offending key.

    Beyond the schema only what it cannot express: ``exclude_text_pattern`` must compile,
    ``label_names`` and ``label_values`` must have the same length. Keys set to null count as
    absent (library callers write ``filter=None``).
    """
    from ntps.config import check_definition

    spec = {"name": name, **{k: v for k, v in dict(spec).items() if v is not None}}
    spec = check_definition(
        json.loads(json.dumps(spec, default=str)),
        "dataset",
        f"dataset {name!r}",
        fill_defaults=True,
    )
    del spec["name"]
    for key in WORKFLOW_ONLY_KEYS:
        spec.pop(key, None)
    spec["text_columns"] = _as_list(spec["text_columns"])
    split = spec.get("split")
    if split is not None and "test_fraction" in split:
        split.setdefault("seed", DEFAULT_SPLIT_SEED)
    pattern = spec.get("exclude_text_pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"dataset {name!r}: exclude_text_pattern {pattern!r} is not a valid regular "
                f"expression: {exc}"
            ) from exc
    if spec.get("label_names") is not None and spec.get("label_values") is not None:
        if len(spec["label_names"]) != len(spec["label_values"]):
            raise ConfigError(f"dataset {name!r}: label_names and label_values differ in length")
    return spec


def _resolve_split(
    spec: Mapping[str, Any], available: Sequence[str], dataset: str
) -> dict[str, Any]:
    split = spec.get("split")
    if split is None:
        if "train" in available and "test" in available:
            return {"train": "train", "test": "test"}
        return {"test_fraction": DEFAULT_TEST_FRACTION, "seed": DEFAULT_SPLIT_SEED}
    names = [*_as_list(split.get("train", [])), *_as_list(split.get("test", [])),
             *_as_list(split.get("from", []))]  # fmt: skip
    missing = [n for n in names if n not in available]
    if missing:
        raise DatasetError(
            f"dataset {dataset!r}: split refers to source split(s) {missing}; the source has "
            f"{list(available)}"
        )
    return dict(split)


def prepare_dataset(name: str, spec: Mapping[str, Any], cache_dir: Path | str) -> PreparedDataset:
    """Acquire, filter, clean, encode, validate, split and cap one dataset (see module docstring)."""
    spec = normalise_spec(name, spec)
    source = spec["source"]
    tables, source_info = acquire_tables(source, Path(cache_dir), dataset=name)
    split = _resolve_split(spec, list(tables), name)

    if "test_fraction" in split:
        pooled = _as_list(split.get("from", list(tables)))
        parts = [(t, None) for t in pooled]
    else:
        parts = [(t, "train") for t in _as_list(split["train"])]
        parts += [(t, "test") for t in _as_list(split["test"])]

    drops = dict.fromkeys(DROP_KEYS, 0)
    needed = [*spec["text_columns"], spec["label_column"]]
    filt = spec.get("filter")
    texts: list[Any] = []
    raw_labels: list[Any] = []
    assigned: list[str | None] = []
    n_raw = 0
    for table_name, assigned_split in parts:
        table = tables[table_name]
        where = "source table" if table_name == ALL else f"source split {table_name!r}"
        check_columns(table, needed, dataset=name, where=where)
        for key, count in table.attrs.get("ntps_drops", {}).items():
            drops[key] = drops.get(key, 0) + int(count)  # rows the reader already removed
            n_raw += int(count)
        n_raw += len(table)
        if filt:
            keep = filter_mask(table, filt, dataset=name)
            drops["filtered"] += int((~keep).sum())
            table = table[keep]
        texts += join_text_columns(
            table, spec["text_columns"], spec["text_separator"], dataset=name
        ).tolist()
        raw_labels += table[spec["label_column"]].tolist()
        assigned += [assigned_split] * len(table)

    cleaned, keep, counts = clean_texts(texts)
    drops["empty"] += counts["empty"]
    drops["undecodable"] += counts["undecodable"]
    if spec.get("exclude_text_pattern") is not None:
        pattern = re.compile(spec["exclude_text_pattern"])
        for i, text in enumerate(cleaned):
            if keep[i] and pattern.search(text):
                keep[i] = False
                drops["excluded_pattern"] += 1
    canon = [canonical_value(v) for v in raw_labels]
    for i, value in enumerate(canon):
        if keep[i] and (value is None or value == ""):
            keep[i] = False
            drops["missing_label"] += 1
    if spec["drop_duplicates"]:
        # Train rows come first, so a text seen in both splits stays in train.
        order = sorted(range(len(cleaned)), key=lambda i: (assigned[i] == "test", i))
        seen: set[str] = set()
        for i in order:
            if keep[i]:
                if cleaned[i] in seen:
                    keep[i] = False
                    drops["duplicate"] += 1
                seen.add(cleaned[i])
    index = np.flatnonzero(keep)
    if index.size == 0:
        raise DatasetError(
            f"dataset {name!r}: no usable rows left out of {n_raw} (dropped: {drops}); check "
            "text_columns, filter and encoding"
        )
    texts_kept = [cleaned[i] for i in index]
    split_kept = [assigned[i] for i in index]

    label_values = spec.get("label_values")
    codes, label_names = encode_labels([canon[i] for i in index], label_values, dataset=name)
    hub_names = source_info.get("class_label_names", {}).get(spec["label_column"])
    if spec.get("label_names") is not None:
        if len(spec["label_names"]) != len(label_names):
            raise ConfigError(
                f"dataset {name!r}: label_names has {len(spec['label_names'])} entries but the data "
                f"has {len(label_names)} classes {label_names}"
            )
        label_names = [str(n) for n in spec["label_names"]]
    elif hub_names and label_values is None and all(INT_RE.match(n) for n in label_names):
        label_names = [
            hub_names[int(n)] if 0 <= int(n) < len(hub_names) else n for n in label_names
        ]

    n_classes = len(label_names)
    present = np.bincount(codes, minlength=n_classes)
    if n_classes < 2 or (present > 0).sum() < 2:
        found = [n for n, c in zip(label_names, present, strict=True) if c]
        raise DatasetError(
            f"dataset {name!r}: needs at least 2 classes in label column "
            f"{spec['label_column']!r}, found {found} after filtering/cleaning; check "
            "label_column, filter and the source data"
        )
    absent = [n for n, c in zip(label_names, present, strict=True) if c == 0]
    if absent:
        raise DatasetError(f"dataset {name!r}: declared label(s) {absent} have no examples")

    if "test_fraction" in split:
        few = [(label_names[k], int(c)) for k, c in enumerate(present) if c < 2]
        if few:
            raise DatasetError(
                f"dataset {name!r}: class(es) {few} (name, count) have fewer than 2 examples, too "
                "few for a train/test split (each split needs >= 1); filter them out or add data"
            )
        is_test = stratified_split(codes, float(split["test_fraction"]), int(split["seed"]))
        split_arr = np.where(is_test, "test", "train")
    else:
        split_arr = np.array(split_kept, dtype=object)
        for part in SPLITS:
            per = np.bincount(codes[split_arr == part], minlength=n_classes)
            few = [(label_names[k], int(c)) for k, c in enumerate(per) if c < 1]
            if few:
                raise DatasetError(
                    f"dataset {name!r}: class(es) {few} (name, count) have no examples in the "
                    f"{part} split; every class needs >= 1 example in train and in test"
                )

    selected: dict[str, np.ndarray] = {}
    n_available: dict[str, int] = {}
    for offset, part in enumerate(SPLITS):
        rows = np.flatnonzero(split_arr == part)
        n_available[part] = int(rows.size)
        cap = spec.get(f"max_{part}")
        if cap is not None and cap < rows.size:
            n_present = len(np.unique(codes[rows]))
            if cap < n_present:
                raise DatasetError(
                    f"dataset {name!r}: max_{part}={cap} is smaller than the {n_present} classes; "
                    f"raise it to at least {n_present}"
                )
            rows = rows[stratified_subsample(codes[rows], cap, int(spec["seed"]) * 2 + offset)]
        selected[part] = rows

    order = np.concatenate([selected["train"], selected["test"]])
    frame = pd.DataFrame(
        {
            "text": pd.Series([texts_kept[i] for i in order], dtype=str),
            "label": codes[order].astype(np.int64),
            "split": pd.Series(
                ["train"] * len(selected["train"]) + ["test"] * len(selected["test"]), dtype=str
            ),
        }
    )
    source_info.pop("class_label_names", None)
    prepared = PreparedDataset(
        name=name,
        frame=frame,
        label_names=label_names,
        drops=drops,
        fingerprint=fingerprint_table(frame, label_names),
        n_raw=n_raw,
        n_available=n_available,
        source=source_info,
        spec=json.loads(json.dumps(spec, default=str)),
    )
    LOG.info(
        "dataset %s: %d train / %d test, %d classes, dropped %s", name, len(selected["train"]),
        len(selected["test"]), n_classes, drops,
    )  # fmt: skip
    return prepared


def write_prepared(
    prepared: PreparedDataset,
    parquet_path: str | os.PathLike[str],
    json_path: str | os.PathLike[str],
) -> None:
    """Write ``data.parquet`` (text, label, split) and ``dataset.json`` (metadata), atomically."""
    write_table(parquet_path, prepared.frame)
    write_json(json_path, prepared.metadata())


def load_prepared(
    parquet_path: str | os.PathLike[str], json_path: str | os.PathLike[str]
) -> PreparedDataset:
    """Read back what write_prepared wrote; DatasetError if the table does not match its fingerprint.

    The one reader of a prepared table for the workflow's stages (extraction, LoRA): a table edited
    or replaced after preparation would otherwise be scored under the record of another one.
    """
    from ntps.io import read_json

    frame = pd.read_parquet(parquet_path)
    meta = read_json(json_path)
    fingerprint = fingerprint_table(frame, meta["label_names"])
    if fingerprint != meta.get("fingerprint"):
        raise DatasetError(
            f"dataset {meta.get('name')!r}: the table {str(parquet_path)!r} does not match the "
            f"fingerprint recorded in {str(json_path)!r} (the table changed after it was "
            "prepared); prepare the dataset again, e.g. `snakemake --forcerun prepare_dataset`"
        )
    return PreparedDataset(
        name=meta["name"], frame=frame, label_names=list(meta["label_names"]),
        drops=dict(meta.get("drops", {})), fingerprint=fingerprint, n_raw=int(meta.get("n_raw", 0)),
        n_available=dict(meta.get("n_available", {})), source=meta.get("source", {}),
        spec=meta.get("spec", {}),
    )  # fmt: skip
