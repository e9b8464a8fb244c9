"""What the LoRA tests need beyond the package: reading a saved classifier back, merging its
adapters into a plain model, and logits of raw texts.

The workflow never reads an adapter back (the LoRA job's outputs are its metrics and the adapted
model's statistics), so these live with the tests that check what :func:`ntps.lora.save_lora` wrote
and what :func:`ntps.lora.post_lora_statistics` computed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntps.io import load_tensors
from ntps.lora import HEAD_FILE, LoRAClassifier, TextInputs, predict_inputs


def load_lora_classifier(base_model: nn.Module, adapter_dir: str | Path) -> LoRAClassifier:
    """Rebuild a classifier saved by ``save_lora`` on ``base_model`` (adapters injected in place),
    in eval mode; it runs the whole model (``start`` None)."""
    from peft import PeftModel

    head = load_tensors(Path(adapter_dir) / HEAD_FILE)
    device = next(base_model.parameters()).device
    peft_model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    classifier = LoRAClassifier(peft_model, int(head["weight"].shape[0]))
    classifier.head.load_state_dict(head)
    return classifier.to(device).eval()


def merged_base_model(classifier: LoRAClassifier) -> nn.Module:
    """A copy of the base model with the adapters merged into its weights (the classifier is left
    untouched): a plain transformers model of the adapted weights, to extract from it with
    :func:`ntps.extract.extract_features`."""
    return copy.deepcopy(classifier.peft_model).merge_and_unload().eval()


def predict(
    classifier: LoRAClassifier,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int,
    max_length: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Logits (N, c) fp32 on CPU of raw texts (cut to ``max_length`` tokens), in input order."""
    inputs = TextInputs(classifier, tokenizer, texts, max_length, torch.device(device), batch_size)
    return predict_inputs(classifier, inputs, batch_size)
