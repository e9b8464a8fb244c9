"""Trustworthy scores: jackknife SE, the precision-derived eigenvalue cut-off, the released convention,
ties and the rank-deficient lower bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ntps.analysis import bootstrap_ci
from ntps.errors import NTPSError
from ntps.scores import STATISTICS_PRECISION, jackknife_se, ntps_forms, score_layer
from ntps.stats import (
    LayerMoments,
    StatisticsAccumulator,
    jackknife_moments,
    merge_all,
    shard_assignment,
    shards_to_tensors,
)

# --- synthetic texts ---------------------------------------------------------------------------


def synthetic_texts(
    g: torch.Generator, n: int, d: int, c: int
) -> tuple[list[torch.Tensor], list[int]]:
    """Texts whose tokens follow a label-dependent linear recurrence: (1, T_i, d) each, labels."""
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.35
    means = torch.randn(c, d, generator=g, dtype=torch.float64) * 0.8
    texts, labels = [], []
    for _ in range(n):
        y = int(torch.randint(0, c, (1,), generator=g))
        length = int(torch.randint(3, 9, (1,), generator=g))
        h = torch.zeros(length, d, dtype=torch.float64)
        prev = torch.zeros(d, dtype=torch.float64)
        for t in range(length):
            prev = means[y] + prev @ mix + torch.randn(d, generator=g, dtype=torch.float64)
            h[t] = prev
        texts.append(h[None])
        labels.append(y)
    return texts, labels


def accumulate(texts, labels, c, product_dtype=torch.float64) -> StatisticsAccumulator:
    n_layers, _, d = texts[0].shape
    acc = StatisticsAccumulator(n_layers, d, c, product_dtype=product_dtype)
    width = max(t.shape[1] for t in texts)
    h = torch.zeros(n_layers, len(texts), width, d, dtype=torch.float64)
    mask = torch.zeros(len(texts), width, dtype=torch.int64)
    for i, t in enumerate(texts):
        h[:, i, : t.shape[1]] = t
        mask[i, : t.shape[1]] = 1
    acc.update(h, mask, torch.tensor(labels))
    return acc


def sharded(texts, labels, c, n_shards, seed=0) -> tuple[StatisticsAccumulator, list]:
    shard_of = shard_assignment(len(texts), n_shards, seed)
    shards = []
    for j in range(n_shards):
        idx = [i for i, s in enumerate(shard_of) if s == j]
        shards.append(accumulate([texts[i] for i in idx], [labels[i] for i in idx], c))
    return merge_all(shards), shards


# --- jackknife ---------------------------------------------------------------------------------


def test_jackknife_se_of_a_mean_is_its_standard_error():
    values = np.array([2.0, 3.5, 1.0, 4.0, 2.5, 3.0])
    n = values.size
    leave_one_out = [(values.sum() - v) / (n - 1) for v in values]
    assert jackknife_se(leave_one_out) == pytest.approx(values.std(ddof=1) / math.sqrt(n))
    assert math.isnan(jackknife_se([1.0])) and math.isnan(jackknife_se([1.0, math.nan]))


def test_shard_assignment_is_balanced_disjoint_and_seeded():
    shards = shard_assignment(103, 10, seed=3)
    counts = np.bincount(shards, minlength=10)
    assert counts.sum() == 103 and counts.max() - counts.min() <= 1
    assert shards == shard_assignment(103, 10, seed=3) != shard_assignment(103, 10, seed=4)
    with pytest.raises(ValueError):
        shard_assignment(5, 10, seed=0)


def test_leave_one_shard_out_moments_equal_direct_accumulation():
    g = torch.Generator().manual_seed(1)
    texts, labels = synthetic_texts(g, 60, 5, 3)
    total, shards = sharded(texts, labels, 3, 4)
    stored = shards_to_tensors(shards)
    replicates = jackknife_moments(total.to_tensors(), stored, 0)
    shard_of = shard_assignment(60, 4, 0)
    for j, rep in enumerate(replicates):
        keep = [i for i, s in enumerate(shard_of) if s != j]
        direct = accumulate([texts[i] for i in keep], [labels[i] for i in keep], 3).layer_moments(0)
        assert rep.n_examples == direct.n_examples and rep.n_pairs == direct.n_pairs
        for name in ("cxx", "cxy", "s0", "s1", "x_mean", "y_mean"):
            want = getattr(direct, name)
            # Shards are stored in float32: the difference is one float32 rounding of a shard.
            torch.testing.assert_close(
                getattr(rep, name), want, rtol=0, atol=2e-7 * float(want.abs().max())
            )


def test_jackknife_se_tracks_the_spread_over_independent_samples():
    """SE from 10 shards of one sample vs the SD of NTPS over 40 independent samples."""
    d, c, n, k_grid = 6, 3, 240, [2, 0.5]
    population = torch.Generator().manual_seed(7)
    # One fixed population (recurrence and class means), many samples of texts from it.
    state = population.get_state()
    values, ses = [], []
    for r in range(40):
        g = torch.Generator().manual_seed(1000 + r)
        g_pop = torch.Generator()
        g_pop.set_state(state)
        mix = torch.randn(d, d, generator=g_pop, dtype=torch.float64) * 0.35
        means = torch.randn(c, d, generator=g_pop, dtype=torch.float64) * 0.8
        texts, labels = [], []
        for _ in range(n):
            y = int(torch.randint(0, c, (1,), generator=g))
            h = torch.zeros(int(torch.randint(3, 9, (1,), generator=g)), d, dtype=torch.float64)
            prev = torch.zeros(d, dtype=torch.float64)
            for t in range(h.shape[0]):
                prev = means[y] + prev @ mix + torch.randn(d, generator=g, dtype=torch.float64)
                h[t] = prev
            texts.append(h[None])
            labels.append(y)
        total, shards = sharded(texts, labels, c, 10, seed=r)
        full = ntps_forms(total.layer_moments(0), k_grid)
        reps = [
            ntps_forms(m, k_grid)
            for m in jackknife_moments(total.to_tensors(), shards_to_tensors(shards), 0)
        ]
        values.append([reg for _, reg in full])
        ses.append([jackknife_se([rep[i][1] for rep in reps]) for i in range(len(k_grid))])
    spread = np.asarray(values).std(axis=0, ddof=1)
    mean_se = np.asarray(ses).mean(axis=0)
    assert (spread > 1e-3).all(), spread  # NTPS really varies between samples here
    ratio = mean_se / spread
    assert ((ratio > 1 / 1.5) & (ratio < 1.5)).all(), (mean_se, spread)


def test_bootstrap_with_se_widens_the_interval():
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    y = x + np.array([0.12, -0.11, 0.13, -0.1, -0.02, 0.11, -0.12, -0.03])
    plain = bootstrap_ci(x, y, n_boot=2000, seed=0)
    noisy = bootstrap_ci(x, y, n_boot=2000, seed=0, x_se=np.full(8, 0.15))
    assert noisy.low < plain.low and noisy.high <= plain.high + 1e-12
    tiny = bootstrap_ci(x, y, n_boot=2000, seed=0, x_se=np.full(8, 1e-9))
    # Negligible SEs only break ties between resampled duplicates.
    assert tiny.low == pytest.approx(plain.low, abs=0.1)


# --- the eigenvalue cut-off on LLM-like statistics ---------------------------------------------


def massive_channel_statistics(product_dtype: torch.dtype) -> StatisticsAccumulator:
    """Statistics of a tiny random Llama whose embeddings have 3 channels scaled by 1e4 (condition ~1e9, as real LLMs)."""
    from conftest import build_tiny_llama

    model = build_tiny_llama(64, seed=3)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, [3, 11, 20]] *= 1e4
    g = torch.Generator().manual_seed(5)
    n, length = 128, 12
    ids = torch.randint(4, 64, (n, length), generator=g)
    labels = (ids[:, :4] % 3).sum(1) % 3  # the label depends on the first tokens
    acc = None
    with torch.no_grad():
        for start in range(0, n, 32):
            batch = ids[start : start + 32]
            mask = torch.ones_like(batch)
            hidden = model.model(input_ids=batch, output_hidden_states=True).hidden_states
            if acc is None:
                acc = StatisticsAccumulator(len(hidden), 32, 3, product_dtype=product_dtype)
            acc.update(hidden, mask, labels[start : start + 32])
    return acc


def comparable(records: list[dict]) -> np.ndarray:
    """ntps_reg everywhere; ntps_paper where its subspace is determined (not degenerate)."""
    out = []
    for r in records:
        out.append(r["ntps_reg"])
        out.append(r["ntps_paper"] if not (r["paper_degenerate"] or r["ar_degenerate"]) else 0.0)
    return np.asarray(out)


def elementwise_perturbed(m: LayerMoments, eps: float, g: torch.Generator) -> LayerMoments:
    """Moments with the float32-GEMM error model: |dB_ij| = eps sqrt(B_ii B_jj), random signs."""

    def noise(rows: torch.Tensor, cols: torch.Tensor, symmetric: bool) -> torch.Tensor:
        e = torch.randn(rows.numel(), cols.numel(), generator=g, dtype=torch.float64)
        if symmetric:
            e = (e + e.T) / math.sqrt(2)
        return eps * e * rows.clamp(min=0).sqrt()[:, None] * cols.clamp(min=0).sqrt()[None, :]

    cxx_diag, s0_diag = m.cxx.diagonal(), m.s0.diagonal()
    return LayerMoments(
        cxx=m.cxx + noise(cxx_diag, cxx_diag, True),
        cxy=m.cxy + noise(cxx_diag, m.y_mean, False),
        # S1's columns are next-token states, bounded by S0's scale (prefix sums dominate them).
        s0=m.s0 + noise(s0_diag, s0_diag, True),
        s1=m.s1 + noise(s0_diag, s0_diag, False),
        x_mean=m.x_mean,
        y_mean=m.y_mean,
        n_examples=m.n_examples,
        n_pairs=m.n_pairs,
        layer=m.layer,
    )


@pytest.fixture(scope="module")
def massive() -> tuple[StatisticsAccumulator, StatisticsAccumulator]:
    return massive_channel_statistics(torch.float32), massive_channel_statistics(torch.float64)


K_GRID = [0.1, 0.25, 0.5, 0.75, 0.9, 1, 2, 4]


def test_massive_channels_make_the_raw_statistics_graded(massive):
    acc32, _ = massive
    s0 = acc32.layer_moments(1).s0
    values = torch.linalg.eigvalsh((s0 + s0.T) / 2)
    assert float(values[-1] / values[0]) > 1e8  # the regime the cut-off has to handle


def test_float32_products_change_no_score_by_more_than_001(massive):
    acc32, acc64 = massive
    for layer in range(acc32.n_layers):
        r32 = score_layer(acc32.layer_moments(layer), K_GRID, released=False)
        r64 = score_layer(acc64.layer_moments(layer), K_GRID, released=False)
        assert [r["rank_ar"] for r in r32] == [r["rank_ar"] for r in r64]
        assert np.abs(comparable(r32) - comparable(r64)).max() < 0.01


def test_perturbation_at_the_statistics_precision_changes_no_score_by_more_than_001(massive):
    _, acc64 = massive
    g = torch.Generator().manual_seed(11)
    for layer in range(acc64.n_layers):
        m = acc64.layer_moments(layer)
        base = comparable(score_layer(m, K_GRID, released=False))
        for _ in range(3):
            moved = comparable(
                score_layer(
                    elementwise_perturbed(m, STATISTICS_PRECISION, g), K_GRID, released=False
                )
            )
            assert np.abs(moved - base).max() < 0.01


def test_graded_statistics_keep_their_full_rank_and_record_the_cutoff(massive):
    # 128 texts of 12 tokens, d = 32: every direction is determined by the data. The same cut-off
    # relative to the largest RAW eigenvalue would drop the small channels' directions.
    acc32, _ = massive
    cutoff = 2 * math.sqrt(32) * STATISTICS_PRECISION
    dropped_if_unscaled = 0
    for layer in range(acc32.n_layers):
        m = acc32.layer_moments(layer)
        rec = score_layer(m, [0.5], released=False)[0]
        assert rec["eigen_cutoff"] == pytest.approx(cutoff)
        assert rec["rank_ar"] == rec["rank_perception"] == 32
        assert not rec["ar_degenerate"]  # a graded spectrum is not a tie
        raw = torch.linalg.eigvalsh((m.s0 + m.s0.T) / 2)
        dropped_if_unscaled += int((raw <= cutoff * raw[-1]).sum())
    assert dropped_if_unscaled > 0


# --- the released convention -------------------------------------------------------------------


def released_by_loops(cxx, cxy, s0, s1, fractions):
    """The released procedure written out plainly: scipy eigh, loops for everything else."""

    def solve(a, b):
        b_values, b_vectors = scipy.linalg.eigh(b)
        d = b.shape[0]
        kept = [i for i in range(d) if b_values[i] > 1e-8]
        w = np.zeros((d, len(kept)), dtype=np.float32)
        for col, i in enumerate(kept):
            for row in range(d):
                w[row, col] = b_vectors[row, i] / math.sqrt(b_values[i])
        _, y = scipy.linalg.eigh(w.T @ a @ w)
        return w @ y

    f32 = [x.numpy().astype(np.float32) for x in (cxx, cxy, s0, s1)]
    u = solve(f32[1] @ f32[1].T, f32[0])
    v = solve(f32[3] @ f32[3].T, f32[2])
    out = []
    for f in fractions:
        ku, kv = int(f * u.shape[1]), int(f * v.shape[1])
        if ku == 0 or kv == 0:
            out.append(math.nan)
            continue
        uk, vk = u[:, :ku], v[:, :kv]
        p = vk @ np.linalg.pinv(vk)
        num = sum(float((p @ uk)[i, j]) ** 2 for i in range(uk.shape[0]) for j in range(ku))
        den = sum(float(uk[i, j]) ** 2 for i in range(uk.shape[0]) for j in range(ku))
        out.append(num / den)
    return out


def test_released_column_matches_a_plain_loop_implementation():
    g = torch.Generator().manual_seed(21)
    texts, labels = synthetic_texts(g, 80, 7, 3)
    m = accumulate(texts, labels, 3).layer_moments(0)
    fractions = [0.05, 0.25, 0.5, 0.75, 0.95]
    got = [r["ntps_released"] for r in score_layer(m, fractions)]
    want = released_by_loops(m.cxx, m.cxy, m.s0, m.s1, fractions)
    assert math.isnan(got[0]) and math.isnan(want[0])  # int(0.05 * 7) = 0: the released NaN
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-5, atol=1e-6)
    # It is not our score: the smallest perception eigenvectors are (near-)null directions.
    ours = [r["ntps_paper"] for r in score_layer(m, fractions)]
    assert not np.allclose(got[1:], ours[1:], atol=1e-3)


# --- ties and the lower bound ------------------------------------------------------------------


def few_texts_moments(labels: list[int], d: int = 20, seed: int = 2) -> LayerMoments:
    g = torch.Generator().manual_seed(seed)
    texts = [torch.randn(1, 6, d, generator=g, dtype=torch.float64) for _ in labels]
    return accumulate(texts, labels, 2).layer_moments(0)


def test_balanced_classes_with_fewer_texts_than_dimensions_tie_and_are_flagged():
    # N = 10 <= rank(Cxx): the non-zero perception eigenvalues are the class frequencies, 0.5 and
    # 0.5, so the top-1 perception direction is any direction in their 2-D eigenspace.
    balanced = score_layer(few_texts_moments([0, 1] * 5), [1, 2], released=False)
    assert balanced[0]["paper_degenerate"]  # k = 1 splits the tie
    assert not balanced[1]["paper_degenerate"]  # k = 2 = both: the subspace is unique
    unbalanced = score_layer(few_texts_moments([0] * 3 + [1] * 7), [1, 2], released=False)
    assert not unbalanced[0]["paper_degenerate"]


def test_ties_are_relative_to_the_eigenvalues_themselves():
    from ntps.scores import tied_after

    graded = torch.tensor([1.0, 1e-7, 1.1e-8, 1e-9], dtype=torch.float64)
    assert not any(tied_after(graded, k) for k in (1, 2, 3))  # small but distinct: not tied
    tied = torch.tensor([0.5, 0.5 - 1e-9, 0.2, 0.0], dtype=torch.float64)
    assert tied_after(tied, 1) and not tied_after(tied, 2)
    assert not tied_after(tied, 4) and not tied_after(tied, 0)  # no (k+1)-th / no k-th


def test_lower_bound_is_flagged_zero_when_cxx_is_rank_deficient():
    low = score_layer(few_texts_moments([0, 1] * 5), [0.5], released=False)[0]
    assert low["lower_bound_zero"] and low["bound_lower"] == 0.0 and low["rank_perception"] == 10
    g = torch.Generator().manual_seed(4)
    texts, labels = synthetic_texts(g, 100, 5, 2)
    full = score_layer(accumulate(texts, labels, 2).layer_moments(0), [0.5], released=False)[0]
    assert not full["lower_bound_zero"] and full["bound_lower"] > 0


# --- jackknife replicates reduced to their scores at every k (the jackknife rule's file) --------


@pytest.mark.parametrize("rank_ar, rank_p", [(1, 1), (7, 3), (3, 7), (40, 40), (64, 61), (5, 90)])
def test_reachable_k_pairs_hold_every_k_a_grid_can_ask_for(rank_ar, rank_p):
    from ntps.scores import reachable_k_pairs, resolve_k

    pairs = {tuple(p) for p in reachable_k_pairs(rank_ar, rank_p).tolist()}
    fractions = [i / 1000 for i in range(1, 1000)] + [j / r for r in (rank_ar, rank_p, 97)
                                                      for j in range(1, r)] + [1e-6, 0.999999]  # fmt: skip
    ints = list(range(1, max(rank_ar, rank_p) + 3))
    for k in fractions + ints:
        if isinstance(k, float) and not 0 < k < 1:
            continue
        assert (resolve_k(k, rank_ar), resolve_k(k, rank_p)) in pairs, k
    # O(rank) pairs, not rank_ar x rank_p.
    assert len(pairs) <= 6 * (rank_ar + rank_p)


def test_replicate_curves_give_the_scores_of_any_k_grid():
    from ntps.scores import replicate_curves

    texts, labels = synthetic_texts(torch.Generator().manual_seed(4), 300, 12, 3)
    acc = accumulate(texts, labels, 3)
    for layer in range(acc.n_layers):
        m = acc.layer_moments(layer)
        curves = replicate_curves(m, tol="auto")
        for grid in (
            [0.25, 0.5, 2],
            [0.01, 0.333, 0.999, 1, 7, 1000],
            [i / 23 for i in range(1, 23)],
        ):
            want = ntps_forms(m, grid, tol="auto")
            got = curves.forms(grid)
            np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-12, atol=1e-15)


def test_stored_replicates_give_the_standard_errors_of_the_shards(tmp_path):
    from ntps.errors import NTPSError
    from ntps.io import save_tensors
    from ntps.stages.score import jackknife_pair, score_pair

    texts, labels = synthetic_texts(torch.Generator().manual_seed(5), 400, 10, 2)
    total, shards = sharded(texts, labels, 2, n_shards=5)
    stats, shard_file = tmp_path / "stats.safetensors", tmp_path / "shards.safetensors"
    save_tensors(stats, total.to_tensors(), {"n_layers": str(total.n_layers)})
    save_tensors(shard_file, shards_to_tensors(shards), {"n_layers": str(total.n_layers)})
    kw = {"ridge": 0.0, "centered": False, "released": False}
    assert jackknife_pair(stats, shard_file, tmp_path / "jk.safetensors", ridge=0.0,
                          centered=False) == 5  # fmt: skip
    # A grid the replicates were never asked about.
    grid = [0.1, 0.37, 0.9, 3]
    direct = score_pair(stats, grid, shards_path=shard_file, **kw)["records"]
    stored = score_pair(stats, grid, jackknife_path=tmp_path / "jk.safetensors", **kw)["records"]
    for want, got in zip(direct, stored, strict=True):
        assert got["jackknife_shards"] == want["jackknife_shards"] == 5
        for key in ("ntps_paper_se", "ntps_reg_se"):
            assert want[key] > 0 and got[key] == pytest.approx(want[key], rel=1e-10), key
    # Replicates made with other scoring settings are refused, not silently used.
    with pytest.raises(NTPSError, match="jackknife replicates made with"):
        score_pair(stats, grid, jackknife_path=tmp_path / "jk.safetensors",
                   **{**kw, "ridge": 0.1})  # fmt: skip


def test_post_lora_scores_of_unchanged_states_are_the_pre_lora_records(tmp_path):
    """Post-LoRA statistics hold the recomputed states only; scoring them with the pre-LoRA
    scores gives what scoring the whole spliced statistics gives."""
    import json

    from ntps.io import save_tensors
    from ntps.layout import FIRST_RECOMPUTED_STATE_KEY
    from ntps.stages.score import score_pair
    from ntps.stats import splice_statistics, upper_statistics

    g = torch.Generator().manual_seed(6)
    one, labels = synthetic_texts(g, 200, 8, 3)
    texts = [torch.cat([t, t * 0.7 + 0.1, torch.tanh(t)]) for t in one]  # three hidden states
    base = accumulate(texts, labels, 3)
    upper = accumulate([t[2:] * 1.5 for t in texts], labels, 3)
    meta = {"n_layers": "3"}
    save_tensors(tmp_path / "base.safetensors", base.to_tensors(), meta)
    spliced = splice_statistics(base.to_tensors(), upper, 2)
    save_tensors(tmp_path / "full.safetensors", spliced, meta)
    kept = upper_statistics(base.to_tensors(), upper, 2)
    save_tensors(tmp_path / "upper.safetensors", kept, {**meta, FIRST_RECOMPUTED_STATE_KEY: "2"})
    grid, kw = [0.25, 0.5, 2], {"ridge": 0.0, "centered": False}
    pre = score_pair(tmp_path / "base.safetensors", grid, **kw)
    whole = score_pair(tmp_path / "full.safetensors", grid, **kw)
    post = score_pair(tmp_path / "upper.safetensors", grid, lower_scores=pre, **kw)
    assert json.dumps(post["records"]) == json.dumps(whole["records"])
    with pytest.raises(NTPSError, match="pre-LoRA scores were made with"):
        score_pair(tmp_path / "upper.safetensors", [0.5], lower_scores=pre, **kw)
    with pytest.raises(NTPSError, match="which were not given"):
        score_pair(tmp_path / "upper.safetensors", grid, **kw)
