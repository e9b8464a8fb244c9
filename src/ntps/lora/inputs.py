"""Texts as the LoRA classifier consumes them: token ids, or the cached inputs of the first adapted
block; where the model splits in two; the order in which training visits the texts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ntps.blocks import block_inputs, split_forward_matches
from ntps.errors import DatasetError
from ntps.io import load_tensor_metadata
from ntps.layout import (
    BLOCK_BATCHING_KEY,
    BLOCK_DEVICE_KEY,
    BLOCK_DTYPE_KEY,
    BLOCK_LIMIT_KEY,
    BLOCK_PROMPT_FORMAT_KEY,
    BLOCK_REASON_KEY,
    BLOCK_STATE_KEY,
    DATASET_FINGERPRINT_KEY,
    MODEL_PROVENANCE_KEY,
    block_offsets_key,
    block_states_key,
)
from ntps.lora.classifier import LoRAClassifier
from ntps.models import hidden_size_of
from ntps.sizes import BLOCK_INPUTS_MAX_BYTES
from ntps.stats import shard_assignment
from ntps.text import length_batches, length_limit, pad_batch, pad_token_id, tokenize_all

# Above this size (float32) the inputs of the first adapted block are recomputed for every batch
# instead of being kept in memory for the whole run (and the extraction keeps none for LoRA).
STATE_CACHE_MAX_BYTES = BLOCK_INPUTS_MAX_BYTES


@dataclass
class StoredBlockInputs:
    """The inputs of the first adapted block that the extraction kept (block_inputs.safetensors),
    with what the LoRA job knows of its own data and model, to check them against."""

    path: str | Path
    fingerprint: str  # the prepared dataset's
    model_provenance: Any  # the acquisition record's provenance (None when not known)
    batching: Mapping[str, int] | None = None  # the extraction's batching this job runs in

    def load(
        self,
        split: str,
        *,
        start: int,
        limit: int,
        prompt_format: str,
        device: torch.device,
        lengths: Sequence[int],
    ) -> tuple[list[torch.Tensor] | None, str]:
        """Per text (n_i, d) float32, views of one tensor of the split, when the file holds hidden
        state ``start`` computed as this job would (same data, model, token limit, prompt format,
        batches, float32 on this device type, ``lengths`` tokens per text); else None and why
        not."""
        meta = load_tensor_metadata(self.path)
        want = {
            BLOCK_STATE_KEY: str(start),
            BLOCK_LIMIT_KEY: str(limit),
            BLOCK_PROMPT_FORMAT_KEY: prompt_format,
            BLOCK_DTYPE_KEY: "float32",
            BLOCK_DEVICE_KEY: device.type,
            DATASET_FINGERPRINT_KEY: self.fingerprint,
            MODEL_PROVENANCE_KEY: json.dumps(self.model_provenance, sort_keys=True),
            BLOCK_BATCHING_KEY: batching_metadata(self.batching),
        }
        if not meta.get(BLOCK_STATE_KEY):
            return None, f"it holds no states ({meta.get(BLOCK_REASON_KEY) or 'no reason given'})"
        for key, value in want.items():
            if meta.get(key) != value:
                return None, f"its {key} is {meta.get(key)!r}, this job's {value!r}"
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            if block_states_key(split) not in handle.keys():
                return None, f"it has no {split} split"
            offsets = handle.get_tensor(block_offsets_key(split))
            if offsets.diff().tolist() != list(lengths):
                return None, f"its {split} texts have other token counts than this job's"
            states = handle.get_tensor(block_states_key(split))
        bounds = offsets.tolist()
        return [states[bounds[i] : bounds[i + 1]] for i in range(len(lengths))], ""


def batching_metadata(batching: Mapping[str, int] | None) -> str:
    """How the lower blocks batch the texts, as stored in block_inputs.safetensors."""
    return json.dumps(dict(batching) if batching else None, sort_keys=True)


def extraction_batches(
    lengths: Sequence[int], split: str, batching: Mapping[str, int]
) -> list[list[int]]:
    """The batches in which the extraction runs the texts of ``split`` (``lengths`` tokens each):
    :func:`ntps.extract.plan_batches` with the model's ``batch_size``, train texts within their
    ``jackknife_shards`` (seed ``jackknife_seed``). A hidden state depends on the batch a text
    shares (its padded length changes how kernels sum), so running the lower blocks in these
    batches gives the extraction's states bit for bit."""
    from ntps.extract import plan_batches

    n_shards = int(batching.get("jackknife_shards", 0))
    sharded = split == "train" and n_shards >= 2
    shard_of = (
        shard_assignment(len(lengths), n_shards, int(batching.get("jackknife_seed", 0)))
        if sharded
        else None
    )
    return plan_batches(lengths, int(batching["batch_size"]), shard_of)[0]


class TextInputs:
    """Texts of one split as the classifier consumes them, batch by batch.

    Token ids come from :mod:`ntps.text` (the extraction's tokenisation and length limit). When the
    classifier runs in two parts, each batch is the hidden states entering block ``start``: kept in
    memory for the whole run (computed once per text) when they fit in
    :data:`STATE_CACHE_MAX_BYTES`, else recomputed by the frozen lower blocks for every batch.
    With ``stored`` (the extraction's copy of them), the kept states are read from there when it
    holds exactly what this job would compute (``source`` says which; ``not_stored`` why not).
    They are computed in ``batching``'s batches (:func:`extraction_batches`; default: batches of
    ``batch_size`` texts of similar length), the split's name being ``split``.
    """

    def __init__(
        self,
        classifier: LoRAClassifier,
        tokenizer: Any,
        texts: Sequence[str],
        max_length: int,
        device: torch.device,
        batch_size: int,
        stored: StoredBlockInputs | None = None,
        split: str = "train",
        batching: Mapping[str, int] | None = None,
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
        self.source = "computed"
        self.not_stored = ""
        start = classifier.start
        if start is None or start == 0:
            return  # nothing below the adapters worth keeping (at most an embedding lookup)
        hidden = hidden_size_of(classifier.peft_model.get_base_model().config)
        n_tokens = sum(len(seq) for seq in self.ids)
        if n_tokens * hidden * 4 > STATE_CACHE_MAX_BYTES:
            return
        if stored is not None:
            self.cached, self.not_stored = stored.load(
                split,
                start=start,
                limit=self.limit,
                prompt_format=classifier.prompt_format,
                device=device,
                lengths=[len(seq) for seq in self.ids],
            )
            if self.cached is not None:
                self.source = "read from the extraction"
                return
        self.cached = [torch.empty(0)] * len(self.ids)
        lengths = [len(seq) for seq in self.ids]
        batches = (
            extraction_batches(lengths, split, batching)
            if batching
            else length_batches(lengths, batch_size)
        )
        for batch in batches:
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
