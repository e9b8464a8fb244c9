"""Effect of bfloat16 hidden states on NTPS, measured on a real model (issue #15, item 5).

Extracts the train-split statistics of one model on a few prepared datasets twice, with the model
loaded in float32 and in bfloat16 (the dtype a CUDA job gets with ``dtype: auto``), scores both the
same way and compares ``ntps_reg`` / ``ntps_paper`` at the fixed setting and over every layer and k.
Runs on the CPU (bf16 matmuls are emulated there: slow, but the rounding of the hidden states is
the same as on a GPU up to the order of the sums). Inputs are an acquired model folder and prepared
datasets of an earlier run (``resources/``), so nothing is downloaded::

    .venv/bin/python benchmarks/bench_bf16.py --model-dir resources/models/smollm2-135m/weights \\
        --datasets-dir resources/datasets --datasets sms_spam trec_coarse

Writes ``benchmarks/out/bench_bf16_<UTC time>.json`` (every record of both runs, the comparison)
and prints the comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--datasets-dir", required=True)
    parser.add_argument("--datasets", nargs="+", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fixed-layer", type=float, default=0.5)
    parser.add_argument("--fixed-k", type=float, default=0.25)
    parser.add_argument("--out", default=str(HERE / "out"))
    args = parser.parse_args()

    from ntps.analysis import resolve_layer
    from ntps.config import load_schema
    from ntps.stages.extract import extract_pair
    from ntps.stages.score import score_pair
    from ntps.workflow import set_threads

    set_threads(args.threads)
    # The schema's default grid (the default study's and, up to its own list, the paper config's).
    k_grid = load_schema()["properties"]["scoring"]["properties"]["k_grid"]["default"]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            table = Path(args.datasets_dir) / dataset / "data.parquet"
            record = Path(args.datasets_dir) / dataset / "dataset.json"
            runs = {}
            for dtype in ("float32", "bfloat16"):
                out = Path(tmp) / dataset / dtype
                settings = {
                    "batch_size": args.batch_size,
                    "max_length": args.max_length,
                    "dtype": dtype,
                    "device": "cpu",
                    "prompt_format": "raw",
                    "jackknife_shards": 0,
                    "jackknife_seed": 0,
                    "progress": False,
                }
                started = time.perf_counter()
                extract_pair(
                    args.model_dir,
                    table,
                    record,
                    settings,
                    out / "stats.safetensors",
                    out / "features.safetensors",
                    out / "extract.json",
                    splits=("train",),
                )
                extract_seconds = time.perf_counter() - started
                started = time.perf_counter()
                scores = score_pair(out / "stats.safetensors", k_grid, ridge=0.0, centered=False)
                runs[dtype] = {
                    "extract_seconds": extract_seconds,
                    "score_seconds": time.perf_counter() - started,
                    "records": scores["records"],
                    "n_layers": scores["n_layers"],
                }
                print(f"{dataset} {dtype}: extraction {extract_seconds:.0f} s", flush=True)
            n_states = runs["float32"]["n_layers"]
            fixed_layer = resolve_layer(args.fixed_layer, n_states)
            results[dataset] = {
                "runs": runs,
                "comparison": compare(runs, fixed_layer, args.fixed_k),
            }
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "model_dir": args.model_dir,
        "max_length": args.max_length,
        "results": results,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"bench_bf16_{stamp}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    for dataset, result in results.items():
        print(f"\n{dataset}:")
        for key, value in result["comparison"].items():
            print(f"  {key}: {value}")
    print(f"\nwritten {path}")


def compare(runs: dict, fixed_layer: int, fixed_k: float) -> dict:
    """Float32 vs bf16 scores: at the fixed setting, and max/mean |difference| over layers and k."""
    f32 = {(r["layer"], str(r["k_spec"])): r for r in runs["float32"]["records"]}
    b16 = {(r["layer"], str(r["k_spec"])): r for r in runs["bfloat16"]["records"]}
    out: dict = {}
    fixed = (fixed_layer, str(fixed_k))
    for form in ("ntps_reg", "ntps_paper"):
        out[f"{form}_fixed_float32"] = f32[fixed][form]
        out[f"{form}_fixed_bfloat16"] = b16[fixed][form]
        diffs = [
            abs(f32[key][form] - b16[key][form])
            for key in f32
            if math.isfinite(f32[key][form])
            and math.isfinite(b16[key][form])
            and not (form == "ntps_paper" and f32[key]["paper_degenerate"])
        ]
        at_k = {
            layer: abs(f32[(layer, str(fixed_k))][form] - b16[(layer, str(fixed_k))][form])
            for layer, k in f32
            if k == str(fixed_k)
        }
        worst_layer = max(at_k, key=at_k.get)
        out[f"{form}_max_abs_diff_all"] = max(diffs)
        out[f"{form}_mean_abs_diff_all"] = sum(diffs) / len(diffs)
        out[f"{form}_max_abs_diff_at_fixed_k"] = at_k[worst_layer]
        out[f"{form}_worst_layer_at_fixed_k"] = worst_layer
        out[f"{form}_n_compared"] = len(diffs)
    ranks = [(f32[key]["rank_ar"], b16[key]["rank_ar"]) for key in f32 if key[1] == str(fixed_k)]
    out["rank_ar_float32_vs_bfloat16"] = ranks
    out["extract_seconds"] = {d: runs[d]["extract_seconds"] for d in runs}
    return out


if __name__ == "__main__":
    main()
