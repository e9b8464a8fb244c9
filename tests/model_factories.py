"""Tiny randomly initialised models written as local transformers folders, for tests and the paper
dress rehearsal (tests/rehearsal.py): nothing is downloaded.

- :func:`build_tiny_tokenizer`: a WordLevel tokenizer trained on given texts (prepends <bos>);
- :func:`build_tiny_llama`, :func:`build_tiny_qwen2`: the architectures of the paper's Llama-3 and
  Qwen2 models (transformers' own classes), a few layers of width 32;
- :func:`write_remote_code_model`: an OpenELM-like decoder with its own config class and
  ``model_type`` (tests/remote_code/), loadable only with ``trust_remote_code``: config.json maps
  the Auto classes to the modelling files copied beside the weights (``auto_map``) and the folder
  holds no tokenizer, as apple/OpenELM-* on the hub (the paper config gives them Llama-2's).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

REMOTE_CODE = Path(__file__).resolve().parent / "remote_code"
REMOTE_CODE_FILES = ("configuration_tiny_elm.py", "modeling_tiny_elm.py")
REMOTE_MODEL_TYPE = "tiny_elm"
# Special token ids of build_tiny_tokenizer's vocabulary.
PAD_ID, BOS_ID, EOS_ID = 1, 2, 3


def build_tiny_tokenizer(texts: list[str]):
    """A fast WordLevel tokenizer trained on ``texts`` that prepends <bos> like Llama's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<bos>", "<eos>"]
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
    bos_id = raw.token_to_id("<bos>")
    raw.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
        eos_token="<eos>", padding_side="right",
    )  # fmt: skip


def build_tiny_llama(
    vocab_size: int, *, max_position_embeddings: int = 64, seed: int = 0, layers: int = 2
):
    """Randomly initialised Llama (d=32), untied LM head, fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def build_tiny_qwen2(
    vocab_size: int, *, max_position_embeddings: int = 64, seed: int = 0, layers: int = 2
):
    """Randomly initialised Qwen2 (d=32; biased q/k/v as Qwen2's), tied embeddings like
    Qwen2-0.5B, fp32, eval mode."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval()


def write_model(folder: Path, model: Any, tokenizer: Any | None) -> Path:
    """Save ``model`` (and ``tokenizer`` unless None) as a transformers folder."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def write_remote_code_model(
    folder: Path,
    vocab_size: int,
    *,
    seed: int = 0,
    layers: int = 2,
    model_dim: int = 32,
    max_context_length: int = 64,
) -> Path:
    """A folder holding the tiny remote-code decoder: config.json with ``auto_map``, the two
    modelling files, safetensors weights, and no tokenizer (give one with a ``tokenizer:``
    override, as the paper config does for OpenELM)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    for name in REMOTE_CODE_FILES:
        shutil.copy2(REMOTE_CODE / name, folder / name)
    config = {
        "model_type": REMOTE_MODEL_TYPE,
        "architectures": ["TinyElmForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_tiny_elm.TinyElmConfig",
            "AutoModelForCausalLM": "modeling_tiny_elm.TinyElmForCausalLM",
        },
        "vocab_size": vocab_size,
        "model_dim": model_dim,
        "num_transformer_layers": layers,
        "num_heads": 4,
        "ffn_dim": 2 * model_dim,
        "max_context_length": max_context_length,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "tie_word_embeddings": False,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    loaded = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(loaded, trust_remote_code=True).eval()
    model.save_pretrained(folder)  # weights; keeps config.json's auto_map and the code files
    return folder


def write_tokenizer(folder: Path, texts: list[str]) -> Path:
    """A tokenizer-only folder (the ``tokenizer:`` override of a remote-code model)."""
    folder.mkdir(parents=True, exist_ok=True)
    build_tiny_tokenizer(texts).save_pretrained(folder)
    return folder
