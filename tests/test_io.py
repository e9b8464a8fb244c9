"""Output writers: byte-stable safetensors and JSON for identical content."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from ntps.io import load_tensors, save_tensors, write_json


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
