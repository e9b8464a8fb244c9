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

Modules: :mod:`~ntps.lora.settings` (the hyper-parameters), :mod:`~ntps.lora.classifier` (target
modules, adapters, head), :mod:`~ntps.lora.inputs` (texts as the classifier consumes them),
:mod:`~ntps.lora.checkpoint` (RNG state, checkpoints, resuming), :mod:`~ntps.lora.train` (training,
evaluation, post-LoRA statistics, saving).
"""

from ntps.lora.checkpoint import seed_everything
from ntps.lora.classifier import (
    AUTO_TARGET_GROUPS,
    LoRAClassifier,
    build_classifier,
    linear_module_names,
    resolve_target_modules,
    set_head,
)
from ntps.lora.inputs import (
    STATE_CACHE_MAX_BYTES,
    StoredBlockInputs,
    TextInputs,
    configure_split,
    sample_order,
)
from ntps.lora.settings import LoRASettings, adapted_blocks, first_adapted_block
from ntps.lora.train import (
    HEAD_FILE,
    META_FILE,
    LoRAResult,
    post_lora_statistics,
    predict_inputs,
    quarter_means,
    save_lora,
    train_lora_classifier,
)

__all__ = [
    "AUTO_TARGET_GROUPS",
    "HEAD_FILE",
    "META_FILE",
    "STATE_CACHE_MAX_BYTES",
    "LoRAClassifier",
    "LoRAResult",
    "LoRASettings",
    "StoredBlockInputs",
    "TextInputs",
    "adapted_blocks",
    "build_classifier",
    "configure_split",
    "first_adapted_block",
    "linear_module_names",
    "post_lora_statistics",
    "predict_inputs",
    "quarter_means",
    "resolve_target_modules",
    "sample_order",
    "save_lora",
    "seed_everything",
    "set_head",
    "train_lora_classifier",
]
