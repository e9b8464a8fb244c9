"""LoRA hyper-parameters, validated against the config schema's ``$defs/lora_settings``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ntps.config import check_definition


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
        # The one validation: every key, type and range is the config schema's
        # ($defs/lora_settings), so the values the workflow accepts are exactly the ones a job accepts.
        check_definition(dataclasses.asdict(self), "lora_settings", "lora.settings")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LoRASettings:
        """Build from a config mapping; unknown keys are an error (catches typos like ``lr``)."""
        data = dict(data or {})
        if not data.keys() <= _FIELDS:
            # An unknown key cannot reach the constructor: the schema names it (and every other
            # problem of the mapping) here, where the constructor would validate.
            check_definition(data, "lora_settings", "lora.settings")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def num_warmup_steps(self) -> int:
        # Same rounding as transformers' Trainer (ceil), so 5% of 5000 steps is 250.
        return math.ceil(self.warmup_ratio * self.max_steps)


def adapted_blocks(settings: LoRASettings, n_blocks: int) -> list[int] | None:
    """Block indices that get adapters (None = all), from ``top_blocks`` or ``layers_to_transform``."""
    if settings.top_blocks is not None:
        return list(range(max(0, n_blocks - settings.top_blocks), n_blocks))
    return settings.layers_to_transform


def first_adapted_block(settings: LoRASettings, n_blocks: int) -> int | None:
    """The first block with adapters of a model with ``n_blocks`` blocks when it is not block 0:
    the block whose inputs LoRA can compute once per text (hidden state of that index); None when
    every block, or block 0, is adapted. The split itself is confirmed on the model by
    :func:`ntps.lora.inputs.configure_split`."""
    layers = adapted_blocks(settings, n_blocks)
    if not layers:
        return None
    start = min(layers)
    return start if start > 0 else None


_FIELDS = frozenset(field.name for field in dataclasses.fields(LoRASettings))
