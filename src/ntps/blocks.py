"""Run a decoder in two parts: the frozen lower blocks once, the adapted upper blocks many times.

When LoRA adapts only blocks ``start..L-1``, the hidden states entering block ``start`` never change
during training, so they can be computed once per text and every training step, evaluation and the
post-LoRA statistics run only the upper blocks. Nothing here knows an architecture's internals:

- :func:`block_inputs` runs the model's own forward and stops it (a pre-hook that raises) at the
  input of block ``start``;
- :func:`upper_forward` runs the model's own forward from ``inputs_embeds`` = those states, with the
  lower blocks swapped for pass-throughs, so masks, rotary embeddings and per-layer attention types
  are built exactly as in a full forward (block indices are unchanged);
- :func:`split_forward_matches` checks on a real batch that the two parts reproduce the full
  forward's hidden states; models where they do not (e.g. GPT-2, which adds position embeddings to
  ``inputs_embeds``) are run whole instead.

Hidden-state numbering is the extraction's: state ``l`` is the input of block ``l`` (0 = embedding
output) and state ``L`` is the last block's output after the final norm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ntps.model_shape import BLOCK_COUNT_KEYS
from ntps.text import forward_kwargs


class _StopForward(Exception):
    """Raised by a pre-hook to end a forward pass early."""


class _PassThrough(nn.Module):
    """Stands in for a frozen lower block: returns the hidden states it is given."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks: its longest ``nn.ModuleList``."""
    best: nn.ModuleList | None = None
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best)):
            best = module
    if best is None or len(best) == 0:
        raise ValueError(f"{type(model).__name__} has no list of blocks (nn.ModuleList)")
    return best


def block_count(model: nn.Module) -> int:
    """Number of transformer blocks: from the model's config, else by counting them."""
    config = getattr(model, "config", None)
    for key in BLOCK_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return len(decoder_blocks(model))


@torch.no_grad()
def block_inputs(
    model: nn.Module, input_ids: Tensor, mask: Tensor, positions: Tensor, start: int
) -> Tensor:
    """Hidden states entering block ``start`` (B, T, d); blocks ``start..`` are never run."""
    blocks = decoder_blocks(model)
    captured: dict[str, Tensor] = {}

    def stop(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured["states"] = args[0] if args else kwargs["hidden_states"]
        raise _StopForward

    handle = blocks[start].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        model(input_ids=input_ids, **forward_kwargs(model, mask, positions))
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "states" not in captured:
        raise RuntimeError(f"block {start} of {type(model).__name__} was never reached")
    return captured["states"]


@contextlib.contextmanager
def lower_blocks_skipped(blocks: nn.ModuleList, start: int) -> Iterator[None]:
    """Blocks ``0..start-1`` of ``blocks`` replaced by pass-throughs for the duration of the block."""
    saved = [blocks[i] for i in range(start)]
    for i in range(start):
        blocks[i] = _PassThrough()
    try:
        yield
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block


def upper_forward(
    model: nn.Module,
    states: Tensor,
    mask: Tensor,
    positions: Tensor,
    start: int,
    *,
    keep_states: bool = False,
) -> tuple[Tensor, list[Tensor]]:
    """Run blocks ``start..L-1`` and the final norm on ``states`` (the inputs of block ``start``).

    Returns the last hidden state (B, T, d), after the final norm, and, with ``keep_states``, the
    hidden states ``start+1..L`` (the outputs of blocks ``start..L-2``, then the last hidden state).
    """
    blocks = decoder_blocks(model)
    outputs: list[Tensor] = []
    handles = []
    if keep_states:
        for block in list(blocks)[start:-1]:

            def keep(module: nn.Module, args: Any, output: Any) -> None:
                outputs.append(output[0] if isinstance(output, tuple) else output)

            handles.append(block.register_forward_hook(keep))
    try:
        with lower_blocks_skipped(blocks, start):
            out = model(inputs_embeds=states, **forward_kwargs(model, mask, positions))
    finally:
        for handle in handles:
            handle.remove()
    last = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return last, [*outputs, last] if keep_states else []


@torch.no_grad()
def split_forward_matches(
    model: nn.Module,
    input_ids: Tensor,
    mask: Tensor,
    positions: Tensor,
    start: int,
    *,
    rtol: float = 1e-4,
) -> bool:
    """Whether lower part + upper part reproduce the full forward's hidden states ``start..L``."""
    try:
        full = model(
            input_ids=input_ids, output_hidden_states=True, **forward_kwargs(model, mask, positions)
        ).hidden_states
        states = block_inputs(model, input_ids, mask, positions, start)
        _, upper = upper_forward(model, states, mask, positions, start, keep_states=True)
    except Exception:  # an architecture the split does not fit: the caller runs it whole
        return False
    parts = [states, *upper]
    if len(full) != len(parts) + start:
        return False
    keep = mask.bool()[..., None]
    for reference, part in zip(full[start:], parts, strict=True):
        reference, part = reference * keep, part * keep
        scale = float(reference.abs().max()) or 1.0
        if part.shape != reference.shape or float((part - reference).abs().max()) > rtol * scale:
            return False
    return True
