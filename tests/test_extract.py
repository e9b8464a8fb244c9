"""Batched, length-bucketed extraction against per-text forward passes on a tiny random Llama."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from ntps.errors import NTPSError, NumericalError
from ntps.extract import extract_features, length_batches
from ntps.models import load_for_inference
from ntps.stats import StatisticsAccumulator


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    base, tokenizer = load_for_inference(tiny_llama_dir, "float32", "cpu")
    return base, tokenizer


def per_text_hidden(base, tokenizer, text):
    """Hidden states of one text on its own: batch of 1, no padding, default special tokens."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return base(input_ids=ids, output_hidden_states=True).hidden_states, ids.shape[1]


def run(base, tokenizer, tiny_texts, **kwargs):
    options = {
        "batch_size": 4, "max_length": 64, "accumulate_statistics": False, "device": "cpu",
        "progress": False,
    } | kwargs  # fmt: skip
    return extract_features(
        base, tokenizer, tiny_texts.texts, tiny_texts.labels, tiny_texts.n_classes, **options
    )


def test_pooled_equals_manual_per_text_forward(tiny, tiny_texts):
    base, tokenizer = tiny
    result = run(base, tokenizer, tiny_texts, batch_size=6)
    n_states = base.config.num_hidden_layers + 1
    assert result.pooled.shape == (n_states, len(tiny_texts.texts), 32)
    assert result.pooled.dtype == torch.float32
    for i, text in enumerate(tiny_texts.texts):  # original order, although batches are sorted
        hidden, _ = per_text_hidden(base, tokenizer, text)
        manual = torch.stack([h[0].mean(dim=0) for h in hidden])
        torch.testing.assert_close(result.pooled[:, i], manual, atol=1e-5, rtol=1e-5)
    assert result.statistics is None


def test_invariant_to_batch_size_and_padding_side(tiny, tiny_texts):
    base, tokenizer = tiny
    reference = run(base, tokenizer, tiny_texts, batch_size=1).pooled
    for batch_size in (3, 7, 64):
        pooled = run(base, tokenizer, tiny_texts, batch_size=batch_size).pooled
        torch.testing.assert_close(pooled, reference, atol=1e-5, rtol=1e-5)
    tokenizer.padding_side = "left"
    try:
        left = run(base, tokenizer, tiny_texts, batch_size=7).pooled
    finally:
        tokenizer.padding_side = "right"
    torch.testing.assert_close(left, reference, atol=1e-5, rtol=1e-5)


def test_statistics_equal_accumulator_fed_per_text(tiny, tiny_texts):
    base, tokenizer = tiny
    result = run(base, tokenizer, tiny_texts, batch_size=6, accumulate_statistics=True)
    assert isinstance(result.statistics, StatisticsAccumulator)
    manual = StatisticsAccumulator(3, 32, tiny_texts.n_classes)
    for text, label in zip(tiny_texts.texts, tiny_texts.labels, strict=True):
        hidden, length = per_text_hidden(base, tokenizer, text)
        manual.update(hidden, torch.ones(1, length, dtype=torch.long), torch.tensor([label]))
    got, want = result.statistics.to_tensors(), manual.to_tensors()
    assert got.keys() == want.keys()
    for key in want:
        # Batched and single-text float32 forwards differ in the last bits; compare relative to
        # each sum's scale (prefix-sum products have entries near zero beside large ones).
        scale = float(want[key].abs().max())
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-5 * scale + 1e-12)
    # Returned tensors are ordinary tensors: usable in place outside inference mode.
    result.pooled.mul_(1.0)
    result.statistics.update(*per_text_hidden(base, tokenizer, "a film")[:1], torch.ones(1, 3), [0])
    assert result.statistics.n_examples == len(tiny_texts.texts) + 1
    # The pooled features returned alongside the statistics are the same as without them.
    plain = run(base, tokenizer, tiny_texts, batch_size=6).pooled
    torch.testing.assert_close(result.pooled, plain, atol=1e-6, rtol=1e-6)


