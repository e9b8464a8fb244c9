"""Format readers: one file's bytes (or a folder of class folders) -> a raw pandas table.

Formats: csv, tsv, json, jsonl, parquet, orange_tab, trec_questions, folder_per_class; a
``.bz2``/``.gz``/``.xz`` suffix is decompressed first. Text is decoded keeping undecodable bytes
as lone surrogates, which preparation later drops and counts (:data:`SURROGATE_RE`).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ntps.errors import ConfigError, DatasetError

FORMATS = (
    "csv", "tsv", "json", "jsonl", "parquet", "orange_tab", "trec_questions", "folder_per_class",
)  # fmt: skip
# Undecodable bytes survive decoding as lone surrogates (errors="surrogateescape").
SURROGATE_RE = re.compile("[\ud800-\udfff]")
_COMPRESSION = {".bz2": bz2.decompress, ".gz": gzip.decompress, ".xz": lzma.decompress}
_SUFFIX_FORMATS = {
    ".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".pq": "parquet", ".tab": "orange_tab",
}  # fmt: skip


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
    bad = [str(c) for c in frame.columns if SURROGATE_RE.search(str(c))]
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
