"""Streaming statistics: brute-force agreement, padding invariance, merging, precision, I/O keys."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ntps.errors import DatasetError, NumericalError
from ntps.stats import LayerMoments, StatisticsAccumulator, masked_mean_pool, stored_layers

SUMS = ("x_sum", "cxx_sum", "cxy_sum", "s0_sum", "s1_sum", "label_counts")


def ragged_texts(n_layers, lengths, d, seed, offset=0.0):
    """A list of per-text hidden states (L, n_i, d) in float64."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n_layers, n, d, generator=g, dtype=torch.float64) + offset for n in lengths]


def pad_batch(texts, side, t_total=None, fill=0.0):
    """Stack ragged texts into (L, B, T, d) with a 0/1 mask; padding holds ``fill``."""
    n_layers, _, d = texts[0].shape
    t_total = t_total or max(t.shape[1] for t in texts)
    h = torch.full((n_layers, len(texts), t_total, d), fill, dtype=torch.float64)
    mask = torch.zeros(len(texts), t_total, dtype=torch.int64)
    for b, t in enumerate(texts):
        n = t.shape[1]
        sl = slice(0, n) if side == "right" else slice(t_total - n, t_total)
        h[:, b, sl] = t
        mask[b, sl] = 1
    return h, mask


def brute_force(texts, labels, c):
    """Explicit loops over texts and positions, float64: the definition of every sum."""
    n_layers, _, d = texts[0].shape
    out = {
        "x_sum": torch.zeros(n_layers, d, dtype=torch.float64),
        "cxx_sum": torch.zeros(n_layers, d, d, dtype=torch.float64),
        "cxy_sum": torch.zeros(n_layers, d, c, dtype=torch.float64),
        "s0_sum": torch.zeros(n_layers, d, d, dtype=torch.float64),
        "s1_sum": torch.zeros(n_layers, d, d, dtype=torch.float64),
        "label_counts": torch.zeros(c, dtype=torch.int64),
    }
    n_pairs = 0
    for t, y in zip(texts, labels, strict=True):
        out["label_counts"][y] += 1
        n = t.shape[1]
        n_pairs += n - 1
        for layer in range(n_layers):
            x = t[layer].mean(0)
            out["x_sum"][layer] += x
            out["cxx_sum"][layer] += torch.outer(x, x)
            out["cxy_sum"][layer, :, y] += x
            s = torch.zeros(d, dtype=torch.float64)
            for pos in range(n - 1):
                s = s + t[layer, pos]
                out["s0_sum"][layer] += torch.outer(s, s)
                out["s1_sum"][layer] += torch.outer(s, t[layer, pos + 1])
    return out, n_pairs


def assert_sums_close(acc, ref, rtol=1e-12):
    for name in SUMS:
        got, want = getattr(acc, name), ref[name]
        if name == "label_counts":
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))


LENGTHS = [5, 1, 9, 3, 7, 2, 9, 4]


@pytest.mark.parametrize("side", ["right", "left"])
def test_matches_brute_force_ragged(side):
    texts = ragged_texts(3, LENGTHS, 6, seed=1)
    labels = [0, 2, 1, 1, 3, 0, 2, 3]
    acc = StatisticsAccumulator(3, 6, 4, product_dtype=torch.float64)
    # two batches, the second with extra padding columns (T larger than the longest text)
    h1, m1 = pad_batch(texts[:5], side, fill=7.0)
    h2, m2 = pad_batch(texts[5:], side, t_total=12, fill=-3.0)
    acc.update(h1, m1, torch.tensor(labels[:5]))
    acc.update(h2, m2, torch.tensor(labels[5:]))
    ref, n_pairs = brute_force(texts, labels, 4)
    assert_sums_close(acc, ref)
    assert acc.n_examples == len(texts)
    assert acc.n_pairs == n_pairs == sum(n - 1 for n in LENGTHS)


