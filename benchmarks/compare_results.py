"""Compare the results of two runs of a study, file by file: are they the same study?

    python benchmarks/compare_results.py RUN_A RUN_B [--rtol 1e-9] [--ignore-columns ntps_released]

RUN_A and RUN_B are two working folders of the same config (each with a ``results/`` folder), e.g.
clean clones of two commits. Every file under ``results/`` except logs, benchmarks and plots (PDF and
PNG embed creation dates) is compared:

- byte for byte first;
- else, JSON files as data without the fields that record how long a job took or which code and
  folder made it (``provenance``, timing fields such as the score and predictors JSONs'
  ``seconds``, the model folder's path; paths inside run A's
  folder read as run B's), and peft's
  ``adapter_config.json`` up to the order of ``target_modules`` (peft writes a set, whose order
  follows ``PYTHONHASHSEED``);
- safetensors files as tensors (every key, every value) and their metadata without provenance;
  statistics as statistics: a symmetric sum stored as its upper triangle (``<key>.triu``,
  ``storage.compact_statistics``) is compared as the full matrix it stands for, and post-LoRA
  statistics that hold only the recomputed states (metadata ``first_recomputed_state``) are
  compared on those states;
- CSV tables as frames without timing columns;

numbers (JSON, tensors, tables) equal or, with ``--rtol``, within that relative tolerance.

Files only one run has are differences, except those matching a ``--layout-change`` glob (a file
a layout change added or removed on purpose), which are listed apart.

Prints one line per file that differs, a count of each outcome and exits 1 if any file differs.
Used for the byte-identity checks of restructurings and optimisations (docs/performance.md).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors import safe_open

SKIPPED_FOLDERS = ("logs/", "benchmarks/", "plots/")
#: JSON fields (at any depth) that record time or origin, not a result. ``seconds``: the compute
#: time of each predictor (predictors JSONs), of NTPS (score JSONs, ``seconds.ntps``) and of an
#: extraction split (``extract.json``).
VOLATILE_FIELDS = {
    "provenance", "seconds", "wall_time_s", "train_time_s_total", "seconds_per_step",
    "model_dir", "load_seconds", "forward_seconds", "tokens_per_second",
}  # fmt: skip
#: Table columns that record time.
TIMING_COLUMNS = {"seconds", "job_seconds", "seconds_per_pair", "job_seconds_per_pair"}
#: Text files whose lines print timing columns (the summary's cost column): compared line by line
#: with those lines left out.
TIMED_TEXT = {"summary.md": ("(score)", "(jackknife+score)", "(predictors)", "(probe)")}


def _volatile(key: str) -> bool:
    return key in VOLATILE_FIELDS or key.endswith(("_seconds", "_s"))


def strip_volatile(value: Any) -> Any:
    """The JSON value without fields that record time or origin, at any depth."""
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if not _volatile(k)}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def json_close(x: Any, y: Any, rtol: float) -> bool:
    """Equal JSON values, numbers within ``rtol`` relative (booleans and ints exactly)."""
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(json_close(x[k], y[k], rtol) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(json_close(u, v, rtol) for u, v in zip(x, y, strict=True))
    if isinstance(x, float) and isinstance(y, float):
        return x == y or abs(x - y) <= rtol * max(abs(x), abs(y))
    return x == y


def compare_json(
    a: Path, b: Path, folders: tuple[str, str] = ("", ""), rtol: float = 0.0
) -> str | None:
    """JSON content without volatile fields; paths inside run A's folder are read as run B's."""
    text_a = a.read_text().replace(folders[0], folders[1]) if folders[0] else a.read_text()
    x, y = strip_volatile(json.loads(text_a)), strip_volatile(json.loads(b.read_text()))
    if a.name == "adapter_config.json":
        for record in (x, y):
            record["target_modules"] = sorted(record.get("target_modules") or [])
    if x == y or (rtol and json_close(x, y, rtol)):
        return None
    if isinstance(x, dict) and isinstance(y, dict):
        keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
        return f"fields differ: {keys}"
    return "content differs"


def _tensors(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    with safe_open(path, "np") as handle:
        metadata = {k: v for k, v in (handle.metadata() or {}).items() if "provenance" not in k}
        return metadata, {key: handle.get_tensor(key) for key in handle.keys()}


def _relative_difference(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    both_nan = np.isnan(x) & np.isnan(y)
    scale = np.maximum(np.abs(x), np.abs(y))
    diff = np.where(both_nan, 0.0, np.abs(x - y) / np.where(scale > 0, scale, 1.0))
    return float(np.nanmax(diff, initial=0.0)) if diff.size else 0.0


PACKED_SUFFIX = ".triu"


def _unpacked(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Statistics with every upper-triangle key (``<key>.triu``) replaced by its full matrix."""
    out = {}
    for key, value in tensors.items():
        if not key.endswith(PACKED_SUFFIX):
            out[key] = value
            continue
        d = (int(np.sqrt(8 * value.size + 1)) - 1) // 2
        full = np.zeros((d, d), dtype=value.dtype)
        rows, cols = np.triu_indices(d)
        full[rows, cols] = value
        full[cols, rows] = value
        out[key[: -len(PACKED_SUFFIX)]] = full
    return out


def _recomputed_only(meta: dict[str, str], tensors: dict[str, np.ndarray], other: dict) -> dict:
    """``other`` restricted to the states ``tensors`` holds when ``tensors`` are post-LoRA
    statistics of the recomputed states only (``first_recomputed_state`` in ``meta``)."""
    first = int(meta.get("first_recomputed_state", 0))
    if not first or any(k.startswith("layer0.") for k in tensors):
        return other
    return {k: v for k, v in other.items() if not k.startswith("layer") or k in tensors}


