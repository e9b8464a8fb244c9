"""Atomic output writers and provenance records (code revision, package versions).

Every writer writes to a temporary file in the destination folder and renames it into place, so a
killed job never leaves a partial file under the final name (rename is atomic on POSIX). Folders
are written the same way (:func:`atomic_directory`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)

PROVENANCE_PACKAGES = (
    "ntps",
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "snakemake",
)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 and some writers (safetensors) recreate the file, so set the mode
        # last: results are meant to be shared.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds.

    Whatever ``path`` was before (a folder, a file, a symlink) is renamed aside, the new folder
    renamed into place, then the old one removed: a reader sees the old or the new folder, never a
    half-written one. A failed block leaves ``path`` untouched and removes the temporary folder.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        # mkdtemp creates 0700; like atomic_path's files, the folder is meant to be shared.
        os.chmod(tmp, 0o777 & ~_UMASK)
        _replace_directory(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_directory(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``final``, replacing whatever is there."""
    if not (final.exists() or final.is_symlink()):
        os.replace(tmp, final)
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, old)
    os.replace(tmp, final)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every reader agrees."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as pretty, key-sorted JSON (byte-stable for identical data), atomically."""
    text = json.dumps(
        _finite_or_none(json.loads(json.dumps(data, default=_json_default))),
        indent=2,
        sort_keys=True,
        allow_nan=False,
    )
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Any],
    metadata_: Mapping[str, str] | None = None,
) -> None:
    """Save a dict of torch tensors, or of numpy arrays, as safetensors, atomically.

    numpy arrays are written without importing torch (~1.5 s per job: the probe job needs none);
    the file is the same, byte for byte, as for the equal torch tensors.
    """
    import numpy as np

    if tensors and all(isinstance(v, np.ndarray) for v in tensors.values()):
        from safetensors.numpy import save_file

        contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    else:
        from safetensors.torch import save_file

        contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata=dict(metadata_) if metadata_ else None)
        _sort_safetensors_header(tmp)


def _sort_safetensors_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys, in place.

    safetensors serialises the metadata from a hash map, so identical tensors and metadata come
    out in a different byte order from run to run; sorting makes the file byte-stable. The JSON
    has the same length whatever its key order, so only the header bytes change.
    """
    with open(path, "r+b") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(text) > length:  # cannot happen for a header safetensors wrote; keep it as is
            return
        handle.seek(8)
        handle.write(text.ljust(length, b" "))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_tensors(path: str | os.PathLike[str], keys: list[str] | None = None) -> dict[str, Any]:
    """Load all tensors, or only ``keys`` (lazily, without reading the others)."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in keys if keys is not None else f.keys():
            out[key] = f.get_tensor(key)
    return out


def load_tensor_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def write_table(path: str | os.PathLike[str], frame: Any) -> None:
    """Write a pandas DataFrame as CSV or Parquet (by suffix), atomically and deterministically."""
    suffix = Path(path).suffix
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False, float_format="%.10g", lineterminator="\n")
        elif suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            raise ValueError(f"unsupported table format {suffix!r} for {path}")


def package_versions(names: tuple[str, ...] = PROVENANCE_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        if name == "ntps":
            # The code that ran (jobs import it from the workflow's src/), not whichever
            # distribution is installed: ours is ntps-workflow, and PyPI's "ntps" is another project.
            from ntps import __version__

            versions[name] = __version__
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# The checkout the package runs from when it is a workflow's own src/ntps (src/ntps/io.py -> root).
_CHECKOUT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    """Output of a git command in the workflow checkout, or None when git cannot answer."""
    try:
        done = subprocess.run(
            ["git", "-C", str(_CHECKOUT), *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_revision() -> dict[str, Any]:
    """Which code made an output: the git commit of the workflow checkout the package was imported
    from, and whether tracked files differed from it (``dirty``); outside a checkout (an installed
    package, a module loaded from a remote host) only the package version is known.

    The version alone ("0.1.0") names every commit between two releases; the commit names one.
    """
    from ntps import __version__

    record: dict[str, Any] = {"version": __version__, "git_revision": None, "git_dirty": None}
    # Only when the package is this checkout's src/ntps: an installed copy inside some other
    # repository (a virtual environment in a project folder) must not report that repository.
    toplevel = _git("rev-parse", "--show-toplevel")
    if toplevel is None or Path(toplevel).resolve() != _CHECKOUT:
        return record
    revision = _git("rev-parse", "HEAD")
    # Untracked files (results/, resources/ are ignored anyway) do not change the code that ran.
    status = _git("status", "--porcelain", "--untracked-files=no")
    if revision is not None:
        record.update(git_revision=revision, git_dirty=None if status is None else bool(status))
    return record


def provenance(**extra: Any) -> dict[str, Any]:
    """What produced an output: the code revision, package versions, Python, plus caller-supplied
    seeds/hashes."""
    return {
        "code": code_revision(),
        "python": platform.python_version(),
        "packages": package_versions(),
        **extra,
    }
