"""Texts as the LoRA classifier consumes them: token ids, or the cached inputs of the first adapted
block; where the model splits in two; the order in which training visits the texts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ntps.blocks import block_inputs, split_forward_matches
from ntps.errors import DatasetError
from ntps.lora.classifier import LoRAClassifier
from ntps.models import hidden_size_of
from ntps.text import length_batches, length_limit, pad_batch, pad_token_id, tokenize_all

# Above this size (float32) the inputs of the first adapted block are recomputed for every batch
# instead of being kept in memory for the whole run.
STATE_CACHE_MAX_BYTES = 4 * 2**30


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


def check_labels(
    texts: Sequence[str], labels: Sequence[int], n_classes: int, split: str
) -> list[int]:
    """``labels`` as ints, checked: one per text, each in ``0 .. n_classes - 1``."""
    if len(texts) != len(labels):
        raise DatasetError(f"LoRA {split} split: {len(texts)} texts but {len(labels)} labels")
    out = [int(y) for y in labels]
    bad = sorted({y for y in out if not 0 <= y < n_classes})
    if bad:
        raise DatasetError(
            f"LoRA {split} split: labels {bad[:10]} outside 0..{n_classes - 1} (n_classes={n_classes})"
        )
    return out
