"""LoRA classifier: learning, save/reload, merging, target modules, checkpoint resume, determinism.

Everything runs on a tiny random 2-layer Llama base model (d=32) and a WordLevel tokenizer built
here, on a synthetic task a model can learn in a few dozen steps: label 0 if the text contains
words from set A, label 1 if it contains words from set B (two of them among 2-6 filler words).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from lora_support import load_lora_classifier, merged_base_model, predict
from torch import nn

from ntps.errors import ConfigError, DatasetError, ModelSourceError
from ntps.lora import (
    LoRAClassifier,
    LoRASettings,
    build_classifier,
    post_lora_statistics,
    resolve_target_modules,
    sample_order,
    save_lora,
    train_lora_classifier,
)
from ntps.text import masked_mean_pool, pad_batch

SET_A = [f"alpha{i}" for i in range(6)]
SET_B = [f"beta{i}" for i in range(6)]
NEUTRAL = [f"w{i}" for i in range(30)]


def make_texts(n: int, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 6))]
        for _ in range(2):
            words.insert(rng.randint(0, len(words)), rng.choice(SET_A if label == 0 else SET_B))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<bos>", "<eos>"]
    vocab = {w: i for i, w in enumerate(specials + SET_A + SET_B + NEUTRAL)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
        eos_token="<eos>",
    )  # fmt: skip


def make_base(vocab_size: int, seed: int = 0) -> nn.Module:
    """A fresh tiny Llama BASE model (no LM head); fresh each time since LoRA injects in place."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=vocab_size, max_position_embeddings=64,
        bos_token_id=2, eos_token_id=3, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaModel(config).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matrices: a second intra-op thread only adds contention on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def task():
    tokenizer = make_tokenizer()
    train = make_texts(64, seed=1)
    test = make_texts(48, seed=2)
    return tokenizer, train, test


def quick_settings(**overrides) -> LoRASettings:
    base = dict(
        r=8, alpha=16, dropout=0.0, optimizer="adamw", learning_rate=5e-3, lr_schedule="cosine",
        warmup_ratio=0.1, max_steps=60, batch_size=8, max_length=32, seed=0, eval_batch_size=16,
    )  # fmt: skip
    base.update(overrides)
    return LoRASettings.from_dict(base)