def compare_tensors(a: Path, b: Path, rtol: float) -> str | None:
    meta_a, tensors_a = _tensors(a)
    meta_b, tensors_b = _tensors(b)
    tensors_a, tensors_b = _unpacked(tensors_a), _unpacked(tensors_b)
    tensors_a = _recomputed_only(meta_b, tensors_b, tensors_a)
    tensors_b = _recomputed_only(meta_a, tensors_a, tensors_b)
    if meta_a != meta_b:
        return "metadata differs"
    if set(tensors_a) != set(tensors_b):
        return f"keys differ: {sorted(set(tensors_a) ^ set(tensors_b))[:5]}"
    worst = 0.0
    for key, x in tensors_a.items():
        y = tensors_b[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{key}: shape or dtype differs"
        if not np.array_equal(x, y, equal_nan=np.issubdtype(x.dtype, np.floating)):
            worst = max(worst, _relative_difference(x, y))
    if worst == 0.0:
        return None
    return None if worst <= rtol else f"largest relative difference {worst:.3g}"


def compare_table(a: Path, b: Path, rtol: float, ignore: Iterable[str]) -> str | None:
    x, y = pd.read_csv(a), pd.read_csv(b)
    drop = TIMING_COLUMNS | set(ignore)
    x, y = x.drop(columns=[c for c in x if c in drop]), y.drop(columns=[c for c in y if c in drop])
    if list(x.columns) != list(y.columns) or len(x) != len(y):
        return "columns or rows differ"
    worst = 0.0
    for column in x.columns:
        cx, cy = x[column], y[column]
        if pd.api.types.is_numeric_dtype(cx) and pd.api.types.is_numeric_dtype(cy):
            if not np.array_equal(cx.to_numpy(), cy.to_numpy(), equal_nan=True):
                worst = max(worst, _relative_difference(cx.to_numpy(), cy.to_numpy()))
        elif not cx.fillna("").astype(str).equals(cy.fillna("").astype(str)):
            return f"column {column!r} differs"
    if worst == 0.0:
        return None
    return None if worst <= rtol else f"largest relative difference {worst:.3g}"


def compare_text(a: Path, b: Path) -> str | None:
    markers = TIMED_TEXT.get(a.name, ())

    def kept(path: Path) -> list[str]:
        return [
            line for line in path.read_text().splitlines() if not any(m in line for m in markers)
        ]

    return None if kept(a) == kept(b) else "text differs"


def compare_file(
    a: Path, b: Path, rtol: float, ignore: Iterable[str], folders: tuple[str, str] = ("", "")
) -> tuple[str, str | None]:
    """('identical' | 'equal' | 'different', why)."""
    if a.read_bytes() == b.read_bytes():
        return "identical", None
    if a.suffix == ".json":
        why = compare_json(a, b, folders, rtol)
    elif a.suffix == ".safetensors":
        why = compare_tensors(a, b, rtol)
    elif a.suffix == ".csv":
        why = compare_table(a, b, rtol, ignore)
    elif a.suffix == ".parquet":
        why = "parquet differs (compare its .csv)" if a.with_suffix(".csv").exists() else "differs"
        if a.with_suffix(".csv").exists():
            return "equal", None  # the CSV beside it carries the same frame and is compared
    elif a.suffix in (".md", ".txt", ".rst"):
        why = compare_text(a, b)
    else:
        why = "bytes differ"
    return ("equal", None) if why is None else ("different", why)


def result_files(root: Path) -> dict[str, Path]:
    results = root / "results"
    return {
        str(path.relative_to(results)): path
        for path in sorted(results.rglob("*"))
        if path.is_file() and not str(path.relative_to(results)).startswith(SKIPPED_FOLDERS)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numbers")
    parser.add_argument("--ignore-columns", nargs="*", default=[], help="table columns to skip")
    parser.add_argument(
        "--layout-change",
        nargs="*",
        default=[],
        help="globs (relative to results/) of files one run has on purpose and the other not",
    )
    args = parser.parse_args(argv)
    files_a, files_b = result_files(args.run_a), result_files(args.run_b)
    counts = {"identical": 0, "equal": 0, "different": 0}
    moved = {"A": 0, "B": 0}
    for name in sorted(set(files_a) ^ set(files_b)):
        side = "A" if name in files_a else "B"
        if any(fnmatch.fnmatch(name, pattern) for pattern in args.layout_change):
            moved[side] += 1
            continue
        counts["different"] += 1
        print(f"only in {side}: {name}")
    if moved["A"] or moved["B"]:
        print(f"layout change: {moved['A']} files only in A, {moved['B']} only in B (expected)")
    for name in sorted(set(files_a) & set(files_b)):
        folders = (str(args.run_a.resolve()), str(args.run_b.resolve()))
        outcome, why = compare_file(
            files_a[name], files_b[name], args.rtol, args.ignore_columns, folders
        )
        counts[outcome] += 1
        if why:
            print(f"differs: {name}: {why}")
    print(
        f"{counts['identical']} byte-identical, {counts['equal']} equal but for timing/provenance"
        f"{f' (rtol {args.rtol:g})' if args.rtol else ''}, {counts['different']} different"
    )
    return 1 if counts["different"] else 0


if __name__ == "__main__":
    sys.exit(main())
