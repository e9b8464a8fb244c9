"""Where a model's configuration states its shape: the names, across architectures, of the number
of transformer blocks and of the hidden size.

The one definition for every reader: the config checks read them from config.json files before a
model is acquired (:func:`ntps.config.known_model_shape`), acquisition and LoRA from transformers
config objects (:mod:`ntps.models`, :mod:`ntps.lora`). It imports nothing, so the config checks
stay free of torch.
"""

from __future__ import annotations

# Tried in order; the first one a config sets wins. num_hidden_layers / hidden_size: most
# architectures (transformers config objects also answer to them for GPT-2's n_layer / n_embd,
# config.json files do not); num_transformer_layers / model_dim: OpenELM; num_layers: GPT-Neo's
# config.json.
BLOCK_COUNT_KEYS: tuple[str, ...] = (
    "num_hidden_layers",
    "n_layer",
    "num_transformer_layers",
    "num_layers",
)
HIDDEN_SIZE_KEYS: tuple[str, ...] = ("hidden_size", "n_embd", "model_dim", "d_model")
