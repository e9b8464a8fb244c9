"""The released paper numbers reproduce the per-model correlations quoted in the method spec."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from ntps.errors import DatasetError
from ntps.reference import (
    PAPER_SPEARMAN,
    PAPER_TARGETS,
    REFERENCE_CSV,
    load_paper_reference,
    paper_correlations,
    paper_lora_frame,
    short_model_name,
)

# sha256 of the table as the authors released it (checked against the original when it was copied).
SHA256 = "7005aa87428a933eec08b035a0a3fbd652bddfec9366e786c2245ee381905392"


def test_reference_file_is_the_released_table() -> None:
    assert hashlib.sha256(REFERENCE_CSV.read_bytes()).hexdigest() == SHA256


def test_load_shape() -> None:
    ref = load_paper_reference()
    assert list(ref.columns) == ["model", "dataset", "figure", "ntps", "metric", "value"]
    assert len(ref) == 384
    assert ref["model"].nunique() == 8
    assert ref.groupby(["model", "figure"]).size().to_dict()[("Qwen/Qwen2-0.5B", "fig3_lora")] == 24


def test_all_24_paper_correlations_to_three_decimals() -> None:
    corr = paper_correlations(load_paper_reference())
    assert len(corr) == 24
    assert (corr["n_datasets"] == 12).all()
    got = {(r.model, r.target): f"{r.rho:.3f}" for r in corr.itertuples()}
    expected = {
        (model, target): f"{value:.3f}"
        for model, values in PAPER_SPEARMAN.items()
        for target, value in zip(PAPER_TARGETS, values, strict=True)
    }
    assert got == expected


def test_lora_gain_definition() -> None:
    lora = paper_lora_frame(load_paper_reference())
    assert len(lora) == 96
    row = lora[(lora.model == "Qwen/Qwen2-0.5B") & (lora.dataset == "sst2")].iloc[0]
    assert row["gain"] == pytest.approx(row["lora_accuracy"] - row["probe_accuracy"])
    assert row["probe_accuracy"] == pytest.approx(0.854358, abs=1e-6)
    assert row["lora_accuracy"] == pytest.approx(0.888761, abs=1e-6)


def test_short_model_names() -> None:
    ref = load_paper_reference()
    assert sorted(short_model_name(m) for m in ref["model"].unique()) == sorted(PAPER_SPEARMAN)
    assert short_model_name("apple/OpenELM-1_1B") == "OpenELM-1.1B"
    assert short_model_name("meta-llama/Meta-Llama-3-8B") == "Llama-3-8B"
    assert short_model_name("someone/tiny-llama") == "tiny-llama"


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_paper_reference(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"model": ["a"], "dataset": ["b"], "figure": ["fig2_accuracy"]}).to_csv(bad)
    with pytest.raises(DatasetError, match="lacks column"):
        load_paper_reference(bad)
