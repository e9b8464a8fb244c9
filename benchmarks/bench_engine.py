"""Benchmark the numerical core: scoring every layer over the 19-point k grid, and one
accumulator update.

Synthetic moments are generated ONE LAYER AT A TIME (33 layers of d=4096 float64 moments would
need ~13 GB), scored, and dropped. Generation is not timed.

    .venv/bin/python benchmarks/bench_engine.py                       # 576x31 and 4096x33
    .venv/bin/python benchmarks/bench_engine.py --sizes 576x31 --solver both
    .venv/bin/python benchmarks/bench_engine.py --max-layers 3        # time 3 layers, extrapolate
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

# Must precede the torch import: with the default ACTIVE policy, OpenMP/MKL threads spin while
# waiting, and on a machine shared with other jobs a 576x576 eigh took 16 s instead of 0.2 s.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from ntps.io import write_json
from ntps.scores import DEFAULT_K_GRID, score_layer
from ntps.stats import LayerMoments, StatisticsAccumulator

F64 = torch.float64


def synthetic_moments(
    d: int, c: int, layer: int, *, n_examples: int = 1000, seed: int = 0
) -> LayerMoments:
    """LLM-like moments of one layer: a common offset, anisotropic spectrum, full-rank Cxx."""
    g = torch.Generator().manual_seed(seed * 1000 + layer)
    scales = torch.logspace(0, 1.5, d, dtype=F64)[torch.randperm(d, generator=g)]
    offset = torch.randn(d, generator=g, dtype=F64)
    x = torch.randn(n_examples, d, generator=g, dtype=F64) * scales + offset
    labels = (x @ torch.randn(d, c, generator=g, dtype=F64)).argmax(1)
    y = torch.nn.functional.one_hot(labels, c).to(F64)
    # n_examples < d would make Cxx singular; a small diagonal keeps the worst case (full rank).
    cxx = x.T @ x / n_examples + torch.diag(0.01 * scales.square())
    cxy = x.T @ y / n_examples
    low = torch.randn(d, 256, generator=g, dtype=F64) * scales[:, None]
    s0 = low @ low.T / 256 + torch.diag(scales.square())
    s1 = torch.randn(d, d, generator=g, dtype=F64) * scales[:, None] + torch.outer(offset, offset)
    return LayerMoments(cxx, cxy, s0, s1, x.mean(0), y.mean(0), n_examples, 100 * n_examples, layer)


def bench_scoring(d: int, n_layers: int, max_layers: int | None, solver: str) -> dict:
    timed = n_layers if max_layers is None else min(max_layers, n_layers)
    per_layer = []
    for layer in range(timed):
        c = 2 + layer % 9  # cycle through c = 2..10 classes
        m = synthetic_moments(d, c, layer)
        t0 = time.perf_counter()
        recs = score_layer(m, DEFAULT_K_GRID, perception_solver=solver)
        per_layer.append({"layer": layer, "n_classes": c, "seconds": time.perf_counter() - t0})
        assert len(recs) == len(DEFAULT_K_GRID)
        del m, recs
        print(
            f"  d={d} layer {layer:2d} c={c:2d} solver={solver}: {per_layer[-1]['seconds']:.2f} s",
            flush=True,
        )
    secs = [p["seconds"] for p in per_layer]
    mean = sum(secs) / len(secs)
    return {
        "kind": "score_all_layers",
        "hidden_size": d,
        "n_layers": n_layers,
        "solver": solver,
        "k_grid_size": len(DEFAULT_K_GRID),
        "layers_timed": timed,
        "seconds_per_layer_mean": mean,
        "seconds_per_layer_max": max(secs),
        "seconds_total": sum(secs) if timed == n_layers else mean * n_layers,
        "total_is_extrapolated": timed < n_layers,
        "per_layer": per_layer,
    }


def bench_update(d: int, n_layers: int, batch: int, seq: int, product_dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(n_layers, batch, seq, d, generator=g) + torch.randn(d, generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    for b in range(batch):  # ragged, left padded
        mask[b, : (b * seq) // (2 * batch)] = 0
    labels = torch.arange(batch) % 2
    acc = StatisticsAccumulator(n_layers, d, 2, product_dtype=product_dtype)
    acc.update(hidden[:, :1, :8], mask[:1, :8], labels[:1])  # warm-up
    t0 = time.perf_counter()
    acc.update(hidden, mask, labels)
    secs = time.perf_counter() - t0
    return {
        "kind": "accumulator_update",
        "hidden_size": d,
        "n_layers": n_layers,
        "batch": batch,
        "seq_len": seq,
        "tokens": int(mask.sum()),
        "product_dtype": str(product_dtype).replace("torch.", ""),
        "seconds": secs,
        "seconds_per_layer": secs / n_layers,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", nargs="+", default=["576x31", "4096x33"], help="DxL pairs")
    ap.add_argument(
        "--max-layers",
        type=int,
        default=None,
        help="time only this many layers per size and extrapolate the total",
    )
    ap.add_argument("--solver", choices=["lowrank", "dense", "both"], default="lowrank")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--update-layers",
        type=int,
        default=4,
        help="layers in the accumulator-update benchmark (memory: 3 d^2 float64 each)",
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--skip-update", action="store_true")
    ap.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/out/bench_engine_<time>.json)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    solvers = ["lowrank", "dense"] if args.solver == "both" else [args.solver]
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]

    results = []
    for d, n_layers in sizes:
        for solver in solvers:
            print(
                f"scoring d={d}, {n_layers} layers, {len(DEFAULT_K_GRID)} k values, solver={solver}",
                flush=True,
            )
            results.append(bench_scoring(d, n_layers, args.max_layers, solver))
    if not args.skip_update:
        for d, _ in sizes:
            for dtype in (torch.float32, torch.float64):
                results.append(bench_update(d, args.update_layers, args.batch, args.seq, dtype))

    print()
    print(
        f"{'benchmark':<20} {'d':>5} {'L':>3} {'variant':>10} {'s/layer':>9} {'total s':>9}  note"
    )
    for r in results:
        if r["kind"] == "score_all_layers":
            note = (
                f"extrapolated from {r['layers_timed']} layers"
                if r["total_is_extrapolated"]
                else "all layers"
            )
            print(
                f"{'score (19 k)':<20} {r['hidden_size']:>5} {r['n_layers']:>3} {r['solver']:>10} "
                f"{r['seconds_per_layer_mean']:>9.2f} {r['seconds_total']:>9.1f}  {note}"
            )
        else:
            print(
                f"{'update B={} T={}'.format(r['batch'], r['seq_len']):<20} {r['hidden_size']:>5} "
                f"{r['n_layers']:>3} {r['product_dtype']:>10} {r['seconds_per_layer']:>9.3f} "
                f"{r['seconds']:>9.2f}  {r['tokens']} tokens"
            )
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = (
        Path(args.out) if args.out else Path(__file__).parent / "out" / f"bench_engine_{stamp}.json"
    )
    write_json(
        out,
        {
            "threads": args.threads,
            "torch": torch.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "created": stamp,
            "results": results,
        },
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
