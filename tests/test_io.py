"""Output writers: byte-stable safetensors and JSON for identical content; atomic folders."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ntps import __version__, io
from ntps.io import atomic_directory, load_tensors, provenance, save_tensors, write_json

REPO = Path(__file__).resolve().parents[1]


def test_safetensors_bytes_do_not_depend_on_metadata_order(tmp_path: Path) -> None:
    tensors = {"layer_1.cxx": torch.arange(6.0).reshape(2, 3), "n": torch.tensor([3])}
    forward = {f"key_{i}": str(i) for i in range(12)}
    backward = dict(reversed(list(forward.items())))
    save_tensors(tmp_path / "a.safetensors", tensors, forward)
    save_tensors(tmp_path / "b.safetensors", tensors, backward)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as handle:
        assert handle.metadata() == forward
    loaded = load_tensors(tmp_path / "a.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_json_is_key_sorted_and_nan_becomes_null(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"b": float("nan"), "a": [1.5, float("inf")]})
    assert (
        tmp_path / "a.json"
    ).read_text() == '{\n  "a": [\n    1.5,\n    null\n  ],\n  "b": null\n}\n'
    assert not list(tmp_path.glob(".*.tmp"))


class Failed(Exception):
    pass


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "out" / "adapter"
    with atomic_directory(final) as tmp:
        assert tmp.parent == final.parent and not final.exists()
        (tmp / "a.txt").write_text("new")
    assert [p.name for p in final.parent.iterdir()] == ["adapter"]  # no temp folder left
    assert (final / "a.txt").read_text() == "new"
    # Shared like the files atomic_path writes, not mkdtemp's 0700.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(final.stat().st_mode) == 0o777 & ~umask

    # A failed block leaves the previous folder as it was and no temp folder.
    with pytest.raises(Failed), atomic_directory(final) as tmp:
        (tmp / "b.txt").write_text("partial")
        raise Failed
    assert [p.name for p in final.parent.iterdir()] == ["adapter"]
    assert [p.name for p in final.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("before", ["folder", "file", "symlink", "dangling symlink"])
def test_atomic_directory_replaces_what_was_there(tmp_path: Path, before: str) -> None:
    final, elsewhere = tmp_path / "weights", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    if before == "folder":
        final.mkdir()
        (final / "old.txt").write_text("old")
    elif before == "file":
        final.write_text("old")
    elif before == "symlink":
        final.symlink_to(elsewhere, target_is_directory=True)
    else:
        final.symlink_to(tmp_path / "gone", target_is_directory=True)
    with atomic_directory(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert final.is_dir() and not final.is_symlink()
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "weights"]
    assert (elsewhere / "keep.txt").read_text() == "keep"  # a symlink's target is not removed


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout"
)
def test_provenance_records_the_commit_of_the_checkout() -> None:
    io.code_revision.cache_clear()
    code = provenance()["code"]
    assert code["version"] == __version__
    assert code["git_revision"] == _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    assert code["git_dirty"] is dirty


def test_provenance_outside_a_checkout_records_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An installed package: its folder is no git checkout, so only the version names the code.
    monkeypatch.setattr(io, "_CHECKOUT", tmp_path)
    io.code_revision.cache_clear()
    try:
        assert provenance(seed=3)["code"] == {
            "version": __version__,
            "git_revision": None,
            "git_dirty": None,
        }
    finally:
        io.code_revision.cache_clear()