def run(task, settings: LoRASettings, **kwargs):
    tokenizer, (train_x, train_y), (test_x, test_y) = task
    kwargs.setdefault("log", lambda _msg: None)
    return train_lora_classifier(
        make_base(len(tokenizer)), tokenizer, train_x, train_y, 2, settings, device="cpu",
        test_texts=test_x, test_labels=test_y, progress=False, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(task):
    return run(task, quick_settings())


# --------------------------------------------------------------------------------------------


def test_training_learns_the_task(trained):
    curve = trained.loss_curve
    assert len(curve) == trained.steps_done == 60
    start, end = sum(curve[:10]) / 10, sum(curve[-10:]) / 10
    assert end < 0.5 * start, (start, end)
    assert trained.test_accuracy >= 0.8
    assert 0.0 < trained.test_macro_f1 <= 1.0
    assert len(trained.test_predictions) == 48
    # r=8 adapters on q,k,v (each 8*(32+out)) of 2 layers + a 32x2 head with bias.
    kv_out = 32 // 4 * 2  # head_dim * num_key_value_heads
    per_layer = 8 * (32 + 32) + 2 * 8 * (32 + kv_out)
    assert trained.trainable_params == 2 * per_layer + 32 * 2 + 2
    summary = trained.to_dict()
    json.dumps(summary)  # JSON-ready
    assert summary["target_modules"] == ["q_proj", "k_proj", "v_proj"]


def test_pooling_uses_last_hidden_state_after_final_norm(task, trained):
    tokenizer = task[0]
    clf = trained.classifier
    enc = tokenizer(["w1 alpha0 w2", "w3"], padding=True, return_tensors="pt")
    captured = []
    hook = clf.peft_model.get_base_model().norm.register_forward_hook(
        lambda _mod, _inp, output: captured.append(output)
    )
    with torch.no_grad():
        out = clf.peft_model(**enc, output_hidden_states=True)
        hook.remove()
        # transformers 5 Llama: hidden_states[-1] IS last_hidden_state, the final norm's output,
        # so the head sees the same "last layer" as the extraction's hidden_states[-1].
        assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
        assert torch.equal(out.hidden_states[-1], captured[-1])
        expected = masked_mean_pool(out.hidden_states[-1], enc["attention_mask"])
        token_ids = tokenizer(["w1 alpha0 w2", "w3"])["input_ids"]
        ids, mask, positions = pad_batch(token_ids, tokenizer.pad_token_id)
        assert torch.equal(ids, enc["input_ids"])
        pooled = masked_mean_pool(clf.last_hidden(ids, mask, positions), mask)
        assert torch.allclose(pooled, expected, atol=1e-6)
        # padding must not leak into the pooled vector of the short text
        single_ids, single_mask, single_pos = pad_batch(token_ids[1:], tokenizer.pad_token_id)
        single = masked_mean_pool(clf.last_hidden(single_ids, single_mask, single_pos), single_mask)
    assert torch.allclose(single[0], expected[1], atol=1e-5)


def test_save_and_reload_reproduce_logits(task, trained, tmp_path):
    tokenizer, _, (test_x, _) = task
    out = save_lora(trained, tmp_path / "adapter")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "head.safetensors"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temp folder left behind
    reloaded = load_lora_classifier(make_base(len(tokenizer)), out)
    assert isinstance(reloaded, LoRAClassifier)
    a = predict(trained.classifier, tokenizer, test_x, 16, 32, "cpu")
    b = predict(reloaded, tokenizer, test_x, 16, 32, "cpu")
    assert torch.equal(a, b)
    assert torch.equal(a, trained.test_logits)
    # saving again over the same folder replaces it atomically
    save_lora(reloaded, out)
    assert torch.equal(predict(load_lora_classifier(make_base(len(tokenizer)), out), tokenizer,
                               test_x, 16, 32, "cpu"), a)  # fmt: skip


def test_merged_model_matches_adapted_and_differs_from_base(task, trained):
    tokenizer, _, (test_x, _) = task
    clf = trained.classifier
    before = predict(clf, tokenizer, test_x, 16, 32, "cpu")
    merged = merged_base_model(clf)
    assert type(merged).__name__ == "LlamaModel"
    assert not any("lora" in name for name, _ in merged.named_parameters())
    enc = tokenizer(test_x[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        adapted = clf.peft_model(**enc, output_hidden_states=True).hidden_states
        merged_h = merged(**enc, output_hidden_states=True).hidden_states
        original = make_base(len(tokenizer))(**enc, output_hidden_states=True).hidden_states
    assert len(merged_h) == len(adapted) == 3
    for a, m in zip(adapted, merged_h, strict=True):
        assert torch.allclose(a, m, atol=1e-5)
    assert torch.equal(merged_h[0], original[0])  # embeddings are not adapted
    assert (merged_h[-1] - original[-1]).abs().max() > 1e-3
    # merging worked on a copy: the classifier still predicts as before
    assert torch.equal(predict(clf, tokenizer, test_x, 16, 32, "cpu"), before)


def test_target_modules_auto_and_errors():
    base = make_base(50)
    assert resolve_target_modules(base, None) == ["q_proj", "k_proj", "v_proj"]
    with pytest.raises(ConfigError) as err:
        resolve_target_modules(base, ["q_proj", "bogus_proj"])
    message = str(err.value)
    assert "lora.target_modules ['bogus_proj'] not found" in message
    assert "o_proj" in message and "gate_proj" in message
    assert "'q_proj'" not in message.split("exist:")[0]  # only the missing one is named as missing

    class NoAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

    with pytest.raises(ModelSourceError, match="fc"):
        resolve_target_modules(NoAttention(), None)


def test_layers_to_transform_restricts_adapters():
    clf = build_classifier(make_base(50), 3, quick_settings(layers_to_transform=[1]))
    adapted = {n.split(".lora_")[0] for n, _ in clf.named_parameters() if ".lora_A." in n}
    assert adapted and all(".layers.1." in n for n in adapted)
    assert {n.rsplit(".", 1)[-1] for n in adapted} == {"q_proj", "k_proj", "v_proj"}
    with pytest.raises(ConfigError, match=r"layers_to_transform \[5\]"):
        build_classifier(make_base(50), 3, quick_settings(layers_to_transform=[5]))
    custom = build_classifier(make_base(50), 3, quick_settings(target_modules=["o_proj"]))
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1]
            for n, _ in custom.named_parameters() if ".lora_A." in n} == {"o_proj"}  # fmt: skip


def test_settings_defaults_and_validation():
    s = LoRASettings()
    assert (s.r, s.alpha, s.dropout, s.optimizer, s.learning_rate) == (
        32,
        32,
        0.05,
        "adafactor",
        1e-4,
    )
    assert (s.lr_schedule, s.warmup_ratio, s.max_steps, s.batch_size) == ("cosine", 0.05, 5000, 1)
    assert s.target_modules is None and s.num_warmup_steps() == 250
    assert (s.head_init, s.top_blocks, s.max_length) == ("probe", None, None)
    # The config schema's checks and messages, whether built from a mapping or directly.
    with pytest.raises(ConfigError, match="only one of top_blocks, layers_to_transform"):
        LoRASettings.from_dict({"top_blocks": 1, "layers_to_transform": [0]})
    with pytest.raises(ConfigError, match="head_init"):
        LoRASettings.from_dict({"head_init": "zeros"})
    with pytest.raises(ConfigError, match=r"'lr' was unexpected.*allowed: .*learning_rate"):
        LoRASettings.from_dict({"lr": 1e-3})
    with pytest.raises(ConfigError, match="optimizer"):
        LoRASettings.from_dict({"optimizer": "sgd"})
    with pytest.raises(ConfigError, match="lr_schedule"):
        LoRASettings(lr_schedule="step")
    with pytest.raises(ConfigError, match="warmup_ratio"):
        LoRASettings(warmup_ratio=1.0)
    assert LoRASettings.from_dict({"target_modules": ["qkv_proj"]}).target_modules == ["qkv_proj"]


def test_bad_labels_raise(task):
    tokenizer, (train_x, _), _ = task
    with pytest.raises(DatasetError, match=r"outside 0\.\.1"):
        train_lora_classifier(make_base(len(tokenizer)), tokenizer, train_x, [5] * len(train_x),
                              2, quick_settings(max_steps=1), progress=False, log=lambda _m: None)  # fmt: skip


def test_sample_order_is_stateless_and_covers_each_epoch():
    full = sample_order(10, 3, 0, 35)
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))
    assert full[:10] != full[10:20]  # reshuffled per epoch
    pieces = sample_order(10, 3, 0, 7) + sample_order(10, 3, 7, 16) + sample_order(10, 3, 23, 12)
    assert pieces == full


