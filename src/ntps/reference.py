"""The paper's released Fig. 2 / Fig. 3 numbers and the per-model correlations they imply.

The CSV (``data/reference/ntps_paper_released_figures.csv``, provenance in the README beside it) is
long format: ``model, dataset, figure, ntps, metric, value`` with figures ``fig2_accuracy``
(metric ``probe_accuracy_train``), ``fig2_mse`` (``probe_mse_train``) and ``fig3_lora`` (two rows per
pair: ``linear_probe_test_accuracy`` and ``lora_test_accuracy``). The NTPS value of the same
(model, dataset) differs between figures because each figure used its own best layer/k.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ntps.analysis import spearman
from ntps.errors import DatasetError

REFERENCE_CSV = (
    Path(__file__).resolve().parents[2] / "data" / "reference" / "ntps_paper_released_figures.csv"
)
REFERENCE_COLUMNS = ("model", "dataset", "figure", "ntps", "metric", "value")

SHORT_MODEL_NAMES = {
    "Qwen/Qwen2-0.5B": "Qwen2-0.5B",
    "Qwen/Qwen2-1.5B": "Qwen2-1.5B",
    "Qwen/Qwen2-7B": "Qwen2-7B",
    "apple/OpenELM-270M": "OpenELM-270M",
    "apple/OpenELM-450M": "OpenELM-450M",
    "apple/OpenELM-1_1B": "OpenELM-1.1B",
    "apple/OpenELM-3B": "OpenELM-3B",
    "meta-llama/Meta-Llama-3-8B": "Llama-3-8B",
}

# Per-model Spearman correlations recomputed from the released per-pair values in data/reference
# (NTPS vs accuracy, -(NTPS vs MSE), -(NTPS vs LoRA gain)), three decimals.
PAPER_SPEARMAN = {
    "Qwen2-0.5B": (0.685, 0.699, 0.769),
    "Qwen2-1.5B": (0.643, 0.678, 0.671),
    "Qwen2-7B": (0.818, 0.678, 0.594),
    "OpenELM-270M": (0.573, 0.420, 0.867),
    "OpenELM-450M": (0.524, 0.462, 0.874),
    "OpenELM-1.1B": (0.734, 0.434, 0.895),
    "OpenELM-3B": (0.657, 0.727, 0.524),
    "Llama-3-8B": (0.720, 0.517, 0.399),
}
PAPER_TARGETS = ("accuracy", "-mse", "-gain")


def short_model_name(model: str) -> str:
    """Readable model name: the paper's short names, else the part after the hub owner."""
    return SHORT_MODEL_NAMES.get(model, model.rsplit("/", 1)[-1])


def load_paper_reference(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Read the released-figures CSV and check its columns and figure/metric vocabulary."""
    csv = Path(path) if path is not None else REFERENCE_CSV
    if not csv.is_file():
        raise DatasetError(f"paper reference table not found at {csv}")
    frame = pd.read_csv(csv)
    missing = [c for c in REFERENCE_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(f"paper reference table {csv} lacks column(s) {missing}")
    expected = {
        ("fig2_accuracy", "probe_accuracy_train"),
        ("fig2_mse", "probe_mse_train"),
        ("fig3_lora", "linear_probe_test_accuracy"),
        ("fig3_lora", "lora_test_accuracy"),
    }
    found = set(map(tuple, frame[["figure", "metric"]].drop_duplicates().to_numpy()))
    if found - expected:
        raise DatasetError(
            f"paper reference table {csv} has unexpected (figure, metric) pairs {sorted(found - expected)}"
        )
    return frame


def paper_lora_frame(reference: pd.DataFrame) -> pd.DataFrame:
    """Fig. 3 as one row per (model, dataset): ntps, lora_accuracy, probe_accuracy and
    gain = LoRA test accuracy - linear-probe test accuracy."""
    lora = reference[reference["figure"] == "fig3_lora"]
    wide = lora.pivot_table(
        index=["model", "dataset", "ntps"], columns="metric", values="value", aggfunc="first"
    ).reset_index()
    wide.columns.name = None
    wide = wide.rename(
        columns={
            "lora_test_accuracy": "lora_accuracy",
            "linear_probe_test_accuracy": "probe_accuracy",
        }
    )
    wide["gain"] = wide["lora_accuracy"] - wide["probe_accuracy"]
    if wide.duplicated(["model", "dataset"]).any():
        raise DatasetError(
            "paper reference fig3_lora has several NTPS values for one (model, dataset)"
        )
    return wide[["model", "dataset", "ntps", "lora_accuracy", "probe_accuracy", "gain"]]


def paper_correlations(reference: pd.DataFrame) -> pd.DataFrame:
    """Per-model Spearman correlations across datasets, signed so the paper's claims are positive.

    Targets: ``accuracy`` (Fig. 2 in-sample probe accuracy), ``-mse`` (Fig. 2 in-sample probe MSE,
    sign flipped), ``-gain`` (Fig. 3 LoRA gain, sign flipped). Columns: model (short), model_id,
    target, figure, n_datasets, rho.
    """
    records = []
    lora = paper_lora_frame(reference)
    for model_id in reference["model"].drop_duplicates():
        sub = reference[reference["model"] == model_id]
        acc = sub[sub["figure"] == "fig2_accuracy"]
        mse = sub[sub["figure"] == "fig2_mse"]
        gain = lora[lora["model"] == model_id]
        for target, figure, x, y in (
            ("accuracy", "fig2_accuracy", acc["ntps"], acc["value"]),
            ("-mse", "fig2_mse", mse["ntps"], -mse["value"]),
            ("-gain", "fig3_lora", gain["ntps"], -gain["gain"]),
        ):
            records.append(
                {
                    "model": short_model_name(model_id),
                    "model_id": model_id,
                    "target": target,
                    "figure": figure,
                    "n_datasets": len(x),
                    "rho": spearman(x.to_numpy(float), y.to_numpy(float)),
                }
            )
    return pd.DataFrame.from_records(records)
