"""The config schema is the one source of every range: each numeric setting's boundary values pass
the workflow's validation and the job-side code that reads them (LoRASettings, the dataset spec,
the scorer) alike. Before #17 the schema allowed `lora.warmup_ratio: 1` and `dropout: 1` and the
LoRA job then rejected them."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch

from ntps.config import load_schema, validate_config
from ntps.datasets import normalise_spec
from ntps.lora import LoRASettings
from ntps.workflow import WORKFLOW_ONLY_KEYS

SCHEMA = load_schema()
# A step inside an exclusive bound: the closest value a user would plausibly write.
NUMBER_STEP = 1e-6


def minimal_config() -> dict[str, Any]:
    # Hub sources: no local path has to exist for the config to validate.
    return {
        "models": [{"name": "m", "source": {"type": "hub", "id": "org/m"}}],
        "datasets": [
            {"name": "d", "source": {"type": "hub", "id": "org/d"}, "text_columns": "text",
             "label_column": "label"},
        ],
    }  # fmt: skip


def boundary_values(prop: dict[str, Any]) -> list[tuple[str, int | float]]:
    """(which bound, value) for every minimum/maximum of a numeric property, inside the range."""
    types = prop.get("type", [])
    types = [types] if isinstance(types, str) else types
    integer = "integer" in types
    step = 1 if integer else NUMBER_STEP
    values = []
    if "minimum" in prop:
        values.append(("minimum", prop["minimum"]))
    if "maximum" in prop:
        values.append(("maximum", prop["maximum"]))
    if "exclusiveMinimum" in prop:
        values.append(("exclusiveMinimum", prop["exclusiveMinimum"] + step))
    if "exclusiveMaximum" in prop:
        values.append(("exclusiveMaximum", prop["exclusiveMaximum"] - step))
    return values


def cases(properties: dict[str, Any]) -> list[tuple[str, str, int | float]]:
    return [
        (key, bound, value)
        for key, prop in properties.items()
        for bound, value in boundary_values(prop)
    ]


LORA_CASES = cases(SCHEMA["$defs"]["lora_settings"]["properties"])
DATASET_CASES = cases(SCHEMA["$defs"]["dataset"]["properties"])
SPLIT_CASES = cases(SCHEMA["$defs"]["dataset"]["properties"]["split"]["oneOf"][0]["properties"])


def test_the_cases_cover_the_ranges_that_drifted() -> None:
    keys = {(key, bound) for key, bound, _ in LORA_CASES}
    assert {("warmup_ratio", "exclusiveMaximum"), ("dropout", "exclusiveMaximum")} <= keys
    assert len(LORA_CASES) >= 15 and DATASET_CASES and SPLIT_CASES


def test_lora_settings_are_the_schema_s_keys() -> None:
    fields = {field.name for field in dataclasses.fields(LoRASettings)}
    assert fields == set(SCHEMA["$defs"]["lora_settings"]["properties"])


@pytest.mark.parametrize(("key", "bound", "value"), LORA_CASES)
def test_lora_boundary_values_reach_the_job(key: str, bound: str, value: float) -> None:
    config = minimal_config()
    config["lora"] = {"settings": {key: value}}
    validate_config(config)
    # What the LoRA job builds from the rule's params (the validated config's settings).
    settings = LoRASettings.from_dict(copy.deepcopy(config["lora"]["settings"]))
    assert getattr(settings, key) == value


@pytest.mark.parametrize(("key", "bound", "value"), DATASET_CASES)
def test_dataset_boundary_values_reach_the_job(key: str, bound: str, value: float) -> None:
    config = minimal_config()
    config["datasets"][0][key] = value
    validate_config(config)
    entry = dict(config["datasets"][0])
    spec = normalise_spec(entry.pop("name"), entry)
    if key in WORKFLOW_ONLY_KEYS:  # read by the rules (extraction_shards), not by the preparation
        assert key not in spec
    else:
        assert spec[key] == value


@pytest.mark.parametrize(("key", "bound", "value"), SPLIT_CASES)
def test_split_boundary_values_reach_the_job(key: str, bound: str, value: float) -> None:
    config = minimal_config()
    split = {"test_fraction": 0.3, key: value}
    config["datasets"][0]["split"] = split
    validate_config(config)
    entry = dict(config["datasets"][0])
    assert normalise_spec(entry.pop("name"), entry)["split"][key] == value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ridge", 0.0),
        ("eigen_cutoff", SCHEMA["properties"]["scoring"]["properties"]["eigen_cutoff"]["oneOf"][1]["maximum"]),
        ("eigen_cutoff", NUMBER_STEP),
    ],
)  # fmt: skip
def test_scoring_boundary_values_reach_the_scorer(key: str, value: float) -> None:
    from ntps.scores import score_layer
    from ntps.stats import StatisticsAccumulator

    config = minimal_config()
    config["scoring"] = {key: value, "k_grid": [1, 0.5]}
    validate_config(config)
    scoring = config["scoring"]
    g = torch.Generator().manual_seed(0)
    acc = StatisticsAccumulator(1, 4, 2, product_dtype=torch.float64)
    hidden = torch.randn(1, 6, 5, 4, generator=g, dtype=torch.float64)
    acc.update(hidden, torch.ones(6, 5, dtype=torch.long), torch.tensor([0, 1, 0, 1, 0, 1]))
    tol = None if scoring["eigen_cutoff"] == "auto" else float(scoring["eigen_cutoff"])
    records = score_layer(
        acc.layer_moments(0), scoring["k_grid"], tol=tol, ridge=scoring["ridge"],
        centered=scoring["centered"],
    )  # fmt: skip
    assert len(records) == 2


EVIDENCE_CASES = cases(SCHEMA["properties"]["evidence"]["properties"])


@pytest.mark.parametrize(("key", "bound", "value"), EVIDENCE_CASES)
def test_evidence_boundary_values_reach_the_evidence_code(
    key: str, bound: str, value: float
) -> None:
    import numpy as np

    from ntps.analysis import paired_bootstrap_gain_se, read_correlation, useful_tau
    from ntps.evidence_tables import EvidenceSettings

    config = minimal_config()
    config["evidence"] = {key: value}
    validate_config(config)
    evidence = config["evidence"]
    settings = EvidenceSettings.from_config(config["analysis"], evidence)
    assert 0 < useful_tau(settings.useful) < 1
    assert read_correlation(-0.1, 0.2, settings.useful)
    before = np.array([1.0, 0.0, 1.0, 1.0])
    assert paired_bootstrap_gain_se(before, 1 - before, n_boot=evidence["gain_bootstrap"]) > 0