def test_schedule_and_adafactor(task):
    from transformers.optimization import Adafactor

    from ntps.lora.train import _make_optimizer, _make_scheduler

    settings = quick_settings(optimizer="adafactor", learning_rate=1e-3, head_lr=1e-2,
                              max_steps=20, warmup_ratio=0.1)  # fmt: skip
    clf = build_classifier(make_base(50), 2, settings)
    opt = _make_optimizer(clf, settings)
    assert isinstance(opt, Adafactor)
    assert not opt.defaults["relative_step"] and not opt.defaults["scale_parameter"]
    sched = _make_scheduler(opt, settings)
    lrs = []
    for _ in range(20):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == [0.0, 0.0] and lrs[2] == pytest.approx([1e-3, 1e-2])  # 2 warm-up steps
    assert lrs[-1][0] < 0.05e-3 and lrs[-1][1] / lrs[-1][0] == pytest.approx(10)


def test_seed_determinism(task):
    settings = quick_settings(max_steps=10, dropout=0.1)
    a, b = run(task, settings), run(task, settings)
    assert a.loss_curve == b.loss_curve
    assert torch.equal(a.test_logits, b.test_logits)
    c = run(task, quick_settings(max_steps=10, dropout=0.1, seed=1))
    assert c.loss_curve != a.loss_curve


class Interrupted(Exception):
    pass


