"""Helpers the Snakemake rules and scripts share: config lookups, resources, job logging."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ntps.errors import NTPSError
from ntps.sizes import statistics_bytes, statistics_bytes_from_params

# Fallback size when neither the config nor an acquired model record gives a parameter count.
DEFAULT_N_PARAMS = 1_000_000_000

# Keys of a dataset entry that steer the workflow or annotate the entry, but do not shape the
# prepared table: the rule leaves them out of prepare_dataset's params, so changing one re-prepares
# nothing, and the preparation leaves them out of the spec dataset.json records (the schema fills
# `lora` in with its default).
WORKFLOW_ONLY_KEYS = ("lora", "reference_name", "description", "extraction_shards")


def model_names(config: Mapping[str, Any]) -> list[str]:
    return [entry["name"] for entry in config["models"]]


def dataset_names(config: Mapping[str, Any]) -> list[str]:
    return [entry["name"] for entry in config["datasets"]]


def entry_by_name(config: Mapping[str, Any], section: str, name: str) -> dict[str, Any]:
    for entry in config[section]:
        if entry["name"] == name:
            return entry
    raise KeyError(f"no entry named {name!r} in config section {section!r}")


def canonical(value: Any) -> Any:
    """Mappings with sorted keys, recursively: Snakemake compares params by their repr, so the same
    settings written in another key order must not look changed (and trigger a re-run)."""
    if isinstance(value, Mapping):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    return value


def fixed_layer_spec(config: Mapping[str, Any], model: str) -> int | float:
    """The layer fixed in advance for `model`: its own `fixed_layer`, else analysis.fixed_layer."""
    entry = entry_by_name(config, "models", model)
    return entry.get("fixed_layer", config["analysis"]["fixed_layer"])


def model_n_params(
    config: Mapping[str, Any], model: str, records_dir: str = "resources/models"
) -> int:
    """Parameter count for sizing: config override, else the acquisition record, else a default."""
    entry = entry_by_name(config, "models", model)
    if "n_params" in entry:  # config key
        return int(entry["n_params"])
    record = Path(records_dir) / model / "model.json"
    if record.exists():
        import json

        with contextlib.suppress(ValueError, KeyError, OSError):
            return int(json.loads(record.read_text())["n_parameters"])
    return DEFAULT_N_PARAMS


DEFAULT_MODEL_THREADS = 2


def statistics_mb(
    config: Mapping[str, Any],
    model: str,
    records_dir: str = "resources/models",
    *,
    sharded: bool = True,
) -> int:
    """Memory of the extraction's float64 statistics accumulators, in MB.

    One accumulator holds Cxx, S0 and S1 (3 d^2 doubles) per hidden state; with
    ``uncertainty.jackknife_shards`` = K the job holds K shard accumulators plus their merged total
    and one intermediate merge (``sharded=False``: one accumulator, as in the LoRA job's post-LoRA
    statistics). Shapes come from the acquisition record when it exists; otherwise
    from the parameter count. The formulas are :mod:`ntps.sizes`'s (disk and memory alike).
    """
    shards = int((config.get("uncertainty") or {}).get("jackknife_shards", 0)) if sharded else 0
    copies = shards + 2 if shards >= 2 else 1
    record = Path(records_dir) / model / "model.json"
    one = None
    if record.exists():
        import json

        with contextlib.suppress(ValueError, KeyError, OSError, TypeError):
            data = json.loads(record.read_text())
            one = statistics_bytes(
                int(data["n_layers"]) + 1, int(data["hidden_size"]), 0, header=False
            )
    if one is None:
        one = statistics_bytes_from_params(model_n_params(config, model, records_dir))
    return math.ceil(copies * one / 1e6)


def lora_pairs(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(model, dataset) pairs that get LoRA: enabled globally and opted out by neither side."""
    if not config["lora"]["enabled"]:
        return []
    return [
        (model["name"], dataset["name"])
        for model in config["models"]
        if model.get("lora", True)
        for dataset in config["datasets"]
        if dataset.get("lora", True)
    ]


# What each predictor computed from features (ntps.baselines.PREDICTORS) takes from the config: its
# keyword arguments. Here rather than in the registry, so that the rules read the config without
# importing the estimators; a test checks that both name the same predictors.
FEATURE_PREDICTOR_SETTINGS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "h_score": lambda config: dict(config["predictors"]["h_score"]),
    "logme": lambda config: {},
    "knn": lambda config: dict(config["predictors"]["knn"]),
    # NTPS's own treatment of Cxx, so the ablation differs from NTPS only by V.
    "perception_only": lambda config: {
        key: config["scoring"][key] for key in ("eigen_cutoff", "ridge", "centered")
    },
}


