"""Time the score job's work on ONE layer at d = 4096 (Llama-3-8B's width), and measure the CPU's
float64 GEMM / eigh rates from which docs/performance.md estimates the GPU time per pair.

Synthetic statistics, seeded, shaped as the scorer gets them: Cxx, Cxy (c classes), S0, S1 and the
pooled-feature sum of one layer, accumulated over ``--shards`` disjoint shards of texts (the
jackknife shards, stored in float32 as the extraction stores them) and their float64 total. The
spectrum is LLM-like: per-channel scales log-uniform over 1.5 decades, a few "massive" channels
with 1e6 times the variance (docs/method.md, "Eigenvalue cut-off"), a common offset, a class
signal, and next-token pairs from a linear recurrence. Generation is not timed.

What is timed is what ``ntps.stages.score.score_pair`` does per layer, through the functions every
version of the package has (so the same script times the code before and after a change):

- ``main``: ``score_layer(..., released=False)`` on the total (eigendecompositions of Cxx and S0,
  the generalized problems, the k grid, excess loss and bounds);
- ``released``: ``released_scores`` (the authors' float32 scipy procedure, the ``ntps_released``
  column; always on the CPU);
- ``jackknife``: ``ntps_forms`` on each of the K leave-one-shard-out replicates.

The job's time per layer is ``main + released`` without jackknife shards and ``+ jackknife`` with
them. ``--profile`` adds a breakdown by operation (torch profiler for the torch ops, cProfile for
scipy/numpy); ``--rates`` measures GEMM and eigh throughput at the same d.

    .venv/bin/python benchmarks/score_d4096.py                   # d = 4096, 1 thread, K = 10
    .venv/bin/python benchmarks/score_d4096.py --d 1024 --profile --rates   # quick check
    .venv/bin/python benchmarks/score_d4096.py --threads 2 --device cuda    # on a GPU node

Results are printed and written to benchmarks/out/score_d<d>_<UTC time>.json.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Must precede the torch import: idle OpenMP threads that spin slow everything on a shared machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from ntps.io import code_revision, write_json
from ntps.released import released_scores
from ntps.scores import ntps_forms, score_layer
from ntps.stats import LayerMoments, jackknife_moments

F64 = torch.float64
#: The default study's and the paper config's k grid (schemas/config.schema.yaml).
K_GRID = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75,
          0.8, 0.85, 0.9, 0.95, 1, 2, 4, 8]  # fmt: skip
#: Nominal flop counts (Golub & Van Loan): GEMM 2 d^3; symmetric eigendecomposition with
#: eigenvectors ~9 d^3; eigenvalues only ~4/3 d^3 (the tridiagonal reduction).
EIGH_FLOPS, GEMM_FLOPS = 9.0, 2.0


def synthetic_statistics(
    d: int, n_classes: int, n_shards: int, *, texts_per_dim: float = 3.0, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """One layer's statistics (``to_tensors`` keys) and its jackknife shards (or None).

    Parameters
    ----------
    d : hidden size; n_classes : c; n_shards : K (0 or 1: no shards)
    texts_per_dim : N / d (N >= 2d is the ``ok`` regime); the next-token side gets 2N pairs.

    Returns
    -------
    total : dict of float64 sums ``layer0.{x_sum (d,), cxx_sum (d, d), cxy_sum (d, c),
        s0_sum (d, d), s1_sum (d, d)}`` and the counts, as ``StatisticsAccumulator.to_tensors``.
    shards : ``shards_to_tensors`` of the K shards (float32 sums), or None when K < 2.
    """
    g = torch.Generator().manual_seed(seed)
    n = int(texts_per_dim * d)
    scales = torch.logspace(0, 1.5, d, dtype=F64)[torch.randperm(d, generator=g)]
    scales[torch.randperm(d, generator=g)[:4]] *= 1e3  # massive channels: variance x 1e6
    offset = torch.randn(d, generator=g, dtype=F64) * scales * 0.5
    class_means = torch.randn(n_classes, d, generator=g, dtype=F64) * scales * 0.3
    mix = torch.randn(d, d, generator=g, dtype=F64) / d**0.5  # correlated channels
    labels = torch.randint(0, n_classes, (n,), generator=g)
    recur = torch.randn(d, d, generator=g, dtype=F64) * (0.5 / d**0.5)
    parts = max(n_shards, 1)
    shard_of = torch.arange(n) % parts
    # The float64 total as a running sum and the shards in float32, as the extraction stores
    # them (shards_to_tensors): K float64 accumulators would need K x 0.4 GB at d = 4096.
    total: dict[str, torch.Tensor] = {}
    shards: dict[str, torch.Tensor] = {"n_shards": torch.tensor([parts], dtype=torch.int64)}
    for j in range(parts):
        idx = torch.nonzero(shard_of == j).flatten()
        m = idx.numel()
        z = torch.randn(m, d, generator=g, dtype=F64)
        x = (z + z @ mix) * scales + offset + class_means[labels[idx]]
        y = torch.nn.functional.one_hot(labels[idx], n_classes).to(F64)
        # Next-token pairs (s_t, h_{t+1}): prefix sums of a linear recurrence, two per text.
        s = (torch.randn(2 * m, d, generator=g, dtype=F64) + z.repeat(2, 1)) * scales + offset
        h = s @ recur + torch.randn(2 * m, d, generator=g, dtype=F64) * scales
        sums = {
            "layer0.x_sum": x.sum(0),
            "layer0.cxx_sum": x.T @ x,
            "layer0.cxy_sum": x.T @ y,
            "layer0.s0_sum": s.T @ s,
            "layer0.s1_sum": s.T @ h,
            "label_counts": torch.bincount(labels[idx], minlength=n_classes),
            "n_examples": torch.tensor([m], dtype=torch.int64),
            "n_pairs": torch.tensor([2 * m], dtype=torch.int64),
            "n_texts": torch.tensor([m], dtype=torch.int64),
        }
        del z, x, s, h
        for key, value in sums.items():
            total[key] = total[key] + value if key in total else value
            layer_sum = key.startswith("layer")
            shards[f"shard{j}.{key}"] = value.to(torch.float32) if layer_sum else value
        del sums
    return total, (shards if n_shards >= 2 else None)


def one_shard(shards: dict[str, torch.Tensor], j: int) -> dict[str, torch.Tensor]:
    """Shard j as a set of one shard: ``jackknife_moments`` then builds only ``total - shard_j``
    (the score job's own way since #15; here so that older code is timed the same way)."""
    prefix = f"shard{j}."
    view = {"shard0." + k[len(prefix) :]: v for k, v in shards.items() if k.startswith(prefix)}
    return {"n_shards": torch.tensor([1], dtype=torch.int64), **view}


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds) of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def on_device(m: LayerMoments, device: torch.device) -> LayerMoments:
    import dataclasses

    fields = ("cxx", "cxy", "s0", "s1", "x_mean", "y_mean")
    return dataclasses.replace(m, **{f: getattr(m, f).to(device) for f in fields})