def test_checkpoint_resume_matches_uninterrupted_run(task, tmp_path):
    # Dropout and Adafactor so that RNG and optimizer state both have to be restored exactly.
    settings = quick_settings(max_steps=12, checkpoint_every=5, batch_size=4, grad_accum_steps=2,
                              dropout=0.1, optimizer="adafactor", learning_rate=1e-2)  # fmt: skip
    reference = run(task, settings)

    def crash_at_7(step: int, _loss: float) -> None:
        if step == 7:
            raise Interrupted

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupted):
        run(task, settings, checkpoint_dir=ckpt, on_step=crash_at_7)
    assert [p.name for p in ckpt.iterdir()] == ["step-00000005"]  # steps 6-7 are lost

    resumed = run(task, settings, checkpoint_dir=ckpt)
    assert resumed.resumed_from_step == 5 and resumed.steps_done == 12
    assert resumed.loss_curve == reference.loss_curve
    assert torch.equal(resumed.test_logits, reference.test_logits)
    assert resumed.test_predictions == reference.test_predictions
    assert [p.name for p in ckpt.iterdir()] == ["step-00000012"]  # final state kept

    # A finished checkpoint is reused without training again.
    again = run(task, settings, checkpoint_dir=ckpt)
    assert again.resumed_from_step == 12 and torch.equal(again.test_logits, reference.test_logits)

    # Changing what the trajectory depends on refuses to resume.
    other = quick_settings(max_steps=12, checkpoint_every=5, batch_size=4, grad_accum_steps=2,
                           dropout=0.1, optimizer="adafactor", learning_rate=2e-2)  # fmt: skip
    with pytest.raises(ConfigError, match="other settings"):
        run(task, other, checkpoint_dir=ckpt)


def test_checkpoint_files_are_complete(task, tmp_path: Path):
    run(task, quick_settings(max_steps=3, checkpoint_every=2), checkpoint_dir=tmp_path)
    (only,) = list(tmp_path.iterdir())
    assert only.name == "step-00000003"
    assert {p.name for p in only.iterdir()} == {"trainable.safetensors", "state.pt"}
    state = torch.load(only / "state.pt", weights_only=True)
    assert state["step"] == 3 and len(state["loss_curve"]) == 3


def test_works_on_model_loaded_by_models_module(tiny_llama_dir, tiny_texts, tmp_path):
    """The project's loading path (base model without LM head, tokenizer with BOS) trains and reloads."""
    from ntps.models import load_for_inference

    base, tokenizer = load_for_inference(tiny_llama_dir, "float32", "cpu")
    settings = quick_settings(max_steps=4, batch_size=4, max_length=16)
    result = train_lora_classifier(
        base, tokenizer, tiny_texts.texts, tiny_texts.labels, tiny_texts.n_classes, settings,
        device="cpu", test_texts=tiny_texts.texts[:6], test_labels=tiny_texts.labels[:6],
        progress=False, log=lambda _m: None,
    )  # fmt: skip
    assert result.steps_done == 4 and result.test_logits.shape == (6, 3)
    assert result.n_train_truncated == sum(
        len(ids) > 16 for ids in tokenizer(tiny_texts.texts)["input_ids"]
    )
    save_lora(result, tmp_path / "lora")
    fresh, _ = load_for_inference(tiny_llama_dir, "float32", "cpu")
    reloaded = load_lora_classifier(fresh, tmp_path / "lora")
    logits = predict(reloaded, tokenizer, tiny_texts.texts[:6], settings.eval_batch_size, 16, "cpu")
    assert torch.equal(logits, result.test_logits)


# --------------------------------------------------------------------------------------------
# adapters on upper blocks only, the head started from a probe, post-LoRA statistics


def test_top_blocks_run_in_two_parts_and_match_the_whole_model(task, tmp_path):
    tokenizer, _, (test_x, _) = task
    result = run(task, quick_settings(max_steps=20, top_blocks=1))
    assert result.first_adapted_block == 1 and result.inputs_cached
    adapted = {n for n, _ in result.classifier.named_parameters() if ".lora_A." in n}
    assert adapted and all(".layers.1." in n for n in adapted)
    # The saved classifier reloads as a whole model; both paths give the same logits.
    save_lora(result, tmp_path / "adapter")
    whole = load_lora_classifier(make_base(len(tokenizer)), tmp_path / "adapter")
    assert whole.start is None
    logits = predict(whole, tokenizer, test_x, 16, 32, "cpu")
    assert torch.allclose(logits, result.test_logits, atol=1e-5)
    assert result.test_accuracy >= 0.7


