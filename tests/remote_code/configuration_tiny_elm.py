"""Configuration of the tiny OpenELM-like remote-code decoder (see modeling_tiny_elm.py)."""

from __future__ import annotations

from transformers import PretrainedConfig


class TinyElmConfig(PretrainedConfig):
    # Registered nowhere in transformers: AutoConfig finds it only through config.json's auto_map.
    model_type = "tiny_elm"

    def __init__(
        self,
        vocab_size: int = 64,
        model_dim: int = 32,
        num_transformer_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int = 64,
        max_context_length: int = 64,
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.model_dim = model_dim
        self.num_transformer_layers = num_transformer_layers
        self.num_heads = num_heads
        self.ffn_dim = ffn_dim
        self.max_context_length = max_context_length
        self.rope_theta = rope_theta
        self.norm_eps = norm_eps
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
