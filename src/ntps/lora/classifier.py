"""The LoRA classifier: target-module discovery, peft adapters on the base model, a linear head."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from ntps.blocks import block_count, upper_forward
from ntps.errors import ConfigError, ModelSourceError
from ntps.lora.settings import LoRASettings, adapted_blocks
from ntps.models import hidden_size_of
from ntps.text import forward_kwargs, masked_mean_pool

# Auto-detected LoRA targets, tried in order: the first group whose modules all exist wins.
# q/k/v: Llama, Qwen2, Gemma/Gemma3, Mistral, Phi-3 (split). qkv_proj: OpenELM (and fused Phi-3).
# The last two keep GPT-2 / GPT-NeoX-style test models usable.
AUTO_TARGET_GROUPS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj"),
    ("qkv_proj",),
    ("c_attn",),
    ("query_key_value",),
)


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


def build_classifier(
    base_model: nn.Module, n_classes: int, settings: LoRASettings
) -> LoRAClassifier:
    """Inject LoRA adapters into ``base_model`` (in place) and add a fresh head. Uses torch's RNG."""
    from peft import LoraConfig, get_peft_model

    targets = resolve_target_modules(base_model, settings.target_modules)
    n_layers = block_count(base_model)
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