def time_layer(total, shards, device: torch.device) -> dict[str, Any]:
    """Wall/CPU seconds of the three parts of one layer's scoring (see the module docstring)."""
    moments = on_device(LayerMoments.from_tensors(total, 0), device)
    out: dict[str, Any] = {}
    _, out["main_s"], out["main_cpu_s"] = timed(
        lambda: score_layer(moments, K_GRID, released=False), device
    )
    _, out["released_s"], out["released_cpu_s"] = timed(
        lambda: released_scores(moments.cxx, moments.cxy, moments.s0, moments.s1, K_GRID), device
    )
    out["jackknife_s"] = out["jackknife_cpu_s"] = 0.0
    out["replicates"] = 0
    if shards is not None:
        for j in range(int(shards["n_shards"][0])):
            (rep,) = jackknife_moments(total, one_shard(shards, j), 0)
            _, wall, cpu = timed(lambda rep=rep: ntps_forms(on_device(rep, device), K_GRID), device)
            out["jackknife_s"] += wall
            out["jackknife_cpu_s"] += cpu
            out["replicates"] += 1
    out["layer_without_jackknife_s"] = out["main_s"] + out["released_s"]
    out["layer_with_jackknife_s"] = out["layer_without_jackknife_s"] + out["jackknife_s"]
    return out