def test_counts_and_truncation(tiny, tiny_texts):
    base, tokenizer = tiny
    lengths = [len(tokenizer(t)["input_ids"]) for t in tiny_texts.texts]  # includes <bos>
    result = run(base, tokenizer, tiny_texts, batch_size=6, max_length=5)
    assert result.n_truncated == sum(n > 5 for n in lengths) > 0
    assert result.n_tokens == sum(min(n, 5) for n in lengths)
    assert result.n_batches == math.ceil(len(lengths) / 6)
    assert result.max_length == 5
    # A truncated text's features are those of its first 5 tokens.
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    ids = tokenizer(tiny_texts.texts[longest], return_tensors="pt")["input_ids"][:, :5]
    with torch.inference_mode():
        hidden = base(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(
        result.pooled[:, longest], torch.stack([h[0].mean(0) for h in hidden]), atol=1e-5, rtol=0
    )
    summary = json.loads(json.dumps(result.summary()))
    assert summary["n_truncated"] == result.n_truncated and summary["n_layers"] == 2
    assert summary["tokens_per_second"] > 0


def test_model_context_caps_max_length(tiny, tiny_texts, caplog):
    base, tokenizer = tiny  # the fixture model has 64 positions
    long_text = " ".join(tiny_texts.texts * 3)
    with caplog.at_level(logging.WARNING, logger="ntps"):
        result = extract_features(
            base, tokenizer, [long_text, "charming"], None, 3, batch_size=2, max_length=512,
            accumulate_statistics=False, progress=False, name="tiny",
        )  # fmt: skip
    assert result.max_length == 64 and result.n_truncated == 1
    assert result.n_tokens == 64 + 2 and result.summary()["n_truncated"] == 1
    # Not an error: counted, and logged with the model's name and both limits.
    assert "tiny: 1 of 2 texts are longer than 64 tokens" in caplog.text
    assert "model context 64" in caplog.text


def test_lm_head_is_never_called(tiny_llama_dir, tiny, tiny_texts):
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()

    def fail(*_):
        raise AssertionError("the LM head was called")

    full.lm_head.register_forward_hook(fail)
    # Given the whole *ForCausalLM, extraction still runs only the decoder stack.
    result = run(full, tiny[1], tiny_texts, batch_size=5, accumulate_statistics=True)
    reference = run(tiny[0], tiny[1], tiny_texts, batch_size=5).pooled
    torch.testing.assert_close(result.pooled, reference, atol=1e-6, rtol=1e-6)


def test_non_finite_features_name_the_layer(tiny_llama_dir, tiny_texts):
    base, tokenizer = load_for_inference(tiny_llama_dir, "float32", "cpu")
    with torch.no_grad():
        base.layers[1].mlp.down_proj.weight[0, 0] = float("nan")  # poisons hidden_states[2]
    with pytest.raises(NumericalError, match="layer 2") as info:
        run(base, tokenizer, tiny_texts, name="tiny-nan")
    # The message names the model and suggests the dtype that avoids overflow.
    assert "tiny-nan" in str(info.value)
    assert "bfloat16" in str(info.value) and "float32" in str(info.value)
    with pytest.raises(NTPSError):  # on the train split the accumulator detects it
        run(base, tokenizer, tiny_texts, accumulate_statistics=True)


def test_argument_checks(tiny, tiny_texts):
    base, tokenizer = tiny
    with pytest.raises(ValueError, match="needs labels"):
        extract_features(
            base, tokenizer, ["a"], None, 2, batch_size=1, max_length=8,
            accumulate_statistics=True, progress=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        extract_features(
            base, tokenizer, ["a", "b"], [0], 2, batch_size=1, max_length=8,
            accumulate_statistics=False, progress=False,
        )  # fmt: skip


def test_progress_bar_on_stderr(tiny, tiny_texts, capsys):
    run(*tiny, tiny_texts, progress=True, name="tinyllama")
    captured = capsys.readouterr()
    assert "extract tinyllama" in captured.err and "extract" not in captured.out


def test_length_batches_sorted_and_complete():
    lengths = [3, 9, 1, 9, 5, 2, 7]
    batches = length_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
    assert [len(b) for b in batches] == [3, 3, 1]


# --- prompt_format: raw text or the tokenizer's chat template ---------------------------------

CHAT_TEMPLATE = (
    "{% for message in messages %}<bos> {{ message['role'] }} {{ message['content'] }} <eos>"
    "{% endfor %}{% if add_generation_prompt %}<bos> assistant{% endif %}"
)


@pytest.fixture
def chat_tokenizer(tiny_texts):
    from conftest import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer([*tiny_texts.texts, "user assistant"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def test_chat_prompt_is_the_user_turn_of_the_template(chat_tokenizer):
    from ntps.text import tokenize_all

    raw, _ = tokenize_all(chat_tokenizer, ["a boring mess"], 64)
    chat, _ = tokenize_all(chat_tokenizer, ["a boring mess"], 64, "chat")
    words = chat_tokenizer.convert_ids_to_tokens
    assert words(raw[0]) == ["<bos>", "a", "boring", "mess"]
    # The template's own special tokens, none added on top, no generation prompt.
    assert words(chat[0]) == ["<bos>", "user", "a", "boring", "mess", "<eos>"]
    cut, n_cut = tokenize_all(chat_tokenizer, ["a boring mess"], 4, "chat")
    assert words(cut[0]) == ["<bos>", "user", "a", "boring"] and n_cut == 1


def test_chat_prompt_changes_features_and_needs_a_template(chat_tokenizer, tiny_texts):
    from conftest import build_tiny_llama

    from ntps.errors import ModelSourceError

    base = build_tiny_llama(len(chat_tokenizer)).model
    raw = run(base, chat_tokenizer, tiny_texts)
    chat = run(base, chat_tokenizer, tiny_texts, prompt_format="chat")
    assert chat.pooled.shape == raw.pooled.shape
    assert not torch.allclose(chat.pooled[1:], raw.pooled[1:])
    chat_tokenizer.chat_template = None
    with pytest.raises(ModelSourceError, match="no chat template"):
        run(base, chat_tokenizer, tiny_texts, prompt_format="chat")


def test_lora_inputs_follow_the_classifier_prompt_format(chat_tokenizer, tiny_texts):
    from conftest import build_tiny_llama

    from ntps.lora import LoRASettings, TextInputs, build_classifier
    from ntps.text import tokenize_all

    base = build_tiny_llama(len(chat_tokenizer)).model
    classifier = build_classifier(base, 3, LoRASettings.from_dict({"r": 2, "top_blocks": None}))
    classifier.prompt_format = "chat"
    inputs = TextInputs(
        classifier, chat_tokenizer, tiny_texts.texts[:3], 64, torch.device("cpu"), 2
    )
    expected, _ = tokenize_all(chat_tokenizer, tiny_texts.texts[:3], 64, "chat")
    assert inputs.ids == expected
