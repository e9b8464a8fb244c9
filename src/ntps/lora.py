"""LoRA fine-tuning of a causal LM's base model with a linear classification head (docs/method.md section 5).

The classifier is the base model (no LM head) wrapped with peft LoRA adapters, plus a linear head on
the masked mean-pooled LAST layer: ``last_hidden_state``, i.e. after the final norm, the tensor the
extraction stores as its last hidden state (``hidden_states[-1]``; checked in tests/test_lora.py).
Texts reach it through :mod:`ntps.text`, the extraction's own tokenisation, length limit and pooling.

Two options make a small CPU budget meaningful (both in the default laptop config, neither in the
paper's recipe):

- ``head_init="probe"``: the head starts from the fitted last-layer logistic probe (passed as
  ``initial_head``), so training starts where the probe ends and the gain measures what the adapters
  add; the test split is also evaluated before the first step.
- ``top_blocks=N``: adapters on the last N blocks only. The frozen blocks below then run once per
  text (:class:`TextInputs`, :mod:`ntps.blocks`) and every step runs N blocks.

Usage::

    settings = LoRASettings.from_dict({"max_steps": 200, "learning_rate": 1e-4})
    result = train_lora_classifier(base, tok, texts, labels, 2, settings, device="cpu",
                                   test_texts=tt, test_labels=tl)
    save_lora(result, "results/lora/smollm2/sst2")

``train_lora_classifier`` injects the adapters into ``base_model`` IN PLACE (peft's way; copying a
7B model would double its memory): pass a freshly loaded model for every run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ntps.blocks import block_inputs, decoder_blocks, split_forward_matches, upper_forward
from ntps.errors import ConfigError, DatasetError, ModelSourceError, NumericalError
from ntps.io import load_tensors, read_json, save_tensors, write_json
from ntps.models import hidden_size_of
from ntps.probes import classification_metrics
from ntps.stats import StatisticsAccumulator
from ntps.text import (
    forward_kwargs,
    length_batches,
    length_limit,
    masked_mean_pool,
    pad_batch,
    pad_token_id,
    tokenize_all,
)

# Auto-detected LoRA targets, tried in order: the first group whose modules all exist wins.
# q/k/v: Llama, Qwen2, Gemma/Gemma3, Mistral, Phi-3 (split). qkv_proj: OpenELM (and fused Phi-3).
# The last two keep GPT-2 / GPT-NeoX-style test models usable.
AUTO_TARGET_GROUPS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj"),
    ("qkv_proj",),
    ("c_attn",),
    ("query_key_value",),
)
# Above this size (float32) the inputs of the first adapted block are recomputed for every batch
# instead of being kept in memory for the whole run.
STATE_CACHE_MAX_BYTES = 4 * 2**30
# Settings that do not change the training trajectory, so a checkpoint stays valid if they change.
_NON_TRAJECTORY_KEYS = ("eval_batch_size", "checkpoint_every")
_CHECKPOINT_PREFIX = "step-"
HEAD_FILE = "head.safetensors"
META_FILE = "lora_classifier.json"


@dataclass
class LoRASettings:
    """LoRA fine-tuning hyper-parameters; defaults are the paper's (r=32, alpha=32, dropout 0.05,
    q/k/v, Adafactor lr 1e-4, cosine with 5% warm-up, 5000 steps of batch 1)."""

    r: int = 32
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: auto-detect per architecture
    layers_to_transform: list[int] | None = None  # None: all layers
    top_blocks: int | None = None  # adapters on the last N blocks only (exclusive with the above)
    head_init: str = "probe"  # "probe": start from the fitted last-layer probe; "random"
    optimizer: str = "adafactor"
    learning_rate: float = 1e-4
    head_lr: float | None = None  # None: same as learning_rate
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup_ratio: float = 0.05
    max_steps: int = 5000  # optimizer steps
    batch_size: int = 1  # texts per micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    max_length: int | None = None  # tokens per text; None = the model's extraction max_length
    max_grad_norm: float = 1.0
    seed: int = 42
    eval_batch_size: int = 16
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 = off

    def __post_init__(self) -> None:
        # Every key, type and range is the config schema's ($defs/lora_settings): the values the
        # workflow accepts are exactly the ones a job accepts.
        from ntps.config import check_definition

        check_definition(dataclasses.asdict(self), "lora_settings", "lora.settings")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LoRASettings:
        """Build from a config mapping; unknown keys are an error (catches typos like ``lr``)."""
        from ntps.config import check_definition

        data = check_definition(dict(data or {}), "lora_settings", "lora.settings")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def num_warmup_steps(self) -> int:
        # Same rounding as transformers' Trainer (ceil), so 5% of 5000 steps is 250.
        return math.ceil(self.warmup_ratio * self.max_steps)


# --------------------------------------------------------------------------------------------
# target modules


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") or getattr(config, "model_type", "")
    return f"{name} ({type(model).__name__})" if name else type(model).__name__


def linear_module_names(model: nn.Module) -> list[str]:
    """Sorted distinct leaf names of the modules LoRA can adapt (Linear and GPT-2's Conv1D)."""
    names = set()
    for full_name, module in model.named_modules():
        if full_name and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"):
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_target_modules(model: nn.Module, requested: Sequence[str] | None) -> list[str]:
    """Check user-given target modules exist, or auto-detect the attention projections.

    Raises ConfigError naming the missing modules (and listing those that exist) for a bad request,
    ModelSourceError when no known attention projection is found for auto-detection.
    """
    available = linear_module_names(model)
    if requested is not None:
        missing = [name for name in requested if name not in available]
        if missing:
            raise ConfigError(
                f"lora.target_modules {missing} not found in model {_model_name(model)}; "
                f"linear modules that exist: {available}"
            )
        return list(requested)
    for group in AUTO_TARGET_GROUPS:
        if all(name in available for name in group):
            return list(group)
    raise ModelSourceError(
        f"cannot auto-detect LoRA target modules for model {_model_name(model)}: none of "
        f"{[list(g) for g in AUTO_TARGET_GROUPS]} exist; set lora.target_modules to some of: {available}"
    )


def _layers_pattern(model: nn.Module, targets: Sequence[str]) -> str:
    """Name of the module list holding the blocks (``layers`` for Llama, ``h`` for GPT-2 ...).

    peft's default layer-index regex needs a dot before the list name, which a BASE model's module
    names (``layers.0.self_attn.q_proj``) do not have, so the pattern is passed explicitly.
    """
    for full_name, _ in model.named_modules():
        if full_name.rsplit(".", 1)[-1] in targets:
            match = re.match(r"(?:^|.*?\.)([^.]+)\.\d+\.", full_name)
            if match:
                return match.group(1)
    raise ConfigError(
        f"lora.layers_to_transform is set but no numbered layer list holds the target modules "
        f"{list(targets)} in model {_model_name(model)}; remove layers_to_transform"
    )


def _num_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("num_hidden_layers", "num_transformer_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


# --------------------------------------------------------------------------------------------
# the classifier


class LoRAClassifier(nn.Module):
    """peft-wrapped base model + linear head on the masked mean-pooled last layer.

    ``start`` is the first block that has adapters when the model is run in two parts
    (:mod:`ntps.blocks`): the classifier's inputs are then the hidden states entering that block,
    computed once by the frozen lower blocks. ``start=None`` runs the whole model from token ids.
    """

    def __init__(self, peft_model: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.peft_model = peft_model
        hidden_size = hidden_size_of(peft_model.get_base_model().config)
        self.n_classes = int(n_classes)
        self.target_modules: list[str] = sorted(peft_model.peft_config["default"].target_modules)
        self.head = nn.Linear(hidden_size, self.n_classes, dtype=torch.float32)
        self.start: int | None = None
        # How texts become token ids (ntps.text.tokenize_all); set by train_lora_classifier.
        self.prompt_format = "raw"

    def last_hidden(
        self, inputs: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Last hidden state (B, T, d), after the final norm: the extraction's last layer.

        ``inputs``: token ids (B, T) when ``start`` is None, else block-``start`` inputs (B, T, d).
        """
        if self.start is None:
            out = self.peft_model(
                input_ids=inputs, **forward_kwargs(self.peft_model, attention_mask, position_ids)
            )
            return out.last_hidden_state
        last, _ = upper_forward(self.peft_model, inputs, attention_mask, position_ids, self.start)
        return last

    def forward(
        self,
        inputs: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (logits (B, c) fp32, mean cross-entropy or None)."""
        pooled = masked_mean_pool(
            self.last_hidden(inputs, attention_mask, position_ids), attention_mask
        )
        # The head runs in fp32 even under bf16 autocast: it is tiny and bf16 logits lose accuracy.
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            logits = self.head(pooled)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return logits, loss

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}


def adapted_blocks(settings: LoRASettings, n_blocks: int) -> list[int] | None:
    """Block indices that get adapters (None = all), from ``top_blocks`` or ``layers_to_transform``."""
    if settings.top_blocks is not None:
        return list(range(max(0, n_blocks - settings.top_blocks), n_blocks))
    return settings.layers_to_transform


def build_classifier(
    base_model: nn.Module, n_classes: int, settings: LoRASettings
) -> LoRAClassifier:
    """Inject LoRA adapters into ``base_model`` (in place) and add a fresh head. Uses torch's RNG."""
    from peft import LoraConfig, get_peft_model

    targets = resolve_target_modules(base_model, settings.target_modules)
    n_layers = _num_layers(base_model)
    if n_layers is None:
        n_layers = len(decoder_blocks(base_model))
    layers = adapted_blocks(settings, n_layers)
    if layers is not None:
        bad = [i for i in layers if i >= n_layers]
        if bad:
            raise ConfigError(
                f"lora.layers_to_transform {bad} out of range for model {_model_name(base_model)} "
                f"with {n_layers} layers (valid: 0..{n_layers - 1})"
            )
    layers_pattern = _layers_pattern(base_model, targets) if layers is not None else None
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        layers_pattern=layers_pattern,
        bias="none",
    )
    peft_model = get_peft_model(base_model, config)
    if not any("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad):
        raise ConfigError(
            f"LoRA with target_modules={targets} and blocks {layers} adapted no module of model "
            f"{_model_name(base_model)}"
        )
    classifier = LoRAClassifier(peft_model, n_classes)
    classifier.target_modules = targets
    return classifier


def set_head(classifier: LoRAClassifier, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Start the head from given weights (c, d) and bias (c,), e.g. a fitted probe's."""
    expected = tuple(classifier.head.weight.shape)
    if tuple(weight.shape) != expected or tuple(bias.shape) != (expected[0],):
        raise ConfigError(
            f"initial head has shape {tuple(weight.shape)} / {tuple(bias.shape)}, the classifier "
            f"needs {expected} / ({expected[0]},)"
        )
    with torch.no_grad():
        classifier.head.weight.copy_(weight.to(torch.float32))
        classifier.head.bias.copy_(bias.to(torch.float32))


# --------------------------------------------------------------------------------------------
# data


class TextInputs:
    """Texts of one split as the classifier consumes them, batch by batch.

    Token ids come from :mod:`ntps.text` (the extraction's tokenisation and length limit). When the
    classifier runs in two parts, each batch is the hidden states entering block ``start``: kept in
    memory for the whole run (computed once per text) when they fit in
    :data:`STATE_CACHE_MAX_BYTES`, else recomputed by the frozen lower blocks for every batch.
    """

    def __init__(
        self,
        classifier: LoRAClassifier,
        tokenizer: Any,
        texts: Sequence[str],
        max_length: int,
        device: torch.device,
        batch_size: int,
    ) -> None:
        self.classifier = classifier
        self.limit = length_limit(classifier.peft_model.get_base_model(), max_length)
        self.ids, self.n_truncated = tokenize_all(
            tokenizer, texts, self.limit, classifier.prompt_format
        )
        if self.ids and min(len(seq) for seq in self.ids) == 0:
            raise DatasetError("a text tokenises to no tokens; drop empty texts first")
        self.pad_id = pad_token_id(tokenizer)
        self.device = device
        self.cached: list[torch.Tensor] | None = None
        start = classifier.start
        if start is None or start == 0:
            return  # nothing below the adapters worth keeping (at most an embedding lookup)
        hidden = hidden_size_of(classifier.peft_model.get_base_model().config)
        n_tokens = sum(len(seq) for seq in self.ids)
        if n_tokens * hidden * 4 > STATE_CACHE_MAX_BYTES:
            return
        self.cached = [torch.empty(0)] * len(self.ids)
        for batch in length_batches([len(seq) for seq in self.ids], batch_size):
            input_ids, mask, positions = pad_batch(
                [self.ids[i] for i in batch], self.pad_id, device
            )
            states = block_inputs(classifier.peft_model, input_ids, mask, positions, start)
            for row, index in enumerate(batch):
                self.cached[index] = states[row, : len(self.ids[index])].detach().cpu()

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, attention_mask, position_ids) for the texts ``indices``, right-padded."""
        input_ids, mask, positions = pad_batch(
            [self.ids[i] for i in indices], self.pad_id, self.device
        )
        start = self.classifier.start
        if start is None:
            return input_ids, mask, positions
        if self.cached is None:
            return (
                block_inputs(self.classifier.peft_model, input_ids, mask, positions, start),
                mask,
                positions,
            )
        states = torch.zeros(
            (len(indices), input_ids.shape[1], self.cached[indices[0]].shape[-1]),
            dtype=self.cached[indices[0]].dtype,
        )
        for row, index in enumerate(indices):
            states[row, : len(self.ids[index])] = self.cached[index]
        return states.to(self.device), mask, positions


def configure_split(
    classifier: LoRAClassifier,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    device: torch.device,
) -> int | None:
    """Set and return ``classifier.start``: the first adapted block when only upper blocks have
    adapters and running the model in two parts reproduces its full forward on a few of ``texts``;
    otherwise None (the whole model runs from token ids at every step)."""
    classifier.start = None
    layers = classifier.peft_model.peft_config["default"].layers_to_transform
    if layers is None or not texts:
        return None
    start = min([layers] if isinstance(layers, int) else layers)
    if start == 0:
        return None
    base = classifier.peft_model.get_base_model()
    ids, _ = tokenize_all(
        tokenizer, list(texts[:4]), length_limit(base, max_length), classifier.prompt_format
    )
    input_ids, mask, positions = pad_batch(ids, pad_token_id(tokenizer), device)
    if split_forward_matches(classifier.peft_model, input_ids, mask, positions, start):
        classifier.start = start
    return classifier.start


def sample_order(n: int, seed: int, start: int, count: int) -> list[int]:
    """Indices ``start .. start+count-1`` of the training stream: one seeded permutation per epoch.

    Stateless (epoch e uses generator seed (seed, e)), so resuming at any step needs no saved state.
    """
    out: list[int] = []
    position = start
    perm_epoch, perm = -1, np.empty(0, dtype=np.int64)
    while len(out) < count:
        epoch, offset = divmod(position, n)
        if epoch != perm_epoch:
            perm = np.random.default_rng([seed, epoch]).permutation(n)
            perm_epoch = epoch
        take = min(count - len(out), n - offset)
        out.extend(int(i) for i in perm[offset : offset + take])
        position += take
    return out


def _fingerprint(texts: Sequence[str], labels: Sequence[int]) -> str:
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
        digest.update(str(int(label)).encode())
        digest.update(b"\x01")
    return digest.hexdigest()


def _check_labels(
    texts: Sequence[str], labels: Sequence[int], n_classes: int, split: str
) -> list[int]:
    if len(texts) != len(labels):
        raise DatasetError(f"LoRA {split} split: {len(texts)} texts but {len(labels)} labels")
    out = [int(y) for y in labels]
    bad = sorted({y for y in out if not 0 <= y < n_classes})
    if bad:
        raise DatasetError(
            f"LoRA {split} split: labels {bad[:10]} outside 0..{n_classes - 1} (n_classes={n_classes})"
        )
    return out


# --------------------------------------------------------------------------------------------
# optimisation


def _make_optimizer(classifier: LoRAClassifier, settings: LoRASettings) -> torch.optim.Optimizer:
    adapter = [p for n, p in classifier.peft_model.named_parameters() if p.requires_grad]
    head = list(classifier.head.parameters())
    head_lr = settings.head_lr if settings.head_lr is not None else settings.learning_rate
    groups = [
        {"params": adapter, "lr": settings.learning_rate},
        {"params": head, "lr": head_lr},
    ]
    if settings.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            groups,
            lr=settings.learning_rate,
            relative_step=False,
            scale_parameter=False,
            warmup_init=False,
            weight_decay=settings.weight_decay,
        )
    return torch.optim.AdamW(groups, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def _make_scheduler(optimizer: torch.optim.Optimizer, settings: LoRASettings) -> Any:
    from transformers import get_scheduler

    name = "constant_with_warmup" if settings.lr_schedule == "constant" else settings.lr_schedule
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=settings.num_warmup_steps(),
        num_training_steps=settings.max_steps,
    )


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when supported; CPU trains in the model's dtype (fp32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
# checkpoints


def _checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    found = []
    if checkpoint_dir.is_dir():
        for path in checkpoint_dir.iterdir():
            if path.is_dir() and path.name.startswith(_CHECKPOINT_PREFIX):
                suffix = path.name[len(_CHECKPOINT_PREFIX) :]
                if suffix.isdigit() and (path / "state.pt").exists():
                    found.append((int(suffix), path))
    return sorted(found)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename a finished temp folder onto ``final``, replacing an existing folder."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def _atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; it replaces ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        _replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _save_checkpoint(
    checkpoint_dir: Path,
    step: int,
    classifier: LoRAClassifier,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
) -> None:
    final = checkpoint_dir / f"{_CHECKPOINT_PREFIX}{step:08d}"
    with _atomic_dir(final) as tmp:
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


# --------------------------------------------------------------------------------------------
# training


@dataclass
class LoRAResult:
    """Outcome of :func:`train_lora_classifier`; ``to_dict`` gives the JSON-ready summary."""

    classifier: LoRAClassifier
    settings: LoRASettings
    target_modules: list[str]
    loss_curve: list[float]  # mean training loss of each optimizer step
    steps_done: int
    resumed_from_step: int
    wall_time_s: float  # this call
    train_time_s_total: float  # summed over resumed runs
    trainable_params: int
    n_train: int
    n_train_truncated: int
    max_length: int
    head_init: str
    first_adapted_block: int | None  # where the two-part run splits the model; None = whole
    inputs_cached: bool
    train_inputs: TextInputs | None = field(default=None, repr=False)
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    test_predictions: list[int] = field(default_factory=list)
    test_logits: torch.Tensor | None = None
    initial_test_accuracy: float | None = None
    initial_test_predictions: list[int] = field(default_factory=list)
    n_test: int = 0
    n_test_truncated: int = 0

    def to_dict(self) -> dict[str, Any]:
        first, last = quarter_means(self.loss_curve)
        return {
            "settings": self.settings.to_dict(),
            "target_modules": self.target_modules,
            "head_init": self.head_init,
            "max_length": self.max_length,
            "first_adapted_block": self.first_adapted_block,
            "inputs_cached": self.inputs_cached,
            "loss_curve": self.loss_curve,
            "loss_first_quarter": first,
            "loss_last_quarter": last,
            "steps_done": self.steps_done,
            "resumed_from_step": self.resumed_from_step,
            "wall_time_s": self.wall_time_s,
            "train_time_s_total": self.train_time_s_total,
            "seconds_per_step": (self.train_time_s_total / self.steps_done)
            if self.steps_done
            else None,
            "trainable_params": self.trainable_params,
            "n_train": self.n_train,
            "n_train_truncated": self.n_train_truncated,
            "n_test": self.n_test,
            "n_test_truncated": self.n_test_truncated,
            "initial_test_accuracy": self.initial_test_accuracy,
            "initial_test_predictions": self.initial_test_predictions,
            "test_accuracy": self.test_accuracy,
            "test_macro_f1": self.test_macro_f1,
            "test_predictions": self.test_predictions,
        }


def quarter_means(curve: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean training loss over the first and the last quarter of the steps (None if < 4 steps)."""
    quarter = len(curve) // 4
    if quarter == 0:
        return None, None
    return float(np.mean(curve[:quarter])), float(np.mean(curve[-quarter:]))


def train_lora_classifier(
    base_model: nn.Module,
    tokenizer: Any,
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    n_classes: int,
    settings: LoRASettings,
    *,
    max_length: int | None = None,
    initial_head: tuple[torch.Tensor, torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    test_texts: Sequence[str] | None = None,
    test_labels: Sequence[int] | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], Any] = print,
    on_step: Callable[[int, float], Any] | None = None,
    prompt_format: str = "raw",
) -> LoRAResult:
    """Fine-tune LoRA adapters + head with cross-entropy; evaluate on the test split if given.

    Texts are cut to ``settings.max_length`` tokens, else ``max_length`` (the extraction's), else
    512. ``initial_head`` (weight (c, d), bias (c,)) starts the head from a fitted probe; the test
    split is then also evaluated before the first step (``initial_test_*``), which reproduces the
    probe's predictions when the texts are cut as in the extraction. When adapters sit on upper
    blocks only, the frozen lower blocks run once per text (:class:`TextInputs`).

    Each optimizer step averages ``grad_accum_steps`` micro-batches of ``batch_size`` texts taken
    from a seeded per-epoch permutation; gradients are clipped to ``max_grad_norm``. With
    ``checkpoint_dir`` and ``checkpoint_every > 0`` the run saves its full state periodically and at
    the end, and resumes from the latest checkpoint there (same result as an uninterrupted run).
    ``on_step(step, loss)`` is called after every optimizer step (e.g. for a time budget).
    """
    from tqdm.auto import tqdm

    if n_classes < 2:
        raise DatasetError(f"LoRA needs at least 2 classes, got n_classes={n_classes}")
    train_y = _check_labels(train_texts, train_labels, n_classes, "train")
    if not train_y:
        raise DatasetError("LoRA train split is empty")
    test_y = None
    if test_texts is not None:
        if test_labels is None:
            raise DatasetError("LoRA: test_texts given without test_labels")
        test_y = _check_labels(test_texts, test_labels, n_classes, "test")
    device = torch.device(device) if device is not None else next(base_model.parameters()).device
    start_time = time.perf_counter()
    limit = settings.max_length or max_length or 512

    seed_everything(settings.seed)
    base_model.to(device)
    classifier = build_classifier(base_model, n_classes, settings).to(device)
    classifier.prompt_format = prompt_format
    if initial_head is not None:
        set_head(classifier, *initial_head)
    targets = classifier.target_modules
    optimizer = _make_optimizer(classifier, settings)
    scheduler = _make_scheduler(optimizer, settings)
    trainable = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    log(f"LoRA: targets {targets}, {trainable:,} trainable parameters, {settings.max_steps} steps")

    classifier.eval()
    start = configure_split(classifier, tokenizer, train_texts, limit, device)
    train_inputs = TextInputs(
        classifier, tokenizer, train_texts, limit, device, settings.eval_batch_size
    )
    test_inputs = (
        TextInputs(classifier, tokenizer, test_texts, limit, device, settings.eval_batch_size)
        if test_texts is not None
        else None
    )
    if start is None:
        how = "the whole model runs at every step"
    else:
        kept = "kept in memory" if train_inputs.cached is not None else "recomputed per batch"
        how = f"blocks {start}.. run at every step on the inputs of block {start} ({kept})"
    log(f"LoRA: {how}; ready after {time.perf_counter() - start_time:.1f} s")
    initial_logits = None
    if test_inputs is not None and initial_head is not None:
        initial_logits = predict_inputs(classifier, test_inputs, settings.eval_batch_size)

    trajectory = {k: v for k, v in settings.to_dict().items() if k not in _NON_TRAJECTORY_KEYS}
    run_key = {
        "settings": trajectory,
        "max_length": limit,
        "head": _tensor_digest(classifier.head.weight, classifier.head.bias),
        "n_classes": n_classes,
        "data": _fingerprint(train_texts, train_y),
    }

    step, loss_curve, time_before = 0, [], 0.0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None and (existing := _checkpoints(ckpt_dir)):
        step, path = existing[-1]
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        if state["run_key"] != run_key:
            raise ConfigError(
                f"checkpoint {path} was made with other settings or data than this run; delete "
                f"{ckpt_dir} to start afresh (saved {state['run_key']['settings']}, now {trajectory})"
            )
        tensors = load_tensors(path / "trainable.safetensors")
        missing, _ = classifier.load_state_dict(tensors, strict=False)
        missing_trainable = [k for k in missing if k in classifier.trainable_state()]
        if missing_trainable:
            raise ConfigError(f"checkpoint {path} lacks parameters {missing_trainable[:5]}")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        loss_curve = list(state["loss_curve"])
        time_before = float(state["train_time_s"])
        log(f"LoRA: resumed from {path} at step {step}/{settings.max_steps}")
    resumed_from = step

    classifier.train()
    micro_per_step = settings.grad_accum_steps * settings.batch_size
    bar = tqdm(
        total=settings.max_steps, initial=step, disable=not progress, desc="LoRA", unit="step"
    )
    running = None
    while step < settings.max_steps:
        order = sample_order(len(train_y), settings.seed, step * micro_per_step, micro_per_step)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for m in range(settings.grad_accum_steps):
            idx = order[m * settings.batch_size : (m + 1) * settings.batch_size]
            inputs, mask, positions = train_inputs.batch(idx)
            labels = torch.tensor([train_y[i] for i in idx], dtype=torch.long, device=device)
            with _autocast(device):
                _, loss = classifier(inputs, mask, positions, labels)
            (loss / settings.grad_accum_steps).backward()
            step_loss += float(loss.detach()) / settings.grad_accum_steps
        if not math.isfinite(step_loss):
            raise NumericalError(
                f"LoRA training loss is {step_loss} at step {step + 1}; lower lora.learning_rate "
                f"(now {settings.learning_rate}) or check the data"
            )
        torch.nn.utils.clip_grad_norm_(
            [p for p in classifier.parameters() if p.requires_grad], settings.max_grad_norm
        )
        optimizer.step()
        scheduler.step()
        step += 1
        loss_curve.append(step_loss)
        running = step_loss if running is None else 0.9 * running + 0.1 * step_loss
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if (
            ckpt_dir is not None
            and settings.checkpoint_every > 0
            and (step % settings.checkpoint_every == 0 or step == settings.max_steps)
        ):
            elapsed = time_before + time.perf_counter() - start_time
            _save_checkpoint(
                ckpt_dir,
                step,
                classifier,
                optimizer,
                scheduler,
                {"run_key": run_key, "loss_curve": loss_curve, "train_time_s": elapsed},
            )
        if on_step is not None:
            on_step(step, step_loss)
    bar.close()
    classifier.eval()
    train_time = time.perf_counter() - start_time

    result = LoRAResult(
        classifier=classifier,
        settings=settings,
        target_modules=targets,
        loss_curve=loss_curve,
        steps_done=step,
        resumed_from_step=resumed_from,
        wall_time_s=train_time,
        train_time_s_total=time_before + train_time,
        trainable_params=trainable,
        n_train=len(train_y),
        n_train_truncated=train_inputs.n_truncated,
        max_length=limit,
        head_init="probe" if initial_head is not None else "random",
        first_adapted_block=start,
        inputs_cached=train_inputs.cached is not None,
        train_inputs=train_inputs,
    )
    if test_inputs is not None and test_y is not None:
        logits = predict_inputs(classifier, test_inputs, settings.eval_batch_size)
        result.test_logits = logits
        result.test_predictions = logits.argmax(-1).tolist()
        result.test_accuracy, result.test_macro_f1 = classification_metrics(
            test_y, result.test_predictions, n_classes
        )
        if initial_logits is not None:
            result.initial_test_predictions = initial_logits.argmax(-1).tolist()
            result.initial_test_accuracy = classification_metrics(
                test_y, result.initial_test_predictions, n_classes
            )[0]
        result.n_test = len(test_y)
        result.n_test_truncated = test_inputs.n_truncated
        log(f"LoRA: test accuracy {result.test_accuracy:.4f}, macro-F1 {result.test_macro_f1:.4f}")
    result.wall_time_s = time.perf_counter() - start_time
    return result


def _tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def predict_inputs(classifier: LoRAClassifier, inputs: TextInputs, batch_size: int) -> torch.Tensor:
    """Logits (N, c) fp32 on CPU, in input order; batches sorted by length to limit padding."""
    was_training = classifier.training
    classifier.eval()
    out = torch.empty((len(inputs), classifier.n_classes), dtype=torch.float32)
    for chunk in length_batches([len(seq) for seq in inputs.ids], batch_size):
        batch = inputs.batch(chunk)
        with _autocast(inputs.device):
            logits, _ = classifier(*batch)
        out[torch.tensor(chunk)] = logits.float().cpu()
    classifier.train(was_training)
    return out


def predict(
    classifier: LoRAClassifier,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int,
    max_length: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Logits (N, c) fp32 on CPU of raw texts (cut to ``max_length`` tokens), in input order."""
    device = torch.device(device) if device is not None else next(classifier.parameters()).device
    inputs = TextInputs(classifier, tokenizer, texts, max_length, device, batch_size)
    return predict_inputs(classifier, inputs, batch_size)


@torch.no_grad()
def post_lora_statistics(
    classifier: LoRAClassifier,
    inputs: TextInputs,
    labels: Sequence[int],
    batch_size: int,
) -> tuple[int, StatisticsAccumulator]:
    """NTPS statistics of the adapted model on ``inputs`` (the train split), for the hidden states
    adapters can change: ``(first_state, accumulator)`` with the accumulator's layer ``i`` being
    hidden state ``first_state + i``. States below ``first_state`` are those of the base model."""
    was_training = classifier.training
    classifier.eval()
    start = classifier.start
    first_state = 0 if start is None else start + 1
    label_tensor = torch.as_tensor(list(labels), dtype=torch.long)
    accumulator: StatisticsAccumulator | None = None
    for chunk in length_batches([len(seq) for seq in inputs.ids], batch_size):
        batch, mask, positions = inputs.batch(chunk)
        if start is None:
            out = classifier.peft_model(
                input_ids=batch, output_hidden_states=True,
                **forward_kwargs(classifier.peft_model, mask, positions),
            )  # fmt: skip
            states = list(out.hidden_states)
        else:
            _, states = upper_forward(
                classifier.peft_model, batch, mask, positions, start, keep_states=True
            )
        if accumulator is None:
            accumulator = StatisticsAccumulator(
                len(states), states[0].shape[-1], classifier.n_classes, device=mask.device
            )
        accumulator.update(states, mask, label_tensor[chunk].to(mask.device))
    classifier.train(was_training)
    if accumulator is None:
        raise DatasetError("post-LoRA statistics: no training texts")
    return first_state, accumulator


# --------------------------------------------------------------------------------------------
# saving, loading, merging


def save_lora(
    result_or_model: LoRAResult | LoRAClassifier, path_dir: str | os.PathLike[str]
) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` (peft) and ``head.safetensors``
    (+ a small JSON) into ``path_dir``, atomically (temp folder renamed into place)."""
    classifier = (
        result_or_model.classifier if isinstance(result_or_model, LoRAResult) else result_or_model
    )
    final = Path(path_dir)
    with _atomic_dir(final) as tmp:
        classifier.peft_model.save_pretrained(str(tmp))
        save_tensors(
            tmp / HEAD_FILE,
            {"weight": classifier.head.weight, "bias": classifier.head.bias},
            {"n_classes": str(classifier.n_classes)},
        )
        meta: dict[str, Any] = {
            "n_classes": classifier.n_classes,
            "pooling": "masked mean of hidden_states[-1]",
        }
        if isinstance(result_or_model, LoRAResult):
            meta["settings"] = result_or_model.settings.to_dict()
            meta["target_modules"] = result_or_model.target_modules
        write_json(tmp / META_FILE, meta)
    return final


def load_lora_classifier(
    base_model: nn.Module, adapter_dir: str | os.PathLike[str]
) -> LoRAClassifier:
    """Rebuild a saved classifier on ``base_model`` (adapters injected in place), in eval mode."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    for name in ("adapter_config.json", "adapter_model.safetensors", HEAD_FILE):
        if not (adapter_dir / name).exists():
            raise ModelSourceError(
                f"LoRA folder {adapter_dir} has no {name}; was it written by save_lora?"
            )
    head = load_tensors(adapter_dir / HEAD_FILE)
    n_classes = int(head["weight"].shape[0])
    if (adapter_dir / META_FILE).exists():
        n_classes = int(read_json(adapter_dir / META_FILE)["n_classes"])
    device = next(base_model.parameters()).device
    peft_model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    classifier = LoRAClassifier(peft_model, n_classes)
    classifier.head.load_state_dict(head)
    return classifier.to(device).eval()


def merged_base_model(classifier: LoRAClassifier) -> nn.Module:
    """A copy of the base model with the adapters merged into its weights (the classifier is left
    untouched): a plain transformers model of the adapted weights, e.g. to extract from it with
    :func:`ntps.extract.extract_features` (the tests check :func:`post_lora_statistics` that way)."""
    peft_copy = copy.deepcopy(classifier.peft_model)
    merged = peft_copy.merge_and_unload()
    return merged.eval()
