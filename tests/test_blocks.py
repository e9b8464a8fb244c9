"""Running a decoder in two parts (ntps.blocks) and the shared text path (ntps.text)."""

from __future__ import annotations

import pytest
import torch

from ntps.blocks import block_inputs, decoder_blocks, split_forward_matches, upper_forward
from ntps.text import length_limit, pad_batch


def tiny(kind: str) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    if kind == "llama":
        config = LlamaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, vocab_size=60,
                             max_position_embeddings=64)  # fmt: skip
        return LlamaModel(config).eval()
    config = GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=60, n_positions=40)
    return GPT2Model(config).eval()


def batch():
    return pad_batch([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], 0)


@pytest.mark.parametrize("start", [0, 1, 2])
def test_two_parts_reproduce_the_full_forward_on_llama(start):
    model = tiny("llama")
    ids, mask, positions = batch()
    assert split_forward_matches(model, ids, mask, positions, start)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                     output_hidden_states=True).hidden_states  # fmt: skip
        states = block_inputs(model, ids, mask, positions, start)
        last, kept = upper_forward(model, states, mask, positions, start, keep_states=True)
    keep = mask.bool()[..., None]
    assert torch.allclose(states * keep, full[start] * keep, atol=1e-6)
    assert len(kept) == len(full) - start - 1
    for ours, theirs in zip(kept, full[start + 1 :], strict=True):
        assert torch.allclose(ours * keep, theirs * keep, atol=1e-5)
    assert torch.equal(kept[-1], last)
    # The lower blocks are back in place afterwards.
    assert all(type(b).__name__ == "LlamaDecoderLayer" for b in decoder_blocks(model))


def test_a_model_whose_inputs_embeds_are_not_block_inputs_is_detected():
    # GPT-2 adds position embeddings to inputs_embeds: feeding it block inputs double-counts them,
    # so the split must be refused and the model run whole.
    model = tiny("gpt2")
    ids, mask, positions = batch()
    assert not split_forward_matches(model, ids, mask, positions, 1)


def test_pad_batch_and_length_limit():
    ids, mask, positions = pad_batch([[4, 5, 6], [7]], pad_id=1)
    assert ids.tolist() == [[4, 5, 6], [7, 1, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert length_limit(tiny("llama"), 100) == 64 and length_limit(tiny("gpt2"), 16) == 16
    with pytest.raises(ValueError):
        pad_batch([], 0)
