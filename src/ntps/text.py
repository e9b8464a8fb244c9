"""Text -> token ids -> padded batches -> pooled features: the one path shared by extraction and LoRA.

The LoRA gain compares a LoRA classifier with a linear probe fitted on the extraction's pooled
features, and the LoRA head starts from that probe; both only make sense if the two stages turn a
text into a feature vector in exactly the same way. Everything that decides that lives here:

- the prompt format (a model's ``prompt_format``): ``raw`` tokenises the text with the tokenizer's
  default special tokens (``add_special_tokens=True``: Llama and Gemma prepend BOS, Qwen and SmolLM2
  add nothing), the input distribution a base model was trained on and what the paper's code fed;
  ``chat`` wraps the text as the user turn of the tokenizer's chat template (no generation prompt),
  which writes its own special tokens, so none are added on top;
- the length limit ``min(max_length, model context)``; longer texts keep their first tokens and are
  counted as truncated;
- right padding with explicit position ids ``0..n-1`` (a causal model's real tokens never attend to
  right padding, so a padded text gives the same hidden states as the text alone);
- masked mean pooling (:func:`ntps.stats.masked_mean_pool`, NaN-safe on padding).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch

from ntps.errors import ModelSourceError
from ntps.stats import masked_mean_pool

__all__ = [
    "PROMPT_FORMATS",
    "check_prompt_format",
    "context_length",
    "forward_kwargs",
    "length_batches",
    "length_limit",
    "masked_mean_pool",
    "pad_batch",
    "pad_token_id",
    "tokenize_all",
]

# Config attributes that hold a model's maximum number of positions, in the order they are tried
# (OpenELM calls it max_context_length, GPT-2 n_positions).
CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_context_length")


def context_length(model: torch.nn.Module) -> int | None:
    """The model's maximum number of positions, if its config declares one."""
    config = getattr(model, "config", None)
    for attr in CONTEXT_ATTRIBUTES:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def length_limit(model: torch.nn.Module, max_length: int) -> int:
    """``max_length`` capped at the model's context length."""
    context = context_length(model)
    return min(max_length, context) if context else max_length


PROMPT_FORMATS = ("raw", "chat")


def check_prompt_format(tokenizer: Any, prompt_format: str, model: str = "?") -> None:
    """Raise when ``prompt_format`` cannot be applied with ``tokenizer`` (names the model)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(
            f"model {model!r}: prompt_format must be one of {list(PROMPT_FORMATS)}, "
            f"got {prompt_format!r}"
        )
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ModelSourceError(
            f"model {model!r}: prompt_format is 'chat' but its tokenizer has no chat template "
            "(tokenizer_config.json has no 'chat_template'); use prompt_format: raw for this "
            "model, or give an instruct tokenizer with source.tokenizer"
        )


def tokenize_all(
    tokenizer: Any, texts: Sequence[str], max_length: int, prompt_format: str = "raw"
) -> tuple[list[list[int]], int]:
    """Token ids of every text in ``prompt_format``, cut to ``max_length``; number cut.

    Tokenising without truncation and cutting the id lists ourselves is one tokenizer call that
    also tells which texts were too long. A chat prompt cut this way loses its closing turn
    markers, like a raw text loses its end.
    """
    check_prompt_format(tokenizer, prompt_format)
    if prompt_format == "chat":
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=False
            )
            for text in texts
        ]
        encoded = tokenizer(prompts, add_special_tokens=False, truncation=False, verbose=False)
    else:
        encoded = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)
    ids = [list(seq) for seq in encoded["input_ids"]]
    n_truncated = sum(len(seq) > max_length for seq in ids)
    return [seq[:max_length] for seq in ids], n_truncated


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_token_id(tokenizer: Any) -> int:
    """The id padding positions get (masked out everywhere, so any valid id would do)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def pad_batch(
    ids: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad token id lists to the longest one.

    Returns ``input_ids`` (B, T) long, ``attention_mask`` (B, T) long (1 = real token) and
    ``position_ids`` (B, T) long (``0..n-1`` on real tokens, 0 on padding).
    """
    if not ids:
        raise ValueError("pad_batch needs at least one sequence")
    width = max(1, max(len(seq) for seq in ids))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids.to(device), mask.to(device), positions.to(device)


@functools.cache
def _takes_position_ids(model_class: type) -> bool:
    return "position_ids" in inspect.signature(model_class.forward).parameters


def forward_kwargs(
    model: torch.nn.Module, attention_mask: torch.Tensor, position_ids: torch.Tensor
) -> dict[str, Any]:
    """Keyword arguments for a forward pass on a :func:`pad_batch` batch: the mask, no KV cache,
    and the position ids when the model (or, for a peft wrapper, its base model) takes them."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": False}
    if _takes_position_ids(type(target)):
        kwargs["position_ids"] = position_ids
    return kwargs
