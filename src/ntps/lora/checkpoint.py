"""Random state and checkpoints: what makes an interrupted LoRA run resume to the same result.

A checkpoint (``step-00000012/``: ``trainable.safetensors`` + ``state.pt``) holds the trainable
parameters, optimizer, scheduler and RNG states, the loss curve so far, and the run key: what the
trajectory depends on (settings, length limit, initial head, data). A checkpoint made under another
run key is refused, never silently continued.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntps.errors import ConfigError
from ntps.io import atomic_directory, load_tensors, save_tensors
from ntps.lora.classifier import LoRAClassifier
from ntps.lora.settings import LoRASettings

# Settings that do not change the training trajectory, so a checkpoint stays valid if they change.
_NON_TRAJECTORY_KEYS = ("eval_batch_size", "checkpoint_every")
_CHECKPOINT_PREFIX = "step-"


# --------------------------------------------------------------------------------------------
# RNG state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    # The global numpy state is seeded for third-party code that uses it; ours uses Generators.
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_to_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuples(obj: Any) -> Any:
    # random.setstate wants tuples; a saved state may come back with lists.
    return tuple(_to_tuples(x) for x in obj) if isinstance(obj, list | tuple) else obj


# --------------------------------------------------------------------------------------------
# the run key


def run_key(
    settings: LoRASettings,
    max_length: int,
    classifier: LoRAClassifier,
    n_classes: int,
    texts: Sequence[str],
    labels: Sequence[int],
) -> dict[str, Any]:
    """What the training trajectory depends on; a checkpoint resumes only a run with the same key.

    ``classifier`` is the untrained classifier (its head as it starts); ``texts`` and ``labels``
    are the training split.
    """
    return {
        "settings": {k: v for k, v in settings.to_dict().items() if k not in _NON_TRAJECTORY_KEYS},
        "max_length": max_length,
        "head": _tensor_digest(classifier.head.weight, classifier.head.bias),
        "n_classes": n_classes,
        "data": _fingerprint(texts, labels),
    }


def _tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _fingerprint(texts: Sequence[str], labels: Sequence[int]) -> str:
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
        digest.update(str(int(label)).encode())
        digest.update(b"\x01")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# checkpoints


@dataclass
class Progress:
    """How far training got: optimizer steps done, the mean loss of each, the training seconds of
    earlier (interrupted) runs, and the checkpoint this was restored from (None: a fresh start)."""

    step: int = 0
    loss_curve: list[float] = field(default_factory=list)
    time_before: float = 0.0
    restored_from: Path | None = None


def _checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    found = []
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            if path.is_dir() and path.name.startswith(_CHECKPOINT_PREFIX):
                suffix = path.name[len(_CHECKPOINT_PREFIX) :]
                if suffix.isdigit() and (path / "state.pt").exists():
                    found.append((int(suffix), path))
    return sorted(found)


def restore_latest(
    checkpoint_dir: Path,
    classifier: LoRAClassifier,
    optimizer: Any,
    scheduler: Any,
    key: Mapping[str, Any],
) -> Progress:
    """Load the latest checkpoint in ``checkpoint_dir`` into the classifier, optimizer, scheduler
    and the RNGs; a fresh :class:`Progress` when there is none. ConfigError when it was made under
    another run key or lacks a trainable parameter."""
    existing = _checkpoints(checkpoint_dir)
    if not existing:
        return Progress()
    step, path = existing[-1]
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    if state["run_key"] != key:
        raise ConfigError(
            f"checkpoint {path} was made with other settings or data than this run; delete "
            f"{checkpoint_dir} to start afresh (saved {state['run_key']['settings']}, "
            f"now {key['settings']})"
        )
    tensors = load_tensors(path / "trainable.safetensors")
    missing, _ = classifier.load_state_dict(tensors, strict=False)
    missing_trainable = [k for k in missing if k in classifier.trainable_state()]
    if missing_trainable:
        raise ConfigError(f"checkpoint {path} lacks parameters {missing_trainable[:5]}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    return Progress(
        step=step,
        loss_curve=list(state["loss_curve"]),
        time_before=float(state["train_time_s"]),
        restored_from=path,
    )


def save_checkpoint(
    checkpoint_dir: Path,
    step: int,
    classifier: LoRAClassifier,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
) -> None:
    """Write checkpoint ``step`` (``state``: run key, loss curve, training seconds) atomically,
    then remove the older ones."""
    final = checkpoint_dir / f"{_CHECKPOINT_PREFIX}{step:08d}"
    with atomic_directory(final) as tmp:
        save_tensors(tmp / "trainable.safetensors", classifier.trainable_state())
        torch.save(
            {
                **state,
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
            },
            tmp / "state.pt",
        )
    # Older checkpoints are redundant once the new one is in place.
    for old_step, path in _checkpoints(checkpoint_dir):
        if old_step != step:
            shutil.rmtree(path, ignore_errors=True)
