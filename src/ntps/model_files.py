"""A model folder's files as the user gave them: which one cannot be read, and the
:class:`~ntps.errors.ModelSourceError` that names it when a library fails to load the model.

transformers, tokenizers and safetensors report a broken file in their own words, often without
its path (safetensors: ``Error while deserializing header: invalid header length``). Every load
of a model's config, tokenizer or weights runs inside :func:`loading_model_files`, which turns
such an error into a message naming the model, the file and what to do. Imports neither torch
nor transformers.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ntps.errors import ModelSourceError

# How a model acquired from elsewhere than a local folder is fetched again.
REACQUIRE = (
    "for a model from the hub or PyPI, acquire it again: `snakemake --forcerun acquire_model`"
)


def unreadable_file(folder: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """The first file of ``folder`` (top level) that cannot be read, and why; None if all can.

    Checks what is cheap to check without loading the model: every ``*.json`` (config, tokenizer,
    weight index) parses, and every ``*.safetensors`` file's header parses and covers the file
    (safetensors reads the header only: a truncated file fails here).
    """
    from safetensors import safe_open

    folder = Path(folder)
    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
            return path, f"{type(exc).__name__}: {exc}"
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as exc:  # SafetensorError, or OSError for a dangling link
            return path, f"{type(exc).__name__}: {exc}"
    return None


def _shown(path: Path, shown_dir: Path | None) -> str:
    """The path a user recognises: a local model's own file (acquisition links to it), else the
    file under ``shown_dir`` (the final folder, when ``path`` is in a temporary one)."""
    if path.is_symlink():
        return str(path.resolve())
    return str(shown_dir / path.name if shown_dir is not None else path)


def damaged_file_error(
    name: str, path: Path, why: str, what: str | None = None, shown_dir: Path | None = None
) -> ModelSourceError:
    """Model ``name``'s file ``path`` cannot be read (``why``); ``what`` was being loaded."""
    loading = f"cannot load its {what}: " if what else ""
    return ModelSourceError(
        f"model {name!r}: {loading}file {_shown(path, shown_dir)!r} is damaged or incomplete "
        f"({why}); replace it with a complete copy (an interrupted download or copy leaves a "
        f"truncated file) and run again, or, {REACQUIRE}"
    )


def missing_folder_error(name: str, folder: str | os.PathLike[str]) -> ModelSourceError:
    return ModelSourceError(
        f"model {name!r}: model folder {str(folder)!r} does not exist; run the acquisition step "
        "first (snakemake runs it before any job that loads the model)"
    )


def check_model_files(
    name: str, folder: str | os.PathLike[str], shown_dir: str | os.PathLike[str] | None = None
) -> None:
    """Raise a ModelSourceError naming the first file of ``folder`` that cannot be read."""
    found = unreadable_file(folder)
    if found is not None:
        shown = Path(shown_dir) if shown_dir is not None else None
        raise damaged_file_error(name, *found, shown_dir=shown)


def load_error(
    name: str,
    folder: str | os.PathLike[str],
    what: str,
    exc: Exception,
    shown_dir: str | os.PathLike[str] | None = None,
) -> ModelSourceError | None:
    """The ModelSourceError for ``exc``, raised while loading model ``name``'s ``what`` (config,
    tokenizer, weights) from ``folder``; None when nothing points at the folder's files.

    The file that cannot be read when there is one; else, for the errors a bad or incomplete
    folder raises (OSError, ValueError, SafetensorError), the folder. Anything else is left to
    propagate with its traceback: it is more likely a bug than bad input.
    """
    from safetensors import SafetensorError

    folder = Path(folder)
    shown = Path(shown_dir) if shown_dir is not None else None
    if not folder.is_dir():
        return missing_folder_error(name, shown or folder)
    found = unreadable_file(folder)
    if found is not None:
        return damaged_file_error(name, *found, what=what, shown_dir=shown)
    if isinstance(exc, OSError | ValueError | SafetensorError):
        return ModelSourceError(
            f"model {name!r}: transformers cannot load its {what} from folder "
            f"{str(shown or folder)!r} ({type(exc).__name__}: {exc}). Check that the folder holds "
            f"a complete transformers model (config.json, weights, tokenizer files), or, "
            f"{REACQUIRE}"
        )
    return None


@contextlib.contextmanager
def loading_model_files(
    name: str,
    folder: str | os.PathLike[str],
    what: str,
    shown_dir: str | os.PathLike[str] | None = None,
) -> Iterator[None]:
    """Run a load of model ``name``'s ``what`` from ``folder``; a library error that
    :func:`load_error` can explain becomes its ModelSourceError (the library's error chained)."""
    try:
        yield
    except ModelSourceError:
        raise
    except Exception as exc:
        error = load_error(name, folder, what, exc, shown_dir)
        if error is None:
            raise
        raise error from exc
