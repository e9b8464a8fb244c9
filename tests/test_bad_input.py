"""Bad input, one test each: the error (or the count in the log) names the offending model, dataset,
column or key and says what was expected, and is raised before any model is loaded where possible.

docs/errors.md lists the same cases for users. Cases that belong to one module's unit tests are
tested there only: missing label column, class too small for a split, all texts empty
(test_datasets.py); truncation and non-finite hidden states (test_extract.py); k above the rank
(test_scores.py); missing LoRA target modules (test_lora.py); model files damaged after
acquisition (test_models.py). What a failed job shows (one message, no traceback) is tested here
through Snakemake, on a truncated weight file, a corrupt config.json and a single class.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from ntps.config import check_acquired_model, check_model_shapes, validate_config
from ntps.datasets import prepare_dataset
from ntps.errors import ConfigError, DatasetError, ModelSourceError
from ntps.models import acquire_model

# --- configuration (validate_config, no model or data touched) ---------------------------------


@pytest.fixture
def config(tiny_llama_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """A minimal valid config whose local model folder and dataset file exist."""
    reviews = tmp_path / "reviews.csv"
    reviews.write_text("text,label\ngood,1\nbad,0\n")
    return {
        "models": [{"name": "tiny", "source": {"type": "local", "path": str(tiny_llama_dir)}}],
        "datasets": [
            {
                "name": "reviews",
                "source": {"type": "files", "path": str(reviews)},
                "text_columns": ["text"],
                "label_column": "label",
            }
        ],
    }


def config_error(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(copy.deepcopy(config))
    return str(info.value)


def test_valid_config_passes(config: dict[str, Any]) -> None:
    filled = validate_config(copy.deepcopy(config))
    assert filled["models"][0]["batch_size"] == 16  # defaults filled in


def test_config_unknown_key(config: dict[str, Any]) -> None:
    config["scoring"] = {"k_gird": [0.5]}
    message = config_error(config)
    assert "scoring" in message and "'k_gird' was unexpected" in message
    assert "schemas/config.schema.yaml" in message


def test_config_lora_blocks_chosen_twice(config: dict[str, Any]) -> None:
    config["lora"] = {"settings": {"top_blocks": 2, "layers_to_transform": [0, 1]}}
    message = config_error(config)
    assert "lora.settings" in message
    assert "set only one of top_blocks, layers_to_transform" in message
    config["lora"] = {"settings": {"top_blocks": 2, "layers_to_transform": None}}
    validate_config(copy.deepcopy(config))  # null means "not set"


def test_config_wrong_type(config: dict[str, Any]) -> None:
    config["models"][0]["batch_size"] = "big"
    message = config_error(config)
    assert "models[0].batch_size" in message and "model 'tiny'" in message
    assert "'big' is not of type 'integer'" in message


@pytest.mark.parametrize("k", [0, -0.2, 1.5])
def test_config_k_fraction_outside_unit_interval(config: dict[str, Any], k: float) -> None:
    config["scoring"] = {"k_grid": [0.25, k]}
    message = config_error(config)
    assert "scoring.k_grid[1]" in message and repr(k) in message
    assert "integer k >= 1, or a fraction" in message and "(0, 1)" in message


def test_config_k_float_one_is_ambiguous(config: dict[str, Any]) -> None:
    # The schema counts 1.0 as an integer but the scorer would read it as a fraction: caught here.
    config["analysis"] = {"fixed_k": 1.0}
    message = config_error(config)
    assert "analysis.fixed_k" in message and "ambiguous" in message
    assert "integer (1)" in message and "between 0 and 1" in message


def test_config_duplicate_names(config: dict[str, Any]) -> None:
    config["datasets"].append({**config["datasets"][0], "name": "Reviews"})
    message = config_error(config)
    assert "datasets[1].name" in message and "duplicate dataset name 'Reviews'" in message
    assert "datasets[0]" in message and "unique" in message


@pytest.mark.parametrize("name", ["../evil", "a/b", "with space", ".hidden"])
def test_config_name_unsafe_as_path(config: dict[str, Any], name: str) -> None:
    config["models"][0]["name"] = name
    message = config_error(config)
    assert f"models[0].name (model {name!r})" in message
    assert "safe as a folder name" in message and "letters, digits" in message


def test_config_local_model_path_missing(config: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    config["models"][0]["source"]["path"] = str(missing)
    message = config_error(config)
    assert "models[0].source.path (model 'tiny')" in message
    assert str(missing) in message and "does not exist" in message
    assert "transformers folder" in message and "pypi_gguf" in message
    # A folder without config.json is not a model either.
    config["models"][0]["source"]["path"] = str(tmp_path)
    assert "has no config.json" in config_error(config)


def test_config_dataset_file_missing(config: dict[str, Any], tmp_path: Path) -> None:
    # Caught at parse time like a missing model folder, not by the preparation job.
    config["datasets"][0]["source"]["path"] = {"train": str(tmp_path / "reviews.csv"),
                                               "test": "nowhere/test.csv"}  # fmt: skip
    message = config_error(config)
    assert "datasets[0].source.path.test (dataset 'reviews')" in message
    assert "'nowhere/test.csv' does not exist" in message and "working folder" in message
    assert "train" not in message.split("datasets[0].source.path")[1].split(":")[0]


# --- layers and k against a model's shape (parse time, or right after acquisition) -----------


def shape_error(config: dict[str, Any], records_dir: Path) -> str:
    validate_config(config)
    with pytest.raises(ConfigError) as info:
        check_model_shapes(config, records_dir)
    return str(info.value)


def test_fixed_layer_beyond_a_local_model_fails_at_parse_time(
    config: dict[str, Any], tmp_path: Path
) -> None:
    # The tiny Llama has 2 blocks: hidden-state layers 0..2 (or -3..-1).
    config["analysis"] = {"fixed_layer": 99}
    message = shape_error(config, tmp_path / "records")
    assert "analysis.fixed_layer: layer 99 does not exist" in message
    assert "model 'tiny' has 2 blocks" in message and "valid: -3..2" in message
    config["analysis"] = {"fixed_layer": -3}
    config["models"][0]["fixed_layer"] = 3
    message = shape_error(config, tmp_path / "records")
    assert "models[0].fixed_layer: layer 3 does not exist" in message
    del config["models"][0]["fixed_layer"]
    validate_config(config)
    check_model_shapes(config, tmp_path / "records")  # -3 is the embeddings: fine


def test_k_beyond_hidden_size_fails_at_parse_time(config: dict[str, Any], tmp_path: Path) -> None:
    config["scoring"] = {"k_grid": [0.5, 8, 64]}
    config["analysis"] = {"fixed_k": 33}
    message = shape_error(config, tmp_path / "records")
    assert "scoring.k_grid[2]: k = 64 cannot exist for model 'tiny'" in message
    assert "analysis.fixed_k: k = 33" in message and "hidden size is 32" in message
    assert "k_grid[1]" not in message


def test_layer_checked_from_acquisition_record(config: dict[str, Any], tmp_path: Path) -> None:
    # A packaged model's shape is known once acquired: its record is read at the next parse...
    config["models"][0]["source"] = {"type": "pypi_gguf", "packages": ["x==1"], "files": ["m.gguf"]}
    config["analysis"] = {"fixed_layer": 40}
    validate_config(config)
    check_model_shapes(config, tmp_path / "records")  # not acquired yet: nothing known
    record = {"n_layers": 30, "hidden_size": 576}
    (tmp_path / "records" / "tiny").mkdir(parents=True)
    (tmp_path / "records" / "tiny" / "model.json").write_text(json.dumps(record))
    assert "layer 40 does not exist: model 'tiny' has 30 blocks" in shape_error(
        config, tmp_path / "records"
    )
    # ...and by the acquisition job itself, before any extraction.
    with pytest.raises(
        ConfigError, match=r"(?s)does not fit model 'tiny'.*layer 40 does not exist"
    ):
        check_acquired_model(config, "tiny", record, tmp_path)


def test_chat_prompt_without_template_fails_after_acquisition(
    config: dict[str, Any], tiny_llama_dir: Path
) -> None:
    config["models"][0]["prompt_format"] = "chat"
    validate_config(config)
    record = {"n_layers": 2, "hidden_size": 32}
    with pytest.raises(ConfigError) as info:
        check_acquired_model(config, "tiny", record, tiny_llama_dir)
    message = str(info.value)
    assert "models[0].prompt_format" in message and "model 'tiny'" in message
    assert "no chat template" in message and "prompt_format: raw" in message


def test_config_gguf_path_missing(config: dict[str, Any], tmp_path: Path) -> None:
    config["models"][0]["source"] = {"type": "gguf", "path": str(tmp_path / "m.gguf")}
    message = config_error(config)
    assert "model 'tiny'" in message and "m.gguf" in message and "does not exist" in message
    assert "pypi_gguf" in message


def test_config_problems_reported_together(config: dict[str, Any]) -> None:
    config["models"][0]["batch_size"] = 0
    config["probes"] = {"cv_folds": 1}
    message = config_error(config)
    assert "2 problem(s)" in message and "batch_size" in message and "cv_folds" in message


# --- configuration through the real `snakemake -n` ---------------------------------------------


def dry_run_with(root: Path, edit: Any) -> subprocess.CompletedProcess:
    from workflow_support import run_snakemake, write_study

    path = write_study(root)
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return run_snakemake(root, "--dry-run", check=False, timeout=120)


def test_snakemake_dry_run_rejects_unknown_key(tmp_path: Path) -> None:
    result = dry_run_with(tmp_path, lambda c: c["models"][0].update(max_lenght=64))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid configuration" in output and "'max_lenght' was unexpected" in output
    assert "model 'tiny-llama'" in output
    assert not (tmp_path / "resources").exists()  # nothing acquired


def test_snakemake_dry_run_rejects_missing_local_model(tmp_path: Path) -> None:
    def edit(config: dict[str, Any]) -> None:
        config["models"][0]["source"]["path"] = "inputs/moved-away"  # relative to --directory

    result = dry_run_with(tmp_path, edit)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "model 'tiny-llama'" in output and "inputs/moved-away" in output
    assert "does not exist" in output


def test_snakemake_dry_run_rejects_missing_dataset_file(tmp_path: Path) -> None:
    # Reported at parse time, like a missing model folder, not by prepare_dataset.
    result = dry_run_with(
        tmp_path, lambda c: c["datasets"][1]["source"].update(path="inputs/gone.jsonl")
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "datasets[1].source.path (dataset 'weak')" in output
    assert "'inputs/gone.jsonl' does not exist" in output
    assert not (tmp_path / "resources").exists()


def test_snakemake_dry_run_rejects_layer_the_local_model_lacks(tmp_path: Path) -> None:
    result = dry_run_with(tmp_path, lambda c: c["analysis"].update(fixed_layer=99))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "analysis.fixed_layer: layer 99 does not exist: model 'tiny-llama' has 2 blocks" in output
    )


# --- model sources -----------------------------------------------------------------------------


def test_model_hub_unreachable_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = {"type": "hub", "id": "example-org/not-cached-model"}
    with pytest.raises(ModelSourceError) as info:
        acquire_model("remote", spec, tmp_path / "remote", tmp_path / "cache")
    message = str(info.value)
    assert "model 'remote'" in message and "example-org/not-cached-model" in message
    assert "type: local" in message and "pypi_gguf" in message  # the offline alternatives
    assert not (tmp_path / "remote").exists()


# --- datasets ----------------------------------------------------------------------------------


def write_reviews(path: Path, rows: list[tuple[str, str]]) -> dict[str, Any]:
    pd.DataFrame(rows, columns=["review", "sentiment"]).to_csv(path, index=False)
    return {
        "source": {"type": "files", "path": str(path)},
        "text_columns": ["review"],
        "label_column": "sentiment",
        "split": {"test_fraction": 0.3, "seed": 1},
    }


def balanced_rows(n: int = 6) -> list[tuple[str, str]]:
    return [(f"good film number {i}", "pos") for i in range(n)] + [
        (f"bad film number {i}", "neg") for i in range(n)
    ]


def test_dataset_text_column_missing(tmp_path: Path) -> None:
    spec = write_reviews(tmp_path / "d.csv", balanced_rows())
    spec["text_columns"] = ["text"]
    with pytest.raises(DatasetError) as info:
        prepare_dataset("movies", spec, tmp_path)
    message = str(info.value)
    assert "dataset 'movies'" in message and "['text'] not found" in message
    assert "available columns: ['review', 'sentiment']" in message


def test_dataset_empty_whitespace_and_undecodable_texts_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "d.csv"
    write_reviews(path, balanced_rows())
    extra = b'"",pos\n"   \t ",neg\n"caf\xe9 in latin-1",pos\n'  # empty, blank, not UTF-8
    path.write_bytes(path.read_bytes() + extra)
    spec = {
        "source": {"type": "files", "path": str(path)},
        "text_columns": ["review"],
        "label_column": "sentiment",
        "split": {"test_fraction": 0.3, "seed": 1},
    }
    with caplog.at_level(logging.INFO, logger="ntps"):
        prepared = prepare_dataset("movies", spec, tmp_path)
    assert prepared.drops["empty"] == 2 and prepared.drops["undecodable"] == 1
    assert len(prepared.frame) == 12 and prepared.n_raw == 15
    assert "movies" in caplog.text and "'empty': 2" in caplog.text
    assert "'undecodable': 1" in caplog.text


@pytest.mark.parametrize("compress", [False, True])
def test_dataset_binary_file_given_as_csv(tmp_path: Path, compress: bool) -> None:
    # Random bytes (here a gzip stream, the classic "wrong file") used to end in a pandas or
    # UnicodeEncodeError traceback; now one message with the dataset, the file and the format.
    import gzip

    payload = gzip.compress(b"not a table" * 500)
    path = tmp_path / ("data.csv.bz2" if compress else "data.csv")
    path.write_bytes(__import__("bz2").compress(payload) if compress else payload)
    spec = {"source": {"type": "files", "path": str(path), "format": "csv"},
            "text_columns": ["review"], "label_column": "sentiment"}  # fmt: skip
    with pytest.raises(DatasetError) as info:
        prepare_dataset("movies", spec, tmp_path)
    message = str(info.value)
    assert "dataset 'movies'" in message and str(path) in message
    assert "is binary" in message and "expected a csv file" in message


def test_dataset_text_that_is_not_its_format(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"review": "fine", "sentiment": "pos"}\nthis line is not JSON\n')
    spec = {"source": {"type": "files", "path": str(path)},
            "text_columns": ["review"], "label_column": "sentiment"}  # fmt: skip
    with pytest.raises(DatasetError) as info:
        prepare_dataset("movies", spec, tmp_path)
    message = str(info.value)
    assert "dataset 'movies'" in message and str(path) in message
    assert "cannot be read as jsonl" in message and "source.format" in message


def test_dataset_label_outside_declared_set(tmp_path: Path) -> None:
    rows = [*balanced_rows(), ("meh film", "neutral"), ("so-so film", "neutral")]
    spec = write_reviews(tmp_path / "d.csv", rows)
    spec["label_values"] = ["neg", "pos"]
    with pytest.raises(DatasetError) as info:
        prepare_dataset("movies", spec, tmp_path)
    message = str(info.value)
    assert "dataset 'movies'" in message and "['neg', 'pos']" in message
    assert "'neutral' (2 rows)" in message and "label_values" in message


# --- a job that fails on bad input: one message, no traceback ----------------------------------
# The study's first job meets the bad input; Snakemake's output (it shows the job's stderr and,
# with the profile's show-failed-logs, its log) and the job log must carry the message and no
# traceback through our code, which would bury it.

TRACE = re.compile(r'Traceback|File "|ntps/[\w/]+\.py')


def failed_first_job(root: Path, target: str, log: str) -> tuple[str, str]:
    """Run Snakemake on `target` of the study in `root`; its output and the job log `log`."""
    from workflow_support import run_snakemake

    result = run_snakemake(root, target, check=False, timeout=300, cores=1)
    assert result.returncode != 0
    assert not (root / target).exists()
    return result.stdout + result.stderr, (root / "results/logs" / log).read_text()


def assert_one_message(output: str, log: str, *parts: str) -> None:
    for text in (output, log):
        assert not TRACE.search(text), text
        for part in parts:
            assert part in text, (part, text)
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and all(part in errors[0] for part in parts)


def test_truncated_safetensors_fails_acquisition_naming_the_file(tmp_path: Path) -> None:
    from workflow_support import write_study

    write_study(tmp_path)
    weights = tmp_path / "inputs" / "tiny-llama" / "model.safetensors"
    os.truncate(weights, 100)  # as an interrupted copy leaves it
    output, log = failed_first_job(
        tmp_path, "resources/models/tiny-llama/model.json", "acquire_model/tiny-llama.log"
    )
    assert_one_message(
        output, log, "ModelSourceError: model 'tiny-llama'", f"file {str(weights.resolve())!r}",
        "is damaged or incomplete", "invalid header length", "replace it with a complete copy",
    )  # fmt: skip


def test_corrupt_config_json_fails_acquisition_naming_the_file(tmp_path: Path) -> None:
    from workflow_support import write_study

    write_study(tmp_path)
    config_json = tmp_path / "inputs" / "tiny-llama" / "config.json"
    config_json.write_text(config_json.read_text()[:40])  # cut off mid-way
    output, log = failed_first_job(
        tmp_path, "resources/models/tiny-llama/model.json", "acquire_model/tiny-llama.log"
    )
    assert_one_message(
        output, log, "ModelSourceError: model 'tiny-llama'", f"file {str(config_json.resolve())!r}",
        "is damaged or incomplete (JSONDecodeError", "replace it with a complete copy",
    )  # fmt: skip


def test_dataset_with_one_class_fails_preparation_naming_the_column(tmp_path: Path) -> None:
    from workflow_support import write_study

    config = yaml.safe_load(write_study(tmp_path).read_text())
    entry = config["datasets"][0]  # "noisy", a csv file
    path = Path(entry["source"]["path"])
    frame = pd.read_csv(path)
    frame.assign(topic="sport").to_csv(path, index=False)
    output, log = failed_first_job(
        tmp_path, "resources/datasets/noisy/data.parquet", "prepare_dataset/noisy.log"
    )
    assert_one_message(
        output, log, "DatasetError: dataset 'noisy'", "at least 2 classes in label column 'topic'",
        "found ['sport']", "check label_column, filter",
    )  # fmt: skip


def test_job_logging_one_line_for_bad_input_traceback_for_bugs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ntps.workflow import job_logging

    log = tmp_path / "bad.log"
    with pytest.raises(SystemExit) as info, job_logging(log):
        raise DatasetError("dataset 'x': column 'y' not found; check text_columns")
    assert info.value.code == 1
    assert (
        capsys.readouterr().err
        == "DatasetError: dataset 'x': column 'y' not found; check text_columns\n"
    )
    assert "ERROR DatasetError: dataset 'x'" in log.read_text()
    assert "Traceback" not in log.read_text()
    # Not raised on purpose: a bug, whose traceback is what a report needs.
    with pytest.raises(ZeroDivisionError), job_logging(log):
        1 / 0  # noqa: B018
    assert "ERROR job failed\nTraceback" in log.read_text()
    assert "ZeroDivisionError" in log.read_text()