def test_head_from_probe_reproduces_the_probe_before_training(task):
    """LoRA's first evaluation equals the probe fitted on the extraction's pooled features."""
    import numpy as np

    from ntps.extract import extract_features
    from ntps.probes import fit_probe

    tokenizer, (train_x, train_y), (test_x, test_y) = task
    base = make_base(len(tokenizer))
    features = {
        name: extract_features(base, tokenizer, texts, None, 2, batch_size=8, max_length=32,
                               accumulate_statistics=False, progress=False).pooled[-1].numpy()
        for name, texts in (("train", train_x), ("test", test_x))
    }  # fmt: skip
    probe = fit_probe(features["train"], np.array(train_y), features["test"], np.array(test_y), 2,
                      c_grid=[1.0], keep_head=True)  # fmt: skip
    head = (torch.from_numpy(probe.head_weight).float(), torch.from_numpy(probe.head_bias).float())
    # The folded head on raw features gives the probe's predictions.
    raw_logits = torch.from_numpy(features["test"]) @ head[0].T + head[1]
    assert raw_logits.argmax(-1).tolist() == probe.test_predictions.tolist()
    for settings in (quick_settings(max_steps=8, top_blocks=1), quick_settings(max_steps=8)):
        result = run(task, settings, initial_head=head, max_length=32)
        assert result.head_init == "probe"
        assert result.initial_test_predictions == probe.test_predictions.tolist()
        assert result.initial_test_accuracy == pytest.approx(probe.accuracy)


def test_post_lora_statistics_match_a_full_extraction_of_the_merged_model(task):
    from ntps.extract import extract_features

    tokenizer, (train_x, train_y), _ = task
    for settings in (quick_settings(max_steps=10, top_blocks=1), quick_settings(max_steps=10)):
        result = run(task, settings)
        first, upper = post_lora_statistics(result.classifier, result.train_inputs, train_y, 16)
        assert first == (2 if settings.top_blocks else 0)
        merged = merged_base_model(result.classifier)
        full = extract_features(merged, tokenizer, train_x, train_y, 2, batch_size=16,
                                max_length=32, accumulate_statistics=True, progress=False)  # fmt: skip
        reference = full.statistics
        assert upper.n_layers == reference.n_layers - first
        assert (upper.n_examples, upper.n_pairs) == (reference.n_examples, reference.n_pairs)
        for name in ("cxx_sum", "cxy_sum", "s0_sum", "s1_sum"):
            ours, theirs = getattr(upper, name), getattr(reference, name)[first:]
            assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6 * float(theirs.abs().max()))


@pytest.mark.parametrize("top_blocks", [None, 1])
def test_lora_pools_the_features_the_extraction_pools(task, top_blocks):
    """One text path: before training, LoRA's pooled last layer equals the extraction's."""
    from ntps.extract import extract_features
    from ntps.lora import TextInputs, configure_split

    tokenizer, _, (test_x, _) = task
    clf = build_classifier(make_base(len(tokenizer)), 2, quick_settings(top_blocks=top_blocks))
    clf.eval()
    configure_split(clf, tokenizer, test_x, 32, torch.device("cpu"))
    assert clf.start == (1 if top_blocks else None)
    inputs = TextInputs(clf, tokenizer, test_x, 32, torch.device("cpu"), 7)
    pooled = torch.empty(len(test_x), 32)
    with torch.no_grad():
        for start in range(0, len(test_x), 7):
            rows = list(range(start, min(start + 7, len(test_x))))
            batch, mask, positions = inputs.batch(rows)
            pooled[rows] = masked_mean_pool(clf.last_hidden(batch, mask, positions), mask)
    extracted = extract_features(make_base(len(tokenizer)), tokenizer, test_x, None, 2,
                                 batch_size=16, max_length=32, accumulate_statistics=False,
                                 progress=False).pooled[-1]  # fmt: skip
    assert torch.allclose(pooled, extracted, atol=1e-5)


