"""A tiny OpenELM-like decoder shipped as remote code (tests/model_factories.py copies this file and
configuration_tiny_elm.py into a model folder whose config.json maps the Auto classes to them).

Like OpenELM: its own config class and ``model_type`` (known to no transformers registry, so it
loads only with ``trust_remote_code``), ``model_dim`` / ``num_transformer_layers`` /
``max_context_length`` instead of the usual config names, the base model under ``transformer``,
fused ``qkv_proj`` + ``out_proj`` attention, SwiGLU ``proj_1`` / ``proj_2``, RMS norms and rotary
positions. Blocks return a tensor, hidden states are numbered as in transformers (embeddings, then
the input of each next block, the last one after the final norm).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_tiny_elm import TinyElmConfig


class TinyElmRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (x.float() * scale).to(x.dtype) * self.weight


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of x (B, H, T, h) at positions (B, T)."""
    half = x.shape[-1] // 2
    freqs = 1.0 / theta ** (torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions[:, None, :, None].float() * freqs  # (B, 1, T, half)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class TinyElmAttention(nn.Module):
    def __init__(self, config: TinyElmConfig) -> None:
        super().__init__()
        self.heads = config.num_heads
        self.head_dim = config.model_dim // config.num_heads
        self.theta = config.rope_theta
        self.qkv_proj = nn.Linear(config.model_dim, 3 * config.model_dim, bias=False)
        self.out_proj = nn.Linear(config.model_dim, config.model_dim, bias=False)

    def forward(
        self, x: torch.Tensor, allowed: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv_proj(x).view(b, t, 3, self.heads, self.head_dim).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        q, k = rotate(q, positions, self.theta), rotate(k, positions, self.theta)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class TinyElmFeedForward(nn.Module):
    def __init__(self, config: TinyElmConfig) -> None:
        super().__init__()
        self.proj_1 = nn.Linear(config.model_dim, 2 * config.ffn_dim, bias=False)
        self.proj_2 = nn.Linear(config.ffn_dim, config.model_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.proj_1(x).chunk(2, dim=-1)
        return self.proj_2(nn.functional.silu(gate) * up)


class TinyElmDecoderLayer(nn.Module):
    def __init__(self, config: TinyElmConfig) -> None:
        super().__init__()
        self.attn_norm = TinyElmRMSNorm(config.model_dim, config.norm_eps)
        self.attn = TinyElmAttention(config)
        self.ffn_norm = TinyElmRMSNorm(config.model_dim, config.norm_eps)
        self.ffn = TinyElmFeedForward(config)

    def forward(
        self, hidden_states: torch.Tensor, allowed: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.attn_norm(hidden_states), allowed, positions)
        return hidden_states + self.ffn(self.ffn_norm(hidden_states))


class TinyElmPreTrainedModel(PreTrainedModel):
    config_class = TinyElmConfig
    base_model_prefix = "transformer"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, TinyElmRMSNorm):
            nn.init.ones_(module.weight)


class TinyElmModel(TinyElmPreTrainedModel):
    def __init__(self, config: TinyElmConfig) -> None:
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.model_dim)
        self.layers = nn.ModuleList(
            TinyElmDecoderLayer(config) for _ in range(config.num_transformer_layers)
        )
        self.norm = TinyElmRMSNorm(config.model_dim, config.norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.token_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        hidden = self.token_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        b, t = hidden.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(b, t, dtype=torch.long, device=hidden.device)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(t, t, dtype=torch.bool, device=hidden.device).tril()
        allowed = causal[None] & attention_mask.bool()[:, None, :]
        # A padding query that sees no real key attends to itself (its output is masked anyway).
        allowed = allowed | torch.eye(t, dtype=torch.bool, device=hidden.device)[None]
        states = []
        for layer in self.layers:
            states.append(hidden)
            hidden = layer(hidden, allowed, position_ids)
        hidden = self.norm(hidden)
        states.append(hidden)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden, hidden_states=tuple(states) if output_hidden_states else None
        )


class TinyElmForCausalLM(TinyElmPreTrainedModel):
    def __init__(self, config: TinyElmConfig) -> None:
        super().__init__(config)
        self.transformer = TinyElmModel(config)
        self.lm_head = nn.Linear(config.model_dim, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.token_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(out.last_hidden_state)
        return CausalLMOutputWithPast(logits=logits, hidden_states=out.hidden_states)