def test_left_and_right_padding_identical_and_holes_in_mask():
    texts = ragged_texts(2, LENGTHS, 5, seed=2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    accs = []
    for side in ("left", "right"):
        acc = StatisticsAccumulator(2, 5, 3, product_dtype=torch.float64)
        acc.update(*pad_batch(texts, side), labels)
        accs.append(acc)
    for name in SUMS:
        torch.testing.assert_close(
            getattr(accs[0], name), getattr(accs[1], name), rtol=1e-14, atol=0
        )
    # An arbitrary mask pattern: valid tokens are used in order, padding positions skipped.
    h, m = pad_batch(texts, "right", t_total=20, fill=float("nan"))
    perm_h = torch.full_like(h, float("nan"))
    perm_m = torch.zeros_like(m)
    for b, t in enumerate(texts):
        cols = torch.arange(t.shape[1]) * 2 + 1  # every other column
        perm_h[:, b, cols] = t
        perm_m[b, cols] = 1
    acc = StatisticsAccumulator(2, 5, 3, product_dtype=torch.float64)
    acc.update(perm_h, perm_m, labels)
    for name in SUMS:
        torch.testing.assert_close(
            getattr(acc, name), getattr(accs[1], name), rtol=1e-12, atol=1e-12
        )


def test_tuple_input_and_pooled_output():
    texts = ragged_texts(3, LENGTHS, 4, seed=3)
    h, m = pad_batch(texts, "left")
    labels = torch.tensor([0, 1] * 4)
    a = StatisticsAccumulator(3, 4, 2, product_dtype=torch.float64)
    b = StatisticsAccumulator(3, 4, 2, product_dtype=torch.float64)
    pooled = a.update(h, m, labels)
    pooled_t = b.update(tuple(h[i].float() for i in range(3)), m, labels)
    assert pooled.shape == (3, 8, 4) and pooled.dtype == torch.float32
    want = torch.stack([t.mean(1) for t in texts], dim=1)  # (L, B, d)
    torch.testing.assert_close(pooled, want.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pooled_t, pooled, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked_mean_pool(h[1], m), want[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.cxx_sum, a.cxx_sum, rtol=1e-5, atol=1e-6)


def test_merge_of_halves_equals_whole():
    texts = ragged_texts(2, LENGTHS * 2, 5, seed=4)
    labels = torch.arange(16) % 3
    whole = StatisticsAccumulator(2, 5, 3, product_dtype=torch.float64)
    whole.update(*pad_batch(texts, "right"), labels)
    h1 = StatisticsAccumulator(2, 5, 3, product_dtype=torch.float64)
    h2 = StatisticsAccumulator(2, 5, 3, product_dtype=torch.float64)
    h1.update(*pad_batch(texts[:7], "right"), labels[:7])
    h2.update(*pad_batch(texts[7:], "left"), labels[7:])
    for merged in (h1.merge(h2), h1 + h2):
        for name in SUMS:
            torch.testing.assert_close(
                getattr(merged, name), getattr(whole, name), rtol=1e-12, atol=1e-12
            )
        assert (merged.n_examples, merged.n_pairs, merged.n_texts) == (
            whole.n_examples,
            whole.n_pairs,
            whole.n_texts,
        )
    assert h1.n_examples == 7  # merge does not modify its operands
    with pytest.raises(ValueError, match="cannot merge"):
        h1.merge(StatisticsAccumulator(2, 5, 4))


def test_float32_products_within_1e6_relative():
    # LLM-like: long texts, a large common offset (prefix sums grow ~ t), one outlier dimension.
    g = torch.Generator().manual_seed(5)
    lengths = [300, 120, 257, 64, 300, 9]
    d = 48
    offset = torch.randn(d, generator=g, dtype=torch.float64)
    offset[3] = 40.0
    texts = [torch.randn(2, n, d, generator=g, dtype=torch.float64) + offset for n in lengths]
    h, m = pad_batch(texts, "left")
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    acc64 = StatisticsAccumulator(2, d, 2, product_dtype=torch.float64)
    acc32 = StatisticsAccumulator(2, d, 2, product_dtype=torch.float32)
    acc64.update(h, m, labels)
    acc32.update(h, m, labels)
    for name in ("s0_sum", "s1_sum", "cxx_sum"):
        a, b = getattr(acc32, name), getattr(acc64, name)
        assert a.dtype == torch.float64
        for layer in range(2):
            rel = float(torch.linalg.norm(a[layer] - b[layer]) / torch.linalg.norm(b[layer]))
            assert rel < 1e-6, (name, layer, rel)
            assert rel > 0 or name == "cxx_sum"  # products really were float32


def test_default_product_dtype_is_float32_and_float64_available():
    assert StatisticsAccumulator(1, 2, 2).product_dtype == torch.float32
    assert StatisticsAccumulator(1, 2, 2, product_dtype=torch.float64).s0_sum.dtype == torch.float64
    with pytest.raises(ValueError):
        StatisticsAccumulator(1, 2, 2, product_dtype=torch.float16)


def test_one_token_texts_and_unlabelled_batches():
    texts = ragged_texts(1, [1, 1, 1], 3, seed=6)
    acc = StatisticsAccumulator(1, 3, 2)
    acc.update(*pad_batch(texts, "right"), torch.tensor([0, 1, 1]))
    assert (
        acc.n_pairs == 0
        and float(acc.s0_sum.abs().sum()) == 0.0
        and float(acc.s1_sum.abs().sum()) == 0.0
    )
    assert float(acc.cxx_sum.abs().sum()) > 0
    # labels=None: autoregressive side only
    acc2 = StatisticsAccumulator(1, 3, 2)
    acc2.update(*pad_batch(ragged_texts(1, [4, 2], 3, seed=7), "left"), None)
    assert acc2.n_examples == 0 and acc2.n_pairs == 4 and acc2.n_texts == 2
    assert float(acc2.cxx_sum.abs().sum()) == 0.0 and float(acc2.s0_sum.abs().sum()) > 0
    with pytest.raises(NumericalError, match="no labelled examples"):
        acc2.layer_moments(0)


def test_nan_detection_names_layer_and_ignores_padding():
    texts = ragged_texts(3, [4, 2], 3, seed=8)
    h, m = pad_batch(texts, "right", fill=float("nan"))  # NaN in padding is fine
    StatisticsAccumulator(3, 3, 2).update(h, m, torch.tensor([0, 1]))
    h[2, 0, 1, 0] = float("inf")
    with pytest.raises(NumericalError, match=r"layer 2.*(bfloat16|bf16)"):
        StatisticsAccumulator(3, 3, 2).update(h, m, torch.tensor([0, 1]))


def test_bad_inputs_raise_clear_errors():
    texts = ragged_texts(1, [3, 2], 2, seed=9)
    h, m = pad_batch(texts, "right")
    acc = StatisticsAccumulator(1, 2, 2)
    with pytest.raises(DatasetError, match=r"0\.\.1"):
        acc.update(h, m, torch.tensor([0, 2]))
    m0 = m.clone()
    m0[1] = 0
    with pytest.raises(DatasetError, match="no non-padding"):
        acc.update(h, m0, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="layers"):
        acc.update(torch.cat([h, h]), m, torch.tensor([0, 1]))


def test_tensors_round_trip_and_lazy_layer_loading(tmp_path):
    texts = ragged_texts(3, LENGTHS, 4, seed=10)
    acc = StatisticsAccumulator(3, 4, 3)
    acc.update(*pad_batch(texts, "left"), torch.tensor([0, 1, 2, 0, 1, 2, 2, 2]))
    tensors = acc.to_tensors()
    assert "layer2.s0_sum" in tensors and tensors["layer2.s0_sum"].shape == (4, 4)
    assert stored_layers(tensors) == [0, 1, 2]
    back = StatisticsAccumulator.from_tensors(tensors)
    for name in SUMS:
        assert torch.equal(getattr(back, name), getattr(acc, name))
    assert (back.n_examples, back.n_pairs, back.n_texts) == (
        acc.n_examples,
        acc.n_pairs,
        acc.n_texts,
    )

    path = tmp_path / "stats.safetensors"
    save_file(tensors, str(path))
    with safe_open(str(path), "pt") as f:
        lazy = LayerMoments.from_tensors(f, 1)
    m = acc.layer_moments(1)
    for name in ("cxx", "cxy", "s0", "s1", "x_mean", "y_mean"):
        assert torch.equal(getattr(lazy, name), getattr(m, name))
    assert lazy.layer == 1 and lazy.n_examples == 8 and lazy.n_pairs == sum(n - 1 for n in LENGTHS)
    # normalisation by N as in the spec
    torch.testing.assert_close(m.cxx, acc.cxx_sum[1] / 8)
    torch.testing.assert_close(m.s1, acc.s1_sum[1] / 8)
    torch.testing.assert_close(m.y_mean, torch.tensor([2, 2, 4], dtype=torch.float64) / 8)
    with pytest.raises(Exception, match="layer7"):
        LayerMoments.from_tensors(tensors, 7)


def four_states(seed: int):
    """Random hidden states of 4 states x 3 texts (ragged), their mask, labels and statistics."""
    gen = torch.Generator().manual_seed(seed)
    hidden = [torch.randn(3, 5, 4, generator=gen) for _ in range(4)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    labels = torch.tensor([0, 1, 1])
    base = StatisticsAccumulator(4, 4, 2)
    base.update(hidden, mask, labels)
    return hidden, mask, labels, base


def test_splice_statistics_takes_lower_states_from_base_and_the_rest_from_upper():
    from ntps.errors import NTPSError
    from ntps.stats import splice_statistics

    hidden, mask, labels, base = four_states(seed=0)
    changed = [h + 1.0 for h in hidden[2:]]
    upper = StatisticsAccumulator(2, 4, 2)
    upper.update(changed, mask, labels)
    spliced = splice_statistics(base.to_tensors(), upper, 2)
    reference = StatisticsAccumulator(4, 4, 2)
    reference.update([*hidden[:2], *changed], mask, labels)
    for key, value in reference.to_tensors().items():
        assert torch.allclose(spliced[key], value), key
    other = StatisticsAccumulator(2, 4, 2)
    other.update(changed, mask, torch.tensor([0, 0, 1]))
    with pytest.raises(NTPSError, match="label counts"):
        splice_statistics(base.to_tensors(), other, 2)
    with pytest.raises(NTPSError, match="cannot splice"):
        splice_statistics(base.to_tensors(), upper, 1)


def test_upper_statistics_keep_only_the_recomputed_states_under_their_own_indices():
    from ntps.errors import NTPSError
    from ntps.stats import splice_statistics, stored_layers, upper_statistics

    hidden, mask, labels, base = four_states(seed=1)
    upper = StatisticsAccumulator(2, 4, 2)
    upper.update([h * 2.0 for h in hidden[2:]], mask, labels)
    kept = upper_statistics(base.to_tensors(), upper, 2)
    assert stored_layers(kept.keys()) == [2, 3]
    spliced = splice_statistics(base.to_tensors(), upper, 2)
    for key, value in kept.items():  # exactly what the splice takes from upper, and the counts
        assert torch.equal(value, spliced[key]), key
    for layer in (2, 3):
        assert LayerMoments.from_tensors(kept, layer).n_examples == 3
    with pytest.raises(NTPSError, match="layer 0 was not stored"):
        LayerMoments.from_tensors(kept, 0)
    with pytest.raises(NTPSError, match="cannot splice"):
        upper_statistics(base.to_tensors(), upper, 1)