def test_lora_reads_the_block_inputs_the_extraction_kept(task, tmp_path):
    """The extraction's copy of the inputs of the first adapted block (keep_state) equals, bit for
    bit, what LoRA computes itself in the extraction's batches (train texts batched within their
    jackknife shards); LoRA read from it trains, evaluates and computes post-LoRA statistics
    exactly as without it, and falls back (saying why) when the copy does not match the job."""
    from ntps.extract import extract_features
    from ntps.io import save_tensors
    from ntps.layout import block_inputs_metadata, block_offsets_key, block_states_key
    from ntps.lora import StoredBlockInputs
    from ntps.lora.inputs import batching_metadata

    tokenizer, (train_x, train_y), (test_x, _) = task
    settings = quick_settings(max_steps=12, top_blocks=1)
    batching = {"batch_size": 5, "jackknife_shards": 3, "jackknife_seed": 7}
    kept = {
        split: extract_features(make_base(len(tokenizer)), tokenizer, texts, labels, 2,
                                batch_size=5, max_length=32, accumulate_statistics=split == "train",
                                n_shards=3, shard_seed=7, progress=False, keep_state=1)
        for split, texts, labels in (("train", train_x, train_y), ("test", test_x, None))
    }  # fmt: skip

    def stored(name: str, **changes) -> StoredBlockInputs:
        meta = dict(limit=32, prompt_format="raw", batching=batching_metadata(batching),
                    dtype="float32", device_type="cpu", fingerprint="data",
                    model_provenance={"sha": "m"})  # fmt: skip
        meta.update(changes)
        tensors = {}
        for split, result in kept.items():
            tensors[block_states_key(split)] = result.block_states
            tensors[block_offsets_key(split)] = result.block_offsets
        save_tensors(tmp_path / name, tensors, block_inputs_metadata(1, "", **meta))
        return StoredBlockInputs(tmp_path / name, "data", {"sha": "m"}, batching)

    messages: list[str] = []
    computed = run(task, settings, extraction_batching=batching)
    read = run(task, settings, stored_inputs=stored("good.safetensors"), log=messages.append,
               extraction_batching=batching)  # fmt: skip
    assert computed.train_inputs.source == "computed"
    assert read.train_inputs.source == "read from the extraction"
    assert any("(kept in memory, read from the extraction); ready after" in m for m in messages)
    cached = computed.train_inputs.cached
    assert torch.equal(torch.cat(cached), kept["train"].block_states)
    assert [len(t) for t in cached] == kept["train"].block_offsets.diff().tolist()
    assert read.loss_curve == computed.loss_curve
    assert torch.equal(read.test_logits, computed.test_logits)
    for name, tensor in computed.classifier.trainable_state().items():
        assert torch.equal(read.classifier.trainable_state()[name], tensor), name
    ours = post_lora_statistics(read.classifier, read.train_inputs, train_y, 16)[1]
    theirs = post_lora_statistics(computed.classifier, computed.train_inputs, train_y, 16)[1]
    for name in ("cxx_sum", "cxy_sum", "s0_sum", "s1_sum"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name

    # A copy made with another token limit, in other batches, or for other data, is not used.
    for name, change, reason in (
        ("limit.safetensors", {"limit": 16}, "max_length is '16'"),
        ("batches.safetensors", {"batching": batching_metadata({"batch_size": 8})}, "batching"),
        ("data.safetensors", {"fingerprint": "other"}, "dataset_fingerprint is 'other'"),
    ):
        messages.clear()
        other = run(task, settings, stored_inputs=stored(name, **change), log=messages.append,
                    extraction_batching=batching)  # fmt: skip
        assert other.train_inputs.source == "computed"
        assert sum("computed here, not read from" in m for m in messages) == 1
        assert any(reason in m for m in messages), messages
        assert torch.equal(other.test_logits, computed.test_logits)
    # A pair whose extraction kept no states: LoRA computes them and says why.
    save_tensors(tmp_path / "none.safetensors", {}, block_inputs_metadata(
        None, "the pair gets no LoRA", limit=32, prompt_format="raw",
        batching=batching_metadata(batching), dtype="float32", device_type="cpu",
        fingerprint="data", model_provenance={"sha": "m"},
    ))  # fmt: skip
    messages.clear()
    none = StoredBlockInputs(tmp_path / "none.safetensors", "data", {"sha": "m"}, batching)
    run(task, settings, stored_inputs=none, log=messages.append, extraction_batching=batching)
    assert any("holds no states (the pair gets no LoRA)" in m for m in messages)


@pytest.mark.parametrize(
    ("changes", "first"),
    [
        ({"top_blocks": 2}, 28),
        ({"top_blocks": 30}, None),
        ({"top_blocks": 40}, None),
        ({"layers_to_transform": [5, 3]}, 3),
        ({"layers_to_transform": [0, 3]}, None),
        ({}, None),
    ],
)
def test_first_adapted_block_follows_the_settings(changes, first):
    """The extraction's choice of state (and the disk plan's) is where LoRA's adapters start."""
    from ntps.lora import first_adapted_block
    from ntps.sizes import has_frozen_lower_blocks

    settings = quick_settings(**changes)
    assert first_adapted_block(settings, 30) == first
    assert has_frozen_lower_blocks(settings.to_dict(), 30) == (first is not None)