def enabled_predictors(config: Mapping[str, Any]) -> list[str]:
    """Names in ``predictors.enabled`` of a validated config (the schema lists the known ones)."""
    return list(config["predictors"]["enabled"])


def predictor_settings(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Keyword arguments of every enabled predictor computed from features, by name."""
    return {
        name: FEATURE_PREDICTOR_SETTINGS[name](config)
        for name in enabled_predictors(config)
        if name in FEATURE_PREDICTOR_SETTINGS
    }


def extraction_shards(config: Mapping[str, Any], dataset: str) -> int:
    """Extraction jobs per model for `dataset`: its `extraction_shards`, else extraction.shards."""
    entry = entry_by_name(config, "datasets", dataset)
    default = (config.get("extraction") or {}).get("shards", 1)
    return int(entry.get("extraction_shards", default))


def merge_extract_mb(
    config: Mapping[str, Any],
    model: str,
    dataset_record: str | os.PathLike[str],
    model_record: str | os.PathLike[str],
) -> int:
    """Memory of the job merging a pair's extraction shards, in MB (before retry doubling).

    It holds the statistics accumulators an extraction job holds (:func:`statistics_mb`), one
    more being read from a shard, and the pooled features of every text (train and test, every
    hidden state, float32), plus 1 GB.
    Reads the dataset and model records (FileNotFoundError until they exist: Snakemake then
    decides the value once the job's inputs are there).
    """
    import json

    n_rows = int(json.loads(Path(dataset_record).read_text())["n_rows"])
    shape = json.loads(Path(model_record).read_text())
    states = int(shape["n_layers"]) + 1
    features = n_rows * states * int(shape["hidden_size"]) * 4
    held = statistics_mb(config, model) + statistics_mb(config, model, sharded=False)
    return 1024 + held + math.ceil(features / 1e6)


def model_resources(
    config: Mapping[str, Any],
    model: str,
    attempt: int = 1,
    statistics: str | None = None,
) -> dict[str, int]:
    """Resources of a model-running job, scaled with model size and the retry attempt.

    Memory: fp32 weights (4 bytes/param) x3 for loading copies, activations and LoRA optimizer
    state, plus 2 GB for the interpreter, plus the statistics accumulators the job holds
    (``statistics``: None for none, "single", or "sharded" with the jackknife shards; see
    :func:`statistics_mb`), doubled on each retry. Runtime: one hour per billion parameters
    with a 30-minute floor, doubled on each retry. Per-model `resources:` entries in the config
    override the computed values (before the retry scaling).
    """
    entry = entry_by_name(config, "models", model)
    override = entry.get("resources", {})
    n_params = model_n_params(config, model)
    held = statistics_mb(config, model, sharded=statistics == "sharded") if statistics else 0
    mem_mb = override.get("mem_mb", 2048 + math.ceil(n_params * 4 * 3 / 1e6) + held)
    runtime = override.get("runtime", max(30, math.ceil(60 * n_params / 1e9)))
    return {
        "mem_mb": int(mem_mb * 2 ** (attempt - 1)),
        "runtime": int(runtime * 2 ** (attempt - 1)),
        "gpu": int(override.get("gpu", 1)),
    }


def score_resources(config: Mapping[str, Any], model: str, attempt: int = 1) -> dict[str, int]:
    """GPU, runtime and threads of a model's score jobs (``score``, ``score_post_lora``).

    Scoring costs ~L d^3 per pair (float64 eigendecompositions of every layer, docs/cluster.md),
    which grows with the parameter count: models with ``n_params >= scoring.gpu_min_params`` get
    one GPU (null: none do); a model's ``resources: {score_gpu: n}`` overrides the threshold,
    and its ``resources: {gpu: 0}`` (no GPU for its model jobs) means none for scoring either.
    Runtime: the model jobs' one hour per 1e9 parameters, at least 120 minutes (the profiles'
    default), doubled on each retry. Threads: ``scoring.threads``.
    """
    scoring = config.get("scoring") or {}
    override = entry_by_name(config, "models", model).get("resources", {})
    threshold = scoring.get("gpu_min_params")
    n_params = model_n_params(config, model)
    if "score_gpu" in override:
        gpu = int(override["score_gpu"])
    elif override.get("gpu") == 0:
        gpu = 0
    else:
        gpu = int(threshold is not None and n_params >= int(threshold))
    runtime = max(120, math.ceil(60 * n_params / 1e9))
    return {
        "gpu": gpu,
        "runtime": int(runtime * 2 ** (attempt - 1)),
        "threads": int(scoring.get("threads", 1)),
    }


def model_torch_threads(config: Mapping[str, Any], model: str) -> int:
    """Intra-op threads for a model job, from the config rather than from Snakemake's grant.

    torch's CPU kernels round differently with different thread counts, and Snakemake lowers a
    job's threads to fit `--cores`; taking the count from the config keeps `--cores 1` and
    `--cores 2` byte-identical (at worst one job briefly oversubscribes a single core). Read from
    the model's `resources:` only, so no acquisition record is opened for it.
    """
    override = entry_by_name(config, "models", model).get("resources", {})
    return int(override.get("threads", DEFAULT_MODEL_THREADS))


@contextlib.contextmanager
def job_logging(
    log_path: str | os.PathLike[str] | None, threads: int = 1
) -> Iterator[logging.Logger]:
    """Send a job's stdout, stderr (tqdm bars) and logging to its Snakemake log file.

    A job stopped by an :class:`~ntps.errors.NTPSError` (bad input: the config, a dataset, a model
    file) ends with its message as one ERROR line in the log and on the job's stderr, which
    Snakemake shows, and exit status 1, without a traceback: the message names what to fix and a
    traceback through our code would bury it. Any other exception is a bug, or something we did
    not foresee: it is logged with its traceback, what a bug report needs, and re-raised.
    """
    logger = logging.getLogger("ntps")
    if log_path is None:
        logging.basicConfig(level=logging.INFO)
        yield logger
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8", buffering=1) as handle:
        handler = logging.StreamHandler(handle)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = handle
        # SIGTERM (scancel, walltime, Snakemake stopping a job tree) ends Python without running
        # `finally` blocks; as SystemExit it unwinds, temporary files are removed and the log
        # says why the job stopped instead of ending empty.
        previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
        failure = None
        try:
            # Which code ran: the package's version, commit and folder (a module deployment, a
            # conda environment or a stray installed copy would each show here).
            logger.info("ntps %s from %s", _code_revision(), Path(__file__).resolve().parent)
            set_threads(threads)
            yield logger
        except NTPSError as error:
            failure = f"{type(error).__name__}: {error}"
            logger.error("%s", failure)
        except Exception:
            logger.exception("job failed")
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            sys.stdout, sys.stderr = old_out, old_err
            logger.removeHandler(handler)
    if failure is not None:
        # Once stderr is the job's own again (Snakemake prints it); SystemExit ends the job with
        # exit status 1 and no traceback.
        print(failure, file=sys.stderr, flush=True)
        raise SystemExit(1)


def _code_revision() -> str:
    from ntps.io import code_revision

    code = code_revision()
    if code["git_revision"] is None:
        return code["version"]
    dirty = " (with uncommitted changes)" if code["git_dirty"] else ""
    return f"{code['version']} at commit {code['git_revision']}{dirty}"


def _raise_on_sigterm(signum: int, frame: object) -> None:
    logging.getLogger("ntps").error("job stopped by %s", signal.Signals(signum).name)
    raise SystemExit(128 + signum)


# What Snakemake sets to a job's threads (snakemake/shell.py), read by torch and BLAS at load.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
)  # fmt: skip


def set_threads(threads: int) -> None:
    """torch's intra-op threads and the BLAS/OpenMP pools of numpy, scipy and scikit-learn.

    The BLAS pools default to every core. Left there, a one-thread probe job fitting logistic
    regressions on 1280 x 576 features took 157 s instead of 17 s on a 2-core machine
    (docs/performance.md): small BLAS calls spend their time waking and synchronising threads.
    """
    from threadpoolctl import threadpool_limits

    threads = max(1, int(threads))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    else:
        # Not imported for it (about 1 s per job; the preparation, table and plot jobs never use
        # torch): torch takes its OpenMP and MKL thread counts from these when first imported.
        # All of them, because Snakemake sets all of them to the job's granted threads (1 under
        # --cores 1), and torch's kernels round differently with another MKL count.
        for name in THREAD_VARIABLES:
            os.environ[name] = str(threads)
    # Process-wide and for the rest of the job: the object returned need not be kept.
    threadpool_limits(limits=threads)