def profile_layer(total, shards, device: torch.device, rows: int = 12) -> dict[str, Any]:
    """Where one layer's time goes: torch ops of ``main`` and one replicate, scipy/numpy calls of
    the released column. Returns {part: [(op, calls, self seconds)]} and prints the tables."""
    from torch.profiler import ProfilerActivity, profile

    moments = on_device(LayerMoments.from_tensors(total, 0), device)
    parts: dict[str, Callable[[], Any]] = {
        "main": lambda: score_layer(moments, K_GRID, released=False)
    }
    if shards is not None:
        rep = on_device(jackknife_moments(total, one_shard(shards, 0), 0)[0], device)
        parts["one jackknife replicate"] = lambda: ntps_forms(rep, K_GRID)
    out: dict[str, Any] = {}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, fn in parts.items():
        with profile(activities=activities) as prof:
            fn()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        out[name] = [(e.key, e.count, e.self_cpu_time_total / 1e6) for e in events[:rows]]
    cprof = cProfile.Profile()
    cprof.enable()
    released_scores(moments.cxx, moments.cxy, moments.s0, moments.s1, K_GRID)
    cprof.disable()
    stats = pstats.Stats(cprof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:rows]
    out["released"] = [(f"{Path(k[0]).name}:{k[2]}", v[1], v[2]) for k, v in top]
    for name, table in out.items():
        print(f"\n  {name}: op, calls, self seconds")
        for op, calls, secs in table:
            print(f"    {op:<44} {calls:>5} {secs:>9.3f}")
    return out


def rates(d: int, device: torch.device, repeats: int = 2) -> dict[str, float]:
    """Measured GFLOP/s at size d: float64 GEMM, eigh with vectors, eigvalsh (nominal counts)."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(d, d, generator=g, dtype=F64).to(device)
    sym = a @ a.T / d + torch.eye(d, dtype=F64, device=device)
    ops = {
        "gemm_f64": (lambda: a @ a, GEMM_FLOPS),
        "eigh_f64": (lambda: torch.linalg.eigh(sym), EIGH_FLOPS),
        "eigvalsh_f64": (lambda: torch.linalg.eigvalsh(sym), 4.0 / 3.0),
    }
    out = {}
    for name, (fn, flops) in ops.items():
        best = min(timed(fn, device)[1] for _ in range(repeats))
        out[f"{name}_s"] = best
        out[f"{name}_gflops"] = flops * d**3 / best / 1e9
        print(f"  {name:<14} {best:8.3f} s  {out[f'{name}_gflops']:8.1f} GFLOP/s (nominal)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--d", type=int, default=4096, help="hidden size (default 4096)")
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--shards", type=int, default=10, help="jackknife shards K (0: none)")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (job default 1)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the released column: CPU)")
    ap.add_argument("--profile", action="store_true", help="breakdown by operation (extra run)")
    ap.add_argument("--rates", action="store_true", help="GEMM / eigh GFLOP/s at this d")
    ap.add_argument("--skip-timing", action="store_true", help="only --profile / --rates")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/out/...)")
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads)  # scipy/numpy BLAS, as ntps.workflow.set_threads
    device = torch.device(args.device)
    print(
        f"d={args.d}, c={args.classes}, K={args.shards} shards, {len(K_GRID)} k values, "
        f"{args.threads} thread(s), device {device}, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    total = shards = None
    if args.profile or not args.skip_timing:
        started = time.perf_counter()
        total, shards = synthetic_statistics(args.d, args.classes, args.shards)
        print(
            f"  statistics generated in {time.perf_counter() - started:.1f} s (not timed)",
            flush=True,
        )
    result: dict[str, Any] = {
        "d": args.d,
        "n_classes": args.classes,
        "jackknife_shards": args.shards,
        "k_grid": K_GRID,
        "threads": args.threads,
        "device": str(device),
        "torch": torch.__version__,
        "code": code_revision(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    if not args.skip_timing:
        result["timing"] = timing = time_layer(total, shards, device)
        print(
            f"  main {timing['main_s']:.2f} s | released {timing['released_s']:.2f} s | "
            f"{timing['replicates']} jackknife replicates {timing['jackknife_s']:.2f} s\n"
            f"  one layer: {timing['layer_without_jackknife_s']:.2f} s without jackknife, "
            f"{timing['layer_with_jackknife_s']:.2f} s with (wall; load "
            f"{os.getloadavg()[0]:.2f})",
            flush=True,
        )
    if args.profile:
        result["profile"] = profile_layer(total, shards, device)
    if args.rates:
        print("\n  rates at this d:")
        result["rates"] = rates(args.d, device)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = (
        Path(args.out)
        if args.out
        else Path(__file__).parent / "out" / f"score_d{args.d}_{stamp}.json"
    )
    result["created"] = stamp
    write_json(out, result)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
